//! `annal operate RUN retry|skip|resolve|abort`: operator actions on an escalated run of a
//! database no process holds, through an operator-only engine (the same checks and the same
//! event as `Engine::operate` in the service). The service resumes the run when it next
//! opens the database.

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
        let result = engine.operate(run, by, action, &why.reason).await;
        let status = engine.status(run).await.map(|info| info.status);
        engine.shutdown().await;
        result.and(status)
    });
    match done {
        Ok(status) => {
            writeln!(
                out,
                "run {run}: {name} by {by} ({}); the run is {status}; the service resumes it when it next opens the database",
                why.reason
            )?;
            Ok(0)
        }
        Err(e) => bail!("cannot {name} run {run}: {e}; nothing was written"),
    }
}
