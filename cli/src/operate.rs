//! `annal operate RUN retry|skip|resolve|abort`: operator actions on an escalated run,
//! through an operator-only engine (the same checks and the same event as
//! `Engine::operate` in the service). On a sled directory no process holds, the service
//! resumes the run when it next opens the database; on PostgreSQL the act is carried out by
//! the worker that executes the run (or here, if none holds it), and a running service
//! resumes the run at once.

use std::io::Write;

use anyhow::{anyhow, bail};

use crate::db::Database;
use crate::Operation;

/// Records `operation` for `run` (an id or unique prefix). Refusals write nothing.
pub fn operate(
    db: &Database,
    runtime: &tokio::runtime::Runtime,
    run: &str,
    operation: &Operation,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let run = db.resolve(run)?;
    let (name, value, why) = operation.wire()?;
    let by = why
        .by
        .as_deref()
        .ok_or_else(|| anyhow!("--by ACTOR is required on a database"))?;
    if why.reason.trim().is_empty() {
        bail!("--reason must say why; nothing was written");
    }
    let action =
        annal_admin::wire::operator_action(name, value.as_ref()).map_err(|e| anyhow!(e))?;
    let done = runtime.block_on(async {
        let engine = db.operator_engine().await?;
        let result = db
            .acting(run, engine.operate(run, by, action, &why.reason))
            .await;
        let status = engine.status(run).await.map(|info| info.status);
        engine.shutdown().await;
        drop(engine);
        result.map(|()| status)
    });
    match done {
        Ok(status) => {
            // The action is recorded; the status is only what the store says now.
            let status = status.map_or_else(|e| format!("unknown ({e})"), |s| s.to_string());
            writeln!(
                out,
                "run {run}: {name} by {by} ({}); the run is {status}; the service resumes it {}",
                why.reason,
                db.resumes()
            )?;
            Ok(0)
        }
        Err(e) => match db.unconfirmed(&format!("cannot {name} run {run}"), run, &e) {
            Some(unknown) => Err(unknown),
            None => bail!("cannot {name} run {run}: {e}; nothing was written"),
        },
    }
}
