//! Fault knobs and the request log: what tests flip and what they assert on.

use std::collections::HashMap;
use std::time::Duration;

use crate::resources::ResourceKey;

/// An API outage as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outage {
    /// Serving normally.
    #[default]
    None,
    /// The listener is closed and open connections are cut: connections are refused.
    Refuse,
    /// Every request gets `503 ServiceUnavailable`; open watches end.
    Unavailable,
}

#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// HTTP status codes (403, 500, ...) answered for every request on a resource.
    pub(crate) failures: HashMap<ResourceKey, u16>,
    pub(crate) delay: Duration,
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The raw query string ("" when absent).
    pub query: String,
    pub status: u16,
    /// What the request did: "list", "watch", "get", "create", "update", "patch", "delete",
    /// "discovery" or "other".
    pub verb: &'static str,
    /// The `resourceVersion` query parameter, if any.
    pub resource_version: Option<String>,
}

impl RequestRecord {
    pub fn is_watch(&self) -> bool {
        self.verb == "watch"
    }

    pub fn is_list(&self) -> bool {
        self.verb == "list"
    }
}
