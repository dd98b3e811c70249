//! `seckill reconcile <campaign> [--repair]`: the order store plus the
//! order log are the record; Redis is the fast gate. This rebuilds what
//! Redis should hold from the record, prints every difference, and with
//! `--repair` writes the rebuilt state (e.g. after Redis lost its data).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context};
use clap::Args;
use rdkafka::message::Message;
use redis::aio::ConnectionManager;
use serde_json::json;

use rdkafka::producer::FutureRecord;
use seckill_processors::{meta_fields, restore, CampaignImage};
use seckill_schemas::state::{self, Answer, Payment, StockCounters, StoredOrder};
use seckill_schemas::{
    CampaignAction, CampaignCommand, CampaignOutcome, CampaignSpec, DecisionStatus, KeyLayout,
    OrderEvent, OrderStatus, OrderView, RequestEvent, SCHEMA_VERSION,
};

use crate::args::{CommandArgs, KafkaArgs, RedisArgs, StoreArgs};
use seckill_cli::topic::read_range;

#[derive(Debug, Args)]
pub(crate) struct ReconcileCmd {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    store: StoreArgs,
    /// The command key signs a repair's fence.
    #[command(flatten)]
    commands: CommandArgs,
    /// The campaign to check.
    campaign: String,
    /// Rewrite the campaign's Redis state from the store and the log. The
    /// campaign is fenced meanwhile: its processor holds its requests
    /// (they are decided after the repair, none is lost).
    #[arg(long)]
    repair: bool,
    /// How long a repair's fence holds the campaign at most; past it the
    /// processor goes on and the repair writes nothing.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(5..=3600))]
    fence_secs: u64,
    /// Also write the result as Prometheus text to this file (for a
    /// node_exporter textfile collector: a one-shot job has no /metrics).
    #[arg(long, env = "SECKILL_RECONCILE_METRICS_FILE")]
    metrics_file: Option<std::path::PathBuf>,
}

/// Everything the order log says about one campaign.
#[derive(Debug, Default)]
struct Record {
    spec: Option<CampaignSpec>,
    created_at_ms: i64,
    closed: bool,
    published: bool,
    added: u64,
    added_to_prize: BTreeMap<String, u64>,
    orders: BTreeMap<String, StoredOrder>,
    decisions: BTreeMap<String, Answer>,
    attempts: BTreeMap<String, u64>,
}

impl Record {
    /// Keeps the further-along status of an order (statuses only move up).
    fn merge(&mut self, order_id: &str, o: StoredOrder) {
        match self.orders.get(order_id) {
            Some(have) if have.status.rank() >= o.status.rank() => {}
            _ => {
                self.orders.insert(order_id.to_owned(), o);
            }
        }
    }

    fn fold(&mut self, event: &OrderEvent) {
        if let OrderEvent::CampaignApplied(a) = event {
            let applied = matches!(
                a.outcome,
                CampaignOutcome::Created | CampaignOutcome::Applied
            );
            match (a.action.as_str(), applied) {
                ("create", true) => {
                    if let Some(spec) = &a.campaign {
                        self.spec = Some(spec.clone());
                        self.created_at_ms = a.decided_at_ms;
                    }
                }
                ("add_stock", true) => {
                    let q = a.quantity.unwrap_or(0);
                    self.added += q;
                    if let Some(p) = &a.prize_id {
                        *self.added_to_prize.entry(p.clone()).or_default() += q;
                    }
                }
                ("close", true) => self.closed = true,
                ("publish", true) => self.published = true,
                ("reset", true) => {
                    self.orders.clear();
                    self.decisions.clear();
                    self.attempts.clear();
                }
                _ => {}
            }
            return;
        }
        if let Some((status, r)) = event.order_state() {
            self.merge(
                r.order_id,
                StoredOrder {
                    status,
                    user_id: r.user_id.to_owned(),
                    quantity: r.quantity,
                    price: r.price,
                    purchase_request_id: r.purchase_request_id.to_owned(),
                    created_at_ms: r.created_at_ms,
                    expires_at_ms: r.expires_at_ms,
                    prize_id: r.prize_id.map(str::to_owned),
                    // A pay's `paid` is decided at the pay's time: what a
                    // pay repeating it answers with again.
                    payment: r.payment_ref.map(|p| Payment {
                        paid_at_ms: r.changed_at_ms,
                        payment_ref: p.to_owned(),
                    }),
                },
            );
        }
        match event {
            OrderEvent::Reserved(e) | OrderEvent::Confirmed(e) => {
                let status = if e.prize_id.is_some() {
                    DecisionStatus::Won
                } else {
                    DecisionStatus::Reserved
                };
                if e.prize_id.is_some() {
                    *self.attempts.entry(e.user_id.clone()).or_default() += 1;
                }
                self.decisions.insert(
                    e.request_id.clone(),
                    Answer::Purchase {
                        status,
                        reason: None,
                        order_id: Some(e.order_id.clone()),
                        quantity: e.quantity,
                        decided_at_ms: e.decided_at_ms,
                        expires_at_ms: e.expires_at_ms,
                        price: e.price,
                        prize_id: e.prize_id.clone(),
                        confirmed: matches!(event, OrderEvent::Confirmed(_)),
                    },
                );
            }
            OrderEvent::Rejected(e) => {
                if e.status == DecisionStatus::Lost {
                    *self.attempts.entry(e.user_id.clone()).or_default() += 1;
                }
                self.decisions.insert(
                    e.request_id.clone(),
                    Answer::Purchase {
                        status: e.status,
                        reason: Some(e.reason),
                        order_id: None,
                        quantity: 0,
                        decided_at_ms: e.decided_at_ms,
                        expires_at_ms: 0,
                        price: 0,
                        prize_id: None,
                        confirmed: false,
                    },
                );
            }
            _ => {}
        }
    }

    /// The Redis state this record implies.
    fn image(&self, spec: &CampaignSpec) -> CampaignImage {
        let mut img = CampaignImage {
            meta: meta_fields(
                spec,
                self.closed,
                spec.draft && !self.published,
                self.created_at_ms,
            ),
            ..CampaignImage::default()
        };
        let total = spec.stock + self.added;
        let (mut reserved, mut paid) = (0u64, 0u64);
        let mut users: BTreeMap<&str, u64> = BTreeMap::new();
        let mut prize_live: BTreeMap<&str, u64> = BTreeMap::new();
        for (id, o) in &self.orders {
            let q = u64::from(o.quantity);
            match o.status {
                OrderStatus::Reserved => {
                    reserved += q;
                    img.deadlines.insert(id.clone(), o.expires_at_ms);
                }
                OrderStatus::Paid => paid += q,
                OrderStatus::Cancelled | OrderStatus::Expired => {}
            }
            if o.status.holds_stock() {
                *users.entry(&o.user_id).or_default() += q;
                if let Some(p) = &o.prize_id {
                    *prize_live.entry(p).or_default() += q;
                }
            }
            img.orders.insert(id.clone(), o.encode());
        }
        let counters = StockCounters {
            total: total as i64,
            available: total as i64 - reserved as i64 - paid as i64,
            reserved: reserved as i64,
            paid: paid as i64,
        };
        img.stock = counters
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        img.users = users
            .into_iter()
            .map(|(u, n)| (u.to_owned(), n.to_string()))
            .collect();
        for p in spec.draw_table() {
            let prize_total = p.stock + self.added_to_prize.get(&p.id).copied().unwrap_or(0);
            let live = prize_live.get(p.id.as_str()).copied().unwrap_or(0);
            img.prizes
                .insert(state::prizes::total(&p.id), prize_total.to_string());
            img.prizes
                .insert(p.id.clone(), prize_total.saturating_sub(live).to_string());
        }
        img.attempts = self
            .attempts
            .iter()
            .map(|(u, n)| (u.clone(), n.to_string()))
            .collect();
        img.requests = self
            .decisions
            .iter()
            .map(|(r, a)| (r.clone(), a.encode()))
            .collect();
        img
    }
}

/// An order of the store as the campaign's `orders` hash holds it.
fn from_store(o: &OrderView) -> StoredOrder {
    StoredOrder {
        status: o.status,
        user_id: o.user_id.clone(),
        quantity: o.quantity,
        price: o.price,
        purchase_request_id: o.request_id.clone(),
        created_at_ms: o.created_at_ms,
        expires_at_ms: o.expires_at_ms,
        prize_id: o.prize_id.clone(),
        // The store's `updated_at_ms` of a paid order is the time of the
        // pay that paid it (a status never moves on from paid).
        payment: o.payment_ref.clone().map(|p| Payment {
            paid_at_ms: o.updated_at_ms,
            payment_ref: p,
        }),
    }
}

async fn hash(con: &mut ConnectionManager, key: &str) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(redis::cmd("HGETALL").arg(key).query_async(con).await?)
}

/// Every field where `have` (Redis) differs from `want`.
fn differences(
    what: &str,
    have: &BTreeMap<String, String>,
    want: &BTreeMap<String, String>,
    out: &mut Vec<String>,
) {
    let keys: BTreeSet<&String> = have.keys().chain(want.keys()).collect();
    let mut shown = 0;
    let mut more = 0;
    for k in keys {
        let (h, w) = (have.get(k), want.get(k));
        // A zero count and a missing field mean the same.
        let zero = |v: Option<&String>| v.is_none_or(|v| v == "0");
        if h == w || (zero(h) && zero(w)) {
            continue;
        }
        if shown < 20 {
            out.push(format!(
                "{what} {k}: redis has {}, the record says {}",
                h.map_or("nothing", String::as_str),
                w.map_or("nothing", String::as_str)
            ));
            shown += 1;
        } else {
            more += 1;
        }
    }
    if more > 0 {
        out.push(format!("{what}: {more} more difference(s)"));
    }
}

/// What the record says against what Redis holds, at one moment.
struct Survey {
    record: Record,
    want: CampaignImage,
    diffs: Vec<String>,
}

impl ReconcileCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let cid = self.campaign.clone();
        let mut redis = seckill_processors::connect_redis(&self.redis.redis_url).await?;
        let keys = KeyLayout::new(self.redis.key_prefix.clone());
        let first = self.survey(&mut redis, &keys).await?;
        // Redis runs ahead of the log while a sale is live (decided, not yet
        // acknowledged), so a difference seen now may only be in flight. A
        // repair fences the campaign first: its processor holds every later
        // request and settles everything before the fence, so the second
        // look is exact and nothing is decided while the image is written.
        let (survey, repaired) = if self.repair && !first.diffs.is_empty() {
            let token = uuid::Uuid::new_v4().simple().to_string();
            let request_id = self.fence(&mut redis, &keys, &token).await?;
            let mut fenced = self.survey(&mut redis, &keys).await?;
            // The fence command is answered: when its batch is retried after
            // the repair it repeats this answer instead of fencing again.
            let applied = Answer::Campaign {
                outcome: CampaignOutcome::Applied,
                reason: None,
                decided_at_ms: redis_now_ms(&mut redis).await?,
            };
            fenced.want.requests.insert(request_id, applied.encode());
            restore(&mut redis, &keys, &cid, &fenced.want, &token)
                .await
                .with_context(|| format!("writing the rebuilt state of {cid} to Redis"))?;
            (fenced, true)
        } else {
            (first, false)
        };
        let Survey {
            record,
            want,
            diffs,
        } = survey;
        if let Some(path) = &self.metrics_file {
            write_metrics(path, &cid, diffs.len(), repaired)?;
        }
        println!(
            "{}",
            json!({
                "campaign": cid,
                "discrepancies": diffs.len(),
                "details": diffs,
                "record": {
                    "orders": record.orders.len(),
                    "decisions": record.decisions.len(),
                    "stock": want.stock,
                },
                "repaired": repaired,
            })
        );
        Ok(())
    }

    /// Sends a fence through the campaign's partition and waits until its
    /// processor has reached it with everything before it settled.
    /// Returns the fence command's request id.
    async fn fence(
        &self,
        redis: &mut ConnectionManager,
        keys: &KeyLayout,
        token: &str,
    ) -> anyhow::Result<String> {
        let cid = &self.campaign;
        let hold = std::time::Duration::from_secs(self.fence_secs);
        let until_ms = redis_now_ms(redis).await? + hold.as_millis() as i64;
        let request_id = format!("repair-{token}");
        let mut event = RequestEvent::CampaignCommand(CampaignCommand {
            schema_version: SCHEMA_VERSION,
            request_id: request_id.clone(),
            campaign_id: cid.clone(),
            action: CampaignAction::Fence {
                token: token.to_owned(),
                until_ms,
            },
            requested_at_ms: None,
            auth: None,
        });
        event.sign(&self.commands.keys()?[0]);
        let payload = serde_json::to_vec(&event)?;
        let topic = self.kafka.topics().requests;
        let producer = self.kafka.settings().producer(10_000)?;
        producer
            .send(
                FutureRecord::to(&topic).key(cid.as_str()).payload(&payload),
                std::time::Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .with_context(|| format!("sending the repair fence to {topic}"))?;
        let meta = keys.campaign(cid).meta;
        // A quarter of the hold is left for reading the log and writing.
        let wait = hold - hold / 4;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let ready: Option<String> = redis::cmd("HGET")
                .arg(&meta)
                .arg(state::meta::FENCE_READY)
                .query_async(redis)
                .await?;
            if ready.as_deref() == Some(token) {
                return Ok(request_id);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "campaign {cid:?}: its processor did not reach the repair fence within {} s \
                     (is a processor running and keeping up with {topic}?); nothing was written, \
                     and the campaign's requests are held until the fence times out",
                    wait.as_secs()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Reads the log and the store, rebuilds the campaign's Redis state and
    /// compares it with what Redis holds.
    async fn survey(
        &self,
        redis: &mut ConnectionManager,
        keys: &KeyLayout,
    ) -> anyhow::Result<Survey> {
        let cid = self.campaign.clone();
        let settings = self.kafka.settings();
        let topic = self.kafka.topics().orders;

        // The log, in order: a campaign's events all share its partition.
        let consumer = settings.reader(&format!("{topic}.reconcile-{}", uuid::Uuid::new_v4()))?;
        let mut record = Record::default();
        read_range(
            &consumer,
            &topic,
            |_, low| low,
            |m| {
                if m.key() == Some(cid.as_bytes()) {
                    if let Some(Ok(e)) = m.payload().map(OrderEvent::from_json) {
                        record.fold(&e);
                    }
                }
                Ok(true)
            },
        )
        .await?;

        // The store holds what the log may no longer (retention) or not yet
        // show; the further-along status wins.
        let store = crate::roles::store(&self.store).await?;
        let stored = seckill_cli::check::stored_orders(&*store, &cid).await?;
        for o in &stored {
            record.merge(&o.order_id, from_store(o));
        }

        let k = keys.campaign(&cid);
        let spec = match record.spec.clone() {
            Some(s) => s,
            None => {
                let def: Option<String> = redis::cmd("HGET")
                    .arg(&k.meta)
                    .arg(state::meta::DEFINITION)
                    .query_async(redis)
                    .await?;
                match def.and_then(|d| serde_json::from_str(&d).ok()) {
                    Some(s) => s,
                    None => bail!("campaign {cid:?}: no definition in the order log or in Redis; nothing to reconcile"),
                }
            }
        };
        if spec.bucket_count() > 1 {
            // Each bucket is a campaign state of its own, and units move
            // between them; rebuilding one from the log alone is not done
            // (yet): refuse rather than write a wrong image.
            bail!(
                "campaign {cid:?} has {} stock buckets; `seckill reconcile` rebuilds campaigns                  of one bucket only (check a bucketed campaign with the invariant checker:                  `seckill bench` reports, the e2e suites assert)",
                spec.bucket_count()
            );
        }
        let want = record.image(&spec);

        let mut diffs = Vec::new();
        let meta = hash(redis, &k.meta).await?;
        if meta.get(state::meta::DEFINITION) != want.meta.get(state::meta::DEFINITION) {
            diffs.push("meta: the campaign definition is missing or differs in Redis".to_owned());
        }
        differences(
            "stock",
            &hash(redis, &k.stock).await?,
            &want.stock,
            &mut diffs,
        );
        differences(
            "user",
            &hash(redis, &k.users).await?,
            &want.users,
            &mut diffs,
        );
        differences(
            "prize",
            &hash(redis, &k.prizes).await?,
            &want.prizes,
            &mut diffs,
        );
        // Orders compare by status and payment reference; an order Redis
        // holds in a form this build cannot read is a difference too.
        let status = |v: &String| {
            StoredOrder::decode(v).map_or_else(
                |e| format!("unreadable ({e})"),
                |o| match o.payment {
                    Some(p) => format!("{} (payment_ref {:?})", o.status, p.payment_ref),
                    None => o.status.to_string(),
                },
            )
        };
        let have_orders: BTreeMap<String, String> = hash(redis, &k.orders)
            .await?
            .iter()
            .map(|(id, v)| (id.clone(), status(v)))
            .collect();
        let want_orders: BTreeMap<String, String> = want
            .orders
            .iter()
            .map(|(id, v)| (id.clone(), status(v)))
            .collect();
        differences("order", &have_orders, &want_orders, &mut diffs);
        let recorded: BTreeSet<String> = redis::cmd("HKEYS")
            .arg(&k.requests)
            .query_async::<Vec<String>>(redis)
            .await?
            .into_iter()
            .collect();
        let missing = want
            .requests
            .keys()
            .filter(|r| !recorded.contains(*r))
            .count();
        if missing > 0 {
            diffs.push(format!("requests: {missing} decided request(s) not recorded in Redis (a redelivery would be decided again)"));
        }

        Ok(Survey {
            record,
            want,
            diffs,
        })
    }
}

/// Redis' clock (the one decide.lua reads), unix ms.
async fn redis_now_ms(redis: &mut ConnectionManager) -> anyhow::Result<i64> {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(redis).await?;
    Ok(secs * 1000 + micros / 1000)
}

fn write_metrics(
    path: &std::path::Path,
    campaign: &str,
    discrepancies: usize,
    repaired: bool,
) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let found = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "seckill_reconcile_discrepancies",
            "Differences between Redis and the order record found by the last reconcile",
        ),
        &["campaign"],
    )?;
    let fixed = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "seckill_reconcile_repaired",
            "1 when the last reconcile rewrote Redis",
        ),
        &["campaign"],
    )?;
    registry.register(Box::new(found.clone()))?;
    registry.register(Box::new(fixed.clone()))?;
    found
        .with_label_values(&[campaign])
        .set(discrepancies as i64);
    fixed
        .with_label_values(&[campaign])
        .set(i64::from(repaired));
    let mut text = String::new();
    prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut text)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use seckill_schemas::{order_id_for, AwardType, OrderChanged, Reserved};

    fn reserved(request: &str) -> Reserved {
        Reserved {
            schema_version: 1,
            request_id: request.into(),
            order_id: order_id_for(request),
            campaign_id: "c".into(),
            user_id: "alice".into(),
            quantity: 1,
            price: 5,
            requested_at_ms: 1,
            decided_at_ms: 2,
            expires_at_ms: 300_002,
            prize_id: None,
            item_name: "phone".into(),
            award_type: AwardType::Physical,
        }
    }

    fn paid(request: &str, payment_ref: &str, at: i64) -> OrderChanged {
        OrderChanged {
            schema_version: 1,
            request_id: format!("pay-{request}"),
            order_id: order_id_for(request),
            purchase_request_id: request.into(),
            campaign_id: "c".into(),
            user_id: "alice".into(),
            quantity: 1,
            price: 5,
            created_at_ms: 2,
            expires_at_ms: 300_002,
            decided_at_ms: at,
            prize_id: None,
            item_name: "phone".into(),
            award_type: AwardType::Physical,
            payment_ref: Some(payment_ref.into()),
        }
    }

    /// A paid order rebuilt from the log, or from the store when the log no
    /// longer has it, keeps its payment reference and pay time: what
    /// decide.lua compares a later pay against.
    #[test]
    fn rebuilt_paid_orders_keep_their_payment() {
        let spec = CampaignSpec {
            id: "c".into(),
            name: "c".into(),
            stock: 5,
            per_user_limit: 2,
            ends_at: chrono::Utc::now() + chrono::Duration::hours(1),
            payment_timeout_secs: 300,
            ..CampaignSpec::default()
        };
        let mut record = Record::default();
        // From the log: reserved then paid (and the paid event again, from
        // a pay repeating the first).
        record.fold(&OrderEvent::Reserved(reserved("r1")));
        record.fold(&OrderEvent::Paid(paid("r1", "psp|1", 10)));
        record.fold(&OrderEvent::Paid(paid("r1", "psp|1", 10)));
        // From the store only.
        let o = paid("r2", "psp-2", 20);
        let view = OrderView {
            order_id: o.order_id.clone(),
            request_id: o.purchase_request_id.clone(),
            campaign_id: o.campaign_id.clone(),
            user_id: o.user_id.clone(),
            quantity: 1,
            price: 5,
            status: OrderStatus::Paid,
            created_at_ms: 2,
            updated_at_ms: 20,
            expires_at_ms: 300_002,
            prize_id: None,
            item_name: "phone".into(),
            award_type: AwardType::Physical,
            payment_ref: Some("psp-2".into()),
        };
        record.merge(&view.order_id, from_store(&view));
        let image = record.image(&spec);
        for (request, payment_ref, at) in [("r1", "psp|1", 10), ("r2", "psp-2", 20)] {
            let raw = &image.orders[&order_id_for(request)];
            let o = StoredOrder::decode(raw).expect("order record reads");
            assert_eq!(o.status, OrderStatus::Paid, "{request}");
            assert_eq!(
                o.payment,
                Some(Payment {
                    paid_at_ms: at,
                    payment_ref: payment_ref.into(),
                }),
                "{request}: {raw}"
            );
        }
        assert_eq!(image.stock["paid"], "2");
    }
}
