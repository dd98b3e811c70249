//! The processor loop: batch in, one Lua call per campaign, events out,
//! offsets stored only after every event of the batch is acknowledged.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use seckill_kafka::{commit_on_stop, next_batch, store_done};

use crate::batch::{Batch, InFlight};
use crate::worker::Worker;
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
    let worker = Arc::new(Worker::new(config.clone(), redis, producer, cancel.clone()));
    tracing::info!(topic = %config.topics.requests, group = %config.group_id, "processor started");

    let (to_settle, mut settling) = mpsc::channel::<InFlight>(PIPELINE_DEPTH);
    // Deciding batch N+1 (Redis) overlaps with emitting batch N (events
    // built, lookups written, handed to the producer) in this task.
    let (to_emit, mut emitting) = mpsc::channel::<Batch>(1);
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
    while let Some(messages) = next_batch(
        &consumer,
        config.batch_max,
        wait,
        &cancel,
        &config.topics.requests,
    )
    .await
    {
        internal_events::batch_received(messages.len());
        let Some(decided) = worker.decide(Batch::new(messages)).await else {
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
    commit_on_stop(&consumer);
    tracing::info!("processor stopped");
    Ok(())
}
