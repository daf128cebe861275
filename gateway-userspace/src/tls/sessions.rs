//! Where resumed sessions may come from. rustls resumes any session its ticket key can
//! decrypt (or its session cache holds) as long as the SNI and suite match; it does not
//! ask whether the configuration that issued it had the same client-certificate policy.
//! One ticket key for every server let a session from a SIMPLE port resume on a MUTUAL
//! port for the same name, with no client certificate at all.
//!
//! So every server config gets the ticket key and session cache of its *scope*: a digest
//! of what a resumed session stands for — the client-auth mode, the CA set, the
//! `subjectAltNames` rule, and the server certificates (rustls' guidance: the verifier and
//! the server identity must match). Servers of one scope share them, across ports and
//! reloads; a reload that changes any part of it lands in a new scope whose key has never
//! seen the old sessions. Scopes are held weakly: a scope no live snapshot uses is gone,
//! and coming back to the same policy later starts afresh.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, Weak},
};

use rustls::{
    server::{ProducesTickets, StoresServerSessions},
    sign::CertifiedKey,
};

use super::client_cert::ClientAuth;

/// TLS 1.2 session IDs (and TLS 1.3 stateful resumption) kept per scope.
const SESSIONS_PER_SCOPE: usize = 1024;

/// The digest that names a scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ScopeKey([u8; 32]);

impl ScopeKey {
    /// The scope of a server with this client-certificate policy and these certificates.
    /// Order does not matter (CA bundles and SAN lists are sets); everything else does.
    pub fn of(client_auth: Option<&ClientAuth>, certificates: &[Arc<CertifiedKey>]) -> Self {
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut field = |tag: u8, items: Vec<&[u8]>| {
            let mut items = items;
            items.sort_unstable();
            items.dedup();
            context.update(&[tag]);
            context.update(&(items.len() as u64).to_be_bytes());
            for item in items {
                context.update(&(item.len() as u64).to_be_bytes());
                context.update(item);
            }
        };
        let mode: &[u8] = match client_auth {
            None => b"none",
            // A session a fallback server issued to an unverified client must never
            // resume where verification is required, nor where it is optional.
            Some(auth) if auth.insecure_fallback => b"insecure-fallback",
            Some(auth) if auth.optional => b"optional",
            Some(_) => b"required",
        };
        field(b'm', vec![mode]);
        let roots = client_auth.map_or_else(Vec::new, |a| {
            a.roots.iter().map(|c| c.as_ref()).collect::<Vec<_>>()
        });
        field(b'c', roots);
        let names = client_auth.map_or_else(Vec::new, |a| {
            a.subject_alt_names
                .iter()
                .map(String::as_bytes)
                .collect::<Vec<_>>()
        });
        field(b's', names);
        let chains: Vec<Vec<u8>> = certificates
            .iter()
            .map(|c| c.cert.iter().flat_map(|d| d.as_ref().to_vec()).collect())
            .collect();
        field(b'k', chains.iter().map(Vec::as_slice).collect());
        let digest = context.finish();
        let mut key = [0; 32];
        key.copy_from_slice(digest.as_ref());
        ScopeKey(key)
    }
}

/// The resumption state one scope's configs share.
#[derive(Clone)]
pub struct Scope {
    pub ticketer: Arc<dyn ProducesTickets>,
    pub sessions: Arc<dyn StoresServerSessions>,
}

/// Every live scope, by key.
#[derive(Default)]
pub struct SessionScopes {
    scopes: Mutex<HashMap<ScopeKey, WeakScope>>,
}

struct WeakScope {
    ticketer: Weak<dyn ProducesTickets>,
    sessions: Weak<dyn StoresServerSessions>,
}

impl SessionScopes {
    /// The scope's shared ticket key and session cache, made on first use. Without a
    /// ticket key (the RNG failed) the scope resumes by session ID only.
    pub fn scope(&self, key: ScopeKey) -> Scope {
        let mut scopes = self.scopes.lock().unwrap_or_else(PoisonError::into_inner);
        scopes.retain(|_, s| s.sessions.strong_count() > 0);
        if let Some(live) = scopes.get(&key)
            && let (Some(ticketer), Some(sessions)) =
                (live.ticketer.upgrade(), live.sessions.upgrade())
        {
            return Scope { ticketer, sessions };
        }
        let ticketer: Arc<dyn ProducesTickets> = match rustls::crypto::aws_lc_rs::Ticketer::new() {
            Ok(ticketer) => ticketer,
            Err(_) => Arc::new(NoTickets),
        };
        let sessions: Arc<dyn StoresServerSessions> =
            rustls::server::ServerSessionMemoryCache::new(SESSIONS_PER_SCOPE);
        scopes.insert(
            key,
            WeakScope {
                ticketer: Arc::downgrade(&ticketer),
                sessions: Arc::downgrade(&sessions),
            },
        );
        Scope { ticketer, sessions }
    }

    /// Scopes some live config still uses.
    pub fn live(&self) -> usize {
        let scopes = self.scopes.lock().unwrap_or_else(PoisonError::into_inner);
        scopes
            .values()
            .filter(|s| s.sessions.strong_count() > 0)
            .count()
    }
}

/// rustls' `NeverProducesTickets` is not public; this is the same.
#[derive(Debug)]
struct NoTickets;

impl ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }

    fn lifetime(&self) -> u32 {
        0
    }

    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::CertificateDer;

    use super::*;

    fn auth(optional: bool, roots: &[&[u8]], names: &[&str]) -> ClientAuth {
        ClientAuth {
            roots: roots
                .iter()
                .map(|r| CertificateDer::from(r.to_vec()))
                .collect(),
            optional,
            insecure_fallback: false,
            subject_alt_names: names.iter().map(|n| (*n).to_owned()).collect(),
        }
    }

    #[test]
    fn the_scope_is_the_client_auth_policy() {
        let key = |a: Option<&ClientAuth>| ScopeKey::of(a, &[]);
        let mutual = auth(false, &[b"ca-1", b"ca-2"], &["spiffe://a", "spiffe://b"]);
        // Sets: order and repetition do not matter.
        let reordered = auth(
            false,
            &[b"ca-2", b"ca-1", b"ca-1"],
            &["spiffe://b", "spiffe://a"],
        );
        assert_eq!(key(Some(&mutual)), key(Some(&reordered)));
        // Each part of the policy does.
        assert_ne!(key(None), key(Some(&mutual)));
        let optional = auth(true, &[b"ca-1", b"ca-2"], &["spiffe://a", "spiffe://b"]);
        assert_ne!(key(Some(&mutual)), key(Some(&optional)));
        let fallback = ClientAuth {
            insecure_fallback: true,
            ..auth(true, &[b"ca-1", b"ca-2"], &["spiffe://a", "spiffe://b"])
        };
        assert_ne!(key(Some(&optional)), key(Some(&fallback)));
        assert_ne!(key(Some(&mutual)), key(Some(&fallback)));
        let fewer_cas = auth(false, &[b"ca-1"], &["spiffe://a", "spiffe://b"]);
        assert_ne!(key(Some(&mutual)), key(Some(&fewer_cas)));
        let other_names = auth(false, &[b"ca-1", b"ca-2"], &["spiffe://a"]);
        assert_ne!(key(Some(&mutual)), key(Some(&other_names)));
        // An empty CA list is not "no client auth".
        assert_ne!(key(None), key(Some(&auth(true, &[], &[]))));
    }

    #[test]
    fn a_scope_is_shared_while_in_use_and_then_forgotten() {
        let scopes = SessionScopes::default();
        let simple = ScopeKey::of(None, &[]);
        let mutual = ScopeKey::of(Some(&auth(false, &[b"ca"], &[])), &[]);
        let first = scopes.scope(simple);
        let same = scopes.scope(simple);
        assert!(Arc::ptr_eq(&first.sessions, &same.sessions));
        assert!(Arc::ptr_eq(&first.ticketer, &same.ticketer));
        let other = scopes.scope(mutual);
        assert!(!Arc::ptr_eq(&first.sessions, &other.sessions));
        // A ticket of one scope does not open in another.
        let ticket = first.ticketer.encrypt(b"session").expect("ticket");
        assert_eq!(
            same.ticketer.decrypt(&ticket).as_deref(),
            Some(&b"session"[..])
        );
        assert_eq!(other.ticketer.decrypt(&ticket), None);
        assert_eq!(scopes.live(), 2);
        drop((first, same));
        assert_eq!(scopes.live(), 1);
        // Back to the same policy later: a new key, the old tickets are dead.
        let again = scopes.scope(simple);
        assert_eq!(again.ticketer.decrypt(&ticket), None);
    }
}
