//! annal integration tests: one binary, one module per area.

mod approval;
mod ceilings;
mod core;
mod crash;
mod histories;
mod layering;
mod policy;
mod props;
mod report;
mod support;
mod telemetry;
mod tree_heads;
mod typed;
mod wakeup;
