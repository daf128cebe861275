//! Hostile clients: edges (filled in by the hardening work).
