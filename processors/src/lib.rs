//! The processors: a consumer group on the requests topic that decides every
//! request with one atomic Lua call per campaign per batch and emits the
//! decisions to the orders topic.

mod batch;
mod buckets;
mod config;
mod decide;
mod error;
mod internal_events;
mod progress;
mod restore;
mod run;
mod sweep;
mod translate;
mod worker;

pub use config::ProcessorConfig;
pub use decide::{DecideError, Decider};
pub use error::ProcessorError;
pub use restore::{meta_fields, restore, CampaignImage};
pub use run::run;

/// Connects to Redis with a connection that reconnects by itself.
pub async fn connect_redis(url: &str) -> Result<redis::aio::ConnectionManager, ProcessorError> {
    let client = redis::Client::open(url).map_err(|source| ProcessorError::RedisUrl {
        url: url.to_owned(),
        source,
    })?;
    client
        .get_connection_manager()
        .await
        .map_err(|source| ProcessorError::RedisConnect {
            url: url.to_owned(),
            source,
        })
}

/// What a Redis `maxmemory-policy` risks for the campaign state, or `None`
/// when it cannot evict anything (`noeviction`: writes fail instead, and
/// the processors retry them).
pub fn eviction_risk(policy: &str) -> Option<String> {
    if policy == "noeviction" {
        return None;
    }
    let what = if policy.starts_with("volatile-") {
        "evicts keys that carry a TTL under memory pressure: the campaign records \
         with a TTL are only those of retired campaigns (closed or past their end, \
         kept campaign_retention_secs for late redeliveries, whose answers would be \
         decided again), and the lookup hashes <prefix>:lk:* of results by request \
         id and campaigns by order id (a pay or cancel by order id needs the latter)"
    } else if policy.starts_with("allkeys-") {
        "evicts ANY key under memory pressure, live campaigns' stock counters and \
         recorded decisions included: stock could be oversold and requests decided twice"
    } else {
        "is not one this build knows: it may evict campaign keys"
    };
    Some(format!(
        "Redis maxmemory-policy {policy} {what}; set maxmemory-policy noeviction"
    ))
}

/// Logs whether the Redis eviction policy can drop campaign keys. Never
/// fails: a managed Redis may refuse CONFIG, and that is only logged.
pub async fn check_eviction_policy(con: &mut redis::aio::ConnectionManager) {
    let reply: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(con)
        .await;
    match reply.as_deref() {
        Ok([_, policy, ..]) => match eviction_risk(policy) {
            Some(warning) => tracing::warn!(policy = %policy, "{warning}"),
            None => tracing::info!(policy = %policy, "Redis evicts no keys"),
        },
        Ok(_) => tracing::warn!(
            "Redis answered CONFIG GET maxmemory-policy with nothing: could not check \
             that it never evicts campaign keys (it must use noeviction)"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "could not read Redis maxmemory-policy (CONFIG refused, as managed Redis \
             services do): could not check that it never evicts campaign keys (it \
             must use noeviction)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::eviction_risk;

    #[test]
    fn only_noeviction_is_safe() {
        assert_eq!(eviction_risk("noeviction"), None);
        let v = eviction_risk("volatile-lru").expect("a warning");
        assert!(v.contains("retired campaigns"), "{v}");
        let a = eviction_risk("allkeys-lfu").expect("a warning");
        assert!(a.contains("ANY key"), "{a}");
        assert!(eviction_risk("something-new").is_some());
    }
}
