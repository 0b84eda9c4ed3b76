//! Shared helpers for the annal examples.
