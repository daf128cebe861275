//! Credentials across reloads. A Secret or certificate file that an update breaks (bad
//! PEM, a key that does not match) must not take its host offline: the server keeps the
//! last version that loaded, and the failure is logged, counted and reported. A
//! credential that never loaded is reported as loudly, since its host is not served.
//!
//! A compile reads the versions remembered by the last *applied* compile and stages what
//! it loaded; the reload commits that once the snapshot is live, so a refused
//! configuration changes nothing that is remembered.

use std::{
    collections::HashMap,
    io::Read,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
};

use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use thiserror::Error;
use x509_parser::{certificate::X509Certificate, prelude::FromDer};

use crate::config::Diagnostic;

/// Certificate, key and CA files are read up to this size: real bundles (a whole public
/// CA store included) are a few hundred KiB, and `/dev/zero` must not eat the memory.
pub const MAX_CREDENTIAL_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Error)]
pub enum FileError {
    #[error("{path}: not a regular file")]
    NotRegular { path: String },
    #[error("{path}: larger than {limit} bytes, too large for a certificate, key or CA file")]
    TooLarge { path: String, limit: u64 },
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A credential file's bytes: regular files only (a FIFO or device would block or never
/// end), at most [`MAX_CREDENTIAL_FILE_BYTES`].
pub fn read_capped(path: &Path) -> Result<Vec<u8>, FileError> {
    let shown = || path.display().to_string();
    let io = |source| FileError::Io {
        path: shown(),
        source,
    };
    // Kubernetes mounts Secret files as symlinks into `..data`: follow them.
    let metadata = std::fs::metadata(path).map_err(io)?;
    if !metadata.is_file() {
        return Err(FileError::NotRegular { path: shown() });
    }
    if metadata.len() > MAX_CREDENTIAL_FILE_BYTES {
        return Err(FileError::TooLarge {
            path: shown(),
            limit: MAX_CREDENTIAL_FILE_BYTES,
        });
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        // The file may grow between the check and the read.
        .take(MAX_CREDENTIAL_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_CREDENTIAL_FILE_BYTES {
        return Err(FileError::TooLarge {
            path: shown(),
            limit: MAX_CREDENTIAL_FILE_BYTES,
        });
    }
    Ok(bytes)
}

/// What a credential source yields.
#[derive(Clone, Debug)]
pub enum Credential {
    /// A certificate chain with its key.
    Served(Arc<CertifiedKey>),
    /// Client CA certificates.
    ClientCa(Vec<CertificateDer<'static>>),
}

impl Credential {
    /// Subject, serial and expiry of the leaf (or first CA), for logs and reports.
    pub fn describe(&self) -> String {
        let first = match self {
            Credential::Served(key) => key.cert.first(),
            Credential::ClientCa(roots) => roots.first(),
        };
        first.map_or_else(String::new, describe_certificate)
    }
}

/// `subject CN=…, serial 01:…, not after …`; empty when the certificate does not parse.
pub fn describe_certificate(cert: &CertificateDer<'_>) -> String {
    match X509Certificate::from_der(cert.as_ref()) {
        Ok((_, parsed)) => format!(
            "subject {}, serial {}, not after {}",
            parsed.subject(),
            parsed.raw_serial_as_string(),
            parsed.validity().not_after
        ),
        Err(_) => String::new(),
    }
}

/// A credential that did not load in a compile.
#[derive(Clone, Debug)]
pub struct CredentialProblem {
    /// `Secret namespace/name`, `Secret namespace/name (client CA)`, `file PATH`.
    pub credential: String,
    /// The server it is for, `Gateway namespace/name spec.servers[i]`.
    pub server: String,
    /// Why it did not load; never quotes the credential's contents.
    pub error: String,
    /// The last good version still serves (its description); None: the server is not
    /// served.
    pub kept: Option<String>,
    /// The diagnostic that says so, which the daemon logs at error level.
    pub diagnostic: Diagnostic,
}

/// What one compile found about every credential it read.
#[derive(Clone, Debug, Default)]
pub struct CredentialReport {
    /// Credentials whose current version loaded.
    pub loaded: Vec<String>,
    pub problems: Vec<CredentialProblem>,
    /// The files credentials were read from (certificates, keys, CAs), watched so that
    /// a rotated file reloads without `--watch` or SIGHUP.
    pub files: Vec<std::path::PathBuf>,
}

impl CredentialReport {
    /// Whether a diagnostic of the compile is one of these problems (its location may
    /// have been refined since).
    pub fn is_problem(&self, diagnostic: &Diagnostic) -> bool {
        self.problems.iter().any(|p| {
            p.diagnostic.message == diagnostic.message
                && p.diagnostic.resource == diagnostic.resource
                && p.diagnostic.field == diagnostic.field
        })
    }

    /// Each failing credential once (several servers may share one).
    pub fn failing(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .problems
            .iter()
            .map(|p| p.credential.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// The last good version of every credential the live snapshot uses.
#[derive(Default)]
pub struct CredentialMemory {
    committed: Mutex<HashMap<String, Credential>>,
    staged: Mutex<Option<(HashMap<String, Credential>, CredentialReport)>>,
    /// The credential files the latest compile read (applied or not).
    files: Mutex<Vec<std::path::PathBuf>>,
}

impl CredentialMemory {
    /// The version the live configuration was built with.
    pub fn last_good(&self, credential: &str) -> Option<Credential> {
        self.committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(credential)
            .cloned()
    }

    /// What a compile used; replaces an earlier compile's that was never applied.
    pub fn stage(&self, used: HashMap<String, Credential>, report: CredentialReport) {
        let mut files = report.files.clone();
        files.sort_unstable();
        files.dedup();
        *self.files.lock().unwrap_or_else(PoisonError::into_inner) = files;
        *self.staged.lock().unwrap_or_else(PoisonError::into_inner) = Some((used, report));
    }

    /// The files the latest compile read credentials from, for the reload loop to watch.
    pub fn files(&self) -> Vec<std::path::PathBuf> {
        self.files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The staged compile's report, before it is applied.
    pub fn staged_report(&self) -> CredentialReport {
        self.staged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(_, report)| report.clone())
            .unwrap_or_default()
    }

    /// The staged compile is live: what it used becomes the last good versions (credentials
    /// it no longer uses are forgotten). Returns its report.
    pub fn commit(&self) -> CredentialReport {
        let staged = self
            .staged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some((used, report)) = staged else {
            return CredentialReport::default();
        };
        *self
            .committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = used;
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_huge_files_are_refused_without_reading_them() {
        let zero = read_capped(Path::new("/dev/zero"));
        assert!(
            matches!(zero, Err(FileError::NotRegular { .. })),
            "{zero:?}"
        );
        let dir = std::env::temp_dir().join(format!("gatewayd-capped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let big = dir.join("big.pem");
        let file = std::fs::File::create(&big).expect("create");
        file.set_len(MAX_CREDENTIAL_FILE_BYTES + 1).expect("grow");
        let error = read_capped(&big).map(|b| b.len());
        assert!(
            matches!(error, Err(FileError::TooLarge { .. })),
            "{error:?}"
        );
        std::fs::write(&big, "small").expect("write");
        assert_eq!(read_capped(&big).ok(), Some(b"small".to_vec()));
        let missing = read_capped(&dir.join("missing.pem"));
        assert!(matches!(missing, Err(FileError::Io { .. })), "{missing:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_an_applied_compile_changes_the_last_good_versions() {
        let memory = CredentialMemory::default();
        let ca = Credential::ClientCa(vec![CertificateDer::from(vec![1, 2, 3])]);
        memory.stage(
            HashMap::from([("Secret a/b".to_owned(), ca)]),
            CredentialReport::default(),
        );
        assert!(memory.last_good("Secret a/b").is_none());
        memory.commit();
        assert!(memory.last_good("Secret a/b").is_some());
        // A later compile that no longer uses it, then applied: forgotten.
        memory.stage(HashMap::new(), CredentialReport::default());
        assert!(memory.last_good("Secret a/b").is_some());
        memory.commit();
        assert!(memory.last_good("Secret a/b").is_none());
    }
}
