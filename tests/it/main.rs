//! annal integration tests: one binary, one module per area.

mod core;
mod crash;
mod policy;
mod support;
