//! An upstream's response head passed on as it came, with the proxy's edits beside it
//! (issue 15: "response heads from upstream passed through with edits, not rebuilt").
//! The client keeps the head's bytes and where each field is, rather than hashing every
//! name into a `HeaderMap` that the answer is then written from; the answer is written
//! from the fields themselves, names lowercased.
//!
//! What the client sees must not change, so the fields keep the order the map would
//! have given them: the proxy's inserts (`server`, `x-envoy-upstream-service-time`) take
//! the place of a field of the same name or go last, and a hop-by-hop field stripped
//! leaves the last field in its place (the map's `remove` is a `swap_remove`). Anything
//! that needs more than inserts and the hop-by-hop strip (a route's header rules, CORS, a
//! hash-policy cookie, HTTP/2 or hyper's server) takes the whole map first (`into_map`),
//! equal to the one the head would have been parsed into and edited the same way.
//!
//! Only heads whose map keeps one entry per field are passed: no name twice (a map groups
//! a name's values at its first place), nothing the Connection header names, not a 101
//! (its hop-by-hop fields stay), at most `MAX_FIELDS` fields. Any other head becomes the
//! map at once, as before.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header};

use super::field_line::{push_crlf, written_as_a_line};
use crate::proxy::boxed;

/// Fields of a head passed as it came; a head with more becomes a map at once.
pub(super) const MAX_FIELDS: usize = 32;
/// Fields the proxy inserts into a passed head (`server`, the service time, `te`);
/// another one makes it a map.
const MAX_INSERTED: usize = 4;

/// Places in `HOP_BY_HOP` (`upstream_head.rs`) of the fields the codec reads itself.
pub(in crate::proxy) const CONNECTION: u8 = 0;
pub(in crate::proxy) const KEEP_ALIVE: u8 = 1;
pub(in crate::proxy) const TRANSFER_ENCODING: u8 = 6;

/// What the proxy needs to know of a field by its name, found once while parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::proxy) enum Kind {
    Other,
    Date,
    ContentLength,
    /// One of `upstream_head::HOP_BY_HOP`, by its place there.
    HopByHop(u8),
    /// `Upgrade`: hop-by-hop too, stripped after the others.
    Upgrade,
    /// `server`: every answer's is the proxy's (`forward.rs`), in the upstream's place.
    Server,
    /// `x-envoy-upstream-service-time`: the proxy's on every forwarded answer.
    ServiceTime,
}

/// A lowercase name (letters, digits, `-`) as 8-byte words, with a mask of its letters'
/// case bit: a name of the same length equals it ignoring ASCII case exactly when each
/// word, its letters' case bit set, is the pattern's (a letter's byte with the bit set is
/// its lowercase; every other byte is compared as it is). A few word compares instead of
/// a byte loop per name (`Kind::of` runs for every field of every response).
pub(in crate::proxy) struct Pattern {
    len: usize,
    words: [u64; 4],
    masks: [u64; 4],
}

impl Pattern {
    /// `lower` is at most 32 bytes.
    pub(in crate::proxy) const fn new(lower: &str) -> Pattern {
        let bytes = lower.as_bytes();
        let len = bytes.len();
        assert!(len <= 32);
        let mut words = [0u64; 4];
        let mut masks = [0u64; 4];
        let mut word = 0;
        while word < Self::word_count(len) {
            let at = Self::word_at(len, word);
            let mut i = 0;
            while i < 8 && at + i < len {
                let b = bytes[at + i];
                words[word] |= (b as u64) << (8 * i);
                if b.is_ascii_lowercase() {
                    masks[word] |= 0x20 << (8 * i);
                }
                i += 1;
            }
            word += 1;
        }
        Pattern { len, words, masks }
    }

    const fn word_count(len: usize) -> usize {
        len.div_ceil(8)
    }

    /// Where word `word` starts: every 8 bytes, the last one ending at the end
    /// (overlapping the one before) when the name is 8 bytes or longer.
    const fn word_at(len: usize, word: usize) -> usize {
        let at = word * 8;
        if len >= 8 && at + 8 > len {
            len - 8
        } else {
            at
        }
    }

    /// `name` equals the pattern ignoring ASCII case (as `eq_ignore_ascii_case`).
    #[inline]
    pub(in crate::proxy) fn matches(&self, name: &[u8]) -> bool {
        if name.len() != self.len {
            return false;
        }
        let mut word = 0;
        while word < Self::word_count(self.len) {
            let at = Self::word_at(self.len, word);
            if Self::load(name, at) | self.masks[word] != self.words[word] {
                return false;
            }
            word += 1;
        }
        true
    }

    /// The 8 bytes of `name` from `at` as a little-endian word; a name under 8 bytes is
    /// one word, zero-filled as the pattern's. Loaded whole (or by 4, 2 and 1 bytes): a
    /// copy into a zeroed array was a call per word.
    #[inline]
    fn load(name: &[u8], at: usize) -> u64 {
        if let Some(bytes) = name
            .get(at..at + 8)
            .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        {
            return u64::from_le_bytes(bytes);
        }
        let rest = name.get(at..).unwrap_or_default();
        let mut word = 0u64;
        let mut i = 0;
        if let Some(bytes) = rest.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
            word = u64::from(u32::from_le_bytes(bytes));
            i = 4;
        }
        if let Some(bytes) = rest.get(i..i + 2).and_then(|b| <[u8; 2]>::try_from(b).ok()) {
            word |= u64::from(u16::from_le_bytes(bytes)) << (8 * i);
            i += 2;
        }
        if let Some(&byte) = rest.get(i) {
            word |= u64::from(byte) << (8 * i);
        }
        word
    }
}

/// `len`'s bit in `PassedFields::lengths` (lengths from 63 on share one).
fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

impl Kind {
    /// The kind's bit in `PassedFields::kinds` (`Other` has none: its names go by length).
    fn bit(self) -> u16 {
        match self {
            Kind::Other => 0,
            Kind::Date => 1 << 0,
            Kind::ContentLength => 1 << 1,
            Kind::Upgrade => 1 << 2,
            Kind::Server => 1 << 3,
            Kind::ServiceTime => 1 << 4,
            Kind::HopByHop(index) => 1 << (5 + (index & 7)),
        }
    }

    /// `name` as it came (any case).
    pub(in crate::proxy) fn of(name: &[u8]) -> Kind {
        const TE: Pattern = Pattern::new("te");
        const DATE: Pattern = Pattern::new("date");
        const SERVER: Pattern = Pattern::new("server");
        const TRAILER: Pattern = Pattern::new("trailer");
        const UPGRADE: Pattern = Pattern::new("upgrade");
        const CONNECTION_NAME: Pattern = Pattern::new("connection");
        const KEEP_ALIVE_NAME: Pattern = Pattern::new("keep-alive");
        const CONTENT_LENGTH: Pattern = Pattern::new("content-length");
        const PROXY_CONNECTION: Pattern = Pattern::new("proxy-connection");
        const TRANSFER_ENCODING_NAME: Pattern = Pattern::new("transfer-encoding");
        const PROXY_AUTHENTICATE: Pattern = Pattern::new("proxy-authenticate");
        const SERVICE_TIME: Pattern = Pattern::new("x-envoy-upstream-service-time");
        // The length first: most names are none of these, and most lengths say so.
        match name.len() {
            2 if TE.matches(name) => Kind::HopByHop(4),
            4 if DATE.matches(name) => Kind::Date,
            6 if SERVER.matches(name) => Kind::Server,
            7 if TRAILER.matches(name) => Kind::HopByHop(5),
            7 if UPGRADE.matches(name) => Kind::Upgrade,
            10 if CONNECTION_NAME.matches(name) => Kind::HopByHop(CONNECTION),
            10 if KEEP_ALIVE_NAME.matches(name) => Kind::HopByHop(KEEP_ALIVE),
            14 if CONTENT_LENGTH.matches(name) => Kind::ContentLength,
            16 if PROXY_CONNECTION.matches(name) => Kind::HopByHop(2),
            17 if TRANSFER_ENCODING_NAME.matches(name) => Kind::HopByHop(TRANSFER_ENCODING),
            18 if PROXY_AUTHENTICATE.matches(name) => Kind::HopByHop(3),
            29 if SERVICE_TIME.matches(name) => Kind::ServiceTime,
            _ => Kind::Other,
        }
    }
}

/// Where a field's name and value are in the head.
#[derive(Clone, Copy, Debug)]
pub(super) struct Field {
    name: (u16, u16),
    value: (u16, u16),
    kind: Kind,
    /// The field's line is `name: value\r\n` in the head as it is written: copied whole
    /// (one copy rather than four), its name lowercased in place.
    line: bool,
}

const NO_FIELD: Field = Field {
    name: (0, 0),
    value: (0, 0),
    kind: Kind::Other,
    line: false,
};

/// An entry as the map would list it: a field of the head, or an insert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Field(u8),
    Inserted(u8),
}

/// A response head's fields as the upstream sent them, and the proxy's edits.
pub(in crate::proxy) struct PassedFields {
    /// The head's bytes (a copy: every field below is a range of it).
    head: Bytes,
    fields: [Field; MAX_FIELDS],
    /// The proxy's inserts, each with its name's kind (found once, when inserted).
    inserted: [Option<(HeaderName, HeaderValue, Kind)>; MAX_INSERTED],
    /// The entries in the map's order.
    order: [Entry; MAX_FIELDS + MAX_INSERTED],
    entries: u8,
    /// The Content-Length field's value as the client parsed it (the field is never
    /// edited while passed).
    length: Option<u64>,
    /// Some entry may be hop-by-hop: the strip has nothing to do when none is (most
    /// answers; the client drops Connection and Keep-Alive itself).
    hop_by_hop: bool,
    /// The kinds (`Kind::bit`) and the lengths of the `Other` names (`length_bit`) the
    /// entries may have, for look-ups that find nothing without a scan: every response's
    /// `grpc-status` (the retry policy's), and an insert of a name the head lacks.
    kinds: u16,
    lengths: u64,
}

impl std::fmt::Debug for PassedFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut list = f.debug_list();
        self.for_each(|name, value, _| {
            list.entry(&(
                String::from_utf8_lossy(name.as_bytes()),
                String::from_utf8_lossy(value),
            ));
        });
        list.finish()
    }
}

/// A name as the map would spell it: a field's (to be lowercased) or an insert's.
pub(in crate::proxy) enum Name<'a> {
    Field(&'a [u8]),
    /// A field whose line in the head is `name: value\r\n` as it is written.
    Line {
        name: &'a [u8],
        line: &'a [u8],
    },
    Inserted(&'a HeaderName),
}

impl Name<'_> {
    pub(in crate::proxy) fn as_bytes(&self) -> &[u8] {
        match self {
            Name::Field(name) | Name::Line { name, .. } => name,
            Name::Inserted(name) => name.as_str().as_bytes(),
        }
    }

    /// The field `name: value\r\n` onto `out`, the name lowercase.
    pub(in crate::proxy) fn push_field_to(&self, value: &[u8], out: &mut Vec<u8>) {
        if let Name::Line { name, line } = self {
            let start = out.len();
            out.extend_from_slice(line);
            out[start..start + name.len()].make_ascii_lowercase();
            return;
        }
        self.push_to(out);
        // Pushed: see `field_line::push_crlf`.
        out.push(b':');
        out.push(b' ');
        out.extend_from_slice(value);
        push_crlf(out);
    }

    /// The name, lowercase, onto `out`.
    pub(in crate::proxy) fn push_to(&self, out: &mut Vec<u8>) {
        match self {
            Name::Field(name) | Name::Line { name, .. } => {
                let start = out.len();
                out.extend_from_slice(name);
                out[start..].make_ascii_lowercase();
            }
            Name::Inserted(name) => out.extend_from_slice(name.as_str().as_bytes()),
        }
    }
}

/// Builds the passed fields of a head while the client reads its fields once, in their
/// box (~750 bytes: built on the stack, they were copied into it; `boxed::made` writes
/// them into it).
pub(super) struct Builder {
    passed: Box<PassedFields>,
    len: usize,
    /// Still passable: no name twice, not too many fields.
    passable: bool,
}

impl Builder {
    pub(super) fn new() -> Self {
        Builder {
            passed: boxed::made(|| PassedFields {
                head: Bytes::new(),
                fields: [NO_FIELD; MAX_FIELDS],
                inserted: Default::default(),
                order: [Entry::Field(0); MAX_FIELDS + MAX_INSERTED],
                entries: 0,
                length: None,
                hop_by_hop: false,
                kinds: 0,
                lengths: 0,
            }),
            len: 0,
            passable: true,
        }
    }

    /// The next field kept (`name` and `value` are slices of `head`).
    pub(super) fn push(&mut self, head: &[u8], name: &[u8], value: &[u8], kind: Kind) {
        if !self.passable {
            return;
        }
        if self.len == MAX_FIELDS {
            self.passable = false;
            return;
        }
        let (Some(name_at), Some(value_at)) = (offset(head, name), offset(head, value)) else {
            self.passable = false;
            return;
        };
        let fields = &mut self.passed.fields;
        // A name twice would be one entry of the map, at its first place. A name the
        // proxy knows by its kind is that kind's one name.
        let twice = fields[..self.len].iter().any(|f| {
            if kind != Kind::Other {
                return f.kind == kind;
            }
            f.kind == Kind::Other
                && usize::from(f.name.1) == name.len()
                && head[usize::from(f.name.0)..][..name.len()].eq_ignore_ascii_case(name)
        });
        if twice {
            self.passable = false;
            return;
        }
        let name_end = usize::from(name_at) + name.len();
        let value_start = usize::from(value_at);
        let line = written_as_a_line(head, name_end, (value_start, value_start + value.len()));
        self.passed.hop_by_hop |= matches!(kind, Kind::HopByHop(_) | Kind::Upgrade);
        self.passed.note(kind, name.len());
        let fields = &mut self.passed.fields;
        fields[self.len] = Field {
            name: (name_at, name.len() as u16),
            value: (value_at, value.len() as u16),
            kind,
            line,
        };
        self.len += 1;
    }

    /// Gives up passing the head (its fields go into a map).
    pub(super) fn refuse(&mut self) {
        self.passable = false;
    }

    /// The passed fields of `head` (the whole head, whose copy `copy` is), with the
    /// Content-Length the client parsed from its field, or None when the head must
    /// become a map.
    pub(super) fn finish(self, copy: Bytes, length: Option<u64>) -> Option<Box<PassedFields>> {
        if !self.passable {
            return None;
        }
        let mut passed = self.passed;
        for (at, entry) in passed.order[..self.len].iter_mut().enumerate() {
            *entry = Entry::Field(at as u8);
        }
        passed.head = copy;
        passed.entries = self.len as u8;
        passed.length = length;
        Some(passed)
    }
}

/// Where `part` starts in `head` (httparse's slices are of the head), as a u16 (a head
/// is at most `MAX_HEAD_BYTES`).
fn offset(head: &[u8], part: &[u8]) -> Option<u16> {
    let at = (part.as_ptr() as usize).checked_sub(head.as_ptr() as usize)?;
    (at + part.len() <= head.len())
        .then(|| u16::try_from(at).ok())
        .flatten()
}

impl PassedFields {
    fn entries(&self) -> &[Entry] {
        &self.order[..usize::from(self.entries)]
    }

    fn field_name(&self, field: &Field) -> &[u8] {
        &self.head[usize::from(field.name.0)..][..usize::from(field.name.1)]
    }

    fn field_value(&self, field: &Field) -> &[u8] {
        &self.head[usize::from(field.value.0)..][..usize::from(field.value.1)]
    }

    fn entry(&self, entry: Entry) -> (Name<'_>, &[u8], Kind) {
        match entry {
            Entry::Field(at) => {
                let field = &self.fields[usize::from(at)];
                let name = self.field_name(field);
                let value = self.field_value(field);
                let name = if field.line {
                    let start = usize::from(field.name.0);
                    let end = usize::from(field.value.0) + value.len() + 2;
                    Name::Line {
                        name,
                        line: &self.head[start..end],
                    }
                } else {
                    Name::Field(name)
                };
                (name, value, field.kind)
            }
            Entry::Inserted(at) => match &self.inserted[usize::from(at)] {
                Some((name, value, kind)) => (Name::Inserted(name), value.as_bytes(), *kind),
                // Every inserted entry has its slot filled.
                None => (Name::Field(b""), b"", Kind::Other),
            },
        }
    }

    /// An entry's kind, without its name and value.
    fn kind(&self, entry: Entry) -> Kind {
        match entry {
            Entry::Field(at) => self.fields[usize::from(at)].kind,
            Entry::Inserted(slot) => self.inserted[usize::from(slot)]
                .as_ref()
                .map_or(Kind::Other, |(_, _, kind)| *kind),
        }
    }

    /// Each entry as the map would list it: its name (see `Name::push_to`), value and
    /// kind.
    pub(in crate::proxy) fn for_each<'a>(&'a self, mut each: impl FnMut(Name<'a>, &'a [u8], Kind)) {
        for &entry in self.entries() {
            let (name, value, kind) = self.entry(entry);
            each(name, value, kind);
        }
    }

    /// The number of entries (as `HeaderMap::len`).
    pub(in crate::proxy) fn len(&self) -> usize {
        self.entries().len()
    }

    /// The value of `name`, as `HeaderMap::get` finds it.
    pub(in crate::proxy) fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        let kind = Kind::of(name.as_str().as_bytes());
        self.position(kind, name)
            .map(|at| self.entry(self.order[at]).1)
    }

    /// The Connection entry's value: none unless some entry is hop-by-hop (the client
    /// drops the upstream's Connection header from the heads it passes).
    pub(in crate::proxy) fn connection(&self) -> Option<&[u8]> {
        if !self.hop_by_hop {
            return None;
        }
        self.get(&header::CONNECTION)
    }

    /// The Content-Length field's value, as its text parses (`response::framing`): the
    /// client parsed it so, and a passed head's Content-Length is never edited.
    pub(in crate::proxy) fn content_length(&self) -> Option<u64> {
        self.length
    }

    /// An entry of `kind`, with a name of `len` bytes, may be among the entries.
    fn note(&mut self, kind: Kind, len: usize) {
        match kind {
            Kind::Other => self.lengths |= length_bit(len),
            kind => self.kinds |= kind.bit(),
        }
    }

    /// Where `name` (of `kind`, `Kind::of` it) is in the order. A name the proxy knows
    /// by its kind (each kind but `Other` is one name, and a passed head has each name
    /// once) is found by it, without comparing names; others by name, length first.
    /// Neither is looked for when no entry has that kind or length.
    fn position(&self, kind: Kind, name: &HeaderName) -> Option<usize> {
        if kind != Kind::Other {
            if self.kinds & kind.bit() == 0 {
                return None;
            }
            return self.entries().iter().position(|&e| self.kind(e) == kind);
        }
        let wanted = name.as_str().as_bytes();
        if self.lengths & length_bit(wanted.len()) == 0 {
            return None;
        }
        self.entries().iter().position(|&entry| match entry {
            Entry::Field(at) => {
                let field = &self.fields[usize::from(at)];
                field.kind == Kind::Other
                    && usize::from(field.name.1) == wanted.len()
                    && self.field_name(field).eq_ignore_ascii_case(wanted)
            }
            Entry::Inserted(slot) => self.inserted[usize::from(slot)]
                .as_ref()
                .is_some_and(|(inserted, _, _)| inserted == name),
        })
    }

    /// As `HeaderMap::insert`: the value replaces the entry of that name in its place, or
    /// goes last. Err (with the pair) when there is no room for another insert: the
    /// caller takes the map (`into_map`) and inserts there.
    pub(in crate::proxy) fn insert(
        &mut self,
        name: HeaderName,
        value: HeaderValue,
    ) -> Result<(), (HeaderName, HeaderValue)> {
        let kind = Kind::of(name.as_str().as_bytes());
        self.insert_of(kind, name, value)
    }

    /// `insert` of a name whose kind the caller knows (`Kind::of` it).
    fn insert_of(
        &mut self,
        kind: Kind,
        name: HeaderName,
        value: HeaderValue,
    ) -> Result<(), (HeaderName, HeaderValue)> {
        debug_assert_eq!(kind, Kind::of(name.as_str().as_bytes()));
        self.hop_by_hop |= matches!(kind, Kind::HopByHop(_) | Kind::Upgrade);
        let slot = match self.position(kind, &name) {
            Some(at) => match self.order[at] {
                Entry::Inserted(slot) => {
                    self.inserted[usize::from(slot)] = Some((name, value, kind));
                    return Ok(());
                }
                Entry::Field(_) => Err(at),
            },
            None => Ok(()),
        };
        let Some(free) = self.inserted.iter().position(Option::is_none) else {
            return Err((name, value));
        };
        self.note(kind, name.as_str().len());
        self.inserted[free] = Some((name, value, kind));
        let entry = Entry::Inserted(free as u8);
        match slot {
            Err(at) => self.order[at] = entry,
            Ok(()) => {
                self.order[usize::from(self.entries)] = entry;
                self.entries += 1;
            }
        }
        Ok(())
    }

    /// As `HeaderMap::remove` of a name with one entry at `at`: the last entry takes its
    /// place.
    fn swap_remove(&mut self, at: usize) {
        let last = usize::from(self.entries) - 1;
        self.order[at] = self.order[last];
        self.entries -= 1;
    }

    /// Strips the hop-by-hop fields exactly as `upstream_head::strip_hop_by_hop` strips
    /// them from a map (the same removals in the same order). Err when the head must
    /// become a map for it (a Connection header naming other headers; never passed).
    pub(in crate::proxy) fn strip_hop_by_hop(&mut self) -> Result<(), ()> {
        if !self.hop_by_hop {
            return Ok(());
        }
        let mut present = 0u8;
        let mut upgrade = false;
        for &entry in self.entries() {
            match self.kind(entry) {
                Kind::HopByHop(index) => present |= 1 << index,
                Kind::Upgrade => upgrade = true,
                _ => {}
            }
        }
        if present == 0 && !upgrade {
            return Ok(());
        }
        if present & 1 != 0 {
            // The client drops a Connection header that names nothing else, and does
            // not pass a head whose Connection does.
            return Err(());
        }
        let te_trailers = self
            .get(&header::TE)
            .is_some_and(|v| v.eq_ignore_ascii_case(b"trailers"));
        if te_trailers && !self.inserted.iter().any(Option::is_none) {
            // No room to put it back: nothing is changed, the map does it.
            return Err(());
        }
        for index in 0..7u8 {
            if present & (1 << index) == 0 {
                continue;
            }
            let at = self
                .entries()
                .iter()
                .position(|&e| self.kind(e) == Kind::HopByHop(index));
            if let Some(at) = at {
                self.swap_remove(at);
            }
        }
        if te_trailers {
            self.insert(header::TE, HeaderValue::from_static("trailers"))
                .map_err(|_| ())?;
        }
        if upgrade
            && let Some(at) = self
                .entries()
                .iter()
                .position(|&e| self.kind(e) == Kind::Upgrade)
        {
            self.swap_remove(at);
        }
        Ok(())
    }

    /// The map the head would have been parsed into, edited as these fields were.
    pub(in crate::proxy) fn into_map(self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.len() + 4);
        for &entry in self.entries() {
            match entry {
                Entry::Field(at) => {
                    let field = &self.fields[usize::from(at)];
                    let value = self
                        .head
                        .slice(usize::from(field.value.0)..)
                        .slice(..usize::from(field.value.1));
                    // httparse admits exactly the names and values the map's types do
                    // (`passed::tests`): neither fails.
                    if let (Ok(name), Ok(value)) = (
                        HeaderName::from_bytes(self.field_name(field)),
                        HeaderValue::from_maybe_shared(value),
                    ) {
                        map.append(name, value);
                    }
                }
                Entry::Inserted(at) => {
                    if let Some((name, value, _)) = &self.inserted[usize::from(at)] {
                        map.append(name.clone(), value.clone());
                    }
                }
            }
        }
        map
    }
}

/// A response's header fields: the map, or (when the upstream's head was passed as it
/// came) the passed fields with an empty map beside them.
pub(in crate::proxy) struct ResponseFields<'a> {
    pub map: &'a mut HeaderMap,
    pub passed: &'a mut Option<Box<PassedFields>>,
}

impl ResponseFields<'_> {
    /// As `HeaderMap::insert`.
    pub(in crate::proxy) fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        match self.passed.as_deref_mut() {
            Some(passed) => {
                if let Err((name, value)) = passed.insert(name, value) {
                    self.whole().insert(name, value);
                }
            }
            None => {
                self.map.insert(name, value);
            }
        }
    }

    /// As `insert`, of a name whose kind the caller knows (`Kind::of` it: the proxy's
    /// own inserts, `server` and the service time, on every answer).
    pub(in crate::proxy) fn insert_of(&mut self, kind: Kind, name: HeaderName, value: HeaderValue) {
        match self.passed.as_deref_mut() {
            Some(passed) => {
                if let Err((name, value)) = passed.insert_of(kind, name, value) {
                    self.whole().insert(name, value);
                }
            }
            None => {
                self.map.insert(name, value);
            }
        }
    }

    /// The whole map: the passed fields (if any) become it.
    pub(in crate::proxy) fn whole(&mut self) -> &mut HeaderMap {
        whole(self.map, self.passed)
    }
}

/// `map` made whole: the passed fields (if any) become it.
pub(in crate::proxy) fn whole<'a>(
    map: &'a mut HeaderMap,
    passed: &mut Option<Box<PassedFields>>,
) -> &'a mut HeaderMap {
    if let Some(passed) = passed.take() {
        // While fields are passed the map holds nothing: every edit went to them.
        debug_assert!(map.is_empty());
        *map = passed.into_map();
    }
    map
}

/// `name`'s value in the passed fields when there are any, else in `map`.
pub(in crate::proxy) fn get<'a>(
    map: &'a HeaderMap,
    passed: Option<&'a PassedFields>,
    name: &HeaderName,
) -> Option<&'a [u8]> {
    match passed {
        Some(passed) => passed.get(name),
        None => map.get(name).map(HeaderValue::as_bytes),
    }
}

/// A value as text, as `HeaderValue::to_str` gives it: visible ASCII (and tabs) only.
pub(in crate::proxy) fn as_text(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

#[cfg(test)]
mod tests;
