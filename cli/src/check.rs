//! The invariant checker: reads the order store, Redis and the orders topic
//! for a campaign and compares them with the decisions that were announced.
//! It reports, per campaign, stock sold beyond what was added (oversold),
//! orders doubled (a user over the limit, two orders for one request, one
//! request decided two ways), orders lost (a reservation the store does not
//! hold, a request without a decision) and stock returned twice.
//! `seckill bench` prints its results; the end-to-end tests assert them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use anyhow::Context;
use rdkafka::message::Message;
use redis::aio::ConnectionManager;
use seckill_kafka::KafkaSettings;
use seckill_schemas::{
    order_id_for, Decision, DecisionStatus, KeyLayout, OrderEvent, OrderStatus, OrderView,
};
use seckill_store::{OrderFilter, OrderStore};

/// One announced decision, reduced to what the checks compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRecord {
    pub request_id: String,
    pub campaign_id: String,
    pub user_id: String,
    pub status: DecisionStatus,
    pub order_id: Option<String>,
    pub quantity: u32,
}

impl From<&Decision> for DecisionRecord {
    fn from(d: &Decision) -> Self {
        Self {
            request_id: d.request_id.clone(),
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
    /// Units users hold beyond the per-user limit (in the store or in
    /// Redis), plus orders doubled: two orders for one request, or an order
    /// id not derived from its request id.
    pub duplicate_orders: usize,
    /// Reserved decisions whose order is not in the store.
    pub missing_from_store: usize,
    /// 1 when Redis counters break available + reserved + paid = total.
    pub conservation_errors: usize,
    /// Units the store's live orders hold minus Redis reserved + paid
    /// (either way); 0 once in-flight events have settled.
    pub store_counter_mismatch: usize,
    /// Users whose units in Redis differ from their live orders in the
    /// store; 0 once in-flight events have settled.
    pub user_counter_mismatch: usize,
    /// Requests that were sent but have no decision.
    pub undecided_requests: usize,
    /// Requests with two different decisions.
    pub conflicting_decisions: usize,
    /// Store orders that no reserved (or won) decision accounts for, or
    /// that differ from their decision (only checked against an order log).
    pub unexplained_orders: usize,
    /// Orders whose units went back on sale more than once (two different
    /// cancel/expiry events in the order log), plus 1 for a negative
    /// Redis `reserved` or `paid`.
    pub double_returned_stock: usize,
    /// Orders whose stored status is behind the furthest status the order
    /// log announced for them (a state change that never landed).
    pub stale_orders: usize,
    /// Up to a few examples per kind of problem, for people.
    pub details: Vec<String>,
}

impl CampaignReport {
    /// Every count that must be 0 for a settled, healthy campaign.
    pub fn problems(&self) -> [(&'static str, usize); 11] {
        [
            ("oversold", self.oversold),
            ("duplicate_orders", self.duplicate_orders),
            ("missing_from_store", self.missing_from_store),
            ("conservation_errors", self.conservation_errors),
            ("store_counter_mismatch", self.store_counter_mismatch),
            ("user_counter_mismatch", self.user_counter_mismatch),
            ("undecided_requests", self.undecided_requests),
            ("conflicting_decisions", self.conflicting_decisions),
            ("unexplained_orders", self.unexplained_orders),
            ("double_returned_stock", self.double_returned_stock),
            ("stale_orders", self.stale_orders),
        ]
    }

    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems().iter().all(|(_, n)| *n == 0)
    }

    /// The problems that in-flight events settle (the store or Redis still
    /// catching up with the log, decisions still on their way); checks are
    /// repeated until this is 0 before a report is final.
    pub fn unsettled(&self) -> usize {
        self.missing_from_store
            + self.store_counter_mismatch
            + self.user_counter_mismatch
            + self.stale_orders
            + self.undecided_requests
    }
}

impl fmt::Display for CampaignReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "campaign {}: {} stored orders;",
            self.campaign_id, self.stored_orders
        )?;
        let bad: Vec<String> = self
            .problems()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        if bad.is_empty() {
            write!(f, " clean")?;
        } else {
            write!(f, " {}", bad.join(" "))?;
        }
        for d in &self.details {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

/// What the orders topic says: every purchase decision, every order's
/// furthest status, and which events returned an order's units.
#[derive(Debug, Clone, Default)]
pub struct OrderLog {
    /// Decision events by request id, in topic order.
    pub decisions: HashMap<String, Vec<DecisionRecord>>,
    /// Order id -> (campaign, furthest status announced).
    pub order_status: HashMap<String, (String, OrderStatus)>,
    /// Order id -> the distinct events (by request id) that moved it from
    /// `reserved` to `cancelled` or `expired`, i.e. returned its units.
    pub returns: HashMap<String, BTreeSet<String>>,
    /// Messages read.
    pub messages: usize,
    /// Messages that are not order events (they belong in the DLQ).
    pub unparsed: usize,
}

impl OrderLog {
    /// Folds one message payload into the log.
    pub fn add(&mut self, payload: &[u8]) {
        self.messages += 1;
        let Ok(event) = serde_json::from_slice::<OrderEvent>(payload) else {
            self.unparsed += 1;
            return;
        };
        if let Some(d) = event.decision() {
            self.decisions
                .entry(d.request_id.clone())
                .or_default()
                .push(DecisionRecord::from(&d));
        }
        if let Some((status, row)) = event.order_state() {
            let entry = self
                .order_status
                .entry(row.order_id.to_owned())
                .or_insert_with(|| (row.campaign_id.to_owned(), status));
            if status.rank() > entry.1.rank() {
                entry.1 = status;
            }
            if matches!(status, OrderStatus::Cancelled | OrderStatus::Expired) {
                self.returns
                    .entry(row.order_id.to_owned())
                    .or_default()
                    .insert(event.request_id().to_owned());
            }
        }
    }

    /// Builds a log from payloads.
    pub fn from_payloads<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut log = Self::default();
        for p in payloads {
            log.add(p);
        }
        log
    }

    /// The decisions of one campaign's requests (every event of each).
    pub fn campaign_decisions<'a>(
        &'a self,
        campaign_id: &'a str,
    ) -> impl Iterator<Item = &'a DecisionRecord> + 'a {
        self.decisions
            .values()
            .flatten()
            .filter(move |d| d.campaign_id == campaign_id)
    }

    /// The first decision event of a request.
    pub fn first(&self, request_id: &str) -> Option<&DecisionRecord> {
        self.decisions.get(request_id).and_then(|v| v.first())
    }
}

/// Reads the orders topic (every partition, from the beginning to the end
/// it has when the read gets there) into an [`OrderLog`].
///
/// The end of a partition is where the broker's fetch answer says it is
/// (partition EOF), not what ListOffsets reports: tansu 0.6.0 answers
/// ListOffsets(latest) with the base offset of the last record batch + 1,
/// which hides every record after the first of a multi-record batch.
pub async fn read_order_log(settings: &KafkaSettings, topic: &str) -> anyhow::Result<OrderLog> {
    let consumer = settings
        .reader(&format!("{topic}.checker-{}", uuid::Uuid::new_v4()))
        .context("creating the checker's consumer")?;
    let mut log = OrderLog::default();
    crate::topic::read_range(
        &consumer,
        topic,
        |_, low| low,
        |m| {
            log.add(m.payload().unwrap_or_default());
            Ok(true)
        },
    )
    .await?;
    Ok(log)
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

/// What is known about a campaign besides the store and Redis.
#[derive(Debug, Clone, Copy, Default)]
pub struct Evidence<'a> {
    /// Decisions announced outside the log (HTTP answers, a bench's view).
    pub decisions: &'a [&'a DecisionRecord],
    /// The orders topic, when read: its decisions count as announced, and
    /// store orders, returned stock and order statuses are checked against it.
    pub log: Option<&'a OrderLog>,
    /// Request ids sent to the campaign; each must have a decision.
    pub sent: &'a [String],
}

const EXAMPLES: usize = 5;

fn note(
    details: &mut Vec<String>,
    shown: &mut HashMap<&'static str, usize>,
    kind: &'static str,
    what: String,
) {
    let n = shown.entry(kind).or_default();
    *n += 1;
    if *n <= EXAMPLES {
        details.push(format!("{kind}: {what}"));
    }
}

/// Checks one campaign against everything in `evidence`.
pub async fn check_campaign_with(
    store: &dyn OrderStore,
    redis: &mut ConnectionManager,
    keys: &KeyLayout,
    campaign_id: &str,
    per_user_limit: u32,
    evidence: &Evidence<'_>,
) -> anyhow::Result<CampaignReport> {
    let mut details = Vec::new();
    let mut shown = HashMap::new();
    let (total, available, reserved, paid) = redis_stock(redis, keys, campaign_id).await?;
    let redis_users: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(keys.campaign(campaign_id).users)
        .query_async(redis)
        .await?;
    let orders = stored_orders(store, campaign_id).await?;
    let total_units = total.max(0) as usize;

    // Every announced decision of the campaign, by request id.
    let mut announced: HashMap<&str, Vec<&DecisionRecord>> = HashMap::new();
    if let Some(log) = evidence.log {
        for d in log.campaign_decisions(campaign_id) {
            announced.entry(d.request_id.as_str()).or_default().push(d);
        }
    }
    for d in evidence
        .decisions
        .iter()
        .filter(|d| d.campaign_id == campaign_id)
    {
        announced.entry(d.request_id.as_str()).or_default().push(d);
    }
    let mut conflicting_decisions = 0;
    for (id, ds) in &announced {
        if let Some(other) = ds.iter().find(|d| **d != ds[0]) {
            conflicting_decisions += 1;
            note(
                &mut details,
                &mut shown,
                "conflicting decision",
                format!("{id}: {:?} vs {:?}", ds[0], other),
            );
        }
    }
    let mut undecided_requests = 0;
    for id in evidence.sent {
        if !announced.contains_key(id.as_str()) {
            undecided_requests += 1;
            note(&mut details, &mut shown, "undecided request", id.clone());
        }
    }
    let is_order =
        |d: &DecisionRecord| matches!(d.status, DecisionStatus::Reserved | DecisionStatus::Won);

    // Units a cancelled or expired order held went back on sale, so only
    // live orders (reserved, paid) count against the stock.
    let live: Vec<&OrderView> = orders
        .iter()
        .filter(|o| o.status.holds_stock())
        .collect();
    let stored_units: usize = live.iter().map(|o| o.quantity as usize).sum();
    let redis_units = (reserved + paid).max(0) as usize;
    let oversold = [stored_units, redis_units]
        .into_iter()
        .map(|u| u.saturating_sub(total_units))
        .max()
        .unwrap_or(0)
        + usize::from(available < 0);
    if oversold > 0 {
        note(
            &mut details,
            &mut shown,
            "oversold",
            format!(
                "total {total}, redis available {available} reserved {reserved} paid {paid}, \
                 {stored_units} live units in the store"
            ),
        );
    }

    let mut per_user: HashMap<&str, usize> = HashMap::new();
    for o in &live {
        *per_user.entry(o.user_id.as_str()).or_default() += o.quantity as usize;
    }
    let mut duplicate_orders = 0;
    let mut users: BTreeSet<&str> = per_user.keys().copied().collect();
    users.extend(redis_users.keys().map(String::as_str));
    let mut user_counter_mismatch = 0;
    for u in users {
        let in_store = per_user.get(u).copied().unwrap_or(0);
        let in_redis = redis_users.get(u).copied().unwrap_or(0);
        let over = in_store.max(in_redis.max(0) as usize);
        if over > per_user_limit as usize {
            duplicate_orders += over - per_user_limit as usize;
            note(
                &mut details,
                &mut shown,
                "user over limit",
                format!("{u} holds {in_store} units in the store, {in_redis} in redis (limit {per_user_limit})"),
            );
        }
        if in_store as i64 != in_redis {
            user_counter_mismatch += 1;
            note(
                &mut details,
                &mut shown,
                "user counter mismatch",
                format!("{u}: {in_store} live units in the store, redis says {in_redis}"),
            );
        }
    }
    let mut by_request: HashMap<&str, usize> = HashMap::new();
    for o in &orders {
        *by_request.entry(o.request_id.as_str()).or_default() += 1;
        if o.order_id != order_id_for(&o.request_id) {
            duplicate_orders += 1;
            note(
                &mut details,
                &mut shown,
                "duplicate order",
                format!(
                    "order {} is not derived from its request {}",
                    o.order_id, o.request_id
                ),
            );
        }
    }
    for (r, n) in by_request {
        if n > 1 {
            duplicate_orders += n - 1;
            note(
                &mut details,
                &mut shown,
                "duplicate order",
                format!("request {r} has {n} orders"),
            );
        }
    }

    let stored: HashMap<&str, &OrderView> =
        orders.iter().map(|o| (o.order_id.as_str(), o)).collect();
    let mut missing_from_store = 0;
    let mut reserved_order_ids: HashSet<&str> = HashSet::new();
    for ds in announced.values() {
        let d = ds[0];
        if !is_order(d) {
            continue;
        }
        let Some(id) = d.order_id.as_deref() else {
            continue;
        };
        reserved_order_ids.insert(id);
        if !stored.contains_key(id) {
            missing_from_store += 1;
            note(
                &mut details,
                &mut shown,
                "missing from store",
                format!("order {id} of request {}", d.request_id),
            );
        }
    }

    let (mut unexplained_orders, mut double_returned_stock, mut stale_orders) = (0, 0, 0);
    if let Some(log) = evidence.log {
        for o in &orders {
            let decision = announced
                .get(o.request_id.as_str())
                .map(|ds| ds[0])
                .filter(|d| is_order(d));
            match decision {
                None => {
                    unexplained_orders += 1;
                    note(
                        &mut details,
                        &mut shown,
                        "unexplained order",
                        format!(
                            "order {} of request {} has no reserved decision",
                            o.order_id, o.request_id
                        ),
                    );
                }
                Some(d) if d.user_id != o.user_id || d.quantity != o.quantity => {
                    unexplained_orders += 1;
                    note(
                        &mut details,
                        &mut shown,
                        "unexplained order",
                        format!(
                            "order {} ({} x{}) differs from its decision ({} x{})",
                            o.order_id, o.user_id, o.quantity, d.user_id, d.quantity
                        ),
                    );
                }
                Some(_) => {}
            }
        }
        for (order_id, (cid, status)) in &log.order_status {
            if cid != campaign_id {
                continue;
            }
            let behind = match stored.get(order_id.as_str()) {
                Some(o) => o.status.rank() < status.rank(),
                // Counted as missing when a decision announced it.
                None => !reserved_order_ids.contains(order_id.as_str()),
            };
            if behind {
                stale_orders += 1;
                note(
                    &mut details,
                    &mut shown,
                    "stale order",
                    format!(
                        "order {order_id} is {} in the log, {} in the store",
                        status.as_str(),
                        stored
                            .get(order_id.as_str())
                            .map_or("absent", |o| o.status.as_str())
                    ),
                );
            }
        }
        for (order_id, by) in &log.returns {
            let ours = log
                .order_status
                .get(order_id)
                .is_some_and(|(cid, _)| cid == campaign_id);
            if ours && by.len() > 1 {
                double_returned_stock += 1;
                note(
                    &mut details,
                    &mut shown,
                    "double-returned stock",
                    format!("order {order_id} returned by {by:?}"),
                );
            }
        }
    }
    if reserved < 0 || paid < 0 {
        double_returned_stock += 1;
        note(
            &mut details,
            &mut shown,
            "double-returned stock",
            format!("redis reserved {reserved}, paid {paid}"),
        );
    }
    let conservation_errors = usize::from(available + reserved + paid != total);
    if conservation_errors > 0 {
        note(
            &mut details,
            &mut shown,
            "conservation",
            format!("available {available} + reserved {reserved} + paid {paid} != total {total}"),
        );
    }
    let store_counter_mismatch = stored_units.abs_diff(redis_units);
    if store_counter_mismatch > 0 {
        note(
            &mut details,
            &mut shown,
            "store/counter mismatch",
            format!(
                "{stored_units} live units in the store, redis reserved + paid = {redis_units}"
            ),
        );
    }
    for (kind, n) in shown {
        if n > EXAMPLES {
            details.push(format!("{kind}: ... {} more", n - EXAMPLES));
        }
    }

    Ok(CampaignReport {
        campaign_id: campaign_id.to_owned(),
        stored_orders: orders.len(),
        store_counter_mismatch,
        oversold,
        duplicate_orders,
        missing_from_store,
        conservation_errors,
        user_counter_mismatch,
        undecided_requests,
        conflicting_decisions,
        unexplained_orders,
        double_returned_stock,
        stale_orders,
        details,
    })
}
