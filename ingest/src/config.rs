use std::net::SocketAddr;

use seckill_kafka::{KafkaSettings, Watched};
use seckill_schemas::Topics;

/// Everything ingest needs.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub http_addr: SocketAddr,
    pub kafka: KafkaSettings,
    pub redis_url: String,
    pub topics: Topics,
    pub key_prefix: String,
    /// After this long without the broker's acknowledgement a request's fate
    /// is unknown and the client gets 503 (retry with the same key).
    pub produce_timeout_ms: u32,
    /// Upper bound of `?wait_ms=`.
    pub max_wait_ms: u64,
    /// Requests per second one user may send (0 = no limit); bursts of twice
    /// that pass.
    pub rate_limit_per_user: u32,
    /// Requests per second from one client address (0 = no limit).
    pub rate_limit_per_ip: u32,
    /// Requests per second for one campaign (0 = no limit).
    pub rate_limit_per_campaign: u32,
    /// Requests per second the whole instance accepts (0 = no limit).
    pub rate_limit_global: u32,
    /// Proxies whose `X-Forwarded-For` is believed; from anyone else the
    /// client address is the connection's peer.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Requests handled at once; more get 503 "system busy".
    pub max_inflight: usize,
    /// Who callers are and what they may do.
    pub identity: crate::IdentityConfig,
    /// How long a campaign's cached state answers the fast path.
    pub campaign_cache_ms: u64,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Allow `POST /v1/campaigns/{id}/reset` (test environments only).
    pub enable_reset: bool,
    /// The key this gateway signs its commands with (see `seckill_schemas`
    /// `auth`).
    pub command_key: Vec<u8>,
    /// The key the lotteries' draw secrets are derived from, the same the
    /// processors draw with (see `seckill_schemas::DrawSecret`): ingest
    /// shows each lottery's commitment from creation and reveals its secret
    /// once the campaign is closed or ended. The CLI reads it from
    /// `SECKILL_DRAW_KEY_FILE`, or derives it from the first command key
    /// when no draw key file is set.
    pub draw_key: Vec<u8>,
    /// The consumer groups behind this gateway (processors, sinks) whose
    /// progress `/readyz` answers for.
    pub watch: Vec<Watched>,
    /// A watched group that commits nothing for this long while messages
    /// wait is stalled: logged, and `/readyz` fails (zero: not watched).
    pub stall_after: std::time::Duration,
    /// How campaigns created without `buckets` get theirs.
    pub buckets: BucketConfig,
}

/// The automatic choice of a new campaign's stock buckets
/// (`seckill_schemas::BucketPlan`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketConfig {
    /// Decisions per second one bucket's partition (one processor, one
    /// Lua call per batch) takes on this hardware; a campaign expecting
    /// `expected_requests_per_sec` gets that divided by this, rounded up.
    pub rate_per_bucket: u64,
    /// Fewest units a bucket starts with: a campaign with less stock per
    /// bucket gets fewer buckets (one, when small).
    pub min_units_per_bucket: u64,
}
