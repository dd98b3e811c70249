//! Topic administration: the deployment's topics with the partition count,
//! replication and retention each needs.

use std::time::Duration;

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use seckill_schemas::Topics;

use crate::KafkaSettings;

/// How the deployment's topics are created. The defaults suit one local
/// broker; production values are in the README (replication 3,
/// `min.insync.replicas` 2, so `acks=all` survives a broker loss).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSettings {
    /// Partitions of the requests, orders, fulfilment and retry topics (the
    /// DLQs and quarantines have one).
    pub partitions: i32,
    pub replication_factor: i32,
    /// `min.insync.replicas`; `None` leaves the broker's default.
    pub min_insync_replicas: Option<i32>,
    /// `retention.ms` of the requests topic (and the retry tiers): long
    /// enough to outlive any processor outage.
    pub requests_retention_ms: i64,
    /// `retention.ms` of the orders log, which `seckill reconcile` reads to
    /// rebuild a campaign: -1 keeps it forever.
    pub orders_retention_ms: i64,
    /// `retention.ms` of the DLQs and quarantines, which ops reprocess.
    pub dlq_retention_ms: i64,
}

impl Default for TopicSettings {
    fn default() -> Self {
        Self {
            partitions: 4,
            replication_factor: 1,
            min_insync_replicas: None,
            requests_retention_ms: 7 * 24 * 3600 * 1000,
            orders_retention_ms: -1,
            dlq_retention_ms: 30 * 24 * 3600 * 1000,
        }
    }
}

/// One topic as [`ensure_topics`] left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicReport {
    pub name: String,
    /// Whether this call created it (else it existed and was left alone).
    pub created: bool,
    /// Its partition count as the broker reports it.
    pub partitions: i32,
    /// The settings it was created with (or would have been).
    pub replication_factor: i32,
    pub config: Vec<(&'static str, String)>,
}

/// The partition count of `topic` as the broker reports it through
/// `client` (blocking: call it off the async threads). `None` when the
/// broker does not answer or does not know the topic.
pub fn partition_count<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> Option<i32> {
    let md = client.fetch_metadata(Some(topic), timeout).ok()?;
    md.topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len() as i32)
        .filter(|n| *n > 0)
}

/// What a topic is for, and so which settings it gets.
#[derive(Clone, Copy)]
enum Kind {
    Stream,
    Log,
    DeadLetters,
}

/// Creates the deployment's topics; topics that exist already are left as
/// they are (their partition count is reported as found).
pub async fn ensure_topics(
    settings: &KafkaSettings,
    topics: &Topics,
    wanted: &TopicSettings,
    retry_tiers: usize,
) -> Result<Vec<TopicReport>, KafkaError> {
    let admin = settings.admin()?;
    let p = wanted.partitions;
    let mut plan: Vec<(String, i32, Kind)> = vec![
        (topics.requests.clone(), p, Kind::Stream),
        (topics.orders.clone(), p, Kind::Log),
        (topics.fulfilment.clone(), p, Kind::Log),
        (topics.requests_dlq.clone(), 1, Kind::DeadLetters),
        (topics.orders_dlq.clone(), 1, Kind::DeadLetters),
        (topics.requests_quarantine.clone(), 1, Kind::DeadLetters),
        (topics.orders_quarantine.clone(), 1, Kind::DeadLetters),
    ];
    plan.extend((1..=retry_tiers).map(|n| (topics.orders_retry(n), p, Kind::Stream)));
    let configs: Vec<Vec<(&'static str, String)>> = plan
        .iter()
        .map(|(_, _, kind)| {
            let retention = match kind {
                Kind::Stream => wanted.requests_retention_ms,
                Kind::Log => wanted.orders_retention_ms,
                Kind::DeadLetters => wanted.dlq_retention_ms,
            };
            let mut c = vec![("retention.ms", retention.to_string())];
            if let Some(n) = wanted.min_insync_replicas {
                c.push(("min.insync.replicas", n.to_string()));
            }
            c
        })
        .collect();
    let new: Vec<NewTopic<'_>> = plan
        .iter()
        .zip(&configs)
        .map(|((name, partitions, _), config)| {
            config.iter().fold(
                NewTopic::new(
                    name,
                    *partitions,
                    TopicReplication::Fixed(wanted.replication_factor),
                ),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let mut created = std::collections::HashSet::new();
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(name) => {
                created.insert(name);
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(
                    |_| tracing::error!(topic = %name, error = %code, "could not create topic"),
                )
            }
        }
    }
    let names: Vec<String> = plan.iter().map(|(n, _, _)| n.clone()).collect();
    let found = tokio::task::spawn_blocking(move || {
        names
            .into_iter()
            .filter_map(|name| {
                let n = partition_count(admin.inner(), &name, Duration::from_secs(5))?;
                Some((name, n))
            })
            .collect::<std::collections::HashMap<String, i32>>()
    })
    .await
    .unwrap_or_default();
    Ok(plan
        .into_iter()
        .zip(configs)
        .map(|((name, partitions, _), config)| TopicReport {
            created: created.contains(&name),
            partitions: found
                .get(&name)
                .copied()
                .filter(|n| *n > 0)
                .unwrap_or(partitions),
            replication_factor: wanted.replication_factor,
            config,
            name,
        })
        .collect())
}
