//! Topic administration.

use std::time::Duration;

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use seckill_schemas::Topics;

use crate::KafkaSettings;

/// Creates the deployment's topics with explicit partition counts; topics
/// that exist already are left as they are.
pub async fn ensure_topics(
    settings: &KafkaSettings,
    topics: &Topics,
    partitions: i32,
    retry_tiers: usize,
) -> Result<(), KafkaError> {
    let admin = settings.admin()?;
    let wanted = [
        (&topics.requests, partitions),
        (&topics.orders, partitions),
        (&topics.requests_dlq, 1),
        (&topics.orders_dlq, 1),
        (&topics.fulfilment, partitions),
        (&topics.requests_quarantine, 1),
        (&topics.orders_quarantine, 1),
    ];
    let retries: Vec<String> = (1..=retry_tiers).map(|n| topics.orders_retry(n)).collect();
    let new: Vec<NewTopic<'_>> = wanted
        .iter()
        .map(|(name, p)| (name.as_str(), *p))
        .chain(retries.iter().map(|name| (name.as_str(), partitions)))
        .map(|(name, p)| NewTopic::new(name, p, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(
                    |_| tracing::error!(topic = %name, error = %code, "could not create topic"),
                )
            }
        }
    }
    Ok(())
}
