//! `seckill bench`: drives a running stack with a flash sale and prints one
//! JSON line of figures and invariant results. Timing is measured here, by
//! the clock of this process, and from the events' own timestamps.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use futures::stream::{self, StreamExt};
use rand::Rng;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

use seckill_schemas::{
    now_ms, CampaignKind, CampaignSpec, Decision, DecisionStatus, OrderEvent, PurchaseRequested,
    RequestEvent, SCHEMA_VERSION,
};

use crate::args::{KafkaArgs, RedisArgs, StoreArgs};
use seckill_cli::check::{check_campaign, CampaignReport, DecisionRecord};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Via {
    /// POST /v1/purchases on ingest.
    Http,
    /// Produce purchase events straight to the requests topic.
    Kafka,
}

#[derive(Debug, Args)]
pub(crate) struct BenchCmd {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    store: StoreArgs,
    /// Base URL of ingest (campaigns are always created through it).
    #[arg(
        long,
        env = "SECKILL_BENCH_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// How purchases enter the pipeline.
    #[arg(long, value_enum, default_value = "http")]
    via: Via,
    /// Purchase requests to send.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Distinct users sending them.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Campaigns the requests are spread over.
    #[arg(long, default_value_t = 1)]
    campaigns: usize,
    /// Units of stock per campaign.
    #[arg(long, default_value_t = 1_000)]
    stock: u64,
    /// Units one user may hold per campaign.
    #[arg(long, default_value_t = 1)]
    per_user_limit: u32,
    /// Share of the requests that go to the first (hot) campaign; the rest
    /// spread evenly over the others. 0 spreads all evenly.
    #[arg(long, default_value_t = 0.0)]
    hot_share: f64,
    /// HTTP requests in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Longest wait for decisions and stored orders after the load.
    #[arg(long, default_value_t = 120)]
    settle_secs: u64,
    /// Bearer token for the admin API (ingest's SECKILL_ADMIN_TOKEN); without
    /// it the bench signs itself an admin token with the JWT key.
    #[arg(long, env = "SECKILL_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// The HS256 key ingest checks tokens with: the bench signs one token
    /// per user with it (before the clock starts).
    #[arg(
        long,
        env = "SECKILL_JWT_HS256_KEY_FILE",
        default_value = "data/jwt.key"
    )]
    jwt_key_file: std::path::PathBuf,
    /// `iss` and `aud` of the tokens, when ingest requires them.
    #[arg(long, env = "SECKILL_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    #[arg(long, env = "SECKILL_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// How the users identify themselves: signed tokens, or `header` for an
    /// ingest started with SECKILL_AUTH=header (X-User-Id, no tokens).
    #[arg(long, value_enum, default_value = "jwt")]
    auth: crate::args::AuthArg,
}

/// What the decision collector has seen, by request id.
#[derive(Default)]
struct Seen {
    decisions: HashMap<String, DecisionRecord>,
    /// Request ids announced with two different outcomes.
    conflicting: HashSet<String>,
    /// Accept-to-decision latencies (ms): order-event timestamp minus the
    /// request's `requested_at_ms`.
    latencies_ms: Vec<i64>,
    first_decision: Option<Instant>,
    last_decision: Option<Instant>,
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

impl BenchCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        if self.campaigns == 0 || self.users == 0 || self.requests == 0 {
            bail!("--campaigns, --users and --requests must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.hot_share) {
            bail!("--hot-share must be between 0 and 1");
        }
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(self.concurrency)
            .timeout(Duration::from_secs(30))
            .build()?;
        let run_id = format!("bench-{}", now_ms());
        let key = crate::args::read_secret(&self.jwt_key_file, "the JWT key (--jwt-key-file)");
        let admin = match (&self.admin_token, &key) {
            (Some(t), _) => t.clone(),
            (None, _) if self.auth == crate::args::AuthArg::Header => String::new(),
            (None, Ok(k)) => self.token(k, "bench-admin", vec!["admin".into()]),
            (None, Err(e)) => bail!(
                "the bench needs an admin token (--admin-token) or the JWT key ingest checks: {e:#}"
            ),
        };
        let specs = self.create_campaigns(&http, &run_id, &admin).await?;
        let ids: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();

        let seen = Arc::new(Mutex::new(Seen::default()));
        let collector = self.collect_decisions(&run_id, Arc::clone(&seen)).await?;

        let plan = self.plan(&ids);
        // One token per user, signed before the clock starts.
        let tokens: HashMap<&str, String> = match (self.via, &key) {
            (Via::Http, _) if self.auth == crate::args::AuthArg::Header => HashMap::new(),
            (Via::Http, Ok(k)) => plan
                .iter()
                .map(|(_, u)| u.as_str())
                .collect::<HashSet<_>>()
                .into_iter()
                .map(|u| (u, self.token(k, u, Vec::new())))
                .collect(),
            (Via::Http, Err(e)) => bail!("--via http signs the users' tokens: {e:#}"),
            (Via::Kafka, _) => HashMap::new(),
        };
        let started = Instant::now();
        let (accepted, fast, refused) = match self.via {
            Via::Http => self.load_http(&http, &plan, &tokens).await,
            Via::Kafka => self.load_kafka(&plan).await?,
        };
        let accept_secs = started.elapsed().as_secs_f64();

        // Wait for a decision on every accepted request.
        let deadline = Instant::now() + Duration::from_secs(self.settle_secs);
        loop {
            let decided = {
                let s = seen.lock().unwrap_or_else(|p| p.into_inner());
                accepted
                    .iter()
                    .filter(|r| s.decisions.contains_key(*r))
                    .count()
            };
            if decided == accepted.len() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        collector.abort();
        let (decided, decide_secs, mut latencies, decisions, conflicting) = {
            let s = seen.lock().unwrap_or_else(|p| p.into_inner());
            let decided = accepted
                .iter()
                .filter(|r| s.decisions.contains_key(*r))
                .count();
            // The decision rate is taken over the window in which decisions
            // arrived, so it measures the processors, not the load generator.
            let secs = match (s.first_decision, s.last_decision) {
                (Some(a), Some(b)) if b > a => b.duration_since(a).as_secs_f64(),
                _ => f64::NAN,
            };
            (
                decided,
                secs,
                s.latencies_ms.clone(),
                s.decisions.clone(),
                s.conflicting.len(),
            )
        };
        latencies.sort_unstable();

        // Wait for the store to hold every reserved order.
        let store = seckill_store::open_store(&self.store.store)
            .await
            .with_context(|| format!("opening the order store {}", self.store.store))?;
        let mut redis = seckill_processors::connect_redis(&self.redis.redis_url).await?;
        let keys = seckill_schemas::KeyLayout::new(self.redis.key_prefix.clone());
        let reserved_ids: HashSet<&str> = decisions
            .values()
            .filter_map(|d| d.order_id.as_deref())
            .collect();
        let undecided = accepted.len() - decided;
        let mut reports: Vec<CampaignReport>;
        loop {
            reports = Vec::new();
            for spec in &specs {
                let mine: Vec<&DecisionRecord> = decisions
                    .values()
                    .filter(|d| d.campaign_id == spec.id)
                    .collect();
                reports.push(
                    check_campaign(
                        &*store,
                        &mut redis,
                        &keys,
                        &spec.id,
                        spec.per_user_limit,
                        &mine,
                    )
                    .await?,
                );
            }
            let stored: usize = reports.iter().map(|r| r.stored_orders).sum();
            if stored >= reserved_ids.len() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let persist_secs = started.elapsed().as_secs_f64();
        let stored: usize = reports.iter().map(|r| r.stored_orders).sum();
        // Every problem kind of the checker, summed over the campaigns.
        let mut invariants = serde_json::Map::new();
        for r in &reports {
            for (kind, n) in r.problems() {
                let total = invariants.entry(kind).or_insert(json!(0));
                *total = json!(total.as_u64().unwrap_or(0) + n as u64);
            }
        }
        invariants.insert("undecided_requests".into(), json!(undecided));
        invariants.insert("conflicting_decisions_seen".into(), json!(conflicting));
        let line = json!({
            "via": format!("{:?}", self.via).to_lowercase(),
            "requests": self.requests,
            "users": self.users,
            "campaigns": self.campaigns,
            "stock_per_campaign": self.stock,
            "accepted": accepted.len(),
            "answered_fast": fast,
            "refused": refused,
            "decided": decided,
            "persisted": stored,
            // Every answer of the load (queued, answered from the cache, or
            // refused) over the time the load took.
            "answered_per_sec": (self.requests as f64 / accept_secs).round(),
            "accepted_per_sec": (accepted.len() as f64 / accept_secs).round(),
            "decided_per_sec": (decided as f64 / decide_secs).round(),
            "persisted_per_sec": (stored as f64 / persist_secs).round(),
            "latency_ms": {
                "p50": percentile(&latencies, 0.50),
                "p99": percentile(&latencies, 0.99),
                "p999": percentile(&latencies, 0.999),
                "max": latencies.last().copied().unwrap_or(0),
            },
            "reserved": reserved_ids.len(),
            "invariants": invariants,
        });
        println!("{line}");
        Ok(())
    }

    async fn create_campaigns(
        &self,
        http: &reqwest::Client,
        run_id: &str,
        admin: &str,
    ) -> anyhow::Result<Vec<CampaignSpec>> {
        let now = chrono::Utc::now();
        let mut specs = Vec::new();
        for i in 0..self.campaigns {
            let spec = CampaignSpec {
                id: format!("{run_id}-{i}"),
                name: format!("bench campaign {i}"),
                kind: CampaignKind::Sale,
                stock: self.stock,
                per_user_limit: self.per_user_limit,
                starts_at: now - chrono::Duration::seconds(1),
                ends_at: now + chrono::Duration::hours(1),
                payment_timeout_secs: 300,
                price: 100,
                ..CampaignSpec::default()
            };
            let req = http.post(format!("{}/v1/campaigns", self.url)).json(&spec);
            let req = if admin.is_empty() {
                req.header("x-user-id", "bench-admin")
                    .header("x-user-roles", "admin")
            } else {
                req.bearer_auth(admin)
            };
            let resp = req.send().await.with_context(|| {
                format!("POST {}/v1/campaigns (is `seckill all` running?)", self.url)
            })?;
            if !resp.status().is_success() {
                bail!(
                    "creating campaign {}: {} {}",
                    spec.id,
                    resp.status(),
                    resp.text().await?
                );
            }
            specs.push(spec);
        }
        Ok(specs)
    }

    fn token(&self, key: &[u8], user: &str, roles: Vec<String>) -> String {
        seckill_ingest::mint(
            key,
            &seckill_ingest::TokenClaims {
                sub: user.to_owned(),
                roles,
                attributes: None,
                ttl: Duration::from_secs(86_400),
                issuer: self.jwt_issuer.clone(),
                audience: self.jwt_audience.clone(),
            },
        )
    }

    /// (campaign, user) for every request, drawn before the clock starts.
    fn plan(&self, ids: &[String]) -> Vec<(String, String)> {
        let mut rng = rand::rng();
        (0..self.requests)
            .map(|i| {
                let c = if ids.len() == 1 {
                    0
                } else if rng.random_bool(self.hot_share) {
                    0
                } else {
                    rng.random_range(if self.hot_share > 0.0 { 1 } else { 0 }..ids.len())
                };
                let user = format!("user-{}", i % self.users);
                (ids[c].clone(), user)
            })
            .collect()
    }

    /// Reads the orders topic from its current end and records every
    /// decision about this run's campaigns.
    async fn collect_decisions(
        &self,
        run_id: &str,
        seen: Arc<Mutex<Seen>>,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let settings = self.kafka.settings();
        let topic = self.kafka.topics().orders;
        let consumer = settings.plain_consumer(&format!("{run_id}-collector"))?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .with_context(|| format!("reading metadata of {topic} from {}", settings.brokers))?;
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                let (_, high) =
                    consumer.fetch_watermarks(&topic, p.id(), Duration::from_secs(10))?;
                tpl.add_partition_offset(&topic, p.id(), Offset::Offset(high))?;
            }
        }
        consumer.assign(&tpl)?;
        let prefix = run_id.to_owned();
        Ok(tokio::spawn(async move {
            loop {
                let Ok(m) = consumer.recv().await else {
                    continue;
                };
                let Some(Ok(event)) = m.payload().map(serde_json::from_slice::<OrderEvent>) else {
                    continue;
                };
                let Some(d) = event.decision() else { continue };
                if !d.campaign_id.starts_with(&prefix) {
                    continue;
                }
                let requested = match &event {
                    OrderEvent::Reserved(r) | OrderEvent::Confirmed(r) => r.requested_at_ms,
                    OrderEvent::Rejected(r) => r.requested_at_ms,
                    _ => continue,
                };
                let published = m.timestamp().to_millis().unwrap_or(requested);
                let record = DecisionRecord::from(&d);
                let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                s.first_decision.get_or_insert(now);
                s.last_decision = Some(now);
                match s.decisions.get(&d.request_id) {
                    Some(prev) if *prev != record => {
                        s.conflicting.insert(d.request_id.clone());
                    }
                    Some(_) => {}
                    None => {
                        s.latencies_ms.push(published - requested);
                        s.decisions.insert(d.request_id.clone(), record);
                    }
                }
            }
        }))
    }

    /// Returns the accepted request ids, the count answered by the fast
    /// path, and the count refused (429/503/other).
    async fn load_http(
        &self,
        http: &reqwest::Client,
        plan: &[(String, String)],
        tokens: &HashMap<&str, String>,
    ) -> (Vec<String>, usize, usize) {
        let url = format!("{}/v1/purchases", self.url);
        let results: Vec<Result<(u16, Option<Decision>, Option<String>), ()>> = stream::iter(plan)
            .map(|(campaign, user)| {
                let req = http.post(&url).json(&json!({ "campaign_id": campaign }));
                let req = match tokens.get(user.as_str()) {
                    Some(t) => req.bearer_auth(t),
                    None => req.header("x-user-id", user),
                };
                async move {
                    let resp = req.send().await.map_err(|_| ())?;
                    let status = resp.status().as_u16();
                    let body: serde_json::Value = resp.json().await.map_err(|_| ())?;
                    let rid = body
                        .get("request_id")
                        .and_then(|v| v.as_str())
                        .map(str::to_owned);
                    let decision = (status == 200)
                        .then(|| serde_json::from_value::<Decision>(body).ok())
                        .flatten();
                    Ok((status, decision, rid))
                }
            })
            .buffer_unordered(self.concurrency.max(1))
            .collect()
            .await;
        let mut accepted = Vec::new();
        let (mut fast, mut refused) = (0, 0);
        for r in results {
            match r {
                Ok((202, _, Some(rid))) => accepted.push(rid),
                Ok((200, Some(d), _)) if d.status != DecisionStatus::Pending => fast += 1,
                _ => refused += 1,
            }
        }
        (accepted, fast, refused)
    }

    async fn load_kafka(
        &self,
        plan: &[(String, String)],
    ) -> anyhow::Result<(Vec<String>, usize, usize)> {
        // Like an upstream service that keeps retrying: a slow broker delays
        // a request rather than losing it (refused = not acknowledged in 5 min).
        let producer = self.kafka.settings().producer(300_000)?;
        let topic = self.kafka.topics().requests;
        let mut futures = Vec::with_capacity(plan.len());
        for (campaign, user) in plan {
            let rid = uuid::Uuid::new_v4().to_string();
            let event = RequestEvent::PurchaseRequested(PurchaseRequested {
                schema_version: SCHEMA_VERSION,
                request_id: rid.clone(),
                campaign_id: campaign.clone(),
                user_id: user.clone(),
                quantity: 1,
                requested_at_ms: Some(now_ms()),
                attributes: None,
            });
            let payload = serde_json::to_vec(&event)?;
            let mut record = FutureRecord::to(&topic)
                .key(campaign.as_str())
                .payload(&payload);
            loop {
                match producer.send_result(record) {
                    Ok(f) => {
                        futures.push((rid, f));
                        break;
                    }
                    Err((_, r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        }
        let mut accepted = Vec::with_capacity(futures.len());
        let mut refused = 0;
        for (rid, f) in futures {
            match f.await {
                Ok(Ok(_)) => accepted.push(rid),
                _ => refused += 1,
            }
        }
        Ok((accepted, 0, refused))
    }
}
