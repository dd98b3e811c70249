use seckill_kafka::KafkaSettings;
use seckill_schemas::Topics;

/// Everything one processor needs.
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    pub kafka: KafkaSettings,
    pub redis_url: String,
    pub topics: Topics,
    /// Consumer group shared by all processors of a deployment.
    pub group_id: String,
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// Most messages decided in one batch.
    pub batch_max: usize,
    /// Longest wait for a batch to fill once its first message is in.
    pub batch_max_ms: u64,
    /// How long `GET /v1/requests/{id}` can read a decision without knowing
    /// its campaign.
    pub decision_ttl_secs: u64,
    /// How often overdue reservations are looked for.
    pub expiry_interval_ms: u64,
    /// How long a closed or ended campaign keeps its per-request and
    /// per-order records in Redis (its meta, stock and prizes stay).
    pub campaign_retention_secs: u64,
    /// Keys a command's authenticator may be made with (see
    /// `seckill_schemas` `auth`); a command matching none is dead-lettered.
    pub command_keys: Vec<Vec<u8>>,
    /// The key every lottery's draw secret is derived from (see
    /// `seckill_schemas::DrawSecret`): the same for every processor and
    /// for ingest, which shows the secret's commitment and, once the
    /// campaign is over, the secret. Never rotate it while a lottery is
    /// open: redelivered requests must draw what they drew before. The CLI
    /// reads it from `SECKILL_DRAW_KEY_FILE`, or derives it from the first
    /// command key when no draw key file is set.
    pub draw_key: Vec<u8>,
    /// Decide resets (test environments only); otherwise a reset command is
    /// dead-lettered.
    pub enable_reset: bool,
}
