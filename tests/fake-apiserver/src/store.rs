//! Objects and the event log, with one resourceVersion counter for the whole server as etcd
//! has. Every write appends an event and broadcasts it to the open watches.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::errors::ApiError;
use crate::resources::{NAMESPACE, Resource, ResourceKey};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::time::rfc3339_now;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) rv: u64,
    pub(crate) key: ResourceKey,
    pub(crate) kind: EventType,
    pub(crate) object: Arc<Value>,
    /// The object before a modification, so that watches with selectors can tell an object
    /// entering or leaving their selection.
    pub(crate) old: Option<Arc<Value>>,
}

/// What open watches receive.
#[derive(Debug, Clone)]
pub(crate) enum Signal {
    Event(Arc<Event>),
    /// Send a BOOKMARK now (a fault knob).
    Bookmark,
}

/// Which objects a LIST or WATCH sees.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub(crate) namespace: Option<String>,
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
}

impl Filter {
    pub(crate) fn matches(&self, object: &Value) -> bool {
        let ns_ok = self
            .namespace
            .as_deref()
            .is_none_or(|ns| namespace_of(object) == ns);
        ns_ok && self.labels.matches(object) && self.fields.matches(object)
    }
}

/// How a write treats the incoming object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteMode {
    /// PUT of the main resource: status is kept from the stored object when the kind has a
    /// status subresource.
    Main,
    /// PUT/PATCH of `{name}/status`: only status changes.
    Status,
    /// The test side: the object is taken whole.
    Whole,
}

pub(crate) struct Store {
    rv: u64,
    objects: HashMap<ResourceKey, BTreeMap<(String, String), Arc<Value>>>,
    /// Events with resourceVersion > `compacted`.
    log: VecDeque<Arc<Event>>,
    compacted: u64,
    /// Events kept for replay, as the apiserver's watch cache keeps a bounded window:
    /// older ones are compacted away.
    log_limit: usize,
    next_uid: u64,
    signals: broadcast::Sender<Signal>,
}

pub(crate) struct ListPage {
    pub(crate) items: Vec<Value>,
    pub(crate) rv: u64,
    pub(crate) continue_token: Option<String>,
}

pub(crate) struct WatchStart {
    /// Events to send first: replayed from the log, or synthetic ADDED for the current state.
    pub(crate) initial: Vec<(EventType, Arc<Value>)>,
    pub(crate) rv: u64,
    pub(crate) signals: broadcast::Receiver<Signal>,
}

pub(crate) fn namespace_of(object: &Value) -> &str {
    object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub(crate) fn name_of(object: &Value) -> &str {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn metadata_mut(object: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let map = object
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the object is not a JSON object"))?;
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    meta.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata is not a JSON object"))
}

/// Everything but metadata and status: what `generation` tracks.
fn spec_part(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
        map.remove("apiVersion");
    }
    copy
}

impl Store {
    pub(crate) fn new(signal_capacity: usize, log_limit: usize) -> Self {
        let (signals, _) = broadcast::channel(signal_capacity);
        Store {
            rv: 1,
            objects: HashMap::new(),
            log: VecDeque::new(),
            compacted: 1,
            log_limit: log_limit.max(1),
            next_uid: 1,
            signals,
        }
    }

    pub(crate) fn resource_version(&self) -> u64 {
        self.rv
    }

    pub(crate) fn bookmark(&self) {
        let _ = self.signals.send(Signal::Bookmark);
    }

    /// Forget the event log: watches and continue tokens older than now get 410.
    pub(crate) fn compact(&mut self) {
        self.log.clear();
        self.compacted = self.rv;
    }

    pub(crate) fn get(&self, res: &Resource, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(&res.key())?
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    pub(crate) fn list(
        &self,
        res: &Resource,
        filter: &Filter,
        limit: usize,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let (rv, after) = match continue_token {
            Some(token) => {
                let (rv, ns, name) = decode_continue(token)
                    .ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
                if rv < self.compacted {
                    return Err(ApiError::expired(
                        "The provided continue parameter is too old to display a consistent \
                         list result. You can start a new list without the continue parameter.",
                    ));
                }
                (rv, Some((ns, name)))
            }
            None => (self.rv, None),
        };
        let empty = BTreeMap::new();
        let objects = self.objects.get(&res.key()).unwrap_or(&empty);
        let range = match &after {
            Some(key) => objects.range::<(String, String), _>((
                std::ops::Bound::Excluded(key),
                std::ops::Bound::Unbounded,
            )),
            None => objects.range::<(String, String), _>(..),
        };
        let mut items = Vec::new();
        let mut more = false;
        for (_, object) in range.filter(|(_, o)| filter.matches(o)) {
            if limit > 0 && items.len() == limit {
                more = true;
                break;
            }
            items.push((**object).clone());
        }
        // The token names the last item returned: the next page starts after it.
        let continue_token = items
            .last()
            .filter(|_| more)
            .map(|last| encode_continue(rv, namespace_of(last), name_of(last)));
        Ok(ListPage {
            items,
            rv,
            continue_token,
        })
    }

    pub(crate) fn watch(
        &self,
        res: &Resource,
        filter: &Filter,
        from: Option<u64>,
    ) -> Result<WatchStart, ApiError> {
        let signals = self.signals.subscribe();
        let initial = match from {
            None => {
                let objects = self.objects.get(&res.key());
                objects
                    .into_iter()
                    .flat_map(|m| m.values())
                    .filter(|o| filter.matches(o))
                    .map(|o| (EventType::Added, o.clone()))
                    .collect()
            }
            Some(rv) if rv < self.compacted => {
                return Err(ApiError::expired(format!(
                    "too old resource version: {rv} ({})",
                    self.compacted
                )));
            }
            Some(rv) => self
                .log
                .iter()
                .filter(|e| e.rv > rv && e.key == res.key())
                .filter_map(|e| visible(e, filter))
                .collect(),
        };
        Ok(WatchStart {
            initial,
            rv: self.rv,
            signals,
        })
    }

    /// Creates the Namespace if it does not exist: what a test means when it applies an
    /// object in a namespace it never mentioned.
    pub(crate) fn ensure_namespace(&mut self, ns: &str) -> Result<(), ApiError> {
        if ns.is_empty() || self.get(NAMESPACE, "", ns).is_some() {
            return Ok(());
        }
        let namespace = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns}, "status": {"phase": "Active"}});
        self.create(NAMESPACE, namespace).map(drop)
    }

    pub(crate) fn create(&mut self, res: &Resource, mut object: Value) -> Result<Value, ApiError> {
        let key = object_key(res, &object)?;
        if !key.0.is_empty() && self.get(NAMESPACE, "", &key.0).is_none() {
            // The apiserver's NamespaceLifecycle admission says so.
            return Err(ApiError::not_found("namespaces", &key.0));
        }
        if self.get(res, &key.0, &key.1).is_some() {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{}.{} \"{}\" already exists", res.plural, res.group, key.1),
            ));
        }
        self.next_uid += 1;
        let uid = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            fastrand::u32(..),
            fastrand::u16(..),
            fastrand::u16(..0x1000),
            fastrand::u16(..0x1000),
            self.next_uid
        );
        let meta = metadata_mut(&mut object)?;
        meta.insert("uid".into(), uid.into());
        meta.insert("creationTimestamp".into(), rfc3339_now().into());
        if res.tracks_generation() {
            meta.insert("generation".into(), 1.into());
        }
        self.commit(res, key, object, None)
    }

    /// Replace an existing object, with compare-and-swap when the incoming object carries a
    /// resourceVersion. A write that changes nothing is not an event, as in the apiserver.
    pub(crate) fn replace(
        &mut self,
        res: &Resource,
        mut object: Value,
        mode: WriteMode,
    ) -> Result<Value, ApiError> {
        let key = object_key(res, &object)?;
        let old = self
            .get(res, &key.0, &key.1)
            .ok_or_else(|| ApiError::not_found(&resource_name(res), &key.1))?;
        let asked = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|rv| !rv.is_empty())
            .map(str::to_string);
        let current = old
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        if asked.as_deref().is_some_and(|rv| rv != current) {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{}\": the object has been modified; \
                     please apply your changes to the latest version and try again",
                    resource_name(res),
                    key.1
                ),
            ));
        }
        match mode {
            WriteMode::Status => {
                let status = object.get("status").cloned();
                object = (*old).clone();
                if let Some(map) = object.as_object_mut() {
                    match status {
                        Some(s) => map.insert("status".into(), s),
                        None => map.remove("status"),
                    };
                }
            }
            WriteMode::Main if res.status_subresource => {
                if let Some(map) = object.as_object_mut() {
                    match old.get("status") {
                        Some(s) => map.insert("status".into(), s.clone()),
                        None => map.remove("status"),
                    };
                }
            }
            WriteMode::Main | WriteMode::Whole => {}
        }
        // Server-owned metadata survives every write.
        let old_meta = old.get("metadata").cloned().unwrap_or_default();
        let meta = metadata_mut(&mut object)?;
        for field in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
            match old_meta.get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        if object == *old {
            return Ok(object);
        }
        if res.tracks_generation() && spec_part(&object) != spec_part(&old) {
            let generation = old_meta.get("generation").and_then(Value::as_i64);
            metadata_mut(&mut object)?
                .insert("generation".into(), (generation.unwrap_or(0) + 1).into());
        }
        self.commit(res, key, object, Some(old))
    }

    pub(crate) fn delete(
        &mut self,
        res: &Resource,
        ns: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let key = (ns.to_string(), name.to_string());
        let removed = self
            .objects
            .get_mut(&res.key())
            .and_then(|m| m.remove(&key))
            .ok_or_else(|| ApiError::not_found(&resource_name(res), name))?;
        self.rv += 1;
        let mut last = (*removed).clone();
        metadata_mut(&mut last)?.insert("resourceVersion".into(), self.rv.to_string().into());
        let last = Arc::new(last);
        self.record(res, EventType::Deleted, last.clone(), Some(removed));
        Ok((*last).clone())
    }

    fn commit(
        &mut self,
        res: &Resource,
        key: (String, String),
        mut object: Value,
        old: Option<Arc<Value>>,
    ) -> Result<Value, ApiError> {
        self.rv += 1;
        metadata_mut(&mut object)?.insert("resourceVersion".into(), self.rv.to_string().into());
        let object = Arc::new(object);
        self.objects
            .entry(res.key())
            .or_default()
            .insert(key, object.clone());
        let kind = if old.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(res, kind, object.clone(), old);
        Ok((*object).clone())
    }

    fn record(
        &mut self,
        res: &Resource,
        kind: EventType,
        object: Arc<Value>,
        old: Option<Arc<Value>>,
    ) {
        let event = Arc::new(Event {
            rv: self.rv,
            key: res.key(),
            kind,
            object,
            old,
        });
        self.log.push_back(event.clone());
        while self.log.len() > self.log_limit {
            if let Some(oldest) = self.log.pop_front() {
                self.compacted = oldest.rv;
            }
        }
        let _ = self.signals.send(Signal::Event(event));
    }
}

/// The event a watch with `filter` sees for `event`, if any: objects entering the selection
/// are ADDED, objects leaving it are DELETED (their last matching state, at the new version).
pub(crate) fn visible(event: &Event, filter: &Filter) -> Option<(EventType, Arc<Value>)> {
    let now = filter.matches(&event.object);
    let before = event.old.as_deref().is_some_and(|o| filter.matches(o));
    match (event.kind, before, now) {
        (EventType::Deleted, _, true) => Some((EventType::Deleted, event.object.clone())),
        (EventType::Deleted, _, false) => None,
        (_, true, true) => Some((EventType::Modified, event.object.clone())),
        (_, false, true) => Some((EventType::Added, event.object.clone())),
        (_, true, false) => {
            let mut last = event.old.as_deref().cloned().unwrap_or_default();
            if let Some(meta) = last.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("resourceVersion".into(), event.rv.to_string().into());
            }
            Some((EventType::Deleted, Arc::new(last)))
        }
        (_, false, false) => None,
    }
}

fn resource_name(res: &Resource) -> String {
    if res.group.is_empty() {
        res.plural.to_string()
    } else {
        format!("{}.{}", res.plural, res.group)
    }
}

fn object_key(res: &Resource, object: &Value) -> Result<(String, String), ApiError> {
    let name = name_of(object);
    if name.is_empty() {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!("{} is invalid: metadata.name: Required value", res.kind),
        ));
    }
    let ns = if res.namespaced {
        namespace_of(object)
    } else {
        ""
    };
    if res.namespaced && ns.is_empty() {
        return Err(ApiError::bad_request(
            "the namespace of the object is required",
        ));
    }
    Ok((ns.to_string(), name.to_string()))
}

/// `rv`, namespace and name of the last item of the page, hex-encoded so that it is opaque
/// and URL-safe.
fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    format!("{rv}\n{ns}\n{name}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_continue(token: &str) -> Option<(u64, String, String)> {
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    let mut parts = text.splitn(3, '\n');
    let rv = parts.next()?.parse().ok()?;
    Some((rv, parts.next()?.to_string(), parts.next()?.to_string()))
}
