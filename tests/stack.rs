//! The README's local stack as a user runs it: `scripts/run` (redis-server
//! with AOF and tansu's SQLite engine, their data under one directory, and
//! `seckill all --solo`), loaded, killed, and started again on the same
//! data. Each test gets its own data directory and ports.
//!
//! | guarantee | test |
//! | --- | --- |
//! | `seckill all` SIGKILLed mid-sale, `scripts/run` again: every accepted request decided, nothing oversold or doubled, every reserved order stored | `sigkilled_mid_sale_then_run_again_every_accepted_request_is_decided_and_stored` |
//! | started, loaded and stopped 5 times on the same data: ready within 30 s each time, nothing lost | `five_start_load_stop_cycles_on_the_same_data_ready_within_30s_nothing_lost` |
//! | the bench through Kafka on this stack: 0 undecided, oversold, duplicate, missing from the store | `bench_via_kafka_on_the_readme_stack_leaves_nothing_undecided` |
//!
//! Run: `cargo test -p seckill-cli --test stack -- --test-threads=1`.
//! Needs what `scripts/install-deps` installs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    assert_clean, free_port, pid_alive, signal, token, wait_all_decided, Api, CampaignArgs, Checker,
};
use seckill_kafka::KafkaSettings;
use seckill_schemas::KeyLayout;

/// One `scripts/run` on a data directory of its own.
struct ReadmeStack {
    run: Option<Child>,
    data: tempfile::TempDir,
    http: u16,
    kafka: u16,
    redis: u16,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository root")
        .to_path_buf()
}

impl ReadmeStack {
    fn new() -> ReadmeStack {
        let data = tempfile::Builder::new()
            .prefix("seckill-stack-")
            .tempdir()
            .expect("temp dir");
        // scripts/run keeps a key that is there: the harness's, so its
        // clients' tokens are accepted.
        std::fs::write(data.path().join("jwt.key"), common::jwt_key()).expect("write jwt.key");
        ReadmeStack {
            run: None,
            data,
            http: free_port(),
            kafka: free_port(),
            redis: free_port(),
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SECKILL_BIN", env!("CARGO_BIN_EXE_seckill").to_owned()),
            ("SECKILL_DATA", self.data.path().display().to_string()),
            ("SECKILL_HTTP_ADDR", format!("127.0.0.1:{}", self.http)),
            ("SECKILL_KAFKA_BROKERS", format!("127.0.0.1:{}", self.kafka)),
            (
                "SECKILL_REDIS_URL",
                format!("redis://127.0.0.1:{}", self.redis),
            ),
            ("SECKILL_RATE_LIMIT_PER_USER", "100000".to_owned()),
            (
                "SECKILL_JWT_HS256_KEY_FILE",
                self.data.path().join("jwt.key").display().to_string(),
            ),
        ]
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    fn api(&self) -> Api {
        Api::new(&self.base())
    }

    fn store_url(&self) -> String {
        format!("sqlite://{}/orders.db", self.data.path().display())
    }

    /// Runs `scripts/run` and waits until `/readyz` answers 200; returns
    /// how long that took.
    async fn start(&mut self) -> Duration {
        assert!(self.run.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("run.log"))
            .expect("run.log");
        let started = Instant::now();
        let child = Command::new("bash")
            .arg(repo_root().join("scripts/run"))
            .envs(self.env())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("run scripts/run");
        self.run = Some(child);
        let url = format!("{}/readyz", self.base());
        let client = reqwest::Client::new();
        while started.elapsed() < Duration::from_secs(90) {
            if let Ok(r) = client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                if r.status().is_success() {
                    return started.elapsed();
                }
            }
            if let Some(status) = self.run.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "scripts/run exited with {status} before ready:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("not ready after 90 s:\n{}", self.log_tail());
    }

    fn log_tail(&self) -> String {
        let mut out = String::new();
        for f in ["run.log", "tansu.log"] {
            let text = std::fs::read_to_string(self.data.path().join(f)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {f}\n"));
            for l in &lines[lines.len().saturating_sub(30)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Waits for `scripts/run` to exit (its trap stops redis and tansu).
    async fn wait_exit(&mut self, secs: u64) {
        let mut child = self.run.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if child.try_wait().expect("wait scripts/run").is_some() {
                return;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("scripts/run still running {secs} s after its stop");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs `seckill all` (a crash); scripts/run then stops the rest.
    async fn kill9_seckill(&mut self) {
        let pid: u32 = std::fs::read_to_string(self.data.path().join("seckill.pid"))
            .expect("seckill.pid")
            .trim()
            .parse()
            .expect("a pid");
        signal(pid, "KILL").expect("SIGKILL seckill all");
        self.wait_exit(60).await;
        assert!(!pid_alive(pid));
    }

    /// Ctrl-C: SIGTERM to scripts/run, which stops everything.
    async fn stop(&mut self) {
        let pid = self.run.as_ref().expect("running").id();
        signal(pid, "TERM").expect("SIGTERM scripts/run");
        self.wait_exit(60).await;
    }

    async fn checker(&self) -> Checker {
        Checker {
            store: seckill_store::open_store(&self.store_url())
                .await
                .expect("open the store"),
            redis: seckill_processors::connect_redis(&format!("redis://127.0.0.1:{}", self.redis))
                .await
                .expect("connect redis"),
            keys: KeyLayout::new("seckill"),
            kafka: KafkaSettings {
                brokers: format!("127.0.0.1:{}", self.kafka),
                session_timeout_ms: 6000,
                ..KafkaSettings::default()
            },
            orders_topic: "seckill.orders".to_owned(),
        }
    }
}

impl Drop for ReadmeStack {
    fn drop(&mut self) {
        if let Some(child) = self.run.as_mut() {
            let _ = signal(child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
        }
        if std::thread::panicking() {
            self.data.disable_cleanup(true);
            eprintln!("stack data kept in {}", self.data.path().display());
        }
    }
}

/// What a sale's purchases were answered.
#[derive(Default)]
struct Answers {
    /// Request ids answered 202 (queued: each must be decided).
    accepted: Vec<String>,
    /// Answered 200 at once (sold out, from the fast path).
    answered: usize,
    /// Transport errors and any other status.
    failed: usize,
}

/// Buys once per user, `concurrency` at a time.
async fn buy_all(
    api: Arc<Api>,
    campaign: String,
    users: Vec<String>,
    concurrency: usize,
) -> Answers {
    use futures::stream::{self, StreamExt};
    let replies: Vec<Result<(u16, Option<String>), String>> = stream::iter(users)
        .map(|u| {
            let (api, campaign) = (Arc::clone(&api), campaign.clone());
            async move {
                let key = format!("k-{u}");
                api.purchase(&campaign, &u, Some(&key), None, None)
                    .await
                    .map(|r| {
                        let id = r
                            .body
                            .get("request_id")
                            .and_then(|v| v.as_str())
                            .map(str::to_owned);
                        (r.status, id)
                    })
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut out = Answers::default();
    for r in replies {
        match r {
            Ok((202, Some(id))) => out.accepted.push(id),
            Ok((200, _)) => out.answered += 1,
            _ => out.failed += 1,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_mid_sale_then_run_again_every_accepted_request_is_decided_and_stored() {
    const STOCK: u64 = 500;
    const BUYERS: usize = 1_500;
    let mut stack = ReadmeStack::new();
    stack.start().await;
    let cid = format!("kill9-{}", token(6));
    stack
        .api()
        .create_campaign(&CampaignArgs::new(&cid, STOCK, 1))
        .await;
    let users: Vec<String> = (0..BUYERS).map(|i| format!("u{i:04}")).collect();
    let sale = tokio::spawn(buy_all(Arc::new(stack.api()), cid.clone(), users, 32));
    tokio::time::sleep(Duration::from_millis(700)).await;
    stack.kill9_seckill().await;
    let answers = sale.await.expect("sale");
    let accepted = answers.accepted;
    eprintln!(
        "{} of {BUYERS} purchases accepted and {} answered at once before the SIGKILL",
        accepted.len(),
        answers.answered
    );
    assert!(!accepted.is_empty(), "nothing was accepted in 0.7 s");

    let ready = stack.start().await;
    eprintln!("ready again in {ready:?}");
    let mut checker = stack.checker().await;
    wait_all_decided(&checker, &accepted, 120).await;
    let (report, _) = checker
        .settled(&cid, 1, &accepted, Duration::from_secs(120))
        .await;
    eprintln!("{report}");
    assert_clean(&report);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_start_load_stop_cycles_on_the_same_data_ready_within_30s_nothing_lost() {
    const STOCK: u64 = 100;
    const BUYERS: usize = 300;
    let mut stack = ReadmeStack::new();
    let mut sales = Vec::new();
    for cycle in 0..5 {
        let ready = stack.start().await;
        eprintln!("cycle {cycle}: ready in {ready:?}");
        assert!(
            ready < Duration::from_secs(30),
            "cycle {cycle}: ready after {ready:?}:\n{}",
            stack.log_tail()
        );
        let cid = format!("cycle{cycle}-{}", token(6));
        stack
            .api()
            .create_campaign(&CampaignArgs::new(&cid, STOCK, 1))
            .await;
        let users: Vec<String> = (0..BUYERS).map(|i| format!("c{cycle}-u{i:03}")).collect();
        let answers = buy_all(Arc::new(stack.api()), cid.clone(), users, 32).await;
        assert_eq!(answers.failed, 0, "cycle {cycle}: purchases failed");
        assert!(
            answers.accepted.len() as u64 >= STOCK,
            "cycle {cycle}: only {} purchases queued for {STOCK} units",
            answers.accepted.len()
        );
        sales.push((cid, answers.accepted));
        stack.stop().await;
    }
    let ready = stack.start().await;
    eprintln!("after 5 cycles: ready in {ready:?}");
    let mut checker = stack.checker().await;
    for (cid, accepted) in &sales {
        wait_all_decided(&checker, accepted, 120).await;
        let (report, _) = checker
            .settled(cid, 1, accepted, Duration::from_secs(120))
            .await;
        eprintln!("{cid}: {report}");
        assert_clean(&report);
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_via_kafka_on_the_readme_stack_leaves_nothing_undecided() {
    let mut stack = ReadmeStack::new();
    stack.start().await;
    let out = Command::new(env!("CARGO_BIN_EXE_seckill"))
        .args([
            "bench",
            "--url",
            &stack.base(),
            "--via",
            "kafka",
            "--requests",
            "20000",
            "--users",
            "10000",
            "--stock",
            "1000",
            "--campaigns",
            "4",
            "--settle-secs",
            "300",
        ])
        .envs(stack.env())
        .env("SECKILL_STORE", stack.store_url())
        .output()
        .expect("run seckill bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    let line = common::last_json(&stdout);
    let inv = &line["invariants"];
    for field in [
        "undecided_requests",
        "oversold",
        "duplicate_orders",
        "orders_missing_from_store",
        "users_over_limit",
        "double_returned_stock",
        "conflicting_decisions",
    ] {
        assert_eq!(inv[field], 0, "{field} in {line}");
    }
    assert!(line["accepted"].as_u64().unwrap_or(0) > 0, "{line}");
    stack.stop().await;
}
