//! A request head's fields kept as the client sent them, with the proxy's edits beside
//! them (issue 15: "no per-header allocation on the request path"; the request side of
//! what `passed.rs` does for responses). The codec keeps one copy of the head (names
//! lowercased) and where each field is in it, rather than hashing every name into a
//! `HeaderMap` and making a `HeaderValue` of every value; a plain route (host and path
//! matches, no header rules) then writes the upstream head from the fields with the
//! forwarding edits (`upstream_head.rs`).
//!
//! The upstream must get the same bytes either way, so the fields keep the order the map
//! would have given them: an insert takes the place of the field of its name or goes last,
//! and a removal leaves the last field in the removed one's place (the map's `remove` is a
//! `swap_remove`). Anything that reads headers by name or edits more than that (header
//! matches in routes, authz, CORS, hash policies, request header rules, mirrors, HTTP/2
//! upstreams, hyper's client) takes the whole map first (`whole`), equal to the one the
//! head would have been parsed into, edits included.
//!
//! Only heads whose map keeps one entry per field are kept so: no name twice (a map groups
//! a name's values at its first place), no `x-envoy-*` name (the edge removes some), no
//! Upgrade (its edits are the map's), nothing the Connection header names beyond its
//! standard tokens. Any other head becomes the map at once (`head.rs`).

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::field_line::written_as_a_line;

/// What the codec and the proxy need to know of a request field by its name, found once
/// while parsing (names lowercased).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::proxy) enum Kind {
    Other,
    Host,
    ContentLength,
    ContentType,
    TransferEncoding,
    Connection,
    Expect,
    Upgrade,
    /// The other hop-by-hop names (`upstream_head::HOP_BY_HOP`): keep-alive,
    /// proxy-connection, proxy-authenticate, te, trailer.
    HopByHop,
    /// A name the proxy sets (x-forwarded-for and -proto, XFCC, x-request-id).
    Forwarding,
    /// Starts with `x-envoy-` (`edge_headers::admit` removes some of those).
    EnvoyPrefixed,
}

impl Kind {
    /// `name`, lowercased.
    pub(in crate::proxy) fn of(name: &[u8]) -> Kind {
        // The length first: most names are none of these, and most lengths say so.
        match name.len() {
            2 if name == b"te" => Kind::HopByHop,
            4 if name == b"host" => Kind::Host,
            6 if name == b"expect" => Kind::Expect,
            7 if name == b"upgrade" => Kind::Upgrade,
            7 if name == b"trailer" => Kind::HopByHop,
            10 if name == b"connection" => Kind::Connection,
            10 if name == b"keep-alive" => Kind::HopByHop,
            12 if name == b"content-type" => Kind::ContentType,
            12 if name == b"x-request-id" => Kind::Forwarding,
            14 if name == b"content-length" => Kind::ContentLength,
            15 if name == b"x-forwarded-for" => Kind::Forwarding,
            16 if name == b"proxy-connection" => Kind::HopByHop,
            17 if name == b"transfer-encoding" => Kind::TransferEncoding,
            17 if name == b"x-forwarded-proto" => Kind::Forwarding,
            18 if name == b"proxy-authenticate" => Kind::HopByHop,
            23 if name == b"x-forwarded-client-cert" => Kind::Forwarding,
            8.. if name.starts_with(b"x-envoy-") => Kind::EnvoyPrefixed,
            _ => Kind::Other,
        }
    }

    /// A name the proxy removes or replaces before the request goes upstream.
    pub(in crate::proxy) fn edited(self) -> bool {
        matches!(
            self,
            Kind::Connection
                | Kind::TransferEncoding
                | Kind::HopByHop
                | Kind::Expect
                | Kind::Forwarding
                | Kind::Upgrade
                | Kind::EnvoyPrefixed
        )
    }
}

/// Where a field's name and value are: in the head's copy, or the proxy's.
#[derive(Clone, Copy, Debug)]
pub(in crate::proxy) struct Field {
    name: Name,
    value: Value,
}

#[derive(Clone, Copy, Debug)]
enum Name {
    At(u32, u32),
    Static(&'static str),
}

#[derive(Clone, Copy, Debug)]
enum Value {
    At(u32, u32),
    /// `RequestFields::set`'s entry.
    Set(u32),
}

impl Field {
    /// A field of the head: its name and value as offsets into the head's copy.
    pub(in crate::proxy) fn at(name: (usize, usize), value: (usize, usize)) -> Field {
        // Heads are at most `MAX_HEAD_BYTES` (60 KiB): the offsets fit.
        let at = |(start, end): (usize, usize)| {
            (
                u32::try_from(start).unwrap_or(u32::MAX),
                u32::try_from(end).unwrap_or(u32::MAX),
            )
        };
        let (name_start, name_end) = at(name);
        let (value_start, value_end) = at(value);
        Field {
            name: Name::At(name_start, name_end),
            value: Value::At(value_start, value_end),
        }
    }

    /// Where the name of a field of the head is.
    pub(in crate::proxy) fn name_at(&self) -> Option<(usize, usize)> {
        match self.name {
            Name::At(start, end) => Some((start as usize, end as usize)),
            Name::Static(_) => None,
        }
    }
}

/// A request head's fields as they came, in the map's order, and the proxy's edits.
#[derive(Clone, Debug)]
pub(in crate::proxy) struct RequestFields {
    /// The head (names lowercased) that the fields' offsets point into.
    copy: Bytes,
    fields: Vec<Field>,
    /// Values the proxy set.
    set: Vec<HeaderValue>,
    /// Some field is hop-by-hop or one the proxy edits (else the edits are only appends).
    pub(in crate::proxy) edited: bool,
    /// Where the fields' lines are in `copy` while they are as the codec writes them
    /// (`name: value\r\n`, one after the other) and nothing was edited.
    lines: Option<(u32, u32)>,
    /// A filter on the names among the fields (`name_bit`): a look-up whose bit is clear
    /// skips the scan. Most look-ups are of names a request rarely carries (expect, the
    /// forwarding headers), a scan of every field each.
    names: u64,
}

/// `name`'s bit in `RequestFields::names`, and in the filter by which `head.rs` tells
/// names seen twice: by its length and first and last bytes.
#[inline]
pub(super) fn name_bit(name: &[u8]) -> u64 {
    let (first, last) = (name.first().copied(), name.last().copied());
    let key = name.len() * 7 + usize::from(first.unwrap_or(0)) + usize::from(last.unwrap_or(0));
    1 << (key & 63)
}

/// The hop-by-hop names `strip_hop_by_hop` removes, in the order the map's removals go.
const HOP_BY_HOP_FIELDS: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Headers the proxy adds to a request before it goes upstream (x-forwarded-for and
/// -proto, x-request-id, x-envoy-external-address, a route's few), reserved up front in a
/// map made of the fields.
pub(in crate::proxy) const FORWARDING_HEADERS: usize = 6;

impl RequestFields {
    /// `names`: every field's `name_bit`, or'ed (the parser's filter of names seen twice).
    pub(in crate::proxy) fn new(copy: Bytes, fields: Vec<Field>, edited: bool, names: u64) -> Self {
        let lines = written_as_they_are(&copy, &fields);
        RequestFields {
            copy,
            fields,
            set: Vec::new(),
            edited,
            lines,
            names,
        }
    }

    /// The fields' lines, as the codec would write them, when they are in the head so
    /// and no edit touched them.
    pub(in crate::proxy) fn lines(&self) -> Option<&[u8]> {
        self.lines.map(|span| self.span(span))
    }

    fn span(&self, (start, end): (u32, u32)) -> &[u8] {
        self.copy
            .get(start as usize..end as usize)
            .unwrap_or_default()
    }

    fn name(&self, field: &Field) -> &[u8] {
        match field.name {
            Name::At(start, end) => self.span((start, end)),
            Name::Static(name) => name.as_bytes(),
        }
    }

    fn value(&self, field: &Field) -> &[u8] {
        match field.value {
            Value::At(start, end) => self.span((start, end)),
            Value::Set(index) => self
                .set
                .get(index as usize)
                .map_or(&[][..], HeaderValue::as_bytes),
        }
    }

    /// The fields, name (lowercase) and value, in the map's order.
    pub(in crate::proxy) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.fields
            .iter()
            .map(|field| (self.name(field), self.value(field)))
    }

    pub(in crate::proxy) fn len(&self) -> usize {
        self.fields.len()
    }

    fn position(&self, name: &str) -> Option<usize> {
        if self.names & name_bit(name.as_bytes()) == 0 {
            return None;
        }
        self.fields
            .iter()
            .position(|field| self.name(field) == name.as_bytes())
    }

    /// `name`'s (lowercase) value.
    pub(in crate::proxy) fn get(&self, name: &str) -> Option<&[u8]> {
        self.position(name).map(|at| self.value(&self.fields[at]))
    }

    /// `name`'s value as a header value (a count on the head's copy, no copy).
    pub(in crate::proxy) fn get_value(&self, name: &str) -> Option<HeaderValue> {
        let field = self.fields.get(self.position(name)?)?;
        self.value_of(field)
    }

    fn value_of(&self, field: &Field) -> Option<HeaderValue> {
        match field.value {
            Value::At(start, end) => {
                let shared = self.copy.get(start as usize..end as usize)?;
                // Same bytes httparse admitted, which `HeaderValue` admits too
                // (`passed::tests::httparse_admits_the_bytes_the_map_s_types_admit`).
                HeaderValue::from_maybe_shared(self.copy.slice_ref(shared)).ok()
            }
            Value::Set(index) => self.set.get(index as usize).cloned(),
        }
    }

    /// The map's `insert` of a name none of the fields has twice: the value replaces the
    /// field's, in its place, or goes last.
    pub(in crate::proxy) fn insert(&mut self, name: &'static str, value: HeaderValue) {
        let index = u32::try_from(self.set.len()).unwrap_or(u32::MAX);
        self.set.push(value);
        self.lines = None;
        match self.position(name) {
            Some(at) => self.fields[at].value = Value::Set(index),
            None => {
                self.names |= name_bit(name.as_bytes());
                self.fields.push(Field {
                    name: Name::Static(name),
                    value: Value::Set(index),
                });
            }
        }
    }

    /// The map's `remove`: the last field takes the removed one's place.
    pub(in crate::proxy) fn remove(&mut self, name: &str) -> bool {
        match self.position(name) {
            Some(at) => {
                self.fields.swap_remove(at);
                self.lines = None;
                true
            }
            None => false,
        }
    }

    /// `upstream_head::strip_hop_by_hop` on fields that the Connection header names no
    /// other field in (`head.rs` keeps no others so) and that carry no Upgrade.
    pub(in crate::proxy) fn strip_hop_by_hop(&mut self) {
        // One pass finds where each of them is (a name is here at most once): a look-up
        // per name was a scan of the fields each, eight a `Connection: close` request.
        // The removals then go in the list's order, as the map's `swap_remove`s would.
        let mut at = [None::<usize>; HOP_BY_HOP_FIELDS.len()];
        let mut te_trailers = false;
        for (index, field) in self.fields.iter().enumerate() {
            let name = self.name(field);
            // The kind first: most names are none of these, and their length says so.
            let hop = matches!(
                Kind::of(name),
                Kind::Connection | Kind::HopByHop | Kind::TransferEncoding
            );
            if !hop {
                continue;
            }
            if let Some(which) = HOP_BY_HOP_FIELDS
                .iter()
                .position(|&hop| hop.as_bytes() == name)
            {
                at[which] = Some(index);
                // `TE: trailers` is the one TE value that crosses a proxy: gRPC needs it
                // upstream.
                te_trailers |= name == b"te" && self.value(field).eq_ignore_ascii_case(b"trailers");
            }
        }
        for which in 0..at.len() {
            let Some(index) = at[which] else {
                continue;
            };
            // The last field takes the removed one's place.
            let last = self.fields.len() - 1;
            self.fields.swap_remove(index);
            self.lines = None;
            for later in at.iter_mut().skip(which + 1) {
                if *later == Some(last) {
                    *later = Some(index);
                }
            }
        }
        if te_trailers {
            self.insert("te", HeaderValue::from_static("trailers"));
        }
    }

    /// The map of a head just parsed; None if a name or value is not one the map's types
    /// admit (httparse admits none of those, see `into_map`).
    pub(in crate::proxy) fn into_map_checked(self) -> Option<HeaderMap> {
        let mut map = HeaderMap::with_capacity(self.fields.len() + FORWARDING_HEADERS);
        for field in &self.fields {
            let name = HeaderName::from_bytes(self.name(field)).ok()?;
            map.append(name, self.value_of(field)?);
        }
        Some(map)
    }

    /// The map the head would have been parsed into, with the edits made since.
    pub(in crate::proxy) fn into_map(self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.fields.len() + FORWARDING_HEADERS);
        for field in &self.fields {
            // Names and values httparse admitted, which the map's types admit too: a
            // field neither takes (none) is left out rather than failing the request.
            let name = HeaderName::from_bytes(self.name(field));
            if let (Ok(name), Some(value)) = (name, self.value_of(field)) {
                map.append(name, value);
            }
        }
        map
    }
}

/// The span of `copy` the fields take, when each is `name: value\r\n` (one space, no
/// trailing space) right after the one before: what the codec writes for them.
fn written_as_they_are(copy: &[u8], fields: &[Field]) -> Option<(u32, u32)> {
    let first = fields.first()?;
    let Name::At(start, _) = first.name else {
        return None;
    };
    let mut next = start;
    for field in fields {
        let (Name::At(name_start, name_end), Value::At(value_start, value_end)) =
            (field.name, field.value)
        else {
            return None;
        };
        let value = (value_start as usize, value_end as usize);
        if name_start != next || !written_as_a_line(copy, name_end as usize, value) {
            return None;
        }
        next = value_end + 2;
    }
    Some((start, next))
}

/// `map` made whole: the fields (if any) become it.
pub(in crate::proxy) fn whole<'a>(
    map: &'a mut HeaderMap,
    fields: &mut Option<Box<RequestFields>>,
) -> &'a mut HeaderMap {
    if let Some(fields) = fields.take() {
        // While the fields are kept the map holds nothing: every edit went to them.
        debug_assert!(map.is_empty());
        *map = (*fields).into_map();
    }
    map
}

/// `name`'s value in the fields when there are any, else in `map`.
pub(in crate::proxy) fn get_value(
    map: &HeaderMap,
    fields: Option<&RequestFields>,
    name: &HeaderName,
) -> Option<HeaderValue> {
    match fields {
        Some(fields) => fields.get_value(name.as_str()),
        None => map.get(name).cloned(),
    }
}

#[cfg(test)]
mod tests;
