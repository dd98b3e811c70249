use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use rdkafka::producer::FutureProducer;
use redis::aio::ConnectionManager;
use seckill_schemas::KeyLayout;
use seckill_store::OrderStore;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::cache::CampaignCache;
use crate::listener::{self, Waiters};
use crate::{IngestConfig, IngestError};

/// Shared by every handler.
pub(crate) struct App {
    pub(crate) config: IngestConfig,
    pub(crate) producer: FutureProducer,
    pub(crate) redis: ConnectionManager,
    pub(crate) store: Arc<dyn OrderStore>,
    pub(crate) keys: KeyLayout,
    pub(crate) cache: CampaignCache,
    pub(crate) waiters: Arc<Waiters>,
    pub(crate) per_user: Option<DefaultKeyedRateLimiter<String>>,
    pub(crate) global: Option<DefaultDirectRateLimiter>,
    pub(crate) inflight: Arc<Semaphore>,
    pub(crate) started: std::time::Instant,
    /// What the stall watch found (see `seckill_kafka::watch_progress`).
    pub(crate) stalls: seckill_kafka::Stalls,
}

pub(crate) type AppState = Arc<App>;

fn quota(per_sec: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(per_sec.saturating_mul(2)).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

impl App {
    pub(crate) async fn connect(
        config: IngestConfig,
        store: Arc<dyn OrderStore>,
        cancel: CancellationToken,
    ) -> Result<AppState, IngestError> {
        let kafka_err = |source| IngestError::Kafka {
            brokers: config.kafka.brokers.clone(),
            source,
        };
        let producer = config
            .kafka
            .producer(config.produce_timeout_ms)
            .map_err(kafka_err)?;
        let redis_err = |source| IngestError::Redis {
            url: config.redis_url.clone(),
            source,
        };
        let redis = redis::Client::open(config.redis_url.as_str())
            .map_err(redis_err)?
            .get_connection_manager()
            .await
            .map_err(redis_err)?;
        let waiters = Arc::new(Waiters::default());
        listener::spawn(
            &config.kafka,
            &config.topics.orders,
            Arc::clone(&waiters),
            cancel.clone(),
        )
        .map_err(kafka_err)?;
        let per_user = quota(config.rate_limit_per_user).map(RateLimiter::keyed);
        let global = quota(config.rate_limit_global).map(RateLimiter::direct);
        let stalls = if config.stall_after.is_zero() {
            seckill_kafka::Stalls::default()
        } else {
            seckill_kafka::watch_progress(
                &config.kafka,
                config.watch.clone(),
                config.stall_after,
                cancel.clone(),
            )
            .map_err(kafka_err)?
        };
        let app = Arc::new(App {
            keys: KeyLayout::new(config.key_prefix.clone()),
            cache: CampaignCache::new(Duration::from_millis(config.campaign_cache_ms)),
            inflight: Arc::new(Semaphore::new(config.max_inflight)),
            config,
            producer,
            redis,
            store,
            waiters,
            per_user,
            global,
            started: std::time::Instant::now(),
            stalls,
        });
        // The keyed limiter keeps a cell per user it has seen; forget the
        // ones that have been quiet so memory stays bounded over a long sale.
        let weak = Arc::downgrade(&app);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
                let Some(app) = weak.upgrade() else { break };
                if let Some(l) = &app.per_user {
                    l.retain_recent();
                    l.shrink_to_fit();
                }
            }
        });
        Ok(app)
    }
}
