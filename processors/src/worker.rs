//! The stages of a processor, shared by the batch loop and the expiry
//! sweeper: deciding a batch (Redis), emitting its events, and settling
//! them with the broker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use seckill_kafka::{dead_letter, retry_until, Backoff, ErrorClass};
use seckill_schemas::{CampaignSpec, KeyLayout, RequestEvent};

use crate::batch::{Batch, InFlight};
use crate::decide::{DecideError, Decider};
use crate::translate::{translate, Lookup};
use crate::{internal_events, ProcessorConfig};

pub(crate) struct Worker {
    decider: Decider,
    defs: Mutex<HashMap<String, Arc<CampaignSpec>>>,
    /// The requests topic's partition count and when it was read.
    partitions: Mutex<(i32, Option<Instant>)>,
    keys: KeyLayout,
    /// Progress per partition, written with each batch's lookups.
    progress: crate::progress::Progress,
    redis: ConnectionManager,
    producer: FutureProducer,
    config: ProcessorConfig,
    cancel: CancellationToken,
    /// Batches decided but not yet settled (their events may not be in
    /// the orders log yet).
    unsettled: AtomicUsize,
}

/// Marks a fence as reached, only while it is still the one in force.
const FENCE_READY: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[3] then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
end
return 1
";

impl Worker {
    pub(crate) fn new(
        config: ProcessorConfig,
        redis: ConnectionManager,
        producer: FutureProducer,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            decider: Decider::with_retention(
                &config.key_prefix,
                config.campaign_retention_secs,
                config.draw_key.clone(),
            ),
            defs: Mutex::new(HashMap::new()),
            partitions: Mutex::new((0, None)),
            keys: KeyLayout::new(config.key_prefix.clone()),
            progress: crate::progress::Progress::new(&KeyLayout::new(config.key_prefix.clone())),
            redis,
            producer,
            config,
            cancel,
            unsettled: AtomicUsize::new(0),
        }
    }

    /// A decided batch goes on towards the broker.
    pub(crate) fn batch_unsettled(&self) {
        self.unsettled.fetch_add(1, Ordering::SeqCst);
    }

    /// A batch's events are acknowledged (or the batch was given up).
    pub(crate) fn batch_settled(&self) {
        self.unsettled.fetch_sub(1, Ordering::SeqCst);
    }

    /// A campaign of the batch in hand is fenced for a repair. Once every
    /// batch before it is settled, every event decided before the fence is
    /// in the orders log: say so in the campaign's meta, where `seckill
    /// reconcile --repair` waits for it before reading the log.
    async fn fence_reached(&self, campaign_id: &str, token: &str) {
        if self.unsettled.load(Ordering::SeqCst) == 0 {
            self.mark_fence_ready(campaign_id, token).await;
        }
    }

    /// Marks the fence `token` of `campaign_id` as reached (only while it
    /// is the fence in force).
    pub(crate) async fn mark_fence_ready(&self, campaign_id: &str, token: &str) {
        let mut con = self.redis.clone();
        let marked: Result<i64, _> = redis::Script::new(FENCE_READY)
            .key(self.keys.campaign(campaign_id).meta)
            .arg(seckill_schemas::state::meta::FENCE)
            .arg(seckill_schemas::state::meta::FENCE_READY)
            .arg(token)
            .invoke_async(&mut con)
            .await;
        if let Err(e) = marked {
            tracing::warn!(campaign_id, error = %e, "could not mark the repair fence as reached");
        }
    }

    pub(crate) fn config(&self) -> &ProcessorConfig {
        &self.config
    }

    pub(crate) fn redis(&self) -> ConnectionManager {
        self.redis.clone()
    }

    pub(crate) fn keys(&self) -> &KeyLayout {
        &self.keys
    }

    pub(crate) fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    pub(crate) fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Decides every campaign of `batch`: one Lua call per campaign, run
    /// concurrently, repeated until all succeed (a repeat returns the
    /// stored decisions). Returns `None` only when stopped first.
    pub(crate) async fn decide(&self, mut batch: Batch) -> Option<Batch> {
        crate::buckets::route(self, &mut batch).await?;
        let all = retry_until(
            &self.cancel,
            Backoff::STEP,
            || async {
                let calls = batch.campaigns.iter().map(|part| {
                    let mut con = self.redis.clone();
                    let events: Vec<&RequestEvent> =
                        part.requests.iter().map(|r| &r.event).collect();
                    async move {
                        let cid = part.campaign_id.as_str();
                        let spec = self
                            .definition(&mut con, cid)
                            .await
                            .map_err(DecideError::from)?;
                        let started = Instant::now();
                        let r = self
                            .decider
                            .decide(&mut con, cid, spec.as_deref(), &events)
                            .await;
                        internal_events::lua_call(started.elapsed().as_secs_f64());
                        if let Err(DecideError::Fenced { token }) = &r {
                            self.fence_reached(cid, token).await;
                        }
                        r.map(|outs| (spec, outs))
                    }
                });
                // The batch is decided when every campaign of it is.
                join_all(calls)
                    .await
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()
            },
            |e| match e {
                DecideError::Fenced { .. } => tracing::info!(
                    error = %e,
                    "batch held: a campaign of it is being repaired"
                ),
                e => internal_events::step_failed("decide", e),
            },
        )
        .await?;
        for (part, (spec, outcomes)) in batch.campaigns.iter_mut().zip(all) {
            // A campaign created in this very batch has no stored definition
            // yet; its create command carries it.
            part.spec = spec.or_else(|| {
                part.requests.iter().find_map(|r| match &r.event {
                    RequestEvent::UpsertCampaign(u) => Some(Arc::new(u.campaign.clone())),
                    _ => None,
                })
            });
            part.outcomes = outcomes;
        }
        Some(batch)
    }

    /// Turns a decided batch into events, writes their lookups and hands
    /// the events to the producer. Returns `None` only when stopped first.
    pub(crate) async fn emit(&self, batch: Batch) -> Option<InFlight> {
        let Batch {
            messages,
            campaigns,
            undecidable,
            misplaced,
        } = batch;
        let mut payloads: Vec<(String, Vec<u8>)> = Vec::with_capacity(messages.len());
        let mut lookups = Vec::new();
        let mut fences = Vec::new();
        let mut bucket_commands = Vec::new();
        for part in campaigns {
            for (request, records) in part.requests.iter().zip(part.outcomes) {
                if let RequestEvent::CampaignCommand(c) = &request.event {
                    if let seckill_schemas::CampaignAction::Fence { token, .. } = &c.action {
                        fences.push((part.campaign_id.clone(), token.clone()));
                    }
                }
                let message_ms = messages[request.at].timestamp().to_millis().unwrap_or(0);
                let (records, mut work) =
                    crate::buckets::take(&part.campaign_id, &request.event, records);
                let mut t = translate(&request.event, records, part.spec.as_deref(), message_ms);
                work.finish(
                    &part.campaign_id,
                    &request.event,
                    part.spec.as_deref(),
                    &mut t,
                );
                bucket_commands.append(&mut work.commands);
                for e in &t.events {
                    if let Some(d) = e.decision() {
                        internal_events::decided(d.status.as_str());
                    }
                    payloads.push((
                        part.campaign_id.clone(),
                        serde_json::to_vec(e).unwrap_or_default(),
                    ));
                }
                lookups.extend(t.lookups.into_iter().map(|l| (part.campaign_id.clone(), l)));
            }
        }
        // Misplaced messages go to their own partition before anything of
        // this batch is settled: their offsets are stored with the batch's.
        for m in &misplaced {
            if !self
                .forward_misplaced(&messages[m.at], m.to, m.key.as_deref())
                .await
            {
                return None;
            }
        }
        // So are the stock buckets' commands (see crate::buckets).
        if !crate::buckets::send(self, &bucket_commands).await {
            return None;
        }
        for bad in &undecidable {
            if !self
                .dead_letter(&messages[bad.at], bad.class, &bad.reason)
                .await
            {
                return None;
            }
        }
        // The lookups go first: whoever reads an event must be able to
        // find what it names (a pay right after a reservation looks up the
        // order's campaign). The batch's progress goes with them.
        let writes = self.index_pipeline(&lookups);
        if let Some(pipe) = self.progress.add_to(writes, &messages) {
            retry_until(
                &self.cancel,
                Backoff::STEP,
                || {
                    let mut con = self.redis.clone();
                    let pipe = &pipe;
                    async move { pipe.query_async::<()>(&mut con).await }
                },
                |e| internal_events::step_failed("index", e),
            )
            .await?;
        }
        let deliveries = self.send_all(&payloads, 0..payloads.len()).await;
        Some(InFlight {
            messages,
            payloads,
            deliveries,
            fences,
        })
    }

    /// Waits until the broker has acknowledged every event of the batch,
    /// sending the refused ones again. Returns false only when stopped
    /// first: once `cancel` fires the batch has a short drain to be
    /// acknowledged (the usual case with the broker up), then it is
    /// abandoned. The delivery futures never resolve while the broker is
    /// down (message.timeout.ms = 0), so the wait is raced against the stop.
    pub(crate) async fn settle(&self, batch: &mut InFlight) -> bool {
        /// How long a batch in hand may still take once stopped.
        const DRAIN_ON_STOP: Duration = Duration::from_secs(2);
        // Receipts still to wait for, and the events to send again before
        // the next wait; locked only between awaits.
        let pending = Mutex::new((std::mem::take(&mut batch.deliveries), Vec::new()));
        let payloads = &batch.payloads;
        let attempt = || async {
            let (mut deliveries, again) = std::mem::take(&mut *lock(&pending));
            if !again.is_empty() {
                deliveries = self.send_all(payloads, again).await;
            }
            let results = join_all(
                deliveries
                    .into_iter()
                    .map(|(i, f)| async move { (i, f.await) }),
            )
            .await;
            let failed: Vec<usize> = results
                .into_iter()
                .filter_map(|(i, r)| match r {
                    Ok(Ok(_)) => None,
                    Ok(Err((e, _))) => {
                        internal_events::step_failed("produce", &e);
                        Some(i)
                    }
                    Err(_) => Some(i),
                })
                .collect();
            if failed.is_empty() {
                return Ok(());
            }
            let n = failed.len();
            lock(&pending).1 = failed;
            Err(n)
        };
        let settling = async {
            // The first wait runs even when already stopped: a batch that
            // was queued for settling is usually acknowledged by now.
            if attempt().await.is_ok() {
                return Some(());
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return None,
                _ = tokio::time::sleep(Backoff::STEP.first) => {}
            }
            retry_until(&self.cancel, Backoff::STEP, &attempt, |_| {}).await
        };
        let stopped = async {
            self.cancel.cancelled().await;
            tokio::time::sleep(DRAIN_ON_STOP).await;
        };
        let settled = tokio::select! {
            s = settling => s,
            _ = stopped => None,
        };
        if settled.is_none() {
            let mut ranges: std::collections::BTreeMap<(&str, i32), (i64, i64)> =
                std::collections::BTreeMap::new();
            for m in &batch.messages {
                let r = ranges
                    .entry((m.topic(), m.partition()))
                    .or_insert((m.offset(), m.offset()));
                *r = (r.0.min(m.offset()), r.1.max(m.offset()));
            }
            let ranges: Vec<String> = ranges
                .iter()
                .map(|((t, p), (lo, hi))| format!("{t}[{p}]@{lo}..={hi}"))
                .collect();
            tracing::warn!(
                batch = %ranges.join(","),
                events = batch.payloads.len(),
                "stopped before the broker acknowledged the batch's events; batch abandoned: its \
                 offsets stay unstored and it is redelivered (decisions are idempotent)"
            );
            return false;
        }
        internal_events::events_emitted(batch.payloads.len());
        true
    }

    /// The stored definition of a campaign, cached: a definition never
    /// changes once created (a different one is refused as a conflict).
    pub(crate) async fn definition(
        &self,
        con: &mut ConnectionManager,
        campaign_id: &str,
    ) -> Result<Option<Arc<CampaignSpec>>, redis::RedisError> {
        if let Some(spec) = lock(&self.defs).get(campaign_id) {
            return Ok(Some(Arc::clone(spec)));
        }
        let raw: Option<String> = redis::cmd("HGET")
            .arg(self.keys.campaign(campaign_id).meta)
            .arg(seckill_schemas::state::meta::DEFINITION)
            .query_async(con)
            .await?;
        let Some(spec) = raw.and_then(|r| serde_json::from_str::<CampaignSpec>(&r).ok()) else {
            return Ok(None);
        };
        let spec = Arc::new(spec);
        let mut defs = lock(&self.defs);
        if defs.len() > 10_000 {
            defs.clear();
        }
        defs.insert(campaign_id.to_owned(), Arc::clone(&spec));
        Ok(Some(spec))
    }

    /// Queues the payloads at `which` for sending, keyed by campaign.
    async fn send_all(
        &self,
        payloads: &[(String, Vec<u8>)],
        which: impl IntoIterator<Item = usize>,
    ) -> Vec<(usize, DeliveryFuture)> {
        let mut out = Vec::new();
        for i in which {
            let (cid, payload) = &payloads[i];
            let mut record = FutureRecord::to(&self.config.topics.orders)
                .key(cid.as_str())
                .payload(payload.as_slice());
            loop {
                match self.producer.send_result(record) {
                    Ok(f) => {
                        out.push((i, f));
                        break;
                    }
                    Err((e, r)) => {
                        // Queue full: let librdkafka drain it, then queue
                        // again (not a failure, so no backoff).
                        record = r;
                        tracing::debug!(error = %e, "producer queue full");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }
        out
    }

    /// Makes results findable without their campaign: decisions and
    /// command results by request id, campaigns by order id, and new
    /// campaigns for the expiry sweeper. The lookups of a batch are one
    /// HSET per lookup hash (see `KeyLayout::lookup`), plus its expiry.
    fn index_pipeline(&self, lookups: &[(String, Lookup)]) -> Option<redis::Pipeline> {
        use seckill_schemas::state::{lookup_shard, LookupKind, LookupWindows};
        let windows = self.lookup_windows();
        let window = windows.current(LookupWindows::now_secs());
        // Grouped by hash, whose key is formatted once per batch.
        let mut hashes: std::collections::BTreeMap<(LookupKind, u32), Vec<(&str, &str)>> =
            std::collections::BTreeMap::new();
        let mut pipe = redis::pipe();
        for (cid, l) in lookups {
            let (kind, id, value) = match l {
                Lookup::Result { request_id, json } => {
                    (LookupKind::Result, request_id.as_str(), json.as_str())
                }
                Lookup::OrderCampaign { order_id } => {
                    (LookupKind::OrderCampaign, order_id.as_str(), cid.as_str())
                }
                Lookup::NewCampaign => {
                    pipe.sadd(self.keys.campaigns(), cid).ignore();
                    continue;
                }
            };
            hashes
                .entry((kind, lookup_shard(id)))
                .or_default()
                .push((id, value));
        }
        let expires_at = windows.expires_at(window);
        for (&(kind, shard), fields) in &hashes {
            let key = self.keys.lookup_hash(kind, window, shard);
            pipe.hset_multiple(&key, fields).ignore();
            pipe.cmd("EXPIREAT").arg(&key).arg(expires_at).ignore();
        }
        (!lookups.is_empty()).then_some(pipe)
    }

    fn lookup_windows(&self) -> seckill_schemas::state::LookupWindows {
        seckill_schemas::state::LookupWindows::new(self.config.decision_ttl_secs)
    }

    /// Publishes how long lookups are kept, so that ingest reads the same
    /// windows this processor writes.
    pub(crate) async fn publish_lookup_ttl(&self) {
        let mut con = self.redis.clone();
        let set: Result<(), _> = redis::cmd("SET")
            .arg(self.keys.lookup_ttl())
            .arg(self.lookup_windows().secs)
            .query_async(&mut con)
            .await;
        if let Err(e) = set {
            tracing::warn!(error = %e, "could not publish the lookups' time to live");
        }
    }

    /// The requests topic's partition count, looked up at most every 30 s
    /// (0 until it could be told once).
    pub(crate) async fn partition_count(&self) -> i32 {
        {
            let cached = lock(&self.partitions);
            if cached
                .1
                .is_some_and(|at| at.elapsed() < Duration::from_secs(30))
            {
                return cached.0;
            }
        }
        let producer = self.producer.clone();
        let topic = self.config.topics.requests.clone();
        let fetched = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            seckill_kafka::partition_count(producer.client(), &topic, Duration::from_secs(5))
        })
        .await
        .ok()
        .flatten();
        let mut cached = lock(&self.partitions);
        if let Some(n) = fetched {
            cached.0 = n;
        } else {
            tracing::debug!("requests topic partition count unknown; keeping the last one");
        }
        // A failed lookup is not repeated before the next period either: it
        // blocks for its timeout, and batches must not wait on it each time.
        cached.1 = Some(Instant::now());
        cached.0
    }

    /// Sends a misplaced message to partition `to` of the requests topic
    /// (-1: the one its key maps to), with its key (or `key`), payload and
    /// headers, and a header saying where it came from. Returns false only
    /// when stopped first.
    async fn forward_misplaced(&self, message: &OwnedMessage, to: i32, key: Option<&str>) -> bool {
        use rdkafka::message::{Header, Headers, OwnedHeaders};
        let from = format!("{}:{}", message.partition(), message.offset());
        let mut headers = OwnedHeaders::new();
        if let Some(hs) = message.headers() {
            for h in hs.iter() {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        let headers = headers.insert(Header {
            key: seckill_kafka::headers::FORWARDED_FROM,
            value: Some(from.as_str()),
        });
        let sent = retry_until(
            &self.cancel,
            Backoff::STEP,
            || {
                let mut record: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&self.config.topics.requests).headers(headers.clone());
                if to >= 0 {
                    record = record.partition(to);
                }
                if let Some(key) = key.map(str::as_bytes).or(message.key()) {
                    record = record.key(key);
                }
                if let Some(payload) = message.payload() {
                    record = record.payload(payload);
                }
                self.producer.send(record, Duration::from_secs(30))
            },
            |(e, _)| internal_events::step_failed("forward", e),
        )
        .await;
        if sent.is_some() {
            internal_events::forwarded(message.partition(), to);
        }
        sent.is_some()
    }

    /// Sends `message` to the requests DLQ. Returns false only when stopped
    /// first.
    async fn dead_letter(&self, message: &OwnedMessage, class: ErrorClass, reason: &str) -> bool {
        let sent = retry_until(
            &self.cancel,
            Backoff::STEP,
            || {
                dead_letter(
                    &self.producer,
                    &self.config.topics.requests_dlq,
                    message,
                    class,
                    reason,
                )
            },
            |e| internal_events::step_failed("dead_letter", e),
        )
        .await;
        if sent.is_some() {
            internal_events::dead_lettered(
                class.as_str(),
                reason,
                message.partition(),
                message.offset(),
            );
        }
        sent.is_some()
    }
}

/// Locks a mutex that is only held for a map or swap operation, never
/// across an await, so a poisoned one still holds consistent data.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
