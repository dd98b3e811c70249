//! The processor loop: batch in, one Lua call per campaign, events out,
//! offsets stored only after every event of the batch is acknowledged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::consumer::{CommitMode, Consumer};
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
/// Two stages overlap: this loop reads a batch, decides it and hands the
/// produced events to a settling task, then reads the next batch while the
/// broker acknowledges the previous one. The settling task stores a batch's
/// offsets only once every event of it is acknowledged, in batch order.
pub async fn run(config: ProcessorConfig, cancel: CancellationToken) -> Result<(), ProcessorError> {
    let kafka_err = |source| ProcessorError::Kafka {
        brokers: config.kafka.brokers.clone(),
        source,
    };
    let consumer = Arc::new(
        config
            .kafka
            .group_consumer(&config.group_id)
            .map_err(kafka_err)?,
    );
    consumer
        .subscribe(&[config.topics.requests.as_str()])
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

    let watch = seckill_schemas::runtime::watch_assignment(
        Arc::clone(&consumer),
        config.group_id.clone(),
        config.topics.requests.clone(),
        Duration::from_millis(config.kafka.session_timeout_ms.into()),
        cancel.clone(),
    );
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
        let Some(in_flight) = worker.handle(batch).await else {
            break;
        };
        if to_settle.send(in_flight).await.is_err() {
            break;
        }
    }
    drop(to_settle);
    sweeper.abort();
    watch.abort();
    if let Err(e) = settler.await {
        tracing::error!(error = %e, "settling task failed");
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::warn!(error = %e, "final offset commit failed; the last batch will be redelivered");
    }
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

/// A request message that parsed and validated.
struct Parsed<'m> {
    message: &'m OwnedMessage,
    event: RequestEvent,
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
    /// Decides one batch and hands its events to the producer. Returns
    /// `None` only when stopped before the batch was decided.
    async fn handle(&self, messages: Vec<OwnedMessage>) -> Option<InFlight> {
        let mut parsed = Vec::with_capacity(messages.len());
        let mut bad = Vec::new();
        for m in &messages {
            match parse(m) {
                Ok(event) => parsed.push(Parsed { message: m, event }),
                Err(reason) => bad.push((m, reason)),
            }
        }

        // Group by campaign, keeping offset order inside each group.
        let mut slots: HashMap<&str, usize> = HashMap::new();
        let mut groups: Vec<(&str, Vec<&Parsed<'_>>)> = Vec::new();
        for p in &parsed {
            let cid = p.event.campaign_id();
            let slot = *slots.entry(cid).or_insert_with(|| {
                groups.push((cid, Vec::new()));
                groups.len() - 1
            });
            groups[slot].1.push(p);
        }

        let decided = self.decide_all(&groups).await?;

        let mut payloads: Vec<(String, Vec<u8>)> = Vec::with_capacity(parsed.len());
        let mut lookups = Vec::new();
        for ((cid, items), (spec, outs)) in groups.iter().zip(decided) {
            // A campaign created in this very batch has no stored definition
            // yet; its create command carries it.
            let spec = spec.or_else(|| {
                items.iter().find_map(|p| match &p.event {
                    RequestEvent::UpsertCampaign(u) => Some(Arc::new(u.campaign.clone())),
                    _ => None,
                })
            });
            for (p, records) in items.iter().zip(outs) {
                let message_ms = p.message.timestamp().to_millis().unwrap_or(0);
                let t = translate(&p.event, records, spec.as_deref(), message_ms);
                for e in &t.events {
                    if let Some(d) = e.decision() {
                        internal_events::decided(d.status.as_str());
                    }
                    payloads.push((cid.to_string(), serde_json::to_vec(e).unwrap_or_default()));
                }
                lookups.extend(t.lookups.into_iter().map(|l| (cid.to_string(), l)));
            }
        }
        for (m, (class, reason)) in bad {
            if !self.dead_letter(m, class, &reason).await {
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
        groups: &[(&str, Vec<&Parsed<'_>>)],
    ) -> Option<Vec<(Option<Arc<CampaignSpec>>, Vec<Vec<Outcome>>)>> {
        let mut backoff = Duration::from_millis(50);
        loop {
            let calls = groups.iter().map(|(cid, items)| {
                let mut con = self.redis.clone();
                let events: Vec<&RequestEvent> = items.iter().map(|p| &p.event).collect();
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
