//! annal integration tests: one binary, one module per area.

mod approval;
mod core;
mod crash;
mod histories;
mod policy;
mod props;
mod support;
mod tree_heads;
mod wakeup;
