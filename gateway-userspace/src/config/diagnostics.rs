//! What loading and compiling found wrong, said so that a user can find it: file, line,
//! resource (`Kind namespace/name`), field path, and what would have been accepted.

use std::{fmt, path::Path, sync::Arc};

use serde::Serialize;

use super::ObjectRef;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// Where a document starts, or where inside it a problem is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Location {
    /// Shared by every location in the file: a reload copies thousands of them.
    pub file: Arc<Path>,
    /// 1-based.
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub location: Option<Location>,
    /// `Kind namespace/name`, for people.
    pub resource: Option<String>,
    /// The object the problem is in, when it is in one: an error with an object drops
    /// that object alone (`compile::isolate`); one without refuses the whole reload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectRef>,
    /// Dotted field path, e.g. `spec.servers[0].port.number`.
    pub field: Option<String>,
    pub message: String,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Self {
        Self::new(Severity::Error, message)
    }

    pub fn warning(message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, message)
    }

    fn new(severity: Severity, message: impl Into<String>) -> Self {
        Diagnostic {
            severity,
            location: None,
            resource: None,
            object: None,
            field: None,
            message: message.into(),
        }
    }

    /// The diagnostic with the values serde quotes taken out, for Secrets: a mistyped
    /// Secret (`stringData: |` over its keys, a list where a string goes) would otherwise
    /// print its PEM in the message, e.g. `invalid type: string "-----BEGIN …", expected a
    /// map`.
    pub fn with_values_redacted(mut self) -> Self {
        let message = &self.message;
        if let Some(start) = message.find(['"', '`', '\'']) {
            let rest = &message[start..];
            let end = rest
                .rfind(", expected")
                .map_or(message.len(), |at| start + at);
            self.message = format!("{}(value not shown){}", &message[..start], &message[end..]);
        }
        self
    }

    pub fn at(mut self, location: Option<Location>) -> Self {
        self.location = location;
        self
    }

    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// Names the object the problem is in (and `resource` after it).
    pub fn object(mut self, object: &ObjectRef) -> Self {
        self.resource = Some(object.to_string());
        self.object = Some(object.clone());
        self
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{severity}: ")?;
        if let Some(location) = &self.location {
            write!(f, "{location}: ")?;
        }
        if let Some(resource) = &self.resource {
            write!(f, "{resource}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every diagnostic of one load or compile, in the order found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| !d.is_error())
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_parse_errors_lose_their_values() {
        let diagnostic = |message: &str| {
            Diagnostic::error(message)
                .with_values_redacted()
                .message
                .clone()
        };
        assert_eq!(
            diagnostic(
                "invalid type: string \"tls.key: -----BEGIN PRIVATE KEY-----\\nMIIE\\\"x\", expected a map"
            ),
            "invalid type: string (value not shown), expected a map"
        );
        assert_eq!(
            diagnostic("invalid type: integer `42`, expected a string"),
            "invalid type: integer (value not shown), expected a string"
        );
        assert_eq!(
            diagnostic("invalid type: sequence, expected a string"),
            "invalid type: sequence, expected a string"
        );
        assert_eq!(diagnostic("unknown \"x"), "unknown (value not shown)");
    }
}
