//! The one place a compile says things: the diagnostics for `validate` and the logs, and
//! the findings Gateway API status is built from (`compile::status`).

use super::status::StatusRecorder;
use crate::config::{Diagnostic, Diagnostics};

#[derive(Default)]
pub(super) struct Sink {
    pub(super) diagnostics: Diagnostics,
    /// What Gateway API status will say.
    pub(super) status: StatusRecorder,
}

impl Sink {
    pub(super) fn push(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }
}
