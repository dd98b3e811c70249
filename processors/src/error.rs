use rdkafka::error::KafkaError;

/// Why a processor could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error("invalid Redis URL {url:?}: {source}")]
    RedisUrl {
        url: String,
        source: redis::RedisError,
    },
    #[error("cannot reach Redis at {url} (is redis-server running there?): {source}")]
    RedisConnect {
        url: String,
        source: redis::RedisError,
    },
    #[error("Kafka client error (is the broker at {brokers} running?): {source}")]
    Kafka { brokers: String, source: KafkaError },
}
