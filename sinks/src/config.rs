use seckill_kafka::KafkaSettings;
use seckill_schemas::Topics;

/// Everything one sink needs.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub kafka: KafkaSettings,
    pub topics: Topics,
    /// Consumer group shared by all sinks of a deployment.
    pub group_id: String,
    /// Most events written in one store transaction.
    pub batch_max: usize,
    /// Longest wait for a batch to fill once its first event is in.
    pub batch_max_ms: u64,
    /// Delay of each retry tier; failures pass through them in order, then
    /// go to the DLQ. Empty: straight to the DLQ.
    pub retry_delays_ms: Vec<u64>,
}
