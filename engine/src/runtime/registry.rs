//! Registered workflows, by name and version.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::Ctx;
use crate::error::WorkflowError;
use crate::event::Payload;

/// A workflow with its types erased: JSON in, JSON out.
pub(crate) type ErasedWorkflow =
    Arc<dyn Fn(Ctx, Payload) -> BoxFuture<'static, Result<Payload, WorkflowError>> + Send + Sync>;

/// Whether an encoded input decodes into a workflow's input type (`Err` says why not).
type InputCheck = Arc<dyn Fn(&Payload) -> Result<(), String> + Send + Sync>;

/// One registered version of a workflow.
#[derive(Clone)]
struct Registered {
    workflow: ErasedWorkflow,
    check_input: InputCheck,
    input_type: &'static str,
    output_type: &'static str,
}

/// Workflows by name, then version.
#[derive(Default, Clone)]
pub(crate) struct Registry {
    workflows: HashMap<String, BTreeMap<u32, Registered>>,
}

impl Registry {
    /// Names of the registered workflows ("name@version").
    pub(crate) fn names(&self) -> Vec<String> {
        self.workflows
            .iter()
            .flat_map(|(name, versions)| versions.keys().map(move |v| format!("{name}@{v}")))
            .collect()
    }

    pub(crate) fn register<F, Fut, In, Out>(&mut self, name: &str, version: u32, f: F)
    where
        F: Fn(Ctx, In) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Out, WorkflowError>> + Send + 'static,
        In: DeserializeOwned + Send + 'static,
        Out: Serialize + Send + 'static,
    {
        let f = Arc::new(f);
        let erased: ErasedWorkflow = Arc::new(move |ctx: Ctx, input: Payload| {
            let f = Arc::clone(&f);
            Box::pin(async move {
                // An input that no longer decodes is a code change, not a run failure.
                let input: In = match input.decode() {
                    Ok(input) => input,
                    Err(e) => {
                        ctx.block(format!(
                            "workflow input does not decode into the registered type: {e}"
                        ));
                        return std::future::pending().await;
                    }
                };
                let output = f(ctx, input).await?;
                Payload::encode(&output).map_err(|e| {
                    WorkflowError::failed(format!("workflow output does not encode: {e}"))
                })
            })
        });
        let check_input: InputCheck =
            Arc::new(|input: &Payload| input.decode::<In>().map(drop).map_err(|e| e.to_string()));
        let registered = Registered {
            workflow: erased,
            check_input,
            input_type: std::any::type_name::<In>(),
            output_type: std::any::type_name::<Out>(),
        };
        self.workflows
            .entry(name.to_string())
            .or_default()
            .insert(version, registered);
    }

    pub(crate) fn get(&self, name: &str, version: u32) -> Option<ErasedWorkflow> {
        let registered = self.workflows.get(name)?.get(&version)?;
        Some(Arc::clone(&registered.workflow))
    }

    /// Whether `input` decodes into the input type of `name` at `version` (`Err` says why
    /// not, naming the type), or `None` if no such workflow is registered.
    pub(crate) fn check_input(
        &self,
        name: &str,
        version: u32,
        input: &Payload,
    ) -> Option<Result<(), (&'static str, String)>> {
        let registered = self.workflows.get(name)?.get(&version)?;
        Some((registered.check_input)(input).map_err(|why| (registered.input_type, why)))
    }

    /// The output type `name` was registered with at `version`, for error hints.
    pub(crate) fn output_type(&self, name: &str, version: u32) -> Option<&'static str> {
        Some(self.workflows.get(name)?.get(&version)?.output_type)
    }

    pub(crate) fn latest(&self, name: &str) -> Option<u32> {
        self.workflows.get(name)?.keys().next_back().copied()
    }
}
