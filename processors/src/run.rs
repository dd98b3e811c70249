//! The processor loop: batch in, one Lua call per campaign, events out,
//! offsets stored only after every event of the batch is acknowledged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use seckill_schemas::runtime::{dead_letter, next_batch, store_done, ErrorClass};
use seckill_schemas::{CampaignSpec, KeyLayout, RequestEvent};

use crate::decide::{DecideError, Decider, Outcome};
use crate::translate::{translate, Lookup};
use crate::{connect_redis, internal_events, ProcessorConfig, ProcessorError};

/// Batches decided but not yet acknowledged by the broker, at most.
const PIPELINE_DEPTH: usize = 4;

/// Runs one processor until `cancel` fires; the batches in hand when it
/// fires are finished and their offsets committed before this returns.
///
/// Three stages overlap: this loop reads a batch and decides it (Redis);
/// an emitting task turns the previous batch's answers into events, writes
/// their lookups and hands the events to the producer; a settling task
/// stores a batch's offsets only once every event of it is acknowledged,
/// in batch order.
pub async fn run(config: ProcessorConfig, cancel: CancellationToken) -> Result<(), ProcessorError> {
    let kafka_err = |source| ProcessorError::Kafka {
        brokers: config.kafka.brokers.clone(),
        source,
    };
    let consumer = config
        .kafka
        .group_member(&config.group_id, &config.topics.requests, &cancel)
        .map_err(kafka_err)?;
    // message.timeout.ms = 0: librdkafka retries a send until it lands, so
    // a broker hiccup delays a batch instead of failing it.
    let producer = config.kafka.producer(0).map_err(kafka_err)?;
    let redis = connect_redis(&config.redis_url).await?;
    let worker = Arc::new(Worker {
        decider: Decider::new(&config.key_prefix),
        defs: std::sync::Mutex::new(HashMap::new()),
        keys: KeyLayout::new(config.key_prefix.clone()),
        redis,
        producer,
        config: config.clone(),
        cancel: cancel.clone(),
    });
    tracing::info!(topic = %config.topics.requests, group = %config.group_id, "processor started");

    let (to_settle, mut settling) = mpsc::channel::<InFlight>(PIPELINE_DEPTH);
    // Deciding batch N+1 (Redis) overlaps with emitting batch N (events
    // built, lookups written, handed to the producer) in this task.
    let (to_emit, mut emitting) = mpsc::channel::<Decided>(1);
    let emitter = {
        let worker = Arc::clone(&worker);
        tokio::spawn(async move {
            while let Some(decided) = emitting.recv().await {
                let Some(in_flight) = worker.emit(decided).await else {
                    break;
                };
                if to_settle.send(in_flight).await.is_err() {
                    break;
                }
            }
        })
    };
    let settler = {
        let (worker, consumer) = (Arc::clone(&worker), Arc::clone(&consumer));
        tokio::spawn(async move {
            while let Some(mut batch) = settling.recv().await {
                if !worker.settle(&mut batch).await {
                    // Stopped before the broker acknowledged it: the batch's
                    // offsets stay unstored and it is redelivered later.
                    break;
                }
                store_done(&consumer, &batch.messages);
            }
        })
    };

    let sweeper = tokio::spawn(crate::sweep::run(
        Arc::clone(&worker),
        Arc::clone(&consumer),
        cancel.clone(),
    ));

    let wait = Duration::from_millis(config.batch_max_ms);
    loop {
        let Some(batch) = next_batch(
            &consumer,
            config.batch_max,
            wait,
            &cancel,
            &config.topics.requests,
        )
        .await
        else {
            break;
        };
        internal_events::batch_received(batch.len());
        let Some(decided) = worker.decide_batch(batch).await else {
            break;
        };
        if to_emit.send(decided).await.is_err() {
            break;
        }
    }
    drop(to_emit);
    if let Err(e) = emitter.await {
        tracing::error!(error = %e, "emitting task failed");
    }
    sweeper.abort();
    if let Err(e) = settler.await {
        tracing::error!(error = %e, "settling task failed");
    }
    seckill_schemas::runtime::commit_on_stop(&consumer);
    tracing::info!("processor stopped");
    Ok(())
}

/// Sleeps, or returns true at once when cancelled.
async fn pause(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

pub(crate) struct Worker {
    decider: Decider,
    defs: std::sync::Mutex<HashMap<String, Arc<CampaignSpec>>>,
    keys: KeyLayout,
    redis: ConnectionManager,
    producer: FutureProducer,
    config: ProcessorConfig,
    cancel: CancellationToken,
}

/// One campaign's part of a decided batch: its stored definition (if any)
/// and each request's records.
type CampaignOutcomes = (Option<Arc<CampaignSpec>>, Vec<Vec<Outcome>>);

/// A batch whose requests are decided, on its way to the emitting stage.
struct Decided {
    messages: Vec<OwnedMessage>,
    /// The requests that parsed: (index in `messages`, event).
    parsed: Vec<(usize, RequestEvent)>,
    /// Campaigns in order of first appearance, with their requests (indexes
    /// in `parsed`, in offset order).
    groups: Vec<(String, Vec<usize>)>,
    /// Per group, in the same order.
    outcomes: Vec<CampaignOutcomes>,
    /// Messages that can never be decided: (index in `messages`, class,
    /// reason).
    bad: Vec<(usize, ErrorClass, String)>,
}

/// Why a message can never be decided: unreadable, or readable but not a
/// valid request (both go to the requests DLQ at once).
fn parse(message: &OwnedMessage) -> Result<RequestEvent, (ErrorClass, String)> {
    let unparseable = |e: String| (ErrorClass::Unparseable, e);
    let payload = message
        .payload()
        .ok_or_else(|| unparseable("empty payload".into()))?;
    let event: RequestEvent = serde_json::from_slice(payload)
        .map_err(|e| unparseable(format!("invalid JSON request event: {e}")))?;
    event
        .validate()
        .map_err(|e| (ErrorClass::Permanent, format!("invalid request event: {e}")))?;
    // The key decides the partition and so the campaign's single writer; a
    // message keyed differently would be decided out of order.
    if message.key() != Some(event.campaign_id().as_bytes()) {
        return Err((
            ErrorClass::Permanent,
            format!(
                "message key must equal campaign_id {:?}",
                event.campaign_id()
            ),
        ));
    }
    Ok(event)
}

impl Worker {
    /// Decides one batch. Returns `None` only when stopped first.
    async fn decide_batch(&self, messages: Vec<OwnedMessage>) -> Option<Decided> {
        let mut parsed = Vec::with_capacity(messages.len());
        let mut bad = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            match parse(m) {
                Ok(event) => parsed.push((i, event)),
                Err((class, reason)) => bad.push((i, class, reason)),
            }
        }

        // Group by campaign, keeping offset order inside each group.
        let mut slots: HashMap<&str, usize> = HashMap::new();
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for (k, (_, event)) in parsed.iter().enumerate() {
            let cid = event.campaign_id();
            let slot = *slots.entry(cid).or_insert_with(|| {
                groups.push((cid.to_owned(), Vec::new()));
                groups.len() - 1
            });
            groups[slot].1.push(k);
        }

        let outcomes = self.decide_all(&parsed, &groups).await?;
        Some(Decided {
            messages,
            parsed,
            groups,
            outcomes,
            bad,
        })
    }

    /// Turns a decided batch into events, writes their lookups and hands
    /// the events to the producer. Returns `None` only when stopped first.
    async fn emit(&self, decided: Decided) -> Option<InFlight> {
        let Decided {
            messages,
            parsed,
            groups,
            outcomes,
            bad,
        } = decided;
        let mut payloads: Vec<(String, Vec<u8>)> = Vec::with_capacity(parsed.len());
        let mut lookups = Vec::new();
        for ((cid, items), (spec, outs)) in groups.iter().zip(outcomes) {
            // A campaign created in this very batch has no stored definition
            // yet; its create command carries it.
            let spec = spec.or_else(|| {
                items.iter().find_map(|&k| match &parsed[k].1 {
                    RequestEvent::UpsertCampaign(u) => Some(Arc::new(u.campaign.clone())),
                    _ => None,
                })
            });
            for (&k, records) in items.iter().zip(outs) {
                let (at, event) = &parsed[k];
                let message_ms = messages[*at].timestamp().to_millis().unwrap_or(0);
                let t = translate(event, records, spec.as_deref(), message_ms);
                for e in &t.events {
                    if let Some(d) = e.decision() {
                        internal_events::decided(d.status.as_str());
                    }
                    payloads.push((cid.clone(), serde_json::to_vec(e).unwrap_or_default()));
                }
                lookups.extend(t.lookups.into_iter().map(|l| (cid.clone(), l)));
            }
        }
        for (at, class, reason) in &bad {
            if !self.dead_letter(&messages[*at], *class, reason).await {
                return None;
            }
        }
        // The lookups go first: whoever reads an event must be able to
        // find what it names (a pay right after a reservation looks up the
        // order's campaign).
        if let Some(pipe) = self.index_pipeline(&lookups) {
            let mut backoff = Duration::from_millis(50);
            loop {
                let mut con = self.redis.clone();
                match pipe.query_async::<()>(&mut con).await {
                    Ok(()) => break,
                    Err(e) => internal_events::step_failed("index", &e),
                }
                if pause(&self.cancel, backoff).await {
                    return None;
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
        let deliveries = self.send_all(&payloads, 0..payloads.len()).await;
        Some(InFlight {
            messages,
            payloads,
            deliveries,
        })
    }

    /// The stored definition of a campaign, cached: a definition never
    /// changes once created (a different one is refused as a conflict).
    async fn definition(
        &self,
        con: &mut ConnectionManager,
        campaign_id: &str,
    ) -> Result<Option<Arc<CampaignSpec>>, redis::RedisError> {
        if let Some(spec) = self.lock_defs().get(campaign_id) {
            return Ok(Some(Arc::clone(spec)));
        }
        let raw: Option<String> = redis::cmd("HGET")
            .arg(self.keys.campaign(campaign_id).meta)
            .arg("def")
            .query_async(con)
            .await?;
        let Some(spec) = raw.and_then(|r| serde_json::from_str::<CampaignSpec>(&r).ok()) else {
            return Ok(None);
        };
        let spec = Arc::new(spec);
        let mut defs = self.lock_defs();
        if defs.len() > 10_000 {
            defs.clear();
        }
        defs.insert(campaign_id.to_owned(), Arc::clone(&spec));
        Ok(Some(spec))
    }

    fn lock_defs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<CampaignSpec>>> {
        // Held for a map operation only, never across an await.
        self.defs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One Lua call per campaign, run concurrently; repeated until all
    /// succeed (a repeat returns the stored decisions).
    async fn decide_all(
        &self,
        parsed: &[(usize, RequestEvent)],
        groups: &[(String, Vec<usize>)],
    ) -> Option<Vec<CampaignOutcomes>> {
        let mut backoff = Duration::from_millis(50);
        loop {
            let calls = groups.iter().map(|(cid, items)| {
                let mut con = self.redis.clone();
                let events: Vec<&RequestEvent> = items.iter().map(|&k| &parsed[k].1).collect();
                async move {
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
                    r.map(|outs| (spec, outs))
                }
            });
            let results = join_all(calls).await;
            match results.into_iter().collect::<Result<Vec<_>, _>>() {
                Ok(all) => return Some(all),
                Err(e) => internal_events::step_failed("decide", &e),
            }
            if pause(&self.cancel, backoff).await {
                return None;
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
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
                        // Queue full: let librdkafka drain it, then retry.
                        record = r;
                        tracing::debug!(error = %e, "producer queue full");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }
        out
    }

    /// Waits until the broker has acknowledged every event of the batch.
    /// Returns false only when stopped first.
    async fn settle(&self, batch: &mut InFlight) -> bool {
        let mut backoff = Duration::from_millis(50);
        let mut deliveries = std::mem::take(&mut batch.deliveries);
        loop {
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
                break;
            }
            if pause(&self.cancel, backoff).await {
                return false;
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
            deliveries = self.send_all(&batch.payloads, failed).await;
        }
        internal_events::events_emitted(batch.payloads.len());
        true
    }

    /// Makes results findable without their campaign: decisions and
    /// command results by request id, campaigns by order id, and new
    /// campaigns for the expiry sweeper.
    fn index_pipeline(&self, lookups: &[(String, Lookup)]) -> Option<redis::Pipeline> {
        let mut pipe = redis::pipe();
        let ttl = self.config.decision_ttl_secs;
        for (cid, l) in lookups {
            match l {
                Lookup::Result { request_id, json } => {
                    pipe.set_ex(self.keys.decision(request_id), json, ttl)
                        .ignore();
                }
                Lookup::OrderCampaign { order_id } => {
                    pipe.set_ex(self.keys.order_campaign(order_id), cid, ttl)
                        .ignore();
                }
                Lookup::NewCampaign => {
                    pipe.sadd(self.keys.campaigns(), cid).ignore();
                }
            }
        }
        (!lookups.is_empty()).then_some(pipe)
    }

    async fn dead_letter(&self, message: &OwnedMessage, class: ErrorClass, reason: &str) -> bool {
        let mut backoff = Duration::from_millis(50);
        loop {
            match dead_letter(
                &self.producer,
                &self.config.topics.requests_dlq,
                message,
                class,
                reason,
            )
            .await
            {
                Ok(()) => {
                    internal_events::dead_lettered(
                        class.as_str(),
                        reason,
                        message.partition(),
                        message.offset(),
                    );
                    return true;
                }
                Err(e) => internal_events::step_failed("dead_letter", &e),
            }
            if pause(&self.cancel, backoff).await {
                return false;
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

impl Worker {
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
}

/// A decided batch on its way to the broker.
struct InFlight {
    messages: Vec<OwnedMessage>,
    /// (campaign, event JSON) per decided request.
    payloads: Vec<(String, Vec<u8>)>,
    deliveries: Vec<(usize, DeliveryFuture)>,
}
