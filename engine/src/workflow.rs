//! Typed workflows: a workflow as a type whose input and output the compiler checks at every
//! start and every handle.
//!
//! The string API (`register("name", 1, f)`, `start::<In, Out>("name", &input)`) stays for
//! registries built at run time; its input is checked when a run starts (a wrong type is
//! refused with [`Error::InputType`](crate::Error::InputType), nothing written), its output
//! only when the handle decodes it. A [`Workflow`] moves both checks to compile time:
//!
//! ```
//! use annal::{Ctx, Engine, Workflow, WorkflowError};
//!
//! struct Greet;
//!
//! impl Workflow for Greet {
//!     const NAME: &'static str = "greet";
//!     type Input = String;
//!     type Output = String;
//!
//!     async fn run(&self, ctx: Ctx, name: String) -> Result<String, WorkflowError> {
//!         let greeting: String = ctx
//!             .step("compose")
//!             .run(|_| {
//!                 let name = name.clone();
//!                 async move { Ok(format!("hello, {name}")) }
//!             })
//!             .await?;
//!         Ok(greeting)
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), annal::Error> {
//! # let dir = tempfile::tempdir().unwrap();
//! let engine = Engine::builder().path(dir.path()).workflow(Greet).open().await?;
//! // `Greet::Input` is a String and the handle yields `Greet::Output`: anything else does
//! // not compile.
//! let run = engine.start_workflow::<Greet>(&"ada".to_string()).await?;
//! assert_eq!(run.result().await?, "hello, ada");
//! # engine.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! A wrong input type, or a handle of the wrong output type, does not compile:
//!
//! ```compile_fail
//! # use annal::{Ctx, Engine, Workflow, WorkflowError};
//! # struct Greet;
//! # impl Workflow for Greet {
//! #     const NAME: &'static str = "greet";
//! #     type Input = String;
//! #     type Output = String;
//! #     async fn run(&self, _: Ctx, name: String) -> Result<String, WorkflowError> { Ok(name) }
//! # }
//! # async fn wrong(engine: Engine) -> Result<(), annal::Error> {
//! let run: annal::RunHandle<u64> = engine.start_workflow::<Greet>(&42).await?;
//! # Ok(()) }
//! ```

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::WorkflowError;
use crate::runtime::context::Ctx;

/// A workflow whose input and output types are part of its type. Register it with
/// [`EngineBuilder::workflow`](crate::EngineBuilder::workflow) and start it with
/// [`Engine::start_workflow`](crate::Engine::start_workflow): the input passed and the
/// handle's output are then checked by the compiler.
///
/// `NAME` and `VERSION` are what the history records; a new version of the same workflow is
/// another type (or the same type registered again under another `VERSION`), registered
/// next to the old one so that runs in flight keep replaying on the code they started on.
pub trait Workflow: Send + Sync + 'static {
    /// The name runs record.
    const NAME: &'static str;
    /// The version new runs start on (default 1).
    const VERSION: u32 = 1;
    /// What a run starts with.
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// What a run ends with.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// The workflow's code: every effect goes through `ctx`, so that replay can hand back
    /// what history recorded.
    fn run(
        &self,
        ctx: Ctx,
        input: Self::Input,
    ) -> impl Future<Output = Result<Self::Output, WorkflowError>> + Send;
}
