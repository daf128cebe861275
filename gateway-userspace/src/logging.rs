//! Diagnostic logs (on stderr; access logs go to stdout): human-readable text by default,
//! JSON lines with `--log-json`. The filter starts from `RUST_LOG` (else `info`) and can be
//! switched while running from the admin port (`POST /logging?level=debug`).
//!
//! Key material never reaches a log line: nothing logs a Secret's data, and the snapshot
//! types keep private keys out of `Debug` and serialization.

use std::sync::Arc;

use thiserror::Error;
use tracing_subscriber::{
    EnvFilter, Registry, filter::LevelFilter, fmt, layer::SubscriberExt as _, reload,
    util::SubscriberInitExt as _,
};

/// The filter used when `RUST_LOG` is unset or invalid.
pub const DEFAULT_LEVEL: &str = "info";

#[derive(Debug, Error)]
pub enum LogLevelError {
    #[error(
        "not a log filter ({0}); use a level (error, warn, info, debug, trace) or directives like gateway=debug,hyper=info"
    )]
    Invalid(String),
    #[error("the logger is gone: {0}")]
    Reload(#[from] reload::Error),
}

/// Switches the live log filter.
#[derive(Clone)]
pub struct LogLevel {
    handle: Arc<reload::Handle<EnvFilter, Registry>>,
}

impl LogLevel {
    /// Replaces the filter, e.g. `debug` or `gateway=debug,hyper=info`.
    pub fn set(&self, directives: &str) -> Result<(), LogLevelError> {
        // EnvFilter reads a bare word as a target name, so `verbose` would silence
        // everything; a directive without `=` must be a level.
        if let Some(word) = directives
            .split(',')
            .find(|d| !d.contains('=') && d.parse::<LevelFilter>().is_err())
        {
            return Err(LogLevelError::Invalid(format!("{word:?} is not a level")));
        }
        let filter =
            EnvFilter::try_new(directives).map_err(|e| LogLevelError::Invalid(e.to_string()))?;
        self.handle.reload(filter)?;
        Ok(())
    }

    /// The filter in force, as directives.
    pub fn current(&self) -> String {
        self.handle
            .with_current(ToString::to_string)
            .unwrap_or_default()
    }
}

/// Installs the global subscriber; call once, before anything logs.
pub fn init(json: bool) -> LogLevel {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LEVEL));
    let (filter, handle) = reload::Layer::new(filter);
    let text = (!json).then(|| fmt::layer().with_writer(std::io::stderr));
    let json = json.then(|| fmt::layer().json().with_writer(std::io::stderr));
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .init();
    LogLevel {
        handle: Arc::new(handle),
    }
}
