//! annal integration tests: one binary, one module per area.

mod core;
mod approval;
mod crash;
mod policy;
mod support;
