//! Registered workflows, by name and version.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::WorkflowError;
use crate::event::Payload;
use crate::runtime::context::Ctx;
use crate::runtime::inner::{EngineInner, WorkflowCode, Workflows};
use crate::runtime::slot::RunSlot;

/// Whether an encoded input decodes into a workflow's input type (`Err` says why not).
type InputCheck = Arc<dyn Fn(&Payload) -> Result<(), String> + Send + Sync>;

/// One registered version of a workflow.
#[derive(Clone)]
struct Registered {
    workflow: WorkflowCode,
    check_input: InputCheck,
    input_type: &'static str,
    output_type: &'static str,
}

/// Workflows by name, then version.
#[derive(Default, Clone)]
pub(crate) struct Registry {
    workflows: HashMap<String, BTreeMap<u32, Registered>>,
}

/// Telemetry of one drive of a run: resumed when it starts on a history, ended when the
/// workflow returns (as the driver will record it).
struct RunWatch {
    workflow: String,
}

impl RunWatch {
    fn begin(ctx: &Ctx) -> Self {
        let (workflow, events) = {
            let state = ctx.slot.state();
            let workflow = state.replay.started().map(|(w, _, _)| w.clone());
            (workflow.unwrap_or_default(), state.replay.next_seq())
        };
        // A new run's first drive has nothing but `RunStarted` behind it.
        if events > 1 {
            crate::telemetry::run_resumed(ctx.slot.run, &workflow, events);
        }
        Self { workflow }
    }

    fn ended(&self, ctx: &Ctx, result: &Result<Payload, WorkflowError>) {
        use crate::status::RunStatus;
        let status = {
            let state = ctx.slot.state();
            // Code that returned before reaching every recorded call drifted: blocked.
            if state
                .replay
                .unvisited(|p| state.visited.contains(p))
                .is_some()
            {
                return;
            }
            let cancelled =
                state.replay.cancel_reason().is_some() && state.replay.pending_cancel().is_none();
            match result {
                Ok(_) => RunStatus::Completed,
                Err(WorkflowError::ContinueAsNew(_)) => RunStatus::ContinuedAsNew,
                Err(WorkflowError::Cancelled(_)) if cancelled => RunStatus::Cancelled,
                Err(_) => RunStatus::Failed,
            }
        };
        crate::telemetry::run_ended(ctx.slot.run, &self.workflow, status);
    }
}

impl Registry {
    pub(crate) fn register<F, Fut, In, Out>(&mut self, name: &str, version: u32, f: F)
    where
        F: Fn(Ctx, In) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Out, WorkflowError>> + Send + 'static,
        In: DeserializeOwned + Send + 'static,
        Out: Serialize + Send + 'static,
    {
        let f = Arc::new(f);
        let erased: WorkflowCode = Arc::new(
            move |engine: Arc<EngineInner>, slot: Arc<RunSlot>, input: Payload| {
                let f = Arc::clone(&f);
                let ctx = Ctx::new(engine, slot);
                let run: BoxFuture<'static, _> = Box::pin(async move {
                    let watch = (!ctx.engine.config.replay_only).then(|| RunWatch::begin(&ctx));
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
                    let result = f(ctx.clone(), input).await.and_then(|output| {
                        Payload::encode(&output).map_err(|e| {
                            WorkflowError::failed(format!("workflow output does not encode: {e}"))
                        })
                    });
                    if let Some(watch) = watch {
                        watch.ended(&ctx, &result);
                    }
                    result
                });
                run
            },
        );
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
}

impl Workflows for Registry {
    fn names(&self) -> Vec<String> {
        self.workflows
            .iter()
            .flat_map(|(name, versions)| versions.keys().map(move |v| format!("{name}@{v}")))
            .collect()
    }

    fn get(&self, name: &str, version: u32) -> Option<WorkflowCode> {
        let registered = self.workflows.get(name)?.get(&version)?;
        Some(Arc::clone(&registered.workflow))
    }

    fn check_input(
        &self,
        name: &str,
        version: u32,
        input: &Payload,
    ) -> Option<Result<(), (&'static str, String)>> {
        let registered = self.workflows.get(name)?.get(&version)?;
        Some((registered.check_input)(input).map_err(|why| (registered.input_type, why)))
    }

    fn output_type(&self, name: &str, version: u32) -> Option<&'static str> {
        Some(self.workflows.get(name)?.get(&version)?.output_type)
    }

    fn latest(&self, name: &str) -> Option<u32> {
        self.workflows.get(name)?.keys().next_back().copied()
    }
}
