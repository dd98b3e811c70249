//! The processor loop: batch in, one Lua call per campaign, events out,
//! offsets stored only after every event of the batch is acknowledged.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use seckill_schemas::runtime::{dead_letter, recv_batch, store_done};
use seckill_schemas::{
    CampaignApplied, DecisionStatus, KeyLayout, OrderEvent, Rejected, RequestEvent, Reserved,
    SCHEMA_VERSION,
};

use crate::decide::{Decider, Outcome};
use crate::{connect_redis, internal_events, ProcessorConfig, ProcessorError};

/// Runs one processor until `cancel` fires; the batch in hand when it fires
/// is finished and its offsets committed before this returns.
pub async fn run(config: ProcessorConfig, cancel: CancellationToken) -> Result<(), ProcessorError> {
    let kafka_err = |source| ProcessorError::Kafka {
        brokers: config.kafka.brokers.clone(),
        source,
    };
    let consumer = config
        .kafka
        .group_consumer(&config.group_id)
        .map_err(kafka_err)?;
    consumer
        .subscribe(&[config.topics.requests.as_str()])
        .map_err(kafka_err)?;
    // message.timeout.ms = 0: librdkafka retries a send until it lands, so
    // a broker hiccup delays a batch instead of failing it.
    let producer = config.kafka.producer(0).map_err(kafka_err)?;
    let redis = connect_redis(&config.redis_url).await?;
    let worker = Worker {
        decider: Decider::new(&config.key_prefix),
        keys: KeyLayout::new(config.key_prefix.clone()),
        redis,
        producer,
        config: config.clone(),
        cancel: cancel.clone(),
    };
    tracing::info!(topic = %config.topics.requests, group = %config.group_id, "processor started");
    let wait = Duration::from_millis(config.batch_max_ms);
    loop {
        let batch = match recv_batch(&consumer, config.batch_max, wait, &cancel).await {
            Ok(b) if b.is_empty() => break,
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "reading the requests topic failed; retrying");
                if pause(&cancel, Duration::from_millis(200)).await {
                    break;
                }
                continue;
            }
        };
        internal_events::batch_received(batch.len());
        if !worker.handle(&batch).await {
            // Stopped while a dependency was down: the batch is not done, so
            // its offsets stay unstored and it is redelivered later.
            break;
        }
        store_done(&consumer, &batch);
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

struct Worker {
    decider: Decider,
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

/// Why a message can never be decided.
fn parse(message: &OwnedMessage) -> Result<RequestEvent, String> {
    let payload = message.payload().ok_or("empty payload")?;
    let event: RequestEvent =
        serde_json::from_slice(payload).map_err(|e| format!("invalid JSON request event: {e}"))?;
    event
        .validate()
        .map_err(|e| format!("invalid request event: {e}"))?;
    // The key decides the partition and so the campaign's single writer; a
    // message keyed differently would be decided out of order.
    if message.key() != Some(event.campaign_id().as_bytes()) {
        return Err(format!(
            "message key must equal campaign_id {:?}",
            event.campaign_id()
        ));
    }
    Ok(event)
}

impl Worker {
    /// Decides and publishes one batch. Returns false only when stopped
    /// before the batch was done.
    async fn handle(&self, batch: &[OwnedMessage]) -> bool {
        let mut parsed = Vec::with_capacity(batch.len());
        let mut bad = Vec::new();
        for m in batch {
            match parse(m) {
                Ok(event) => parsed.push(Parsed { message: m, event }),
                Err(reason) => bad.push((m, reason)),
            }
        }

        // Group by campaign, keeping offset order inside each group.
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut groups: Vec<(&str, Vec<&Parsed<'_>>)> = Vec::new();
        for p in &parsed {
            let cid = p.event.campaign_id();
            let slot = *index.entry(cid).or_insert_with(|| {
                groups.push((cid, Vec::new()));
                groups.len() - 1
            });
            groups[slot].1.push(p);
        }

        let Some(outcomes) = self.decide_all(&groups).await else {
            return false;
        };

        let mut events = Vec::with_capacity(parsed.len());
        for ((cid, items), outs) in groups.iter().zip(outcomes) {
            for (p, outcome) in items.iter().zip(outs) {
                events.push((*cid, to_event(p, outcome)));
            }
        }
        if !self.publish(&events).await {
            return false;
        }
        for (m, reason) in bad {
            if !self.dead_letter(m, &reason).await {
                return false;
            }
        }
        true
    }

    /// One Lua call per campaign, run concurrently; repeated until all
    /// succeed (a repeat returns the stored decisions).
    async fn decide_all(&self, groups: &[(&str, Vec<&Parsed<'_>>)]) -> Option<Vec<Vec<Outcome>>> {
        let mut backoff = Duration::from_millis(50);
        loop {
            let calls = groups.iter().map(|(cid, items)| {
                let mut con = self.redis.clone();
                let events: Vec<&RequestEvent> = items.iter().map(|p| &p.event).collect();
                async move {
                    let started = Instant::now();
                    let r = self.decider.decide(&mut con, cid, &events).await;
                    internal_events::lua_call(started.elapsed().as_secs_f64());
                    r
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

    /// Produces every event, records purchase decisions for lookup by id,
    /// and waits until the broker has acknowledged all of them.
    async fn publish(&self, events: &[(&str, OrderEvent)]) -> bool {
        let payloads: Vec<(&str, Vec<u8>)> = events
            .iter()
            .map(|(cid, e)| (*cid, serde_json::to_vec(e).unwrap_or_default()))
            .collect();
        let mut pending: Vec<usize> = (0..payloads.len()).collect();
        let mut backoff = Duration::from_millis(50);
        let index = self.index_decisions(events);
        tokio::pin!(index);
        let mut index_done = false;
        loop {
            let mut futures = Vec::with_capacity(pending.len());
            for &i in &pending {
                let (cid, payload) = &payloads[i];
                let mut record = FutureRecord::to(&self.config.topics.orders)
                    .key(*cid)
                    .payload(payload.as_slice());
                loop {
                    match self.producer.send_result(record) {
                        Ok(f) => {
                            futures.push((i, f));
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
            let (delivered, index_result) = tokio::join!(
                join_all(
                    futures
                        .into_iter()
                        .map(|(i, f)| async move { (i, f.await) })
                ),
                async {
                    if index_done {
                        Ok(())
                    } else {
                        (&mut index).await
                    }
                }
            );
            match index_result {
                Ok(()) => index_done = true,
                Err(e) => internal_events::step_failed("index", &e),
            }
            pending = delivered
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
            if pending.is_empty() && index_done {
                internal_events::events_emitted(payloads.len());
                return true;
            }
            if pause(&self.cancel, backoff).await {
                return false;
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
            if !index_done {
                index.set(self.index_decisions(events));
            }
        }
    }

    /// Writes each purchase decision under its request id so ingest can
    /// answer `GET /v1/requests/{id}` without knowing the campaign.
    fn index_decisions<'a>(
        &'a self,
        events: &'a [(&'a str, OrderEvent)],
    ) -> impl std::future::Future<Output = Result<(), redis::RedisError>> + 'a {
        let mut pipe = redis::pipe();
        let mut any = false;
        for (_, e) in events {
            if let Some(d) = e.decision() {
                let json = serde_json::to_string(&d).unwrap_or_default();
                pipe.set_ex(
                    self.keys.decision(&d.request_id),
                    json,
                    self.config.decision_ttl_secs,
                )
                .ignore();
                any = true;
            }
        }
        let mut con = self.redis.clone();
        async move {
            if any {
                pipe.query_async::<()>(&mut con).await
            } else {
                Ok(())
            }
        }
    }

    async fn dead_letter(&self, message: &OwnedMessage, reason: &str) -> bool {
        let mut backoff = Duration::from_millis(50);
        loop {
            match dead_letter(
                &self.producer,
                &self.config.topics.requests_dlq,
                message,
                "permanent",
                reason,
            )
            .await
            {
                Ok(()) => {
                    internal_events::dead_lettered(
                        "permanent",
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

/// The order-topic event for one decided request.
fn to_event(p: &Parsed<'_>, outcome: Outcome) -> OrderEvent {
    let message_ms = p.message.timestamp().to_millis().unwrap_or(0);
    match (&p.event, outcome) {
        (
            RequestEvent::UpsertCampaign(u),
            Outcome::Campaign {
                outcome,
                decided_at_ms,
            },
        ) => OrderEvent::CampaignApplied(CampaignApplied {
            schema_version: SCHEMA_VERSION,
            request_id: u.request_id.clone(),
            campaign_id: u.campaign.id.clone(),
            outcome,
            decided_at_ms,
        }),
        (
            RequestEvent::PurchaseRequested(r),
            Outcome::Purchase {
                status,
                reason,
                order_id,
                quantity,
                decided_at_ms,
                expires_at_ms,
                price,
            },
        ) => {
            internal_events::decided(status.as_str());
            let requested_at_ms = r.requested_at_ms.unwrap_or(message_ms);
            match (status, order_id) {
                (DecisionStatus::Reserved, Some(order_id)) => OrderEvent::Reserved(Reserved {
                    schema_version: SCHEMA_VERSION,
                    request_id: r.request_id.clone(),
                    order_id,
                    campaign_id: r.campaign_id.clone(),
                    user_id: r.user_id.clone(),
                    quantity,
                    price,
                    requested_at_ms,
                    decided_at_ms,
                    expires_at_ms,
                }),
                (status, _) => OrderEvent::Rejected(Rejected {
                    schema_version: SCHEMA_VERSION,
                    request_id: r.request_id.clone(),
                    campaign_id: r.campaign_id.clone(),
                    user_id: r.user_id.clone(),
                    status,
                    reason,
                    requested_at_ms,
                    decided_at_ms,
                }),
            }
        }
        // A request id reused across kinds (a purchase id sent again as a
        // campaign command, or the reverse) gets the stored answer of the
        // other kind. Report it as a rejection rather than guess.
        (event, _) => OrderEvent::Rejected(Rejected {
            schema_version: SCHEMA_VERSION,
            request_id: event.request_id().to_owned(),
            campaign_id: event.campaign_id().to_owned(),
            user_id: match event {
                RequestEvent::PurchaseRequested(r) => r.user_id.clone(),
                RequestEvent::UpsertCampaign(_) => String::new(),
            },
            status: DecisionStatus::NotActive,
            reason: "request_id_reused".to_owned(),
            requested_at_ms: message_ms,
            decided_at_ms: message_ms,
        }),
    }
}
