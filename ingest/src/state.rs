use std::net::IpAddr;
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
use crate::identity::Identity;
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
    pub(crate) identity: Identity,
    pub(crate) limits: Limits,
    pub(crate) inflight: Arc<Semaphore>,
    pub(crate) started: std::time::Instant,
    /// What the stall watch found (see `seckill_kafka::watch_progress`).
    pub(crate) stalls: seckill_kafka::Stalls,
    /// Pending requests' places in line.
    pub(crate) line: crate::position::Line,
}

pub(crate) type AppState = Arc<App>;

/// Request rates, checked from the narrowest key out (user, client
/// address, campaign, then the instance), so one caller spends its own
/// budget before anyone else's.
pub(crate) struct Limits {
    per_user: Option<DefaultKeyedRateLimiter<String>>,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_campaign: Option<DefaultKeyedRateLimiter<String>>,
    global: Option<DefaultDirectRateLimiter>,
}

impl Limits {
    /// `Err` names the limit that was hit.
    pub(crate) fn check(&self, user: &str, ip: IpAddr, campaign: &str) -> Result<(), &'static str> {
        if self
            .per_user
            .as_ref()
            .is_some_and(|l| l.check_key(&user.to_owned()).is_err())
        {
            return Err("this user sends requests too fast; retry in a moment");
        }
        if self
            .per_ip
            .as_ref()
            .is_some_and(|l| l.check_key(&ip).is_err())
        {
            return Err("too many requests from this address; retry in a moment");
        }
        if self
            .per_campaign
            .as_ref()
            .is_some_and(|l| l.check_key(&campaign.to_owned()).is_err())
        {
            return Err("this campaign is over its request rate; retry in a moment");
        }
        if self.global.as_ref().is_some_and(|l| l.check().is_err()) {
            return Err("the sale is over its request rate; retry in a moment");
        }
        Ok(())
    }

    /// The keyed limiters keep a cell per key seen; forget the quiet ones
    /// so memory stays bounded over a long sale.
    fn forget_quiet(&self) {
        if let Some(l) = &self.per_user {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.per_ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.per_campaign {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// The client's address: the connection's peer, or, when the peer is a
/// trusted proxy, the nearest address in `X-Forwarded-For` that is not one
/// (each proxy appends the address it saw, so the ones before it are the
/// client's word and could be forged).
pub(crate) fn client_ip(
    peer: IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|h| h.trim().parse().ok())
        .collect();
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

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
        let identity = Identity::start(config.identity.clone(), cancel.clone())
            .await
            .map_err(IngestError::Identity)?;
        let limits = Limits {
            per_user: quota(config.rate_limit_per_user).map(RateLimiter::keyed),
            per_ip: quota(config.rate_limit_per_ip).map(RateLimiter::keyed),
            per_campaign: quota(config.rate_limit_per_campaign).map(RateLimiter::keyed),
            global: quota(config.rate_limit_global).map(RateLimiter::direct),
        };
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
        let keys = KeyLayout::new(config.key_prefix.clone());
        // The group that decides the requests topic: its committed offsets
        // place a request before the processors report progress.
        let processors_group = config
            .watch
            .iter()
            .find(|w| w.topic == config.topics.requests)
            .map(|w| w.group.as_str());
        let line = crate::position::Line::start(
            redis.clone(),
            &keys,
            &config.kafka,
            processors_group,
            &config.topics.requests,
        )
        .map_err(kafka_err)?;
        let app = Arc::new(App {
            keys,
            line,
            cache: CampaignCache::new(Duration::from_millis(config.campaign_cache_ms)),
            inflight: Arc::new(Semaphore::new(config.max_inflight)),
            config,
            producer,
            redis,
            store,
            waiters,
            identity,
            limits,
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
                app.limits.forget_quiet();
            }
        });
        Ok(app)
    }
}

#[cfg(test)]
mod tests {
    use super::client_ip;
    use axum::http::HeaderMap;
    use std::net::IpAddr;

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().expect("header"));
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.5".parse().expect("ip");
        let trusted = vec!["10.0.0.0/24".parse().expect("net")];
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        // From a trusted proxy: the nearest untrusted hop.
        assert_eq!(
            client_ip(proxy, &xff("1.1.1.1, 2.2.2.2"), &trusted),
            ip("2.2.2.2")
        );
        assert_eq!(
            client_ip(proxy, &xff("2.2.2.2, 10.0.0.7"), &trusted),
            ip("2.2.2.2")
        );
        // Garbage or nothing: the proxy itself.
        assert_eq!(client_ip(proxy, &xff("junk"), &trusted), proxy);
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
        // From anyone else the header is ignored.
        let stranger = ip("3.3.3.3");
        assert_eq!(client_ip(stranger, &xff("1.1.1.1"), &trusted), stranger);
        assert_eq!(client_ip(stranger, &xff("1.1.1.1"), &[]), stranger);
    }
}
