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

/// Workflows by name, then version.
#[derive(Default, Clone)]
pub(crate) struct Registry {
    workflows: HashMap<String, BTreeMap<u32, ErasedWorkflow>>,
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
        self.workflows
            .entry(name.to_string())
            .or_default()
            .insert(version, erased);
    }

    pub(crate) fn get(&self, name: &str, version: u32) -> Option<ErasedWorkflow> {
        self.workflows.get(name)?.get(&version).cloned()
    }

    pub(crate) fn latest(&self, name: &str) -> Option<u32> {
        self.workflows.get(name)?.keys().next_back().copied()
    }
}
