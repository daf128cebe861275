//! Hostile clients: trust (filled in by the hardening work).
