//! Starting the roles, alone or all together.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::routing::get;
use axum::Router;
use clap::{Args, Subcommand};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use seckill_ingest::IngestConfig;
use seckill_kafka::{ensure_topics, shutdown_signal};
use seckill_processors::ProcessorConfig;
use seckill_schemas::Topics;
use seckill_sinks::SinkConfig;
use seckill_store::{open_store, FaultInjection, OrderStore};

use crate::args::{IngestArgs, KafkaArgs, ProcessArgs, RedisArgs, SinkArgs, StoreArgs};

#[derive(Debug, Args)]
pub(crate) struct AllCmd {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    ingest: IngestArgs,
    #[command(flatten)]
    process: ProcessArgs,
    #[command(flatten)]
    sink: SinkArgs,
}

#[derive(Debug, Args)]
pub(crate) struct IngestCmd {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    ingest: IngestArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ProcessCmd {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    process: ProcessArgs,
    /// Where /metrics and /healthz are served.
    #[arg(long, env = "SECKILL_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    metrics_addr: SocketAddr,
}

#[derive(Debug, Args)]
pub(crate) struct SinkCmd {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    sink: SinkArgs,
    /// Where /metrics and /healthz are served.
    #[arg(long, env = "SECKILL_METRICS_ADDR", default_value = "127.0.0.1:9465")]
    metrics_addr: SocketAddr,
}

#[derive(Debug, Args)]
pub(crate) struct TopicsCmd {
    #[command(subcommand)]
    action: TopicsAction,
}

#[derive(Debug, Subcommand)]
enum TopicsAction {
    /// Create the deployment's topics (existing ones are left alone).
    Create(TopicsCreate),
}

#[derive(Debug, Args)]
struct TopicsCreate {
    #[command(flatten)]
    kafka: KafkaArgs,
}

fn processor_config(k: &KafkaArgs, r: &RedisArgs, p: &ProcessArgs) -> ProcessorConfig {
    ProcessorConfig {
        kafka: k.settings(),
        redis_url: r.redis_url.clone(),
        topics: k.topics(),
        group_id: Topics::processors_group(&k.topic_prefix),
        key_prefix: r.key_prefix.clone(),
        batch_max: p.batch_max.max(1),
        batch_max_ms: p.batch_max_ms,
        decision_ttl_secs: p.decision_ttl_secs,
        expiry_interval_ms: p.expiry_interval_ms,
    }
}

fn sink_config(k: &KafkaArgs, s: &SinkArgs) -> SinkConfig {
    SinkConfig {
        kafka: k.settings(),
        topics: k.topics(),
        group_id: Topics::sinks_group(&k.topic_prefix),
        batch_max: s.sink_batch_max.max(1),
        batch_max_ms: s.sink_batch_max_ms,
        retry_delays_ms: k.retry_delays_ms.clone(),
    }
}

fn ingest_config(k: &KafkaArgs, r: &RedisArgs, i: &IngestArgs) -> IngestConfig {
    IngestConfig {
        http_addr: i.http_addr,
        kafka: k.settings(),
        redis_url: r.redis_url.clone(),
        topics: k.topics(),
        key_prefix: r.key_prefix.clone(),
        produce_timeout_ms: i.produce_timeout_ms,
        max_wait_ms: i.max_wait_ms,
        rate_limit_per_user: i.rate_limit_per_user,
        rate_limit_global: i.rate_limit_global,
        max_inflight: i.max_inflight.max(1),
        admin_token: i.admin_token.clone(),
        campaign_cache_ms: i.campaign_cache_ms,
        max_body_bytes: i.max_body_bytes,
        enable_reset: i.enable_reset,
    }
}

async fn create_topics(k: &KafkaArgs) -> anyhow::Result<()> {
    ensure_topics(
        &k.settings(),
        &k.topics(),
        k.partitions,
        k.retry_delays_ms.len(),
    )
    .await
    .with_context(|| {
        format!(
            "creating topics {}.* on {} (is the broker running?)",
            k.topic_prefix, k.kafka_brokers
        )
    })
}

pub(crate) async fn store(s: &StoreArgs) -> anyhow::Result<Arc<dyn OrderStore>> {
    let store = open_store(&s.store)
        .await
        .with_context(|| format!("opening the order store {}", s.store))?;
    Ok(match &s.store_fault_file {
        Some(marker) => {
            tracing::warn!(marker = %marker.display(), "store fault injection is on");
            FaultInjection::wrap(store, marker.clone())
        }
        None => store,
    })
}

/// Runs the roles in `set` until a signal (SIGTERM, Ctrl-C) or until one of
/// them stops; then cancels the rest and waits for them to drain.
async fn supervise(
    mut set: JoinSet<anyhow::Result<()>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let signal = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing the batches in flight");
        signal.cancel();
    });
    let mut result = Ok(());
    while let Some(joined) = set.join_next().await {
        let outcome = joined.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = outcome {
            tracing::error!(error = %format!("{e:#}"), "a role failed; stopping the others");
            if result.is_ok() {
                result = Err(e);
            }
        }
        cancel.cancel();
    }
    result
}

/// /metrics and /healthz for the roles without an HTTP API of their own.
fn serve_metrics(
    set: &mut JoinSet<anyhow::Result<()>>,
    addr: SocketAddr,
    cancel: CancellationToken,
) {
    set.spawn(async move {
        let app = Router::new()
            .route("/metrics", get(|| async { seckill_kafka::metrics_text() }))
            .route("/healthz", get(|| async { "{\"status\":\"ok\"}" }));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for /metrics (is the port free?)"))?;
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await?;
        Ok(())
    });
}

impl AllCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        create_topics(&self.kafka).await?;
        let store = store(&self.store).await?;
        let cancel = CancellationToken::new();
        let mut set = JoinSet::new();
        let pc = processor_config(&self.kafka, &self.redis, &self.process);
        let c = cancel.clone();
        set.spawn(async move { Ok(seckill_processors::run(pc, c).await?) });
        let sc = sink_config(&self.kafka, &self.sink);
        let (s, c) = (Arc::clone(&store), cancel.clone());
        set.spawn(async move { Ok(seckill_sinks::run(sc, s, c).await?) });
        let ic = ingest_config(&self.kafka, &self.redis, &self.ingest);
        let c = cancel.clone();
        set.spawn(async move { Ok(seckill_ingest::serve(ic, store, c).await?) });
        supervise(set, cancel).await
    }
}

impl IngestCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        create_topics(&self.kafka).await?;
        let store = store(&self.store).await?;
        let cancel = CancellationToken::new();
        let mut set = JoinSet::new();
        let ic = ingest_config(&self.kafka, &self.redis, &self.ingest);
        let c = cancel.clone();
        set.spawn(async move { Ok(seckill_ingest::serve(ic, store, c).await?) });
        supervise(set, cancel).await
    }
}

impl ProcessCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let cancel = CancellationToken::new();
        let mut set = JoinSet::new();
        serve_metrics(&mut set, self.metrics_addr, cancel.clone());
        let pc = processor_config(&self.kafka, &self.redis, &self.process);
        let c = cancel.clone();
        set.spawn(async move { Ok(seckill_processors::run(pc, c).await?) });
        supervise(set, cancel).await
    }
}

impl SinkCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let store = store(&self.store).await?;
        let cancel = CancellationToken::new();
        let mut set = JoinSet::new();
        serve_metrics(&mut set, self.metrics_addr, cancel.clone());
        let sc = sink_config(&self.kafka, &self.sink);
        let c = cancel.clone();
        set.spawn(async move { Ok(seckill_sinks::run(sc, store, c).await?) });
        supervise(set, cancel).await
    }
}

impl TopicsCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        match self.action {
            TopicsAction::Create(c) => {
                create_topics(&c.kafka).await?;
                let t = c.kafka.topics();
                println!(
                    "topics ready: {} {} {} {}",
                    t.requests, t.orders, t.requests_dlq, t.orders_dlq
                );
                Ok(())
            }
        }
    }
}
