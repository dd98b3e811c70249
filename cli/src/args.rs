//! Command-line flags. Every flag also reads a `SECKILL_*` environment
//! variable, so a container sets its role's config through the environment.

use std::net::SocketAddr;

use clap::Args;
use seckill_kafka::{KafkaSettings, TopicSettings};
use seckill_schemas::Topics;

#[derive(Debug, Clone, Args)]
pub(crate) struct KafkaArgs {
    /// Kafka bootstrap servers, host:port[,host:port].
    #[arg(long, env = "SECKILL_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub(crate) kafka_brokers: String,
    /// Consumer-group session timeout; a group (re)joins after about half.
    #[arg(long, env = "SECKILL_KAFKA_SESSION_TIMEOUT_MS", default_value_t = 6000)]
    pub(crate) kafka_session_timeout_ms: u32,
    /// Prefix of every topic and consumer group name.
    #[arg(long, env = "SECKILL_TOPIC_PREFIX", default_value = "seckill")]
    pub(crate) topic_prefix: String,
    /// Partitions of the requests and orders topics when they are created.
    #[arg(long, env = "SECKILL_PARTITIONS", default_value_t = 4)]
    pub(crate) partitions: i32,
    /// Replication factor of the topics seckill creates (1 for one local
    /// broker; 3 in production).
    #[arg(long, env = "SECKILL_REPLICATION_FACTOR", default_value_t = 1)]
    pub(crate) replication_factor: i32,
    /// `min.insync.replicas` of the topics seckill creates (unset: the
    /// broker's default; 2 in production, with replication 3).
    #[arg(long, env = "SECKILL_MIN_INSYNC_REPLICAS")]
    pub(crate) min_insync_replicas: Option<i32>,
    /// `retention.ms` of the requests topic and the retry tiers.
    #[arg(
        long,
        env = "SECKILL_REQUESTS_RETENTION_MS",
        default_value_t = 604_800_000
    )]
    pub(crate) requests_retention_ms: i64,
    /// `retention.ms` of the orders log and the fulfilment topic (-1:
    /// forever; `seckill reconcile` rebuilds campaigns from the log).
    #[arg(long, env = "SECKILL_ORDERS_RETENTION_MS", default_value_t = -1)]
    pub(crate) orders_retention_ms: i64,
    /// `retention.ms` of the DLQs and quarantines.
    #[arg(
        long,
        env = "SECKILL_DLQ_RETENTION_MS",
        default_value_t = 2_592_000_000
    )]
    pub(crate) dlq_retention_ms: i64,
    /// Delay of each of the sinks' retry tiers (`<prefix>.orders.retry.N`),
    /// comma-separated; a failure passes through them, then to the DLQ.
    #[arg(
        long,
        env = "SECKILL_RETRY_DELAYS_MS",
        value_delimiter = ',',
        default_value = "10000,30000,60000"
    )]
    pub(crate) retry_delays_ms: Vec<u64>,
    /// A librdkafka property for every Kafka client, KEY=VALUE; repeatable
    /// (in the environment: `;`-separated). Set after seckill's own, so it
    /// can override them, e.g. `security.protocol=SASL_SSL`,
    /// `sasl.mechanisms=SCRAM-SHA-512`, `sasl.username=...`,
    /// `ssl.ca.location=/etc/kafka/ca.pem`.
    #[arg(
        long = "kafka-property",
        env = "SECKILL_KAFKA_PROPERTIES",
        value_delimiter = ';',
        value_name = "KEY=VALUE",
        value_parser = kafka_property
    )]
    pub(crate) kafka_properties: Vec<(String, String)>,
    /// Static group membership: this member's `group.instance.id` (e.g. the
    /// pod name, unique in the deployment). A member restarted within the
    /// session timeout keeps its partitions without a group rebalance.
    #[arg(long, env = "SECKILL_INSTANCE_ID")]
    pub(crate) instance_id: Option<String>,
}

fn kafka_property(s: &str) -> Result<(String, String), String> {
    seckill_kafka::parse_property(s).map_err(|e| e.to_string())
}

impl KafkaArgs {
    pub(crate) fn settings(&self) -> KafkaSettings {
        KafkaSettings {
            brokers: self.kafka_brokers.clone(),
            session_timeout_ms: self.kafka_session_timeout_ms,
            properties: self.kafka_properties.clone(),
            instance_id: self.instance_id.clone(),
            solo: false,
            fetch_wait_ms: None,
        }
    }

    pub(crate) fn topic_settings(&self) -> TopicSettings {
        TopicSettings {
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            min_insync_replicas: self.min_insync_replicas,
            requests_retention_ms: self.requests_retention_ms,
            orders_retention_ms: self.orders_retention_ms,
            dlq_retention_ms: self.dlq_retention_ms,
        }
    }

    pub(crate) fn topics(&self) -> Topics {
        Topics::with_prefix(&self.topic_prefix)
    }
}

#[derive(Debug, Clone, Args)]
pub(crate) struct RedisArgs {
    /// Redis holding the campaigns' live state.
    #[arg(
        long,
        env = "SECKILL_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub(crate) redis_url: String,
    /// Prefix of every Redis key.
    #[arg(long, env = "SECKILL_KEY_PREFIX", default_value = "seckill")]
    pub(crate) key_prefix: String,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct StoreArgs {
    /// Order store URL: sqlite://PATH.
    #[arg(long, env = "SECKILL_STORE", default_value = "sqlite://data/orders.db")]
    pub(crate) store: String,
    /// Fault drills: while this file exists every store write fails (as an
    /// outage, or refused if the file says `permanent`).
    #[arg(long, env = "SECKILL_STORE_FAULT_FILE")]
    pub(crate) store_fault_file: Option<std::path::PathBuf>,
}

/// Most requests one processor batch decides, unless SECKILL_BATCH_MAX
/// says otherwise (`seckill bench --batch-max` defaults to it too).
pub(crate) const DEFAULT_BATCH_MAX: usize = 2000;

#[derive(Debug, Clone, Args)]
pub(crate) struct ProcessArgs {
    /// Most requests one processor batch decides.
    #[arg(long, env = "SECKILL_BATCH_MAX", default_value_t = DEFAULT_BATCH_MAX)]
    pub(crate) batch_max: usize,
    /// Longest wait for a processor batch to fill after its first request.
    #[arg(long, env = "SECKILL_BATCH_MAX_MS", default_value_t = 5)]
    pub(crate) batch_max_ms: u64,
    /// How long a decision stays readable by request id alone.
    #[arg(long, env = "SECKILL_DECISION_TTL_SECS", default_value_t = 86_400)]
    pub(crate) decision_ttl_secs: u64,
    /// How often overdue reservations are looked for and expired.
    #[arg(long, env = "SECKILL_EXPIRY_INTERVAL_MS", default_value_t = 500)]
    pub(crate) expiry_interval_ms: u64,
    /// How long a closed or ended campaign keeps its per-request and
    /// per-order records in Redis before they expire (meta and stock stay).
    #[arg(
        long,
        env = "SECKILL_CAMPAIGN_RETENTION_SECS",
        default_value_t = 604_800
    )]
    pub(crate) campaign_retention_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct SinkArgs {
    /// Most order events one store transaction writes.
    #[arg(long, env = "SECKILL_SINK_BATCH_MAX", default_value_t = 5000)]
    pub(crate) sink_batch_max: usize,
    /// Longest wait for a sink batch to fill after its first event.
    #[arg(long, env = "SECKILL_SINK_BATCH_MAX_MS", default_value_t = 20)]
    pub(crate) sink_batch_max_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct IngestArgs {
    /// Address of the HTTP API.
    #[arg(long, env = "SECKILL_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub(crate) http_addr: SocketAddr,
    /// Time allowed for the broker to acknowledge a request before the
    /// client is told the outcome is unknown (503).
    #[arg(long, env = "SECKILL_PRODUCE_TIMEOUT_MS", default_value_t = 5000)]
    pub(crate) produce_timeout_ms: u32,
    /// Largest `?wait_ms=` a client may ask for.
    #[arg(long, env = "SECKILL_MAX_WAIT_MS", default_value_t = 10_000)]
    pub(crate) max_wait_ms: u64,
    /// Requests per second per user (0 = unlimited); bursts of 2x pass.
    #[arg(long, env = "SECKILL_RATE_LIMIT_PER_USER", default_value_t = 10)]
    pub(crate) rate_limit_per_user: u32,
    /// Requests per second from one client address (0 = unlimited); see
    /// `--trusted-proxies` for clients behind a load balancer.
    #[arg(long, env = "SECKILL_RATE_LIMIT_PER_IP", default_value_t = 0)]
    pub(crate) rate_limit_per_ip: u32,
    /// Requests per second for one campaign (0 = unlimited).
    #[arg(long, env = "SECKILL_RATE_LIMIT_PER_CAMPAIGN", default_value_t = 0)]
    pub(crate) rate_limit_per_campaign: u32,
    /// Requests per second for the whole instance (0 = unlimited). Checked
    /// last, after the user, address and campaign limits.
    #[arg(long, env = "SECKILL_RATE_LIMIT_GLOBAL", default_value_t = 100_000)]
    pub(crate) rate_limit_global: u32,
    /// Addresses or networks (CIDR) of the proxies in front of ingest,
    /// comma-separated: only their `X-Forwarded-For` is believed.
    #[arg(long, env = "SECKILL_TRUSTED_PROXIES", value_delimiter = ',', value_parser = ip_net)]
    pub(crate) trusted_proxies: Vec<ipnet::IpNet>,
    /// Requests handled at once before answering 503 "system busy".
    #[arg(long, env = "SECKILL_MAX_INFLIGHT", default_value_t = 20_000)]
    pub(crate) max_inflight: usize,
    /// Age of the campaign state the fast path answers from.
    #[arg(long, env = "SECKILL_CAMPAIGN_CACHE_MS", default_value_t = 100)]
    pub(crate) campaign_cache_ms: u64,
    /// Largest request body accepted.
    #[arg(long, env = "SECKILL_MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub(crate) max_body_bytes: usize,
    /// Seconds a processor or sink group may commit nothing while messages
    /// wait before it counts as stalled: logged, and `/readyz` fails (0:
    /// not watched).
    #[arg(long, env = "SECKILL_STALL_SECS", default_value_t = 30)]
    pub(crate) stall_secs: u64,
    /// Decisions per second one stock bucket's partition takes on your
    /// hardware (one processor deciding one campaign key): a campaign
    /// created without `buckets` but with `expected_requests_per_sec` gets
    /// ceil(expected / this) buckets, at most the requests topic's
    /// partitions and its stock / `--bucket-min-units`.
    #[arg(long, env = "SECKILL_BUCKET_RATE_PER_SEC", default_value_t = 20_000)]
    pub(crate) bucket_rate_per_sec: u64,
    /// Fewest units a stock bucket starts with when buckets are chosen
    /// automatically (a smaller campaign gets fewer buckets).
    #[arg(long, env = "SECKILL_BUCKET_MIN_UNITS", default_value_t = 100)]
    pub(crate) bucket_min_units: u64,
    #[command(flatten)]
    pub(crate) identity: IdentityArgs,
}

fn ip_net(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or a network (e.g. 10.0.0.0/8)"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AuthArg {
    /// Signed tokens: `Authorization: Bearer <JWT>`.
    Jwt,
    /// Trust `X-User-Id`/`X-User-Roles`/`X-User-Attributes` as sent
    /// (insecure: only behind a gateway that authenticates callers).
    Header,
}

/// Who callers are: signed tokens, their keys and claims.
#[derive(Debug, Clone, Args)]
pub(crate) struct IdentityArgs {
    /// How callers are identified.
    #[arg(long = "auth", env = "SECKILL_AUTH", value_enum, default_value = "jwt")]
    pub(crate) auth: AuthArg,
    /// File holding the HS256 key tokens are signed with (at least 16 bytes;
    /// `scripts/run` creates `data/jwt.key`).
    #[arg(long, env = "SECKILL_JWT_HS256_KEY_FILE")]
    pub(crate) jwt_hs256_key_file: Option<std::path::PathBuf>,
    /// The RS256/ES256 public keys: a JWKS file, or an https URL fetched
    /// again every `--jwt-jwks-refresh-secs` and when a token names an
    /// unknown key id.
    #[arg(long, env = "SECKILL_JWT_JWKS")]
    pub(crate) jwt_jwks: Option<String>,
    #[arg(long, env = "SECKILL_JWT_JWKS_REFRESH_SECS", default_value_t = 300)]
    pub(crate) jwt_jwks_refresh_secs: u64,
    /// Required `iss` of tokens.
    #[arg(long, env = "SECKILL_JWT_ISSUER")]
    pub(crate) jwt_issuer: Option<String>,
    /// Required `aud` of tokens.
    #[arg(long, env = "SECKILL_JWT_AUDIENCE")]
    pub(crate) jwt_audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(long, env = "SECKILL_JWT_LEEWAY_SECS", default_value_t = 30)]
    pub(crate) jwt_leeway_secs: u64,
    /// The claim listing the caller's roles (`admin`, `payments`).
    #[arg(long, env = "SECKILL_JWT_ROLES_CLAIM", default_value = "roles")]
    pub(crate) jwt_roles_claim: String,
    /// The claim holding the caller's eligibility attributes (an object).
    #[arg(
        long,
        env = "SECKILL_JWT_ATTRIBUTES_CLAIM",
        default_value = "attributes"
    )]
    pub(crate) jwt_attributes_claim: String,
    /// A static bearer token that also opens the admin API (compared in
    /// constant time). Without it, admin needs a token with the role admin.
    #[arg(long, env = "SECKILL_ADMIN_TOKEN")]
    pub(crate) admin_token: Option<String>,
}

impl IdentityArgs {
    pub(crate) fn config(&self) -> anyhow::Result<seckill_ingest::IdentityConfig> {
        let hs256_key = self
            .jwt_hs256_key_file
            .as_deref()
            .map(|p| read_secret(p, "the JWT key (SECKILL_JWT_HS256_KEY_FILE)"))
            .transpose()?;
        if let Some(t) = &self.admin_token {
            if t.len() < seckill_schemas::MIN_KEY_BYTES {
                anyhow::bail!(
                    "SECKILL_ADMIN_TOKEN is {} characters; use at least {} (it opens the admin API)",
                    t.len(),
                    seckill_schemas::MIN_KEY_BYTES
                );
            }
        }
        Ok(seckill_ingest::IdentityConfig {
            mode: match self.auth {
                AuthArg::Jwt => seckill_ingest::AuthMode::Jwt,
                AuthArg::Header => seckill_ingest::AuthMode::Header,
            },
            hs256_key,
            jwks: self
                .jwt_jwks
                .as_deref()
                .map(seckill_ingest::JwksSource::parse),
            jwks_refresh: std::time::Duration::from_secs(self.jwt_jwks_refresh_secs),
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            leeway_secs: self.jwt_leeway_secs,
            roles_claim: self.jwt_roles_claim.clone(),
            attributes_claim: self.jwt_attributes_claim.clone(),
            admin_token: self.admin_token.clone(),
        })
    }
}

/// A secret from a file (surrounding whitespace trimmed), at least
/// [`seckill_schemas::MIN_KEY_BYTES`] long.
pub(crate) fn read_secret(path: &std::path::Path, what: &str) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    let raw = std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))?;
    let key = raw.trim_ascii().to_vec();
    if key.len() < seckill_schemas::MIN_KEY_BYTES {
        anyhow::bail!(
            "{what} {} holds {} bytes; use at least {} bytes of secret",
            path.display(),
            key.len(),
            seckill_schemas::MIN_KEY_BYTES
        );
    }
    Ok(key)
}

/// What may change a campaign through the requests topic.
#[derive(Debug, Clone, Args)]
pub(crate) struct CommandArgs {
    /// Files holding the command keys, comma-separated: the first signs the
    /// commands this process sends, any of them verifies one (list the new
    /// key first and keep the old one while rotating). At least 16 bytes of
    /// secret each; `scripts/run` creates `data/command.key`.
    #[arg(long, env = "SECKILL_COMMAND_KEY_FILE", value_delimiter = ',')]
    pub(crate) command_key_file: Vec<std::path::PathBuf>,
    /// File holding the draw key, which every lottery's draw secret is
    /// derived from (the same for ingest and the processors; at least 16
    /// bytes of secret; `scripts/run` creates `data/draw.key`). Never
    /// change it while a lottery is open. Unset: derived from the first
    /// command key (HMAC-SHA256(command key, "seckill-draw-key")), so
    /// existing setups keep working; rotating that command key then
    /// changes the draw key too.
    #[arg(long, env = "SECKILL_DRAW_KEY_FILE")]
    pub(crate) draw_key_file: Option<std::path::PathBuf>,
    /// Allow resets (`POST /v1/campaigns/{id}/reset`, and deciding a reset
    /// command): for test environments only.
    #[arg(long, env = "SECKILL_ENABLE_RESET", default_value_t = false)]
    pub(crate) enable_reset: bool,
}

impl CommandArgs {
    /// The command keys, the signing one first.
    pub(crate) fn keys(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        if self.command_key_file.is_empty() {
            anyhow::bail!(
                "commands on the requests topic are authenticated: set SECKILL_COMMAND_KEY_FILE \
                 (or --command-key-file) to a file holding a secret of at least {} bytes, the \
                 same for ingest, the processors and `seckill reconcile` (e.g. `head -c 32 \
                 /dev/urandom | base64 > command.key`; scripts/run creates data/command.key)",
                seckill_schemas::MIN_KEY_BYTES
            );
        }
        self.command_key_file
            .iter()
            .map(|path| read_secret(path, "the command key"))
            .collect()
    }

    /// The draw key, the same for ingest and the processors: the draw key
    /// file's secret, or, without one, HMAC-SHA256(first command key,
    /// "seckill-draw-key").
    pub(crate) fn draw_key(&self) -> anyhow::Result<Vec<u8>> {
        match &self.draw_key_file {
            Some(path) => read_secret(path, "the draw key (SECKILL_DRAW_KEY_FILE)"),
            None => {
                let key = seckill_schemas::draw_key_from_command_key(&self.keys()?[0]);
                tracing::info!(
                    "no SECKILL_DRAW_KEY_FILE: lottery draw secrets derive from the first \
                     command key (rotating it changes them: set a draw key file first)"
                );
                Ok(key)
            }
        }
    }
}

/// Consumer group `seckill dlq replay` keeps its position in.
pub(crate) fn replay_group_of(dlq_topic: &str) -> String {
    format!("{dlq_topic}.replay")
}
