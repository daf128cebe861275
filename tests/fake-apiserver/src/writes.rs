//! Writes: POST, PUT (main resource and `/status`), PATCH and DELETE, with the apiserver's
//! checks (namespace and name against the URL, resourceVersion preconditions).

use bytes::Bytes;
use serde_json::{Value, json};

use crate::errors::ApiError;
use crate::handlers::{Answer, Target, json_response, not_found};
use crate::patch::merge;
use crate::query::Query;
use crate::state::lock;
use crate::store::WriteMode;

impl Target<'_> {
    /// DELETE, honouring DeleteOptions preconditions (uid, resourceVersion) in the body.
    pub(crate) fn delete(&self, body: &[u8]) -> Answer {
        let options: Value = match body.iter().all(u8::is_ascii_whitespace) {
            true => Value::Null,
            false => serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?,
        };
        let mut store = lock(&self.shared.store);
        let current = store
            .get(&self.res, &self.namespace, &self.name)
            .ok_or_else(|| ApiError::not_found(&self.qualified(), &self.name))?;
        for (field, precondition) in [("uid", "uid"), ("resourceVersion", "resourceVersion")] {
            let wanted = options.pointer(&format!("/preconditions/{precondition}"));
            let actual = current.pointer(&format!("/metadata/{field}"));
            if let Some(wanted) = wanted.filter(|w| !w.is_null())
                && Some(wanted) != actual
            {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{}\": Precondition failed: {field}",
                        self.qualified(),
                        self.name
                    ),
                ));
            }
        }
        let last = store.delete(&self.res, &self.namespace, &self.name)?;
        Ok(json_response(200, &self.served(last)))
    }

    pub(crate) fn write(
        &self,
        verb: &str,
        (body, _): &(Bytes, String),
        content_type: &str,
        query: &Query,
    ) -> Answer {
        let incoming: Value = serde_json::from_slice(body).map_err(|e| {
            let hint = if content_type.contains("yaml") {
                " (the fake reads JSON bodies only)"
            } else {
                ""
            };
            ApiError::bad_request(format!("the request body is not JSON{hint}: {e}"))
        })?;
        if !incoming.is_object() {
            return Err(ApiError::bad_request(
                "the request body is not a JSON object",
            ));
        }
        let (code, object) = match verb {
            "create" => (201, self.create(incoming)?),
            "update" => (200, self.update(incoming)?),
            _ => self.patch(incoming, content_type, query)?,
        };
        Ok(json_response(code, &self.served(object)))
    }

    /// Namespace and name from the path, checked against the body's.
    fn place(&self, object: &mut Value) -> Result<(), ApiError> {
        let meta = object
            .as_object_mut()
            .map(|m| m.entry("metadata").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ApiError::bad_request("metadata is not a JSON object"))?;
        if self.res.namespaced {
            let ns = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
            if !ns.is_empty() && ns != self.namespace {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            if self.namespace.is_empty() {
                return Err(not_found());
            }
            meta.insert("namespace".into(), self.namespace.clone().into());
        } else {
            meta.remove("namespace");
        }
        if !self.name.is_empty() {
            let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
            if !name.is_empty() && name != self.name {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ));
            }
            meta.insert("name".into(), self.name.clone().into());
        }
        Ok(())
    }

    fn check_kind(&self, object: &Value) -> Result<(), ApiError> {
        match object.get("kind").and_then(Value::as_str) {
            Some(kind) if kind != self.res.kind => Err(ApiError::bad_request(format!(
                "the kind {kind:?} does not match the resource {}",
                self.res.kind
            ))),
            _ => Ok(()),
        }
    }

    fn create(&self, mut object: Value) -> Result<Value, ApiError> {
        self.check_kind(&object)?;
        self.place(&mut object)?;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
            let named = meta
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            let prefix = meta
                .get("generateName")
                .and_then(Value::as_str)
                .map(str::to_string);
            if let (false, Some(prefix)) = (named, prefix) {
                let suffix: String = (0..5).map(|_| fastrand::lowercase()).collect();
                meta.insert("name".into(), format!("{prefix}{suffix}").into());
            }
        }
        // Status is the controllers' to write, through the subresource.
        if self.res.status_subresource
            && let Some(map) = object.as_object_mut()
        {
            map.remove("status");
            if self.res.group.is_empty() && self.res.kind == "Namespace" {
                map.insert("status".into(), json!({"phase": "Active"}));
            }
        }
        lock(&self.shared.store).create(&self.res, object)
    }

    fn mode(&self) -> WriteMode {
        if self.status {
            WriteMode::Status
        } else {
            WriteMode::Main
        }
    }

    fn update(&self, mut object: Value) -> Result<Value, ApiError> {
        self.check_kind(&object)?;
        self.place(&mut object)?;
        // Custom resources refuse unconditional updates; core kinds allow them.
        let unconditional = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        if unconditional && self.res.tracks_generation() {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "{}.{} \"{}\" is invalid: metadata.resourceVersion: Invalid value: 0x0: \
                     must be specified for an update",
                    self.res.kind, self.res.group, self.name
                ),
            ));
        }
        lock(&self.shared.store).replace(&self.res, object, self.mode())
    }

    fn patch(
        &self,
        patch: Value,
        content_type: &str,
        query: &Query,
    ) -> Result<(u16, Value), ApiError> {
        let apply = content_type == "application/apply-patch+yaml";
        if apply && query.get("fieldManager").is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: \
                 is required for apply patch",
            ));
        }
        // Custom resources have no strategic merge schema: the apiserver refuses it.
        if content_type == "application/strategic-merge-patch+json" && self.res.tracks_generation()
        {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types \
                 include: application/json-patch+json, application/merge-patch+json, \
                 application/apply-patch+yaml",
            ));
        }
        if !apply
            && !matches!(
                content_type,
                "application/merge-patch+json" | "application/strategic-merge-patch+json"
            )
        {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("the fake does not support patches of type {content_type:?}"),
            ));
        }
        let mut store = lock(&self.shared.store);
        let Some(current) = store.get(&self.res, &self.namespace, &self.name) else {
            if apply && !self.status {
                drop(store);
                return Ok((201, self.create(patch)?));
            }
            return Err(ApiError::not_found(&self.qualified(), &self.name));
        };
        let mut merged = (*current).clone();
        merge(&mut merged, &patch);
        self.place(&mut merged)?;
        Ok((200, store.replace(&self.res, merged, self.mode())?))
    }
}
