//! sled backend. (Placeholder: being written by the storage helper.)
use std::path::PathBuf;
/// Placeholder.
pub struct SledStore;
/// Placeholder.
pub struct SledConfig { /// path
pub path: PathBuf }
