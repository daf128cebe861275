//! Hostile clients: ops (filled in by the hardening work).
