//! A changed file's unchanged documents are not parsed again. The reload's parse cache
//! ([`super::cache`]) keeps what each YAML document of a file gave; when the file is read
//! again, a document whose text is the same as one of before (its hash, then the text
//! itself) takes that parse, so editing one object of a large multi-document file parses
//! one document.
//!
//! Every location stays exact: a reused document that moved in its file (an earlier
//! document grew or shrank) has its resources', diagnostics' and document map's lines
//! moved by as much. A moved resource keeps its allocation: the compile's route memo
//! knows a VirtualService by it, and keeps a moved one's routes, moving only its
//! diagnostics' lines (`compile::RouteMemo`).

use std::{collections::HashMap, hash::BuildHasher, path::Path, sync::Arc};

use rustc_hash::FxBuildHasher;

use super::{
    Diagnostics, Location, Resources, Sourced, parse_document,
    source::{Document, split_documents},
};

/// What each document of one file gave, in file order.
#[derive(Default)]
pub struct ParsedDocuments(Vec<ParsedDocument>);

struct ParsedDocument {
    hash: u64,
    text: Arc<str>,
    first_line: usize,
    resources: Resources,
    diagnostics: Diagnostics,
}

/// What `config::load_text(file, text)` gives, parsing only the documents whose text is
/// not among `previous`'s; with the documents' parses, for the next time, and how many
/// documents were taken from `previous` rather than parsed.
pub fn load_text_reusing(
    file: &Path,
    text: &str,
    previous: &ParsedDocuments,
) -> (Resources, Diagnostics, ParsedDocuments, usize) {
    let mut by_hash: HashMap<u64, Vec<usize>, FxBuildHasher> = HashMap::default();
    for (index, parsed) in previous.0.iter().enumerate() {
        by_hash.entry(parsed.hash).or_default().push(index);
    }
    let mut taken = vec![false; previous.0.len()];
    let (mut resources, mut diagnostics) = (Resources::default(), Diagnostics::default());
    let mut documents = Vec::new();
    let mut texts = Vec::new();
    let mut reused = 0;
    for document in split_documents(file, text) {
        let hash = hash_of(&document.text);
        let same = by_hash.get(&hash).and_then(|candidates| {
            candidates.iter().copied().find(|&index| {
                !taken[index] && previous.0[index].text.as_ref() == document.text.as_str()
            })
        });
        let parsed = match same {
            Some(index) => {
                taken[index] = true;
                reused += 1;
                previous.0[index].moved_to(document.first_line)
            }
            None => parse(&document, hash),
        };
        resources.extend_from(&parsed.resources);
        texts.extend(
            parsed
                .resources
                .documents
                .iter()
                .map(|(key, text)| (key.clone(), Arc::clone(text))),
        );
        diagnostics.0.extend_from_slice(&parsed.diagnostics.0);
        documents.push(parsed);
    }
    // In file order, so sorted: one bulk build rather than an insertion each.
    resources.documents = texts.into_iter().collect();
    (resources, diagnostics, ParsedDocuments(documents), reused)
}

fn hash_of(text: &str) -> u64 {
    FxBuildHasher.hash_one(text)
}

fn parse(document: &Document, hash: u64) -> ParsedDocument {
    let (mut resources, mut diagnostics) = (Resources::default(), Diagnostics::default());
    parse_document(document, &mut resources, &mut diagnostics);
    // `parse_document` keeps the text for `Resources::locate`; the same allocation
    // serves as the comparison text.
    let text = resources
        .documents
        .get(&(Arc::clone(&document.file), document.first_line))
        .cloned()
        .unwrap_or_else(|| Arc::from(document.text.as_str()));
    ParsedDocument {
        hash,
        text,
        first_line: document.first_line,
        resources,
        diagnostics,
    }
}

impl ParsedDocument {
    /// This parse for the same text starting at `first_line` of the same file.
    fn moved_to(&self, first_line: usize) -> ParsedDocument {
        let mut resources = self.resources.clone();
        let mut diagnostics = self.diagnostics.clone();
        if first_line != self.first_line {
            let shift = |location: &mut Location| {
                // Every location is at or after its document's first line.
                location.line = (location.line + first_line)
                    .saturating_sub(self.first_line)
                    .max(1);
            };
            move_lines(&mut resources, &mut diagnostics, shift);
        }
        ParsedDocument {
            hash: self.hash,
            text: Arc::clone(&self.text),
            first_line,
            resources,
            diagnostics,
        }
    }
}

/// Applies `shift` to every location in one document's parse. Every location there is
/// in the document (`Document::location`), so all move together.
fn move_lines(
    resources: &mut Resources,
    diagnostics: &mut Diagnostics,
    shift: impl Fn(&mut Location),
) {
    fn each<T>(list: &mut [Sourced<T>], shift: &impl Fn(&mut Location)) {
        for sourced in list {
            if let Some(location) = &mut sourced.location {
                shift(location);
            }
        }
    }
    macro_rules! shift_list {
        ($variant:ident, $list:ident) => {
            each(&mut resources.$list, &shift);
        };
    }
    super::for_each_kind!(shift_list);
    resources.documents = std::mem::take(&mut resources.documents)
        .into_iter()
        .map(|((file, line), text)| {
            let mut location = Location { file, line };
            shift(&mut location);
            ((location.file, location.line), text)
        })
        .collect();
    for diagnostic in &mut diagnostics.0 {
        if let Some(location) = &mut diagnostic.location {
            shift(location);
        }
    }
}

impl ParsedDocuments {
    /// The documents' parses that are not in both `self` and `before` with the same text
    /// at the same line: what a reload must count as changed. A document that only moved
    /// counts, before and after, as its resources' locations changed.
    pub fn differences<'a>(
        &'a self,
        before: &'a ParsedDocuments,
    ) -> impl Iterator<Item = (&'a Resources, &'a Diagnostics)> + 'a {
        let only_in = |these: &'a ParsedDocuments, those: &'a ParsedDocuments| {
            let mut at: HashMap<(u64, usize), Vec<&ParsedDocument>, FxBuildHasher> =
                HashMap::default();
            for parsed in &those.0 {
                at.entry((parsed.hash, parsed.first_line))
                    .or_default()
                    .push(parsed);
            }
            these.0.iter().filter(move |parsed| {
                !at.get(&(parsed.hash, parsed.first_line))
                    .is_some_and(|same| same.iter().any(|p| p.text == parsed.text))
            })
        };
        only_in(self, before)
            .chain(only_in(before, self))
            .map(|parsed| (&parsed.resources, &parsed.diagnostics))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, ports: &[u16]) -> String {
        let mut out =
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports:\n");
        for port in ports {
            out.push_str(&format!("  - port: {port}\n"));
        }
        out
    }

    /// A document with a field error (its line is in the diagnostic), one that is not
    /// YAML, a List, and a duplicate of another document.
    fn file_text(first: &str) -> String {
        [
            first.to_owned(),
            service("b", &[81]),
            "apiVersion: v1\nkind: Service\nmetadata: {name: c}\nspec:\n  ports:\n  - port: eighty\n"
                .to_owned(),
            "apiVersion: v1\nkind: Service\nmetadata: {name: d\n".to_owned(),
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: e}\n  spec: {ports: [{port: 82}]}\n"
                .to_owned(),
            service("b", &[81]),
        ]
        .join("---\n")
    }

    fn reload(text: &str, previous: &ParsedDocuments) -> (String, String, ParsedDocuments, usize) {
        let file = Path::new("/srv/config/services.yaml");
        let (resources, diagnostics, documents, reused) = load_text_reusing(file, text, previous);
        let (expected_resources, expected_diagnostics) = super::super::load_text(file, text);
        assert_eq!(
            format!("{resources:?}"),
            format!("{expected_resources:?}"),
            "resources"
        );
        assert_eq!(
            format!("{diagnostics:?}"),
            format!("{expected_diagnostics:?}"),
            "diagnostics"
        );
        (
            format!("{resources:?}"),
            format!("{diagnostics:?}"),
            documents,
            reused,
        )
    }

    #[test]
    fn only_changed_documents_are_parsed_and_every_line_stays_exact() {
        let (_, _, first, reused) = reload(&file_text(&service("a", &[80])), &Default::default());
        assert_eq!(reused, 0);
        // The first document grows by two lines: the five after it are reused, moved.
        let (_, _, second, reused) = reload(&file_text(&service("a", &[80, 8080, 9090])), &first);
        assert_eq!(reused, 5);
        // Shrinks again: moved back up.
        let (_, _, third, reused) = reload(&file_text(&service("a", &[80])), &second);
        assert_eq!(reused, 5);
        // Unchanged: everything reused, nothing counts as changed.
        let (_, _, fourth, reused) = reload(&file_text(&service("a", &[80])), &third);
        assert_eq!(reused, 6);
        assert_eq!(fourth.differences(&third).count(), 0);
        // A change of one document: it counts before and after, and so does every
        // document that moved.
        let (_, _, fifth, _) = reload(&file_text(&service("a", &[80, 81])), &fourth);
        assert_eq!(fifth.differences(&fourth).count(), 2 + 2 * 5);
        let same_length = file_text(&service("z", &[80]));
        let (_, _, sixth, _) = reload(&same_length, &fourth);
        assert_eq!(sixth.differences(&fourth).count(), 2);
    }

    #[test]
    fn a_moved_resource_keeps_its_allocation() {
        let file = Path::new("/srv/config/services.yaml");
        let text = |first: &str| format!("{first}---\n{}", service("b", &[81]));
        let (before, _, documents, _) =
            load_text_reusing(file, &text(&service("a", &[80])), &Default::default());
        let (after, _, _, _) = load_text_reusing(file, &text(&service("a", &[80, 81])), &documents);
        let (b_before, b_after) = (&before.services[1], &after.services[1]);
        assert!(Arc::ptr_eq(&b_before.resource, &b_after.resource));
        let line = |s: &Sourced<_>| s.location.as_ref().map(|l| l.line);
        assert_eq!(line(b_before), Some(8));
        assert_eq!(line(b_after), Some(9));
    }
}
