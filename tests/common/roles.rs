//! The roles as separate processes (ingest, processor, sink), for tests
//! that kill, restart or break one of them.

use std::path::PathBuf;

use super::{Api, Seckill, Stack};

pub(crate) struct Roles {
    pub(crate) ingest: Seckill,
    pub(crate) process: Seckill,
    pub(crate) sink: Seckill,
    pub(crate) api: Api,
}

/// `seckill topics create`, then ingest, sink and one processor, each a
/// process of its own. `env` goes to all of them, `sink_env` and
/// `process_env` to the sink and the processor only.
pub(crate) async fn start_roles(
    stack: &Stack,
    env: &[(&str, &str)],
    sink_env: &[(&str, &str)],
    process_env: &[(&str, &str)],
) -> Roles {
    let sink_vars: Vec<(&str, &str)> = env.iter().chain(sink_env).copied().collect();
    let process_vars: Vec<(&str, &str)> = env.iter().chain(process_env).copied().collect();
    stack.seckill_run(&["topics", "create"], env, 120).await;
    let ingest = stack.seckill(&["ingest"], env).await;
    let sink = stack.seckill(&["sink"], &sink_vars).await;
    let process = stack.seckill(&["process"], &process_vars).await;
    let api = Api::new(ingest.http.as_deref().expect("ingest http"));
    Roles {
        ingest,
        process,
        sink,
        api,
    }
}

/// Where a sink started with `SECKILL_STORE_FAULT_FILE` looks for the
/// injected store fault of this stack.
pub(crate) fn fault_file(stack: &Stack) -> PathBuf {
    stack.dir().join("store-fault")
}
