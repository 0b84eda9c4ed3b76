//! Support code for the integration tests.

/// The seed in environment variable `var` (to replay a printed run), else one from the
/// clock; the caller prints it.
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        })
}

/// The workflow of the full-disk test, shared by its child process
/// (`src/bin/full_disk_child.rs`) and the test that resumes the child's runs
/// (`full_disk/main.rs`).
pub mod full_disk {
    use annal::{Ctx, StepClass, WorkflowError};

    /// Steps per run, each recording an output of [`OUTPUT_BYTES`].
    pub const STEPS: u32 = 8;
    /// Bytes each step records: large, so that the store fills in a few hundred runs.
    pub const OUTPUT_BYTES: usize = 4096;
    /// What every run of [`fill`] returns.
    pub const RESULT: u32 = STEPS * OUTPUT_BYTES as u32 + STEPS * (STEPS - 1) / 2;

    /// `STEPS` `Write` steps, each recording `OUTPUT_BYTES` bytes; returns [`RESULT`].
    pub async fn fill(ctx: Ctx, seed: u32) -> Result<u32, WorkflowError> {
        let mut total = 0u32;
        for i in 0..STEPS {
            let out: String = ctx
                .step("fill")
                .class(StepClass::Write)
                .run(move |_| async move {
                    let c = char::from(b'a' + ((seed + i) % 26) as u8);
                    Ok(std::iter::repeat_n(c, OUTPUT_BYTES).collect::<String>())
                })
                .await?;
            total = total.wrapping_add(out.len() as u32 + i);
        }
        Ok(total)
    }
}
