//! Reading what the checks compare: the orders topic, a dead-letter topic,
//! the order store and the campaign's Redis state.

use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::Context;
use rdkafka::message::Message;
use redis::aio::ConnectionManager;
use seckill_kafka::{header_str, headers, KafkaSettings};
use seckill_schemas::state::{stock, StockCounters};
use seckill_schemas::{
    CampaignOutcome, CampaignSpec, Decision, DecisionStatus, KeyLayout, OrderEvent, OrderStatus,
    OrderView,
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

impl DecisionRecord {
    /// Whether the decision made an order (reserved, or a lottery win).
    pub fn made_order(&self) -> bool {
        matches!(self.status, DecisionStatus::Reserved | DecisionStatus::Won)
    }
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

/// What the orders topic says: every purchase decision, every order's
/// furthest status, and which events returned an order's units.
#[derive(Debug, Clone, Default)]
pub struct OrderLog {
    /// Decision events by request id, in topic order.
    pub decisions: HashMap<String, Vec<DecisionRecord>>,
    /// Order id -> (campaign, furthest status announced).
    pub order_status: HashMap<String, (String, OrderStatus)>,
    /// Order id -> its units.
    pub order_units: HashMap<String, u32>,
    /// Order id -> the distinct events (by request id) that moved it from
    /// `reserved` to `cancelled` or `expired`, i.e. returned its units.
    pub returns: HashMap<String, BTreeSet<String>>,
    /// Per campaign: units ever added by the log (applied creates, each
    /// stock bucket's share, and adds of stock).
    pub stock_added: HashMap<String, i64>,
    /// Per campaign: units stock buckets lent to siblings (applied
    /// borrows) and units they received (applied transfers); once every
    /// command settled the two are equal: nothing in transit.
    pub lent: HashMap<String, i64>,
    pub received: HashMap<String, i64>,
    /// Request ids of the commands counted above: a redelivered command
    /// announces its answer again, and counts once.
    pub counted: HashSet<String>,
    /// Messages read.
    pub messages: usize,
    /// Messages that are not order events (they belong in the DLQ).
    pub unparsed: usize,
}

impl OrderLog {
    /// Folds one message payload into the log.
    pub fn add(&mut self, payload: &[u8]) {
        self.messages += 1;
        let Ok(event) = OrderEvent::from_json(payload) else {
            self.unparsed += 1;
            return;
        };
        if let Some(cid) = event.reset_campaign() {
            // An applied reset forgets the campaign's decisions and orders
            // (Redis and the store do the same).
            self.forget(cid);
            return;
        }
        if let OrderEvent::CampaignApplied(a) = &event {
            let units = i64::try_from(a.quantity.unwrap_or(0)).unwrap_or(i64::MAX);
            let counter = match (a.action.as_str(), a.outcome) {
                ("create", CampaignOutcome::Created) => {
                    let units = match (a.quantity, &a.campaign) {
                        (Some(_), _) => units,
                        (None, Some(spec)) => i64::try_from(spec.stock).unwrap_or(i64::MAX),
                        (None, None) => 0,
                    };
                    Some((&mut self.stock_added, units))
                }
                ("add_stock", CampaignOutcome::Applied) => Some((&mut self.stock_added, units)),
                ("borrow", CampaignOutcome::Applied) => Some((&mut self.lent, units)),
                ("transfer", CampaignOutcome::Applied) => Some((&mut self.received, units)),
                _ => None,
            };
            if let Some((map, units)) = counter {
                if self.counted.insert(a.request_id.clone()) {
                    *map.entry(a.campaign_id.clone()).or_default() += units;
                }
            }
        }
        if let Some(d) = event.decision() {
            self.decisions
                .entry(d.request_id.clone())
                .or_default()
                .push(DecisionRecord::from(&d));
        }
        if let Some((status, row)) = event.order_state() {
            self.order_units
                .insert(row.order_id.to_owned(), row.quantity);
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

    fn forget(&mut self, campaign_id: &str) {
        self.decisions.retain(|_, ds| {
            ds.retain(|d| d.campaign_id != campaign_id);
            !ds.is_empty()
        });
        let gone: Vec<String> = self
            .order_status
            .iter()
            .filter(|(_, (cid, _))| cid == campaign_id)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.order_status.remove(&id);
            self.order_units.remove(&id);
            self.returns.remove(&id);
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

    /// Units of `campaign_id`'s orders that went back on sale (counted
    /// once per order).
    pub fn returned_units(&self, campaign_id: &str) -> u64 {
        self.returns
            .keys()
            .filter(|id| {
                self.order_status
                    .get(*id)
                    .is_some_and(|(cid, _)| cid == campaign_id)
            })
            .map(|id| u64::from(self.order_units.get(id).copied().unwrap_or(0)))
            .sum()
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

/// A message on a dead-letter topic, with the headers that say why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub payload: Vec<u8>,
    pub error_class: Option<String>,
    pub error: Option<String>,
    pub original_topic: Option<String>,
}

/// Every message on a dead-letter topic.
pub async fn read_dead_letters(
    settings: &KafkaSettings,
    topic: &str,
) -> anyhow::Result<Vec<DeadLetter>> {
    let consumer = settings
        .reader(&format!("{topic}.checker-{}", uuid::Uuid::new_v4()))
        .context("creating the checker's consumer")?;
    let mut out = Vec::new();
    crate::topic::read_range(
        &consumer,
        topic,
        |_, low| low,
        |m| {
            let h = |name| header_str(&m, name).map(str::to_owned);
            out.push(DeadLetter {
                payload: m.payload().unwrap_or_default().to_vec(),
                error_class: h(headers::ERROR_CLASS),
                error: h(headers::ERROR),
                original_topic: h(headers::ORIGINAL_TOPIC),
            });
            Ok(true)
        },
    )
    .await?;
    Ok(out)
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

/// The campaign's Redis stock counters.
pub async fn redis_counters(
    redis: &mut ConnectionManager,
    keys: &KeyLayout,
    campaign_id: &str,
) -> anyhow::Result<StockCounters> {
    let values: [Option<i64>; 4] = redis::cmd("HMGET")
        .arg(keys.campaign(campaign_id).stock)
        .arg(&stock::ALL)
        .query_async(redis)
        .await?;
    Ok(StockCounters::from_values(values))
}

/// Redis stock counters of a campaign: (total, available, reserved, paid).
pub async fn redis_stock(
    redis: &mut ConnectionManager,
    keys: &KeyLayout,
    campaign_id: &str,
) -> anyhow::Result<(i64, i64, i64, i64)> {
    let c = redis_counters(redis, keys, campaign_id).await?;
    Ok((c.total, c.available, c.reserved, c.paid))
}

/// Units each user holds in the campaign, as Redis counts them.
pub async fn redis_users(
    redis: &mut ConnectionManager,
    keys: &KeyLayout,
    campaign_id: &str,
) -> anyhow::Result<HashMap<String, i64>> {
    Ok(redis::cmd("HGETALL")
        .arg(keys.campaign(campaign_id).users)
        .query_async(redis)
        .await?)
}

/// One stock bucket's Redis state.
#[derive(Debug, Clone, Default)]
pub struct BucketSnapshot {
    pub counters: StockCounters,
    pub users: HashMap<String, i64>,
}

/// A campaign's state, read once for all checks. For a campaign with
/// stock buckets the counters and holdings are every bucket's added up,
/// and `buckets` holds each bucket's own (empty for one bucket).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub campaign_id: String,
    pub counters: StockCounters,
    pub users: HashMap<String, i64>,
    pub orders: Vec<OrderView>,
    pub buckets: Vec<BucketSnapshot>,
}

/// The stock buckets of a campaign, by its stored definition (1 when it
/// has none, or no definition).
pub async fn bucket_count(
    redis: &mut ConnectionManager,
    keys: &KeyLayout,
    campaign_id: &str,
) -> anyhow::Result<u32> {
    let def: Option<String> = redis::cmd("HGET")
        .arg(keys.campaign(campaign_id).meta)
        .arg(seckill_schemas::state::meta::DEFINITION)
        .query_async(redis)
        .await?;
    Ok(def
        .and_then(|d| serde_json::from_str::<CampaignSpec>(&d).ok())
        .map_or(1, |s| s.bucket_count()))
}

impl Snapshot {
    pub async fn read(
        store: &dyn OrderStore,
        redis: &mut ConnectionManager,
        keys: &KeyLayout,
        campaign_id: &str,
    ) -> anyhow::Result<Self> {
        let count = bucket_count(redis, keys, campaign_id).await?;
        if count <= 1 {
            return Ok(Self {
                campaign_id: campaign_id.to_owned(),
                counters: redis_counters(redis, keys, campaign_id).await?,
                users: redis_users(redis, keys, campaign_id).await?,
                orders: stored_orders(store, campaign_id).await?,
                buckets: Vec::new(),
            });
        }
        let mut snap = Self {
            campaign_id: campaign_id.to_owned(),
            ..Self::default()
        };
        for b in 0..count {
            let key = seckill_schemas::bucket_key(campaign_id, b);
            let bucket = BucketSnapshot {
                counters: redis_counters(redis, keys, &key).await?,
                users: redis_users(redis, keys, &key).await?,
            };
            let c = &mut snap.counters;
            c.total += bucket.counters.total;
            c.available += bucket.counters.available;
            c.reserved += bucket.counters.reserved;
            c.paid += bucket.counters.paid;
            for (u, n) in &bucket.users {
                *snap.users.entry(u.clone()).or_default() += n;
            }
            snap.buckets.push(bucket);
        }
        snap.orders = stored_orders(store, campaign_id).await?;
        Ok(snap)
    }
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
