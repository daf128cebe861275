//! Hostile clients: bodies (filled in by the hardening work).
