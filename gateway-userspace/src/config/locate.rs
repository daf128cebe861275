//! Finding the line of a field path (`spec.rules[0].backendRefs[1].port`) in a YAML
//! document's text, so that problems found after parsing (by `compile`) point at the
//! field rather than at the document's first line.
//!
//! Block-style YAML is walked by indentation; where the path continues inside flow style
//! (`{a: 1}`, `[x, y]`) or a multi-line scalar, the deepest line found is returned.

/// 1-based line within `text` of the deepest part of `path` that could be found.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut scope = Scope {
        first: 0,
        end: lines.len(),
        // Inside a list item the first key sits after "- " on the item's own line.
        item_line: None,
    };
    let mut found = None;
    for segment in segments(path) {
        let next = match segment {
            Segment::Key(key) => find_key(&lines, &scope, key),
            Segment::Index(index) => find_item(&lines, &scope, index),
        };
        match next {
            Some((line, inner)) => {
                found = Some(line + 1);
                scope = inner;
            }
            None => break,
        }
    }
    found
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(at) => (&part[..at], &part[at..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let Some(close) = inner.find(']') else { break };
            if let Ok(index) = inner[..close].parse() {
                out.push(Segment::Index(index));
            }
            rest = &inner[close + 1..];
        }
    }
    out
}

/// Lines `first..end` of the document; `item_line` is a list item's line whose content
/// after `- ` belongs to the scope.
struct Scope {
    first: usize,
    end: usize,
    item_line: Option<usize>,
}

/// (indent of the content, content) with a leading `- ` on `item_line` stripped.
fn content(line: &str, strip_dash: bool) -> Option<(usize, &str)> {
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    let mut indent = line.len() - trimmed.len();
    let mut text = trimmed;
    if strip_dash && let Some(rest) = text.strip_prefix('-') {
        let after = rest.trim_start();
        indent += 1 + rest.len() - after.len();
        text = after;
    }
    Some((indent, text))
}

fn scope_lines<'a>(
    lines: &'a [&'a str],
    scope: &Scope,
) -> impl Iterator<Item = (usize, usize, &'a str)> + 'a {
    let item_line = scope.item_line;
    (scope.first..scope.end.min(lines.len())).filter_map(move |n| {
        content(lines[n], Some(n) == item_line).map(|(indent, text)| (n, indent, text))
    })
}

fn find_key(lines: &[&str], scope: &Scope, key: &str) -> Option<(usize, Scope)> {
    let mut entries = scope_lines(lines, scope);
    let (_, key_indent, _) = scope_lines(lines, scope).next()?;
    let (line, _, text) =
        entries.find(|(_, indent, text)| *indent == key_indent && is_key(text, key))?;
    // The value runs until the next line at or left of the key's indent (a sequence may
    // sit at the key's own indent: `key:\n- item`).
    let end = scope_lines(lines, scope)
        .find(|(n, indent, text)| {
            *n > line
                && (*indent < key_indent
                    || (*indent == key_indent && *text != "-" && !text.starts_with("- ")))
        })
        .map_or(scope.end, |(n, _, _)| n);
    let value = after_key(text, key).unwrap_or_default().trim();
    let first = if value.is_empty() || value.starts_with('#') {
        line + 1
    } else {
        // Inline (flow) value: nothing deeper to walk.
        end
    };
    Some((
        line,
        Scope {
            first,
            end,
            item_line: None,
        },
    ))
}

fn is_key(text: &str, key: &str) -> bool {
    after_key(text, key).is_some()
}

/// What follows `key:` on a mapping line (quoted or not), or None when the line is not
/// that key. Slices only at the boundaries `strip_prefix` found, so a key ending in a
/// multi-byte character is safe.
fn after_key<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    text.trim_start_matches(['"', '\''])
        .strip_prefix(key)?
        .trim_start_matches(['"', '\''])
        .strip_prefix(':')
}

fn find_item(lines: &[&str], scope: &Scope, index: usize) -> Option<(usize, Scope)> {
    let items: Vec<(usize, usize)> = scope_lines(lines, scope)
        .filter(|(_, _, text)| *text == "-" || text.starts_with("- "))
        .map(|(n, indent, _)| (n, indent))
        .collect();
    let dash_indent = items.first()?.1;
    let at_level: Vec<usize> = items
        .iter()
        .filter(|(_, indent)| *indent == dash_indent)
        .map(|(n, _)| *n)
        .collect();
    let line = *at_level.get(index)?;
    let end = scope_lines(lines, scope)
        .find(|(n, indent, _)| *n > line && *indent <= dash_indent)
        .map_or(scope.end, |(n, _, _)| n);
    Some((
        line,
        Scope {
            first: line,
            end,
            item_line: Some(line),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::line_of;

    const TEXT: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs:
  - name: gw
  - name: ghost
    sectionName: http
  rules:
  - matches:
    - path: {type: PathPrefix, value: /a}
    backendRefs:
    - name: a
      port: 80
    - {name: b, port: 80}
  - backendRefs:
    # a comment
    - name: c
      namespace: other
      port: 80
";

    #[test]
    fn field_paths_find_their_lines() {
        let cases = [
            ("spec", Some(4)),
            ("spec.parentRefs[1]", Some(7)),
            ("spec.parentRefs[1].sectionName", Some(8)),
            ("spec.rules[0].matches[0].path.value", Some(11)),
            ("spec.rules[0].backendRefs[0].port", Some(14)),
            ("spec.rules[0].backendRefs[1]", Some(15)),
            ("spec.rules[0].backendRefs[1].port", Some(15)),
            ("spec.rules[1].backendRefs[0]", Some(18)),
            ("spec.rules[1].backendRefs[0].namespace", Some(19)),
            ("spec.rules[2]", Some(9)),
            ("metadata.name", Some(3)),
            ("nothing", None),
        ];
        for (path, want) in cases {
            assert_eq!(line_of(TEXT, path), want, "{path}");
        }
    }
}

#[cfg(test)]
mod non_ascii_tests {
    use super::*;

    #[test]
    fn quoted_keys_ending_in_multibyte_characters_are_found_without_panicking() {
        let text = "metadata:\n  labels:\n    \"hé\": 1\n    'ö': {a: 2}\n    plain: 3\n";
        assert_eq!(line_of(text, "metadata.labels.hé"), Some(3));
        assert_eq!(line_of(text, "metadata.labels.ö"), Some(4));
        assert_eq!(line_of(text, "metadata.labels.plain"), Some(5));
        // Not a key there: the deepest line found is the parent mapping.
        assert_eq!(line_of(text, "metadata.labels.h"), Some(2));
    }
}
