use std::net::SocketAddr;

/// Why ingest could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot listen on {addr} (is the port free?): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("Kafka client error (is the broker at {brokers} running?): {source}")]
    Kafka {
        brokers: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot reach Redis at {url} (is redis-server running there?): {source}")]
    Redis {
        url: String,
        source: redis::RedisError,
    },
    #[error("identity: {0}")]
    Identity(String),
}
