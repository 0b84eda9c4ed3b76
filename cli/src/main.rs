//! The `annal` auditor CLI.
fn main() {}
