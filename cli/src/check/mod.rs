//! The invariant checker: one function per guarantee of the design (no
//! oversell, stock conservation, no duplicate, nothing lost, crash safety,
//! bad input), over what the order store, Redis and the topics hold for a
//! campaign, compared with the decisions that were announced.
//!
//! `seckill bench` prints its results; every end-to-end suite asserts them
//! (the HTTP-side suites through a thin adapter in `tests/common`).
//!
//! - [`evidence`]: reading the record (order log, dead letters, store,
//!   Redis) into plain values;
//! - [`guarantees`]: the checks, pure functions of those values;
//! - [`report`]: what they found, per campaign.

pub mod evidence;
pub mod guarantees;
pub mod report;

use redis::aio::ConnectionManager;
use seckill_schemas::KeyLayout;
use seckill_store::OrderStore;

pub use evidence::{
    bucket_count, read_dead_letters, read_order_log, redis_counters, redis_stock, redis_users,
    stored_orders, BucketSnapshot, DeadLetter, DecisionRecord, Evidence, OrderLog, Snapshot,
};
pub use guarantees::{bad_input, crash_safety};
pub use report::CampaignReport;

/// Checks one campaign against its announced `decisions`.
pub async fn check_campaign(
    store: &dyn OrderStore,
    redis: &mut ConnectionManager,
    keys: &KeyLayout,
    campaign_id: &str,
    per_user_limit: u32,
    decisions: &[&DecisionRecord],
) -> anyhow::Result<CampaignReport> {
    check_campaign_with(
        store,
        redis,
        keys,
        campaign_id,
        per_user_limit,
        &Evidence {
            decisions,
            log: None,
            sent: &[],
        },
    )
    .await
}

/// Checks one campaign against everything in `evidence`: reads the
/// campaign's state once, then runs guarantees 1-4 on it.
pub async fn check_campaign_with(
    store: &dyn OrderStore,
    redis: &mut ConnectionManager,
    keys: &KeyLayout,
    campaign_id: &str,
    per_user_limit: u32,
    evidence: &Evidence<'_>,
) -> anyhow::Result<CampaignReport> {
    let snapshot = Snapshot::read(store, redis, keys, campaign_id).await?;
    Ok(guarantees::check(&snapshot, per_user_limit, evidence))
}
