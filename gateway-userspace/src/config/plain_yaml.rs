//! A fast reader for the plain YAML most configuration is written in: block mappings
//! and sequences, one-line flow collections, one-line plain and quoted scalars, and
//! comments. serde_yaml spends about 800 instructions a byte on such a document (libyaml's
//! events, each kept with its marks and copied, then the `Value`): a VirtualService of
//! 100 routes took about 2 ms of a reload's CPU. This builds the same `serde_yaml::Value`
//! directly, about ten times faster.
//!
//! It gives up (`None`) on anything outside that subset or anything it is not sure of:
//! anchors, aliases, tags, block scalars, multi-line scalars or flow collections, tabs,
//! escapes, duplicate keys, plain scalars that might be numbers other than plain decimal
//! integers, and every error. The caller then parses the document with serde_yaml as
//! before, so errors, their lines, and every reading of the YAML stay serde_yaml's: what
//! this returns is what `serde_yaml::from_str::<Value>` returns, or nothing
//! (`tests::reads_what_serde_yaml_reads` holds it to that).

use serde_yaml::{Mapping, Number, Value};

/// Deeper than this, serde_yaml's own recursion limit (128) is left to say what happens.
const MAX_DEPTH: usize = 100;

/// `text` read as `serde_yaml::from_str::<Value>` would, when it is plain enough.
pub(super) fn parse(text: &str) -> Option<Value> {
    let mut lines = lines(text)?;
    if lines.is_empty() {
        return None;
    }
    let mut reader = Reader {
        lines: &mut lines,
        at: 0,
    };
    let first = reader.lines.first()?.indent;
    let value = reader.block(first, 0)?;
    // The whole document, and a mapping: anything else is rare enough for serde_yaml.
    (reader.at == reader.lines.len() && value.is_mapping()).then_some(value)
}

/// A line's content after its indentation, comments and trailing spaces taken off.
struct Line<'a> {
    indent: usize,
    text: &'a str,
}

/// The lines that hold something; `None` on anything this reader does not take.
fn lines(text: &str) -> Option<Vec<Line<'_>>> {
    let mut out = Vec::new();
    for line in text.lines() {
        if !line.chars().all(plain_char) || line.starts_with("---") || line.starts_with("...") {
            return None;
        }
        let content = line.trim_start_matches(' ');
        let indent = line.len() - content.len();
        let content = strip_comment(content)?.trim_end_matches(' ');
        if content.is_empty() {
            continue;
        }
        if content.starts_with('%') {
            return None;
        }
        out.push(Line {
            indent,
            text: content,
        });
    }
    Some(out)
}

/// Whether `c` is a character libyaml reads as text: not a tab (this reader does not
/// take them), not a line break other than `\n` (`\r`, NEL, LS, PS) nor a character it
/// refuses (controls, the byte-order mark, non-characters).
fn plain_char(c: char) -> bool {
    matches!(c, ' '..='~')
        || (c >= '\u{a0}'
            && !matches!(
                c,
                '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
            ))
}

/// `content` without a trailing comment. A `#` after a space starts one; on a line with
/// quotes, where a `#` might be inside a quoted scalar, the reader gives up.
fn strip_comment(content: &str) -> Option<&str> {
    if content.starts_with('#') {
        return Some("");
    }
    match find_pair(content, b' ', b'#') {
        None => Some(content),
        Some(_) if content.contains(['"', '\'']) => None,
        Some(at) => Some(&content[..at]),
    }
}

struct Reader<'l, 'a> {
    lines: &'l mut Vec<Line<'a>>,
    at: usize,
}

impl<'a> Reader<'_, 'a> {
    fn indent(&self) -> Option<usize> {
        self.lines.get(self.at).map(|l| l.indent)
    }

    /// The node starting at the current line, which is at `indent`.
    fn block(&mut self, indent: usize, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        let text = self.lines.get(self.at)?.text;
        if is_item(text) {
            return self.sequence(indent, depth);
        }
        if entry(text)?.is_some() {
            return self.mapping(indent, depth);
        }
        // A scalar or flow collection alone on its line: nothing may continue it.
        self.at += 1;
        let value = inline(text, depth)?;
        self.ends_node(indent)?;
        Some(value)
    }

    /// After a one-line node that started at `indent`: the next line must not be deeper
    /// (a continuation of a multi-line scalar, or an error).
    fn ends_node(&self, indent: usize) -> Option<()> {
        match self.indent() {
            Some(next) if next >= indent => None,
            _ => Some(()),
        }
    }

    fn sequence(&mut self, indent: usize, depth: usize) -> Option<Value> {
        let mut items = Vec::new();
        while let Some(line) = self.lines.get(self.at) {
            if line.indent < indent || (line.indent == indent && !is_item(line.text)) {
                break;
            }
            if line.indent > indent {
                return None;
            }
            let rest = line.text.get(1..)?;
            let after = rest.trim_start_matches(' ');
            if after.is_empty() {
                // `-` alone: the item is on the lines below, or null.
                self.at += 1;
                items.push(self.nested(indent, depth)?);
                continue;
            }
            if is_item(after) {
                return None;
            }
            let column = indent + 1 + rest.len() - after.len();
            if entry(after)?.is_some() {
                // `- key: value`: a mapping whose keys sit at the column after `- `.
                if let Some(line) = self.lines.get_mut(self.at) {
                    *line = Line {
                        indent: column,
                        text: after,
                    };
                }
                items.push(self.mapping(column, depth + 1)?);
                continue;
            }
            self.at += 1;
            items.push(inline(after, depth + 1)?);
            self.ends_node(indent + 1)?;
        }
        Some(Value::Sequence(items))
    }

    /// The value of a key or `-` that had nothing after it on its line: a deeper block,
    /// or (after a key) a sequence at the key's own indent, or null.
    fn nested(&mut self, indent: usize, depth: usize) -> Option<Value> {
        match self.indent() {
            Some(next) if next > indent => self.block(next, depth + 1),
            _ => Some(Value::Null),
        }
    }

    fn mapping(&mut self, indent: usize, depth: usize) -> Option<Value> {
        let mut mapping = Mapping::new();
        while let Some(line) = self.lines.get(self.at) {
            if line.indent < indent {
                break;
            }
            if line.indent > indent {
                return None;
            }
            let (key, value) = entry(line.text)??;
            let key = scalar(key)?;
            self.at += 1;
            let value = if value.is_empty() {
                match self.lines.get(self.at) {
                    Some(next) if next.indent == indent && is_item(next.text) => {
                        self.sequence(indent, depth + 1)?
                    }
                    _ => self.nested(indent, depth)?,
                }
            } else {
                let value = inline(value, depth + 1)?;
                self.ends_node(indent + 1)?;
                value
            };
            if mapping.insert(key, value).is_some() {
                // serde_yaml refuses duplicate keys: its error says where.
                return None;
            }
        }
        Some(Value::Mapping(mapping))
    }
}

/// Whether a line is a block sequence item (`- x`, or `-` alone).
fn is_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// A block mapping entry's key and value text: `Some(None)` when the line is no entry,
/// `None` when it might be one this reader does not take.
fn entry(text: &str) -> Option<Option<(&str, &str)>> {
    if text.starts_with(['"', '\'']) {
        let (key, rest) = quoted_prefix(text)?;
        let rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            return Some(None);
        }
        return match rest.strip_prefix(':') {
            Some(value) if value.is_empty() || value.starts_with(' ') => {
                Some(Some((key, value.trim_start_matches(' '))))
            }
            _ => None,
        };
    }
    if text.starts_with(['[', '{']) {
        return Some(None);
    }
    let (key, value) = match find_pair(text, b':', b' ') {
        Some(at) => (&text[..at], &text[at + 2..]),
        None => match text.strip_suffix(':') {
            Some(key) => (key, ""),
            None => return Some(None),
        },
    };
    let key = key.trim_end_matches(' ');
    if key.is_empty() || key.ends_with(':') {
        return None;
    }
    Some(Some((key, value.trim_start_matches(' '))))
}

/// Where `first` followed by `second` is in `text` (`str::find` with a pattern of two
/// bytes costs a searcher's set-up on every line).
fn find_pair(text: &str, first: u8, second: u8) -> Option<usize> {
    let bytes = text.as_bytes();
    bytes
        .windows(2)
        .position(|pair| pair[0] == first && pair[1] == second)
}

/// A quoted scalar at the start of `text` (with its quotes) and what follows it.
fn quoted_prefix(text: &str) -> Option<(&str, &str)> {
    let quote = text.chars().next()?;
    let mut end = None;
    let bytes = text.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quote == '"' => return None,
            b'\'' if quote == '\'' && bytes.get(i + 1) == Some(&b'\'') => i += 2,
            byte if byte == quote as u8 => {
                end = Some(i);
                break;
            }
            _ => i += 1,
        }
    }
    let end = end?;
    Some((&text[..=end], &text[end + 1..]))
}

/// A scalar or flow collection that is the rest of a line.
fn inline(text: &str, depth: usize) -> Option<Value> {
    if text.starts_with(['[', '{']) {
        let mut flow = Flow { text, at: 0 };
        let value = flow.node(depth)?;
        flow.spaces();
        return (flow.at == text.len()).then_some(value);
    }
    if text.starts_with(['"', '\'']) {
        let (quoted, rest) = quoted_prefix(text)?;
        return rest.is_empty().then(|| scalar(quoted)).flatten();
    }
    // `a: b: c` is an error, `a: b:` too.
    if find_pair(text, b':', b' ').is_some() || text.ends_with(':') {
        return None;
    }
    scalar(text)
}

/// A one-line flow collection (`[a, {b: c}]`), read from `at`.
struct Flow<'a> {
    text: &'a str,
    at: usize,
}

impl Flow<'_> {
    fn spaces(&mut self) {
        let rest = &self.text[self.at..];
        self.at += rest.len() - rest.trim_start_matches(' ').len();
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.text.as_bytes().get(self.at) == Some(&byte);
        if found {
            self.at += 1;
        }
        found
    }

    fn node(&mut self, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.spaces();
        if self.eat(b'[') {
            let mut items = Vec::new();
            self.spaces();
            if self.eat(b']') {
                return Some(Value::Sequence(items));
            }
            loop {
                let start = self.at;
                let item = self.node(depth + 1)?;
                self.spaces();
                // `[a: b]` is a mapping of one pair in YAML: not taken here.
                if self.text.as_bytes().get(self.at) == Some(&b':') || self.at == start {
                    return None;
                }
                items.push(item);
                if self.eat(b']') {
                    return Some(Value::Sequence(items));
                }
                if !self.eat(b',') {
                    return None;
                }
                self.spaces();
                // A trailing comma: libyaml takes it, this reader leaves it to serde_yaml.
                if self.text.as_bytes().get(self.at) == Some(&b']') {
                    return None;
                }
            }
        }
        if self.eat(b'{') {
            let mut mapping = Mapping::new();
            self.spaces();
            if self.eat(b'}') {
                return Some(Value::Mapping(mapping));
            }
            loop {
                self.spaces();
                let key = self.scalar()?;
                self.spaces();
                if !self.eat(b':') {
                    return None;
                }
                // After a plain key the `:` must be followed by a space.
                if !self.text[self.at..].starts_with(' ') {
                    return None;
                }
                self.spaces();
                if self.text[self.at..].starts_with([',', '}']) {
                    return None;
                }
                let value = self.node(depth + 1)?;
                if mapping.insert(key, value).is_some() {
                    return None;
                }
                self.spaces();
                if self.eat(b'}') {
                    return Some(Value::Mapping(mapping));
                }
                if !self.eat(b',') {
                    return None;
                }
                self.spaces();
                if self.text.as_bytes().get(self.at) == Some(&b'}') {
                    return None;
                }
            }
        }
        self.scalar()
    }

    /// A plain or quoted scalar inside a flow collection.
    fn scalar(&mut self) -> Option<Value> {
        let rest = &self.text[self.at..];
        if rest.starts_with(['"', '\'']) {
            let (quoted, _) = quoted_prefix(rest)?;
            self.at += quoted.len();
            return scalar(quoted);
        }
        // A plain scalar ends at a flow indicator or at `: `.
        let mut end = rest.len();
        for (i, byte) in rest.bytes().enumerate() {
            match byte {
                b',' | b'[' | b']' | b'{' | b'}' => {
                    end = i;
                    break;
                }
                b':' if matches!(
                    rest.as_bytes().get(i + 1),
                    None | Some(b' ' | b',' | b'}' | b']')
                ) =>
                {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let plain = rest[..end].trim_end_matches(' ');
        self.at += plain.len();
        if plain.is_empty() {
            return None;
        }
        scalar(plain)
    }
}

/// A scalar's value: a quoted one is its text; a plain one is null, a bool, a decimal
/// integer or a string as serde_yaml reads it; `None` for anything else (other numbers,
/// indicators, escapes).
fn scalar(text: &str) -> Option<Value> {
    if let Some(inner) = text.strip_prefix('\'') {
        return Some(Value::String(inner.strip_suffix('\'')?.replace("''", "'")));
    }
    if let Some(inner) = text.strip_prefix('"') {
        let inner = inner.strip_suffix('"')?;
        return (!inner.contains('\\')).then(|| Value::String(inner.to_owned()));
    }
    let first = *text.as_bytes().first()?;
    match first {
        // Indicators: anchors, aliases, tags, block scalars, reserved, keys, sequences.
        b'&' | b'*' | b'!' | b'|' | b'>' | b'%' | b'@' | b'`' | b'?' | b'-' | b',' | b'['
        | b']' | b'{' | b'}' | b'#' | b'"' | b'\'' | b':' => None,
        // Numbers other than a plain decimal integer are left to serde_yaml's rules
        // (hex, octal, floats, `+1`, `.inf`, leading zeros that make a string).
        b'+' | b'.' => None,
        b'0'..=b'9' => {
            let decimal =
                text.bytes().all(|b| b.is_ascii_digit()) && (text.len() == 1 || first != b'0');
            if !decimal {
                return None;
            }
            text.parse::<u64>()
                .ok()
                .map(|n| Value::Number(Number::from(n)))
        }
        _ => Some(match text {
            "null" | "Null" | "NULL" | "~" => Value::Null,
            "true" | "True" | "TRUE" => Value::Bool(true),
            "false" | "False" | "FALSE" => Value::Bool(false),
            // Starting with a letter or other text, it is no number (Rust's float parser
            // takes `inf` and `nan`, which serde_yaml does not keep: they are not finite).
            _ => Value::String(text.to_owned()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every document this reader takes reads as serde_yaml reads it.
    fn same(text: &str) -> bool {
        match parse(text) {
            Some(value) => {
                let expected: Value = serde_yaml::from_str(text)
                    .unwrap_or_else(|e| panic!("taken, but serde_yaml says {e}:\n{text}"));
                assert_eq!(value, expected, "{text}");
                true
            }
            None => false,
        }
    }

    #[test]
    fn reads_what_serde_yaml_reads() {
        let taken = [
            "a: 1\nb: [x, {y: 2, z: 'q''s'}]\nc:\n- d: e\n  f: \"g: h#\"\n- i\n-\n  j: k\nl:\n  m: null\n  n: True\n",
            "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns} # comment\n# comment\nspec:\n  ports:\n  - port: 80\n    name: http\n",
            "a:\n  b\nc: it's\nd: http://x:80/y\ne: 0\nf: ~\ng:\nh: x y  z\n\"i\": j\n80: k\n",
            "a:\n-   b: 1\n    c: 2\n- []\n- {}\n",
            "a: [\"x\", 'y', z w]\nb: {\"c\": d}\n",
            "a:\n- 'x'\n- \"y\"\n- \u{e9}t\u{e9}\u{a0}\n",
        ];
        for text in taken {
            assert!(same(text), "not taken:\n{text}");
        }
        // Left to serde_yaml: errors (with their lines) and what this reader does not
        // read, including every number that is not a plain decimal integer.
        let left = [
            "a: &x 1\nb: *x\n",
            "a: !tag x\n",
            "a: |\n  x\n",
            "a: b\n  c\n",
            "a: 1\na: 2\n",
            "a: [1,\n  2]\n",
            "a: 0x10\n",
            "a: 010\n",
            "a: 1.5\n",
            "a: -1\n",
            "a: .inf\n",
            "a: \"x\\ty\"\n",
            "a:\n    b: 1\n  c: 2\n",
            "a: b: c\n",
            "- a\n",
            "a: [b: c]\n",
            "a: [b, ]\n",
            "a: {b}\n",
            "a: 'x' # 'y'\n",
            "a: b\rc: d\n",
            "a: \u{85}b\n",
            "a: b\u{1}\n",
            "a:: b\n",
            "a:\tb\n",
            "a: 99999999999999999999\n",
            "a: - b\n",
            "{\"a\": 1,\n \"b\": 2}\n",
            "",
            "# only a comment\n",
        ];
        for text in left {
            assert!(!same(text), "taken:\n{text}");
        }
    }

    /// Every YAML file of the repository (examples, fuzz seeds, test configurations),
    /// document by document: what this reader takes, it reads as serde_yaml does, and it
    /// takes most of them.
    #[test]
    fn reads_the_repository_s_yaml_as_serde_yaml_does() -> Result<(), Box<dyn std::error::Error>> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        for dir in ["config", "fuzz/seeds", "examples", "tests", "docs"] {
            collect(&root.join(dir), &mut files);
        }
        let (mut documents, mut taken) = (0, 0);
        for file in files {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            for document in crate::config::source::split_documents(&file, &text) {
                documents += 1;
                if same(&document.text) {
                    taken += 1;
                }
            }
        }
        assert!(documents > 40, "{documents} documents");
        assert!(taken * 2 > documents, "{taken} of {documents} taken");
        Ok(())
    }

    /// Small edits of the repository's documents with YAML's special characters: each
    /// one this reader takes, it reads as serde_yaml does (most such edits are errors or
    /// other readings it must leave alone).
    #[test]
    fn edited_documents_are_read_as_serde_yaml_reads_them_or_left_to_it() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        collect(&root.join("config"), &mut files);
        const SPECIAL: &[u8] = b" :-#'\"[]{},\n0.!&*|>?~\\";
        // A fixed sequence (xorshift): the same edits every run.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut taken = 0;
        for file in files {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            for document in crate::config::source::split_documents(&file, &text) {
                let bytes = document.text.as_bytes();
                for _ in 0..60 {
                    let mut edited = bytes.to_vec();
                    let at = (next() % bytes.len() as u64) as usize;
                    let byte = SPECIAL[(next() % SPECIAL.len() as u64) as usize];
                    match next() % 3 {
                        0 => edited[at] = byte,
                        1 => edited.insert(at, byte),
                        _ => {
                            edited.remove(at);
                        }
                    }
                    if let Ok(edited) = String::from_utf8(edited)
                        && same(&edited)
                    {
                        taken += 1;
                    }
                }
            }
        }
        assert!(taken > 100, "{taken} edits taken");
    }

    fn collect(dir: &std::path::Path, files: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                collect(&path, files);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
}
