//! `seckill bench`: drives a running stack with a flash sale and prints one
//! JSON line of figures and invariant results; exits non-zero (after the
//! line) when an invariant fails or an accepted request is left undecided.
//!
//! - `load`: the requests, open loop (`--rate`, `--duration`) or closed
//!   loop (`--requests`, `--concurrency`), timed from their intended send;
//! - `collect`: the decisions, read from the orders topic;
//! - `ceilings`: what the same Redis and HTTP server do at most
//!   (`--ceilings`), measured before the load;
//! - `rss`: the memory of the stack's processes and of Redis;
//! - `report`: histograms, ratios and the verdict.

mod ceilings;
mod collect;
mod load;
mod report;
mod rss;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use rand::Rng;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use seckill_cli::check::{check_campaign, CampaignReport, DecisionRecord};
use seckill_schemas::{now_ms, CampaignKind, CampaignSpec};

use crate::args::{KafkaArgs, RedisArgs, StoreArgs, DEFAULT_BATCH_MAX};
use load::{Loaded, Outcome, Sender};
use report::Latency;
use rss::NamedPid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Via {
    /// POST /v1/purchases on ingest.
    Http,
    /// Produce purchase events straight to the requests topic.
    Kafka,
}

/// Requests of a closed loop when `--requests` is not given.
const DEFAULT_REQUESTS: usize = 20_000;

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
    #[arg(long, env = "SECKILL_BENCH_VIA", value_enum, default_value = "http")]
    via: Via,
    /// Open loop: requests per second, each sent at its due time (start +
    /// i/rate) whether or not the earlier ones were answered. Needs
    /// `--duration`.
    #[arg(
        long,
        env = "SECKILL_BENCH_RATE",
        requires = "duration",
        conflicts_with = "requests"
    )]
    rate: Option<f64>,
    /// Open loop: seconds of load; rate × duration requests are sent.
    #[arg(long, env = "SECKILL_BENCH_DURATION_SECS", requires = "rate")]
    duration: Option<f64>,
    /// Open loop: most requests unanswered at once. A request that finds
    /// the cap reached waits for a slot and is counted in `late_sends`; its
    /// latency still counts from its due time. Over HTTP the default is
    /// `--concurrency` (one request per connection, as wrk2 does: more
    /// would open a connection per request and measure connection set-up);
    /// through Kafka 20000.
    #[arg(long, env = "SECKILL_BENCH_MAX_IN_FLIGHT")]
    max_in_flight: Option<usize>,
    /// Closed loop: purchase requests to send (default 20000).
    #[arg(long, env = "SECKILL_BENCH_REQUESTS")]
    requests: Option<usize>,
    /// Distinct users sending them.
    #[arg(long, env = "SECKILL_BENCH_USERS", default_value_t = 10_000)]
    users: usize,
    /// Campaigns the requests are spread over.
    #[arg(long, env = "SECKILL_BENCH_CAMPAIGNS", default_value_t = 1)]
    campaigns: usize,
    /// Units of stock per campaign.
    #[arg(long, env = "SECKILL_BENCH_STOCK", default_value_t = 1_000)]
    stock: u64,
    /// Units one user may hold per campaign.
    #[arg(long, env = "SECKILL_BENCH_PER_USER_LIMIT", default_value_t = 1)]
    per_user_limit: u32,
    /// Share of the requests that go to the first (hot) campaign; the rest
    /// spread evenly over the others. 0 spreads all evenly.
    #[arg(long, env = "SECKILL_BENCH_HOT_SHARE", default_value_t = 0.0)]
    hot_share: f64,
    /// Over HTTP: every buyer waits up to this long for the decision
    /// (`?wait_ms=`); a decision in the answer counts in `answered_fast`
    /// and the accept latency is then the time to the decision.
    #[arg(long, env = "SECKILL_BENCH_WAIT_MS")]
    wait_ms: Option<u64>,
    /// Stock buckets of each campaign (see the README's hot items); unset:
    /// one bucket.
    #[arg(long, env = "SECKILL_BENCH_BUCKETS")]
    buckets: Option<u32>,
    /// Closed loop: HTTP requests in flight at once. Also the connections
    /// of the `http_healthz` ceiling, and the HTTP client's idle pool.
    #[arg(long, env = "SECKILL_BENCH_CONCURRENCY", default_value_t = 256)]
    concurrency: usize,
    /// Longest wait for decisions and stored orders after the load.
    #[arg(long, env = "SECKILL_BENCH_SETTLE_SECS", default_value_t = 120)]
    settle_secs: u64,
    /// Measure, before the load, the ceilings of the same Redis (a
    /// reference decide script: one EVALSHA per request, pipelined, one
    /// call per batch) and of ingest's `GET /healthz`, and report every
    /// rate of the load as a ratio to its ceiling.
    #[arg(long, env = "SECKILL_BENCH_CEILINGS", default_value_t = false)]
    ceilings: bool,
    /// Seconds each ceiling is measured for.
    #[arg(long, env = "SECKILL_BENCH_CEILING_SECS", default_value_t = 2.0)]
    ceiling_secs: f64,
    /// The processors' SECKILL_BATCH_MAX: `decided_per_sec` is compared
    /// with the one-call-per-batch ceiling of the closest batch size.
    #[arg(long, env = "SECKILL_BATCH_MAX", default_value_t = DEFAULT_BATCH_MAX)]
    batch_max: usize,
    /// A process whose memory (VmRSS, VmHWM, sampled peak) is reported,
    /// NAME=PID; repeatable (in the environment: comma-separated). Without
    /// it, the pid files `scripts/run` writes in `--pid-dir` are read.
    #[arg(
        long = "pid",
        env = "SECKILL_BENCH_PIDS",
        value_delimiter = ',',
        value_name = "NAME=PID",
        value_parser = rss::parse_named_pid
    )]
    pids: Vec<NamedPid>,
    /// Where `scripts/run` writes seckill.pid, redis.pid and tansu.pid.
    #[arg(long, env = "SECKILL_DATA", default_value = "data")]
    pid_dir: std::path::PathBuf,
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
    /// `iss` of the tokens, when ingest requires one.
    #[arg(long, env = "SECKILL_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// `aud` of the tokens, when ingest requires one.
    #[arg(long, env = "SECKILL_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// How the users identify themselves: signed tokens, or `header` for an
    /// ingest started with SECKILL_AUTH=header (X-User-Id, no tokens).
    #[arg(long, env = "SECKILL_AUTH", value_enum, default_value = "jwt")]
    auth: crate::args::AuthArg,
}

/// Open or closed loop, with its request count.
#[derive(Debug, Clone, Copy)]
enum Pace {
    Open { rate: f64, secs: f64 },
    Closed,
}

impl BenchCmd {
    /// The open loop's cap on unanswered requests (see `--max-in-flight`).
    fn in_flight_cap(&self) -> usize {
        self.max_in_flight.unwrap_or(match self.via {
            Via::Http => self.concurrency.max(1),
            Via::Kafka => 20_000,
        })
    }

    fn pace(&self) -> anyhow::Result<(Pace, usize)> {
        match (self.rate, self.duration) {
            (Some(rate), Some(secs)) => {
                if !(rate.is_finite() && rate > 0.0) {
                    bail!("--rate must be a positive number of requests per second");
                }
                if !(secs.is_finite() && secs > 0.0) {
                    bail!("--duration must be a positive number of seconds");
                }
                if self.max_in_flight == Some(0) {
                    bail!("--max-in-flight must be at least 1");
                }
                let n = load::open_loop_requests(rate, secs);
                Ok((Pace::Open { rate, secs }, n))
            }
            (None, None) => Ok((Pace::Closed, self.requests.unwrap_or(DEFAULT_REQUESTS))),
            _ => bail!("--rate and --duration go together (open loop)"),
        }
    }

    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let (pace, requests) = self.pace()?;
        if self.campaigns == 0 || self.users == 0 || requests == 0 {
            bail!("--campaigns, --users and --requests (or rate × duration) must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.hot_share) {
            bail!("--hot-share must be between 0 and 1");
        }
        if self.ceilings && !(self.ceiling_secs.is_finite() && self.ceiling_secs > 0.0) {
            bail!("--ceiling-secs must be a positive number of seconds");
        }
        let watched = self.watched_processes()?;
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

        let ceilings = if self.ceilings {
            let target = ceilings::Target {
                redis_url: &self.redis.redis_url,
                key_prefix: &self.redis.key_prefix,
                run_id: &run_id,
                http: &http,
                url: &self.url,
                concurrency: self.concurrency,
                secs: self.ceiling_secs,
            };
            Some(
                ceilings::measure(&target)
                    .await
                    .context("measuring the ceilings")?,
            )
        } else {
            None
        };

        let specs = self.create_campaigns(&http, &run_id, &admin).await?;
        let ids: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
        let seen: collect::Shared = Arc::new(Mutex::new(collect::Seen::default()));
        let collector = collect::start(&self.kafka, &run_id, Arc::clone(&seen)).await?;

        let plan = self.plan(&ids, requests);
        let sender = match self.via {
            Via::Http => Sender::Http {
                client: http.clone(),
                url: match self.wait_ms {
                    Some(ms) => format!("{}/v1/purchases?wait_ms={ms}", self.url),
                    None => format!("{}/v1/purchases", self.url),
                },
                // One token per user, signed before the clock starts.
                tokens: match &key {
                    _ if self.auth == crate::args::AuthArg::Header => HashMap::new(),
                    Ok(k) => plan
                        .iter()
                        .map(|(_, u)| u.as_str())
                        .collect::<HashSet<_>>()
                        .into_iter()
                        .map(|u| (u.to_owned(), self.token(k, u, Vec::new())))
                        .collect(),
                    Err(e) => bail!("--via http signs the users' tokens: {e:#}"),
                },
            },
            // Like an upstream service that keeps retrying: a slow broker
            // delays a request rather than losing it (refused = not
            // acknowledged in 5 min).
            Via::Kafka => Sender::Kafka {
                producer: self.kafka.settings().producer(300_000)?,
                topic: self.kafka.topics().requests,
                buckets: self.buckets.unwrap_or(1),
            },
        };

        let stop_sampling = CancellationToken::new();
        let sampler = rss::sample_peaks(
            watched.iter().map(|p| p.pid).collect(),
            stop_sampling.clone(),
        );
        match pace {
            Pace::Open { rate, secs } => eprintln!(
                "bench: load starts: open loop, {rate}/s for {secs} s ({requests} requests)"
            ),
            Pace::Closed => eprintln!(
                "bench: load starts: closed loop, {requests} requests, {} in flight",
                self.concurrency
            ),
        }
        let loaded = match (pace, self.via) {
            (Pace::Open { rate, .. }, _) => {
                load::paced(&sender, &plan, Some(rate), self.in_flight_cap()).await?
            }
            (Pace::Closed, Via::Http) => {
                load::closed_http(&sender, &plan, self.concurrency).await?
            }
            (Pace::Closed, Via::Kafka) => load::paced(&sender, &plan, None, 0).await?,
        };
        let accepted: Vec<&str> = loaded
            .sent
            .iter()
            .filter(|s| s.outcome == Outcome::Accepted)
            .filter_map(|s| s.rid.as_deref())
            .collect();

        // Wait for a decision on every accepted request.
        let deadline = Instant::now() + Duration::from_secs(self.settle_secs);
        // A cursor over `accepted`: everything before it is decided (the
        // map only grows), so each check resumes at the first request not
        // seen decided yet instead of scanning them all while the
        // collector waits for the lock.
        let mut decided_before = 0;
        loop {
            {
                let s = collect::lock(&seen);
                decided_before += accepted[decided_before..]
                    .iter()
                    .take_while(|r| s.decisions.contains_key(**r))
                    .count();
            }
            if decided_before == accepted.len() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        collector.abort();
        let (decisions, decide_secs, conflicting) = {
            let s = collect::lock(&seen);
            // The decision rate is taken over the window in which decisions
            // arrived, so it measures the processors, not the load generator.
            let secs = match (s.first_decision, s.last_decision) {
                (Some(a), Some(b)) if b > a => b.duration_since(a).as_secs_f64(),
                _ => f64::NAN,
            };
            (s.decisions.clone(), secs, s.conflicting.len())
        };
        let decided = accepted
            .iter()
            .filter(|r| decisions.contains_key(**r))
            .count();
        let undecided = accepted.len() - decided;

        // Wait for the store to hold every reserved order.
        let store = seckill_store::open_store(&self.store.store)
            .await
            .with_context(|| format!("opening the order store {}", self.store.store))?;
        let mut redis = seckill_processors::connect_redis(&self.redis.redis_url).await?;
        let keys = seckill_schemas::KeyLayout::new(self.redis.key_prefix.clone());
        let reserved_ids: HashSet<&str> = decisions
            .values()
            .filter_map(|(d, _)| d.order_id.as_deref())
            .collect();
        let mut reports: Vec<CampaignReport>;
        loop {
            reports = Vec::new();
            for spec in &specs {
                let mine: Vec<&DecisionRecord> = decisions
                    .values()
                    .map(|(d, _)| d)
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
        let persist_secs = loaded.clock.start.elapsed().as_secs_f64();
        let stored: usize = reports.iter().map(|r| r.stored_orders).sum();

        stop_sampling.cancel();
        let peaks = sampler.await.context("the memory sampler panicked")?;
        let memory = match rss::memory_json(&watched, &peaks, &mut redis).await {
            Ok(m) => m,
            Err(e) => {
                eprintln!("bench: memory figures incomplete: {e:#}");
                json!({ "error": format!("{e:#}") })
            }
        };

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

        let latency = Latencies::of(&loaded, &decisions);
        let counts = Counts::of(&loaded);
        let accepted_per_sec = accepted.len() as f64 / loaded.secs;
        let answered_per_sec = requests as f64 / loaded.secs;
        let decided_per_sec = decided as f64 / decide_secs;
        let (ceilings_json, ratios_json) = match &ceilings {
            None => (Value::Null, Value::Null),
            Some(c) => {
                let size = report::closest_batch(&ceilings::BATCH_SIZES, self.batch_max);
                let batch = size.and_then(|s| c.redis_batch_call.get(&s).copied());
                (
                    c.to_json(self.ceiling_secs),
                    json!({
                        "batch_max": self.batch_max,
                        "redis_batch_call_size": size,
                        "decided_per_sec_to_redis_batch_call":
                            batch.and_then(|b| report::ratio(decided_per_sec, b)),
                        "decided_per_sec_to_redis_evalsha_per_request":
                            report::ratio(decided_per_sec, c.redis_evalsha_per_request),
                        "accepted_per_sec_to_http_healthz":
                            report::ratio(accepted_per_sec, c.http_healthz),
                        "answered_per_sec_to_http_healthz":
                            report::ratio(answered_per_sec, c.http_healthz),
                    }),
                )
            }
        };
        let (mode, rate, duration) = match pace {
            Pace::Open { rate, secs } => ("open", json!(rate), json!(secs)),
            Pace::Closed => ("closed", Value::Null, Value::Null),
        };
        let line = json!({
            "via": format!("{:?}", self.via).to_lowercase(),
            "mode": mode,
            "rate": rate,
            "duration_secs": duration,
            "requests": requests,
            "users": self.users,
            "campaigns": self.campaigns,
            "stock_per_campaign": self.stock,
            "accepted": accepted.len(),
            "answered_fast": counts.fast,
            "refused": counts.refused + counts.unanswered,
            "unanswered": counts.unanswered,
            "decided": decided,
            "persisted": stored,
            "late_sends": loaded.late_sends,
            "max_in_flight": matches!(pace, Pace::Open { .. }).then_some(self.in_flight_cap()),
            // Every answer of the load (queued, answered from the cache, or
            // refused) over the time the load took.
            "answered_per_sec": answered_per_sec.round(),
            "accepted_per_sec": accepted_per_sec.round(),
            "decided_per_sec": decided_per_sec.round(),
            "persisted_per_sec": (stored as f64 / persist_secs).round(),
            "latency_ms": {
                "accept": latency.accept.summary_ms(),
                "decision": latency.decision.summary_ms(),
            },
            "send_lag_ms": matches!(pace, Pace::Open { .. }).then(|| loaded.send_lag.summary_ms()),
            "reserved": reserved_ids.len(),
            "ceilings": ceilings_json,
            "ratios": ratios_json,
            "memory_mib": memory,
            "invariants": invariants,
        });
        println!("{line}");
        eprintln!(
            "bench: accepted {} ({accepted_per_sec:.0}/s), decided {decided} ({decided_per_sec:.0}/s); \
             p99 accept {} ms, p99 decision {} ms",
            accepted.len(),
            line["latency_ms"]["accept"]["p99"],
            line["latency_ms"]["decision"]["p99"],
        );

        let failed = report::failures(&invariants);
        if failed.is_empty() {
            return Ok(());
        }
        for (name, n) in &failed {
            eprintln!("bench: FAILED {name}: {n}");
        }
        let names: Vec<&str> = failed.iter().map(|(k, _)| k.as_str()).collect();
        bail!("the run failed: {}", names.join(", "))
    }

    /// The processes to report the memory of: `--pid`s (each must be
    /// running), else the pid files in `--pid-dir`.
    fn watched_processes(&self) -> anyhow::Result<Vec<NamedPid>> {
        if self.pids.is_empty() {
            return Ok(rss::pids_from_dir(&self.pid_dir));
        }
        for p in &self.pids {
            rss::read_status(p.pid).with_context(|| format!("--pid {}={}", p.name, p.pid))?;
        }
        Ok(self.pids.clone())
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
                buckets: self.buckets,
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
    fn plan(&self, ids: &[String], requests: usize) -> Vec<(String, String)> {
        let mut rng = rand::rng();
        (0..requests)
            .map(|i| {
                let c = if ids.len() == 1 || rng.random_bool(self.hot_share) {
                    0
                } else {
                    rng.random_range(if self.hot_share > 0.0 { 1 } else { 0 }..ids.len())
                };
                let user = format!("user-{}", i % self.users);
                (ids[c].clone(), user)
            })
            .collect()
    }
}

/// The latency histograms of a run.
struct Latencies {
    /// Intended send -> the answer (HTTP) or the broker's ack (Kafka), of
    /// every answered request.
    accept: Latency,
    /// Intended send -> the decision's message on the orders topic (its
    /// timestamp, wall-clock ms), of every decided request.
    decision: Latency,
}

impl Latencies {
    fn of(loaded: &Loaded, decisions: &HashMap<String, (DecisionRecord, i64)>) -> Latencies {
        let mut accept = Latency::new();
        let mut decision = Latency::new();
        for s in &loaded.sent {
            if let Some(d) = s.answered_after {
                accept.record(d);
            }
            if s.outcome != Outcome::Accepted {
                continue;
            }
            if let Some((_, announced_ms)) = s.rid.as_ref().and_then(|r| decisions.get(r)) {
                decision.record_us(announced_ms.saturating_mul(1000) - s.intended_wall_us);
            }
        }
        Latencies { accept, decision }
    }
}

/// How the requests were answered, beyond accepted.
struct Counts {
    fast: usize,
    refused: usize,
    unanswered: usize,
}

impl Counts {
    fn of(loaded: &Loaded) -> Counts {
        let count = |o: Outcome| loaded.sent.iter().filter(|s| s.outcome == o).count();
        Counts {
            fast: count(Outcome::Fast),
            refused: count(Outcome::Refused),
            unanswered: count(Outcome::Unanswered),
        }
    }
}
