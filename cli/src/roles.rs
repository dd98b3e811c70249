//! Starting the roles, alone or all together.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::get;
use axum::Router;
use clap::{Args, Subcommand};
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use seckill_ingest::IngestConfig;
use seckill_kafka::{ensure_topics, shutdown_signal, TopicReport};
use seckill_processors::ProcessorConfig;
use seckill_schemas::Topics;
use seckill_sinks::SinkConfig;
use seckill_store::{open_store, FaultInjection, OrderStore};

use crate::args::{
    CommandArgs, IngestArgs, KafkaArgs, ProcessArgs, RedisArgs, SinkArgs, StoreArgs,
};

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
    #[command(flatten)]
    commands: CommandArgs,
    #[command(flatten)]
    shutdown: ShutdownArgs,
    /// This is the only seckill process on these topics (the local stack):
    /// it takes every partition by hand and commits outside the group
    /// protocol, so a slow broker's missed heartbeats cannot stall it.
    /// Never with more than one process on the same topics.
    #[arg(long, env = "SECKILL_SOLO", default_value_t = false)]
    solo: bool,
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
    #[command(flatten)]
    commands: CommandArgs,
    #[command(flatten)]
    shutdown: ShutdownArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ProcessCmd {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    process: ProcessArgs,
    #[command(flatten)]
    commands: CommandArgs,
    /// Where /metrics and /healthz are served.
    #[arg(long, env = "SECKILL_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    metrics_addr: SocketAddr,
    #[command(flatten)]
    shutdown: ShutdownArgs,
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
    #[command(flatten)]
    shutdown: ShutdownArgs,
}

/// How a role process stops.
#[derive(Debug, Args)]
pub(crate) struct ShutdownArgs {
    /// Seconds the roles get, after SIGTERM or Ctrl-C, to finish or abandon
    /// their batches, commit what they can and close. Past it the process
    /// logs the roles still running and exits with a failure code; what
    /// they held is redelivered (decisions and writes are idempotent).
    #[arg(long, env = "SECKILL_SHUTDOWN_GRACE_SECS", default_value_t = 25)]
    shutdown_grace_secs: u64,
}

impl ShutdownArgs {
    fn grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
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

fn processor_config(
    k: &KafkaArgs,
    r: &RedisArgs,
    p: &ProcessArgs,
    c: &CommandArgs,
) -> anyhow::Result<ProcessorConfig> {
    Ok(ProcessorConfig {
        kafka: k.settings(),
        redis_url: r.redis_url.clone(),
        topics: k.topics(),
        group_id: Topics::processors_group(&k.topic_prefix),
        key_prefix: r.key_prefix.clone(),
        batch_max: p.batch_max.max(1),
        batch_max_ms: p.batch_max_ms,
        decision_ttl_secs: p.decision_ttl_secs,
        expiry_interval_ms: p.expiry_interval_ms,
        campaign_retention_secs: p.campaign_retention_secs,
        command_keys: c.keys()?,
        draw_key: c.draw_key()?,
        enable_reset: c.enable_reset,
    })
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

fn ingest_config(
    k: &KafkaArgs,
    r: &RedisArgs,
    i: &IngestArgs,
    c: &CommandArgs,
) -> anyhow::Result<IngestConfig> {
    Ok(IngestConfig {
        http_addr: i.http_addr,
        kafka: k.settings(),
        redis_url: r.redis_url.clone(),
        topics: k.topics(),
        key_prefix: r.key_prefix.clone(),
        produce_timeout_ms: i.produce_timeout_ms,
        max_wait_ms: i.max_wait_ms,
        rate_limit_per_user: i.rate_limit_per_user,
        rate_limit_per_ip: i.rate_limit_per_ip,
        rate_limit_per_campaign: i.rate_limit_per_campaign,
        rate_limit_global: i.rate_limit_global,
        trusted_proxies: i.trusted_proxies.clone(),
        max_inflight: i.max_inflight.max(1),
        identity: i.identity.config()?,
        campaign_cache_ms: i.campaign_cache_ms,
        max_body_bytes: i.max_body_bytes,
        enable_reset: c.enable_reset,
        command_key: c.keys()?.swap_remove(0),
        draw_key: c.draw_key()?,
        watch: vec![
            seckill_kafka::Watched {
                group: Topics::processors_group(&k.topic_prefix),
                topic: k.topics().requests,
                consequence: "accepted requests are not decided".into(),
            },
            seckill_kafka::Watched {
                group: Topics::sinks_group(&k.topic_prefix),
                topic: k.topics().orders,
                consequence: "decided orders are not stored".into(),
            },
        ],
        stall_after: std::time::Duration::from_secs(i.stall_secs),
        buckets: seckill_ingest::BucketConfig {
            rate_per_bucket: i.bucket_rate_per_sec.max(1),
            min_units_per_bucket: i.bucket_min_units.max(1),
        },
    })
}

async fn create_topics(k: &KafkaArgs) -> anyhow::Result<Vec<TopicReport>> {
    ensure_topics(
        &k.settings(),
        &k.topics(),
        &k.topic_settings(),
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

/// The roles of one process, by name.
#[derive(Default)]
struct Roles {
    set: JoinSet<anyhow::Result<()>>,
    names: HashMap<Id, &'static str>,
}

impl Roles {
    fn spawn(
        &mut self,
        name: &'static str,
        role: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let handle = self.set.spawn(role);
        self.names.insert(handle.id(), name);
    }

    /// The next role to end: its name and how it ended.
    async fn next(&mut self) -> Option<(&'static str, anyhow::Result<()>)> {
        let (id, outcome) = match self.set.join_next_with_id().await? {
            Ok((id, r)) => (id, r),
            Err(e) => (e.id(), Err(anyhow::Error::from(e))),
        };
        Some((self.names.remove(&id).unwrap_or("role"), outcome))
    }

    fn running(&self) -> String {
        let mut names: Vec<&str> = self.names.values().copied().collect();
        names.sort_unstable();
        names.join(",")
    }
}

/// How long the runtime's teardown (dropping what the roles left behind)
/// may take past the grace period before the process exits regardless.
const TEARDOWN: Duration = Duration::from_secs(1);

/// Runs the roles until a signal (SIGTERM, Ctrl-C) or until one of them
/// stops; then cancels the rest and waits for them at most `grace`. Past
/// it, logs the roles still running and returns an error (they hold
/// nothing that is not redelivered). A second signal exits at once.
async fn supervise(
    mut roles: Roles,
    cancel: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let signal = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown_signal() => {
                tracing::info!(
                    grace_secs = grace.as_secs(),
                    "shutting down: finishing or abandoning the batches in flight"
                );
                signal.cancel();
            }
            // Stopping on its own (a role ended): a signal still hurries it.
            _ = signal.cancelled() => {}
        }
        shutdown_signal().await;
        tracing::error!("second signal: exiting now; what the roles held is redelivered");
        std::process::exit(130);
    });
    let mut result = Ok(());
    fn record(name: &str, outcome: anyhow::Result<()>, result: &mut anyhow::Result<()>) {
        if let Err(e) = outcome {
            tracing::error!(role = name, error = %format!("{e:#}"), "a role failed; stopping the others");
            if result.is_ok() {
                *result = Err(e.context(format!("role {name}")));
            }
        }
    }
    // Until the stop: a role that ends (failed or not) stops the others.
    while !cancel.is_cancelled() {
        tokio::select! {
            _ = cancel.cancelled() => {}
            ended = roles.next() => match ended {
                None => return result,
                Some((name, outcome)) => {
                    tracing::info!(role = name, "role ended; stopping the others");
                    record(name, outcome, &mut result);
                    cancel.cancel();
                }
            },
        }
    }
    let started = tokio::time::Instant::now();
    let deadline = started + grace;
    loop {
        match tokio::time::timeout_at(deadline, roles.next()).await {
            Ok(None) => break,
            Ok(Some((name, outcome))) => {
                tracing::info!(
                    role = name,
                    after_ms = started.elapsed().as_millis() as u64,
                    "role stopped"
                );
                record(name, outcome, &mut result);
            }
            Err(_) => {
                let running = roles.running();
                tracing::error!(
                    roles = %running,
                    grace_secs = grace.as_secs(),
                    "shutdown grace period exceeded; abandoning the roles still running (the \
                     batches they hold are redelivered: decisions and writes are idempotent)"
                );
                // Left to the runtime's teardown, which the exit guard bounds.
                roles.set.detach_all();
                exit_guard(tokio::time::Instant::now() + TEARDOWN, 1);
                return Err(anyhow::anyhow!(
                    "shutdown grace period of {}s exceeded; abandoned: {running}",
                    grace.as_secs()
                ));
            }
        }
    }
    tracing::info!(
        after_ms = started.elapsed().as_millis() as u64,
        "every role stopped"
    );
    // What the roles left behind (librdkafka handles still closing, blocking
    // calls) is dropped by the runtime's teardown; it must not outlast the
    // grace period.
    exit_guard(deadline.max(tokio::time::Instant::now() + TEARDOWN), 1);
    result
}

/// Exits the process with `code` at `at` unless it has exited by then.
fn exit_guard(at: tokio::time::Instant, code: i32) {
    let at = at.into_std();
    let spawned = std::thread::Builder::new()
        .name("exit-guard".to_owned())
        .spawn(move || {
            std::thread::sleep(at.saturating_duration_since(std::time::Instant::now()));
            tracing::error!(
                "still tearing down past the shutdown grace period (a Kafka client that \
                 cannot reach the broker?); exiting"
            );
            std::process::exit(code);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no exit guard thread; the teardown is unbounded");
    }
}

/// /metrics and /healthz for the roles without an HTTP API of their own.
fn serve_metrics(roles: &mut Roles, addr: SocketAddr, cancel: CancellationToken) {
    roles.spawn("metrics", async move {
        let app = Router::new()
            .route("/metrics", get(|| async { seckill_kafka::metrics_text() }))
            .route("/healthz", get(|| async { "{\"status\":\"ok\"}" }));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for /metrics (is the port free?)"))?;
        let server = axum::serve(listener, app)
            .with_graceful_shutdown(cancel.clone().cancelled_owned())
            .into_future();
        // A scrape in flight gets a moment; keep-alive connections close.
        tokio::select! {
            served = server => served?,
            _ = async {
                cancel.cancelled().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            } => {}
        }
        Ok(())
    });
}

impl AllCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        create_topics(&self.kafka).await?;
        let store = store(&self.store).await?;
        let cancel = CancellationToken::new();
        let mut roles = Roles::default();
        let mut pc = processor_config(&self.kafka, &self.redis, &self.process, &self.commands)?;
        pc.kafka.solo = self.solo;
        let c = cancel.clone();
        roles.spawn("processor", async move {
            Ok(seckill_processors::run(pc, c).await?)
        });
        let mut sc = sink_config(&self.kafka, &self.sink);
        sc.kafka.solo = self.solo;
        let (s, c) = (Arc::clone(&store), cancel.clone());
        roles.spawn(
            "sink",
            async move { Ok(seckill_sinks::run(sc, s, c).await?) },
        );
        let ic = ingest_config(&self.kafka, &self.redis, &self.ingest, &self.commands)?;
        let c = cancel.clone();
        roles.spawn("ingest", async move {
            Ok(seckill_ingest::serve(ic, store, c).await?)
        });
        supervise(roles, cancel, self.shutdown.grace()).await
    }
}

impl IngestCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        create_topics(&self.kafka).await?;
        let store = store(&self.store).await?;
        let cancel = CancellationToken::new();
        let mut roles = Roles::default();
        let ic = ingest_config(&self.kafka, &self.redis, &self.ingest, &self.commands)?;
        let c = cancel.clone();
        roles.spawn("ingest", async move {
            Ok(seckill_ingest::serve(ic, store, c).await?)
        });
        supervise(roles, cancel, self.shutdown.grace()).await
    }
}

impl ProcessCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let cancel = CancellationToken::new();
        let mut roles = Roles::default();
        serve_metrics(&mut roles, self.metrics_addr, cancel.clone());
        let pc = processor_config(&self.kafka, &self.redis, &self.process, &self.commands)?;
        let c = cancel.clone();
        roles.spawn("processor", async move {
            Ok(seckill_processors::run(pc, c).await?)
        });
        supervise(roles, cancel, self.shutdown.grace()).await
    }
}

impl SinkCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let store = store(&self.store).await?;
        let cancel = CancellationToken::new();
        let mut roles = Roles::default();
        serve_metrics(&mut roles, self.metrics_addr, cancel.clone());
        let sc = sink_config(&self.kafka, &self.sink);
        let c = cancel.clone();
        roles.spawn("sink", async move {
            Ok(seckill_sinks::run(sc, store, c).await?)
        });
        supervise(roles, cancel, self.shutdown.grace()).await
    }
}

impl TopicsCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        match self.action {
            TopicsAction::Create(c) => {
                for t in create_topics(&c.kafka).await? {
                    let config: Vec<String> =
                        t.config.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!(
                        "{} {}: partitions={} replication={} {}",
                        if t.created { "created" } else { "found" },
                        t.name,
                        t.partitions,
                        t.replication_factor,
                        config.join(" ")
                    );
                }
                Ok(())
            }
        }
    }
}
