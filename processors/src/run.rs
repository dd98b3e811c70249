//! The processor loop: batch in, one Lua call per campaign, events out,
//! offsets stored only after every event of the batch is acknowledged.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use seckill_kafka::{close_on_stop, commit_on_stop, next_batch, store_done};

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
    crate::check_eviction_policy(&mut redis.clone()).await;
    let worker = Arc::new(Worker::new(config.clone(), redis, producer, cancel.clone()));
    worker.publish_lookup_ttl().await;
    tracing::info!(topic = %config.topics.requests, group = %config.group_id, "processor started");

    let (to_settle, mut settling) = mpsc::channel::<InFlight>(PIPELINE_DEPTH);
    // Deciding batch N+1 (Redis) overlaps with emitting batch N (events
    // built, lookups written, handed to the producer) in this task.
    let (to_emit, mut emitting) = mpsc::channel::<Batch>(1);
    let emitter = {
        let worker = Arc::clone(&worker);
        tokio::spawn(async move {
            while let Some(decided) = emitting.recv().await {
                let started = std::time::Instant::now();
                let Some(in_flight) = worker.emit(decided).await else {
                    break;
                };
                internal_events::stage("emit", started.elapsed().as_secs_f64());
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
                let started = std::time::Instant::now();
                let settled = worker.settle(&mut batch).await;
                internal_events::stage("settle", started.elapsed().as_secs_f64());
                worker.batch_settled();
                if !settled {
                    // Stopped before the broker acknowledged it: the batch's
                    // offsets stay unstored and it is redelivered later.
                    break;
                }
                store_done(&consumer, &batch.messages);
                // Everything decided before a fence of this batch is in the
                // orders log now (batches settle in order), and everything
                // after it is held: the repair may read the log.
                for (campaign_id, token) in &batch.fences {
                    worker.mark_fence_ready(campaign_id, token).await;
                }
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
        let started = std::time::Instant::now();
        let partitions = worker.partition_count().await;
        let batch = Batch::new(
            messages,
            partitions,
            &config.command_keys,
            config.enable_reset,
        );
        internal_events::stage("parse", started.elapsed().as_secs_f64());
        let started = std::time::Instant::now();
        let Some(decided) = worker.decide(batch).await else {
            break;
        };
        internal_events::stage("decide", started.elapsed().as_secs_f64());
        worker.batch_unsettled();
        if to_emit.send(decided).await.is_err() {
            break;
        }
    }
    drop(to_emit);
    // Every wait from here on is bounded: with the broker or Redis down a
    // stage may never finish, and the role must still stop within the
    // process's grace period. What is given up is redelivered.
    let deadline = tokio::time::Instant::now() + STAGES_STOP;
    join_stage("emitting", emitter, deadline).await;
    sweeper.abort();
    join_stage("settling", settler, deadline).await;
    join_stage(
        "sweeping",
        sweeper,
        tokio::time::Instant::now() + ABORTED_STOP,
    )
    .await;
    let producer = worker.producer().clone();
    tokio::join!(commit_on_stop(&consumer), flush_on_stop(producer));
    // librdkafka's destroy (leaving the group, the producer's purge) can
    // block while the broker is unreachable: off the runtime, bounded.
    tokio::join!(
        close_on_stop("requests consumer", consumer),
        close_on_stop("producer and Redis connection", worker),
    );
    tracing::info!("processor stopped");
    Ok(())
}

/// How long the emitting and settling stages get to stop once the batch
/// loop has ended (the settler's batch in hand has a drain of its own,
/// shorter than this).
const STAGES_STOP: Duration = Duration::from_secs(3);
/// How long an aborted task gets to drop its state.
const ABORTED_STOP: Duration = Duration::from_millis(500);
/// How long the producer gets to deliver what it still holds at stop.
const FLUSH_ON_STOP: Duration = Duration::from_secs(1);

/// Waits for a stage's task until `deadline`; past it the task is aborted
/// with the batches it holds (their offsets stay unstored: redelivered).
async fn join_stage(
    name: &str,
    mut task: tokio::task::JoinHandle<()>,
    deadline: tokio::time::Instant,
) {
    match tokio::time::timeout_at(deadline, &mut task).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_cancelled() => {}
        Ok(Err(e)) => tracing::error!(error = %e, "{name} task failed"),
        Err(_) => {
            task.abort();
            tracing::warn!(
                "{name} task did not stop in time; abandoned with the batches it held: their \
                 offsets stay unstored and they are redelivered"
            );
            let _ = tokio::time::timeout(ABORTED_STOP, task).await;
        }
    }
}

/// Gives the producer a moment to deliver what it still holds (events of
/// abandoned batches, expiry commands); what is left is logged.
async fn flush_on_stop(producer: rdkafka::producer::FutureProducer) {
    use rdkafka::producer::Producer;
    let flushed = tokio::task::spawn_blocking(move || {
        producer
            .flush(FLUSH_ON_STOP)
            .map_err(|e| (e, producer.in_flight_count()))
    })
    .await;
    match flushed {
        Ok(Ok(())) => {}
        Ok(Err((e, left))) => tracing::warn!(
            error = %e,
            undelivered = left,
            "producer not flushed at stop (broker unreachable?); the batches of these events \
             were not settled and are redelivered"
        ),
        Err(e) => tracing::warn!(error = %e, "producer flush at stop failed"),
    }
}
