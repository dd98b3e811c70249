//! The invariant checker: reads the order store and Redis for a campaign and
//! compares them with the decisions that were announced. `seckill bench`
//! prints its results; the end-to-end tests assert them.

use std::collections::{HashMap, HashSet};

use redis::aio::ConnectionManager;
use seckill_schemas::{Decision, DecisionStatus, KeyLayout, OrderView};
use seckill_sinks::{OrderFilter, OrderStore};

/// One announced decision, reduced to what the checks compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRecord {
    pub campaign_id: String,
    pub user_id: String,
    pub status: DecisionStatus,
    pub order_id: Option<String>,
    pub quantity: u32,
}

impl From<&Decision> for DecisionRecord {
    fn from(d: &Decision) -> Self {
        Self {
            campaign_id: d.campaign_id.clone(),
            user_id: d.user_id.clone(),
            status: d.status,
            order_id: d.order_id.clone(),
            quantity: d.quantity.unwrap_or(0),
        }
    }
}

/// What was found wrong with one campaign (all zero when it is healthy).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CampaignReport {
    pub campaign_id: String,
    /// Orders the store holds for the campaign.
    pub stored_orders: usize,
    /// Units sold beyond the stock ever added (by decisions, Redis or store).
    pub oversold: usize,
    /// Units users hold beyond the per-user limit, in the store.
    pub duplicate_orders: usize,
    /// Reserved decisions whose order is not in the store.
    pub missing_from_store: usize,
    /// 1 when Redis counters break available + reserved + paid = total.
    pub conservation_errors: usize,
    /// Units the store's live orders hold minus Redis reserved + paid
    /// (either way); 0 once in-flight events have settled.
    pub store_counter_mismatch: usize,
}

/// Every stored order of a campaign.
pub async fn stored_orders(
    store: &dyn OrderStore,
    campaign_id: &str,
) -> anyhow::Result<Vec<OrderView>> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_orders(&OrderFilter {
                campaign_id: Some(campaign_id.to_owned()),
                user_id: None,
                limit: 1000,
                after: after.clone(),
            })
            .await?;
        let done = page.len() < 1000;
        after = page.last().map(|o| o.order_id.clone());
        all.extend(page);
        if done {
            return Ok(all);
        }
    }
}

/// Redis stock counters of a campaign: (total, available, reserved, paid).
pub async fn redis_stock(
    redis: &mut ConnectionManager,
    keys: &KeyLayout,
    campaign_id: &str,
) -> anyhow::Result<(i64, i64, i64, i64)> {
    let (t, a, r, p): (Option<i64>, Option<i64>, Option<i64>, Option<i64>) = redis::cmd("HMGET")
        .arg(keys.campaign(campaign_id).stock)
        .arg(&["total", "available", "reserved", "paid"])
        .query_async(redis)
        .await?;
    Ok((
        t.unwrap_or(0),
        a.unwrap_or(0),
        r.unwrap_or(0),
        p.unwrap_or(0),
    ))
}

/// Checks one campaign against its announced `decisions`.
pub async fn check_campaign(
    store: &dyn OrderStore,
    redis: &mut ConnectionManager,
    keys: &KeyLayout,
    campaign_id: &str,
    per_user_limit: u32,
    decisions: &[&DecisionRecord],
) -> anyhow::Result<CampaignReport> {
    let (total, available, reserved, paid) = redis_stock(redis, keys, campaign_id).await?;
    let orders = stored_orders(store, campaign_id).await?;
    let total_units = total.max(0) as usize;

    // Units a cancelled or expired order held went back on sale, so only
    // live orders (reserved, paid) count against the stock.
    let live: Vec<&OrderView> = orders
        .iter()
        .filter(|o| o.status == "reserved" || o.status == "paid")
        .collect();
    let stored_units: usize = live.iter().map(|o| o.quantity as usize).sum();
    let redis_units = (reserved + paid).max(0) as usize;
    let oversold = [stored_units, redis_units]
        .into_iter()
        .map(|u| u.saturating_sub(total_units))
        .max()
        .unwrap_or(0)
        + usize::from(available < 0);

    let mut per_user: HashMap<&str, usize> = HashMap::new();
    for o in &live {
        *per_user.entry(o.user_id.as_str()).or_default() += o.quantity as usize;
    }
    let duplicate_orders = per_user
        .values()
        .map(|u| u.saturating_sub(per_user_limit as usize))
        .sum();

    let stored: HashSet<&str> = orders.iter().map(|o| o.order_id.as_str()).collect();
    let missing_from_store = decisions
        .iter()
        .filter(|d| matches!(d.status, DecisionStatus::Reserved | DecisionStatus::Won))
        .filter_map(|d| d.order_id.as_deref())
        .filter(|id| !stored.contains(id))
        .count();

    Ok(CampaignReport {
        campaign_id: campaign_id.to_owned(),
        stored_orders: orders.len(),
        store_counter_mismatch: stored_units.abs_diff(redis_units),
        oversold,
        duplicate_orders,
        missing_from_store,
        conservation_errors: usize::from(available + reserved + paid != total),
    })
}
