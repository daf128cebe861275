//! Reading the paths users give: files and directories (recursively), split into YAML
//! documents that remember the file and line they start at.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use thiserror::Error;

use super::diagnostics::Location;

/// One YAML document of a (possibly multi-document) file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    pub file: Arc<Path>,
    /// 1-based line of the document's first line in `file`.
    pub first_line: usize,
    pub text: String,
}

impl Document {
    /// Where a line of this document (1-based, relative to the document) is in its file.
    /// Lines past the end (parsers report "unexpected end" there) point at the last line.
    pub fn location(&self, line_in_document: usize) -> Location {
        let line = line_in_document.clamp(1, self.text.lines().count().max(1));
        Location {
            file: Arc::clone(&self.file),
            line: self.first_line + line - 1,
        }
    }
}

#[derive(Debug, Error)]
pub enum SourceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a file or directory")]
    NotAFile { path: PathBuf },
}

/// Files in a directory that are read as configuration.
const CONFIG_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Reads every configuration document under `paths`, in a stable order (the order given,
/// then file names sorted), so that "oldest first" ties break the same way every load.
pub fn read_documents(paths: &[PathBuf]) -> Result<Vec<Document>, SourceError> {
    let files = config_files(paths)?;
    let mut documents = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).map_err(|source| SourceError::Io {
            path: file.clone(),
            source,
        })?;
        documents.extend(split_documents(&file, &text));
    }
    Ok(documents)
}

/// Whether a file inside a configuration directory is read as configuration.
pub fn is_config_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| CONFIG_EXTENSIONS.contains(&e))
}

/// The files a load of `paths` reads, in the order it reads them.
pub fn config_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, SourceError> {
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, true, &mut files)?;
    }
    Ok(files)
}

fn collect_files(path: &Path, given: bool, files: &mut Vec<PathBuf>) -> Result<(), SourceError> {
    let metadata = fs::metadata(path).map_err(|source| SourceError::Io {
        path: path.to_owned(),
        source,
    })?;
    if metadata.is_file() {
        let wanted = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| CONFIG_EXTENSIONS.contains(&e));
        // A file named on the command line is read whatever its name; inside a
        // directory only configuration files are.
        if given || wanted {
            files.push(path.to_owned());
        }
        return Ok(());
    }
    if !metadata.is_dir() {
        return Err(SourceError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mut entries = fs::read_dir(path)
        .map_err(|source| SourceError::Io {
            path: path.to_owned(),
            source,
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| SourceError::Io {
            path: path.to_owned(),
            source,
        })?;
    // By name: the entries share their parent (and comparing names is far cheaper than
    // comparing paths component by component, which matters at thousands of files).
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        // Hidden entries are skipped: Kubernetes volume mounts keep every file twice,
        // once behind the `..data` symlink and once as a visible link into it.
        let hidden = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        let path = entry.path();
        // The directory listing already says what a plain file is; links and the rest
        // are looked at in full.
        match entry.file_type() {
            Ok(kind) if kind.is_file() => {
                if is_config_file(&path) {
                    files.push(path);
                }
            }
            _ => collect_files(&path, false, files)?,
        }
    }
    Ok(())
}

/// Splits a YAML stream on `---` separator lines. Documents that hold nothing but blank
/// lines and comments are dropped.
pub fn split_documents(file: &Path, text: &str) -> Vec<Document> {
    let file: Arc<Path> = Arc::from(file);
    let file = &file;
    let mut documents = Vec::new();
    let mut current = String::new();
    let mut first_line = 1;
    for (index, line) in text.lines().enumerate() {
        if is_separator(line) {
            push_document(
                file,
                first_line,
                std::mem::take(&mut current),
                &mut documents,
            );
            first_line = index + 2;
            // `--- ` may carry content on the same line (`--- {}`); keep it.
            let rest = line.trim_start_matches("---").trim();
            if !rest.is_empty() {
                first_line = index + 1;
                current.push_str(rest);
                current.push('\n');
            }
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    push_document(file, first_line, current, &mut documents);
    documents
}

fn is_separator(line: &str) -> bool {
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t") || line == "..."
}

fn push_document(file: &Arc<Path>, first_line: usize, text: String, documents: &mut Vec<Document>) {
    let has_content = text.lines().any(|l| {
        let l = l.trim();
        !l.is_empty() && !l.starts_with('#')
    });
    if has_content {
        documents.push(Document {
            file: Arc::clone(file),
            first_line,
            text,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_remember_their_first_line() {
        let text = "# leading comment\na: 1\n---\n\nb: 2\n--- \n# only a comment\n---\nc: 3\n";
        let docs = split_documents(Path::new("x.yaml"), text);
        let starts: Vec<_> = docs
            .iter()
            .map(|d| (d.first_line, d.text.trim().to_owned()))
            .collect();
        assert_eq!(
            starts,
            vec![
                (1, "# leading comment\na: 1".to_owned()),
                (4, "b: 2".to_owned()),
                (9, "c: 3".to_owned())
            ]
        );
        assert_eq!(docs[1].location(2).line, 5);
    }

    #[test]
    fn directories_are_read_recursively_skipping_hidden_entries()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("gatewayd-source-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("nested"))?;
        fs::create_dir_all(dir.join("..data"))?;
        fs::write(dir.join("a.yaml"), "a: 1\n")?;
        fs::write(dir.join("nested/b.yml"), "b: 1\n---\nc: 1\n")?;
        fs::write(dir.join("..data/a.yaml"), "hidden: 1\n")?;
        fs::write(dir.join("README.md"), "not config\n")?;
        let docs = read_documents(std::slice::from_ref(&dir))?;
        let texts: Vec<_> = docs.iter().map(|d| d.text.trim()).collect();
        assert_eq!(texts, ["a: 1", "b: 1", "c: 1"]);
        fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
