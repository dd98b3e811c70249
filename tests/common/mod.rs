//! Shared machinery of the end-to-end suites: a private stack (redis-server +
//! tansu) per test, handles on `seckill` processes, an HTTP client, Kafka
//! helpers, sale helpers and the invariant checkers.
//!
//! - `http`: a client for the public API (`Api`);
//! - `kafka`: producing traffic, reading whole topics and their headers;
//! - `seckill`: `seckill` role processes and ops commands;
//! - `roles`: the roles as separate processes (`start_roles`);
//! - `sale`: campaigns, purchases, pay/cancel, stats over HTTP, and the
//!   shared assertions (`assert_clean`, `assert_none`, `tally`);
//! - `invariants`: the HTTP-side checker (`check_campaign`);
//! - `checker`: `seckill_cli::check` bound to a stack (`Checker`).
//!
//! Every process a test starts is a child of the test process and is killed
//! when its handle drops, also when the test panics. Children are started
//! through `setpriv --pdeathsig KILL` when available so that they die with
//! the test thread even if the test binary itself is killed (the test body
//! runs on the libtest thread, which outlives every handle it creates).
//!
//! Environment knobs:
//! - `SECKILL_TEST_TANSU` or `SECKILL_TANSU`: path of the tansu binary
//!   (default: `$SECKILL_TOOLS/bin/tansu`, i.e. `~/.cache/seckill-tools/bin/
//!   tansu` where scripts/install-deps puts it, then `tansu` on PATH, then
//!   `~/.cargo/bin/tansu`). It needs the `dynostore` feature (memory storage).
//! - `SECKILL_TEST_REDIS`: path of redis-server (default: PATH, then
//!   `/usr/bin/redis-server`).
//! - `SECKILL_TEST_LOG`: `SECKILL_LOG` filter for the seckill processes
//!   (default `info`).
//! - `SECKILL_TEST_KEEP=1`: keep every test's temp dir (logs, SQLite file);
//!   the dir of a failed test is always kept and its path printed.

#![allow(dead_code)]

pub(crate) mod checker;
pub(crate) mod http;
pub(crate) mod invariants;
pub(crate) mod kafka;
pub(crate) mod python;
pub(crate) mod roles;
pub(crate) mod sale;
pub(crate) mod seckill;
pub(crate) mod secure;

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;
use seckill_kafka::KafkaSettings;
use seckill_schemas::{KeyLayout, Topics};

// Not every suite uses every helper.
#[allow(unused_imports)]
pub(crate) use checker::{first_decisions, reserved_of, wait_all_decided, Checker};
#[allow(unused_imports)]
pub(crate) use http::{Api, CampaignArgs};
#[allow(unused_imports)]
pub(crate) use invariants::{check_campaign, Report};
#[allow(unused_imports)]
pub(crate) use kafka::{
    consume_topic, header_counts, headers_of, purchase_json, purchases, read_decisions, read_topic,
    DecisionLog, Producer,
};
#[allow(unused_imports)]
pub(crate) use roles::{fault_file, start_roles, Roles};
#[allow(unused_imports)]
pub(crate) use sale::{assert_clean, assert_none, new_request_id, tally};
#[allow(unused_imports)]
pub(crate) use seckill::{last_json, Seckill};

/// Session timeout of every consumer group in the tests: a group (re)joins
/// after about half of it.
pub(crate) const SESSION_TIMEOUT_MS: u32 = 6000;

// ---------------------------------------------------------------------------
// Small async helpers

/// Runs `fut`, panicking with `what` when it takes longer than `secs`.
pub(crate) async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s: {what}"),
    }
}

/// Polls `probe` every `every` until it returns `Some`, or returns the last
/// observation as `Err` after `timeout`.
pub(crate) async fn eventually<T, E, F, Fut>(
    timeout: Duration,
    every: Duration,
    mut probe: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls `probe` (every 20 ms, at most `secs`) until it returns `Some`;
/// panics with `what` after that.
pub(crate) async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs}s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A short random lowercase token for names.
pub(crate) fn token(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

// ---------------------------------------------------------------------------
// Ports and binaries

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port that was free a moment ago and that this test binary has
/// not handed out before (so parallel tests do not pick the same one).
///
/// Ports come from below the kernel's ephemeral range (read from
/// /proc/sys/net/ipv4/ip_local_port_range; 32768 by default), so an
/// outgoing connection cannot take the port between the pick and the
/// moment the service binds it.
pub(crate) fn free_port() -> u16 {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    let (low, high) = if ephemeral_start > 12000 {
        (10000, ephemeral_start)
    } else {
        (ephemeral_start.max(1024), u16::MAX)
    };
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(low..high);
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        let handed_out = guard.get_or_insert_with(HashSet::new);
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub(crate) fn tansu_bin() -> PathBuf {
    for var in ["SECKILL_TEST_TANSU", "SECKILL_TANSU"] {
        if let Some(p) = std::env::var_os(var) {
            return PathBuf::from(p);
        }
    }
    // Where scripts/install-deps puts it (built with in-memory storage).
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let tools = std::env::var_os("SECKILL_TOOLS")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".cache/seckill-tools")));
    if let Some(p) = tools.map(|t| t.join("bin/tansu")).filter(|p| p.is_file()) {
        return p;
    }
    if let Some(p) = which("tansu") {
        return p;
    }
    if let Some(p) = home
        .map(|h| h.join(".cargo/bin/tansu"))
        .filter(|p| p.is_file())
    {
        return p;
    }
    panic!(
        "tansu not found: install it with `cargo install tansu --locked --version 0.6.0 \
         --features dynostore` or set SECKILL_TEST_TANSU"
    );
}

pub(crate) fn redis_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SECKILL_TEST_REDIS") {
        return PathBuf::from(p);
    }
    if let Some(p) = which("redis-server") {
        return p;
    }
    let p = PathBuf::from("/usr/bin/redis-server");
    if p.is_file() {
        return p;
    }
    panic!("redis-server not found: apt-get install redis-server, or set SECKILL_TEST_REDIS");
}

/// A command for `program` that dies with the thread that spawns it (see the
/// module docs), with stdin closed and output appended to `log`.
pub(crate) fn command(program: &Path, log: &Path) -> Command {
    let mut cmd = if Path::new("/usr/bin/setpriv").is_file() {
        let mut c = Command::new("/usr/bin/setpriv");
        c.arg("--pdeathsig").arg("KILL").arg("--").arg(program);
        c
    } else {
        Command::new(program)
    };
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("open log {}: {e}", log.display()));
    let err = out.try_clone().expect("clone log handle");
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    cmd
}

/// The last `max` bytes of a log file, for failure reports.
pub(crate) fn log_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    let _ = f.seek(SeekFrom::Start(start));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    if start > 0 {
        format!("...{text}")
    } else {
        text
    }
}

/// Sends SIGTERM to `pid`. Through bash's builtin `kill`: procps (which
/// ships /bin/kill) is not on a minimal Debian, and nothing else here
/// sends a signal without `unsafe`.
pub(crate) fn sigterm(pid: u32) -> Result<(), String> {
    signal(pid, "TERM")
}

/// Sends SIG`name` (TERM, KILL, ...) to `pid` with bash's builtin kill (a
/// bare Debian has no /bin/kill).
pub(crate) fn signal(pid: u32, name: &str) -> Result<(), String> {
    let status = Command::new("bash")
        .args(["-c", "kill -\"$1\" \"$0\"", &pid.to_string(), name])
        .status()
        .map_err(|e| format!("run bash to signal {pid}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -{name} {pid}: {status}"))
    }
}

/// Whether a process id is still alive (and not a zombie).
pub(crate) fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // Field 3, after the parenthesised command name, is the state.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------
// Background services

/// A child process that is killed (SIGKILL) and reaped on drop.
pub(crate) struct Service {
    pub(crate) name: String,
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

impl Service {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(description)` once the process has exited.
    pub(crate) fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}) -----\n{}\n----- end of {} log -----",
                self.name,
                self.log.display(),
                log_tail(&self.log, 4000),
                self.name
            );
        }
    }
}

/// Spawns redis-server on `port` with its data in `dir/redis-<port>` and
/// `extra` arguments after the defaults (so they override them), and waits
/// until it answers PING (also while it loads its AOF).
async fn spawn_redis(dir: &Path, port: u16, extra: &[String]) -> Result<Service, String> {
    let bin = redis_bin();
    let data = dir.join(format!("redis-{port}"));
    std::fs::create_dir_all(&data).expect("create redis dir");
    let log = dir.join(format!("redis-{port}.log"));
    let child = command(&bin, &log)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(&data)
        .args(extra)
        .current_dir(&data)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    let mut service = Service {
        name: format!("redis-server :{port}"),
        child,
        log,
    };
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = service.exited() {
            return Err(format!(
                "redis-server on {port} exited with {status}: {}",
                log_tail(&service.log, 2000)
            ));
        }
        if redis_ping(&url).await.is_ok() {
            return Ok(service);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "redis-server on {port} did not answer PING in 20s: {}",
                log_tail(&service.log, 2000)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts redis-server on a free loopback port, retrying with another port
/// when the one picked was taken meanwhile.
async fn start_redis(dir: &Path, extra: &[String]) -> (Service, u16) {
    let mut last_error = String::new();
    for attempt in 0..5 {
        let port = free_port();
        match spawn_redis(dir, port, extra).await {
            Ok(service) => return (service, port),
            Err(e) => last_error = format!("attempt {attempt}: {e}"),
        }
    }
    panic!("could not start redis-server: {last_error}");
}

async fn redis_ping(url: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut con = tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    let pong: String = redis::cmd("PING")
        .query_async(&mut con)
        .await
        .map_err(|e| e.to_string())?;
    if pong == "PONG" {
        Ok(())
    } else {
        Err(format!("PING answered {pong:?}"))
    }
}

/// Starts a tansu broker with in-memory storage on a free loopback port and
/// waits until it answers a metadata request.
async fn start_tansu(dir: &Path) -> (Service, u16) {
    let bin = tansu_bin();
    let mut last_error = String::new();
    for attempt in 0..5 {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = dir.join(format!("tansu-{port}.log"));
        let child = command(&bin, &log)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            // Its other settings also read env vars; do not inherit any.
            .env_remove("CLUSTER_ID")
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .current_dir(dir)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut service = Service {
            name: format!("tansu :{port}"),
            child,
            log,
        };
        let brokers = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = service.exited() {
                let tail = log_tail(&service.log, 2000);
                if tail.contains("FeatureNotEnabled") {
                    panic!(
                        "{} cannot run with memory storage: it was built without the \
                         `dynostore` feature. Run scripts/install-deps, or install it with `cargo \
                         install tansu --locked --version 0.6.0 --features dynostore`, or point \
                         SECKILL_TEST_TANSU at such a build. Log:\n{tail}",
                        bin.display()
                    );
                }
                last_error = format!("tansu (attempt {attempt}) exited with {status}: {tail}");
                break;
            }
            if TcpStream::connect_timeout(
                &format!("127.0.0.1:{port}").parse().expect("socket address"),
                Duration::from_millis(200),
            )
            .is_ok()
                && kafka::metadata_ok(&brokers).await.is_ok()
            {
                return (service, port);
            }
            if Instant::now() >= deadline {
                last_error = format!(
                    "tansu on {port} did not answer a metadata request in 30s: {}",
                    log_tail(&service.log, 2000)
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(service);
    }
    panic!("could not start tansu: {last_error}");
}

// ---------------------------------------------------------------------------
// The stack

/// One test's private world: redis-server, tansu, a temp dir, and prefixes
/// for topics and Redis keys. Dropping it kills both services.
pub(crate) struct Stack {
    // Field order is drop order: services die before their dir goes.
    pub(crate) redis: Service,
    pub(crate) tansu: Service,
    pub(crate) redis_port: u16,
    pub(crate) kafka_port: u16,
    pub(crate) topic_prefix: String,
    pub(crate) key_prefix: String,
    pub(crate) topics: Topics,
    pub(crate) keys: KeyLayout,
    pub(crate) store_path: PathBuf,
    /// Arguments redis-server was started with beyond the defaults.
    redis_args: Vec<String>,
    dir: tempfile::TempDir,
}

/// The HS256 key of every stack this test process starts, so any [`Api`]
/// can sign its callers' tokens.
///
/// [`Api`]: http::Api
pub(crate) fn jwt_key() -> &'static [u8] {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| token(32)).as_bytes()
}

impl Stack {
    pub(crate) async fn start() -> Stack {
        Stack::start_with_redis_args(&[]).await
    }

    /// A stack whose redis-server gets `args` after the defaults, e.g.
    /// `["--appendonly", "yes", "--appendfsync", "always"]`.
    pub(crate) async fn start_with_redis_args(args: &[&str]) -> Stack {
        let redis_args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let dir = tempfile::Builder::new()
            .prefix("seckill-e2e-")
            .tempdir()
            .expect("create temp dir");
        let (redis, redis_port) = start_redis(dir.path(), &redis_args).await;
        let (tansu, kafka_port) = start_tansu(dir.path()).await;
        let topic_prefix = format!("t{}", token(10));
        let key_prefix = format!("k{}", token(10));
        let store_path = dir.path().join("orders.db");
        std::fs::write(dir.path().join("command.key"), token(32)).expect("write command.key");
        std::fs::write(dir.path().join("draw.key"), token(32)).expect("write draw.key");
        std::fs::write(dir.path().join("jwt.key"), jwt_key()).expect("write jwt.key");
        Stack {
            redis,
            tansu,
            redis_port,
            kafka_port,
            topics: Topics::with_prefix(&topic_prefix),
            keys: KeyLayout::new(key_prefix.clone()),
            topic_prefix,
            key_prefix,
            store_path,
            redis_args,
            dir,
        }
    }

    /// Kills redis-server with SIGKILL (a crash: nothing flushed on the way
    /// out) and starts it again on the same port with the same data
    /// directory and arguments; returns once it answers PING.
    pub(crate) async fn restart_redis(&mut self) {
        self.kill_redis();
        self.start_redis_again().await;
    }

    /// Kills redis-server with SIGKILL and leaves it down.
    pub(crate) fn kill_redis(&mut self) {
        let _ = self.redis.child.kill();
        let _ = self.redis.child.wait();
    }

    /// Starts redis-server again after [`Stack::kill_redis`], on the same
    /// port, with the same data directory and arguments.
    pub(crate) async fn start_redis_again(&mut self) {
        let mut last = String::new();
        for _ in 0..20 {
            match spawn_redis(self.dir.path(), self.redis_port, &self.redis_args).await {
                Ok(service) => {
                    self.redis = service;
                    return;
                }
                // The old socket may linger for a moment.
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!(
            "could not restart redis-server on {}: {last}",
            self.redis_port
        );
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    pub(crate) fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }

    /// The HS256 key ingest checks callers' tokens with ([`jwt_key`]).
    pub(crate) fn jwt_key_path(&self) -> String {
        self.dir.path().join("jwt.key").display().to_string()
    }

    /// The command key every role of this stack shares.
    pub(crate) fn command_key_path(&self) -> String {
        self.dir.path().join("command.key").display().to_string()
    }

    /// The draw key ingest and the processors of this stack share: every
    /// lottery's draw secret is derived from it.
    pub(crate) fn draw_key_path(&self) -> String {
        self.dir.path().join("draw.key").display().to_string()
    }

    pub(crate) fn store_url(&self) -> String {
        format!("sqlite://{}", self.store_path.display())
    }

    pub(crate) fn kafka(&self) -> KafkaSettings {
        KafkaSettings {
            brokers: self.brokers(),
            session_timeout_ms: SESSION_TIMEOUT_MS,
            properties: Vec::new(),
            instance_id: None,
            solo: false,
            fetch_wait_ms: None,
        }
    }

    /// The environment every seckill process of this stack gets.
    pub(crate) fn seckill_env(&self) -> Vec<(String, String)> {
        let log = std::env::var("SECKILL_TEST_LOG").unwrap_or_else(|_| "info".to_owned());
        [
            ("SECKILL_KAFKA_BROKERS", self.brokers()),
            ("SECKILL_REDIS_URL", self.redis_url()),
            ("SECKILL_STORE", self.store_url()),
            ("SECKILL_TOPIC_PREFIX", self.topic_prefix.clone()),
            ("SECKILL_KEY_PREFIX", self.key_prefix.clone()),
            (
                "SECKILL_KAFKA_SESSION_TIMEOUT_MS",
                SESSION_TIMEOUT_MS.to_string(),
            ),
            ("SECKILL_RATE_LIMIT_PER_USER", "100000".to_owned()),
            ("SECKILL_COMMAND_KEY_FILE", self.command_key_path()),
            ("SECKILL_DRAW_KEY_FILE", self.draw_key_path()),
            ("SECKILL_JWT_HS256_KEY_FILE", self.jwt_key_path()),
            ("SECKILL_LOG", log),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// A Redis connection to this stack's server.
    pub(crate) async fn redis_con(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis-server")
    }

    /// An idempotent producer on this stack's broker.
    pub(crate) fn producer(&self) -> Producer {
        Producer::new(&self.kafka())
    }

    /// Starts `seckill <args>` with this stack's environment plus `extra`
    /// and waits until it is ready (see [`Seckill::wait_ready`]).
    /// A port clash (the picked port taken meanwhile) is retried with new
    /// ports.
    pub(crate) async fn seckill(&self, args: &[&str], extra: &[(&str, &str)]) -> Seckill {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut s = Seckill::new(self, args, extra);
            s.start();
            match s.try_wait_ready().await {
                Ok(()) => return s,
                Err(e) if attempt < 3 && e.to_lowercase().contains("address already in use") => {
                    eprintln!("{}: port clash, retrying with other ports", s.name);
                    s.kill9();
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Runs `seckill <args>` to completion (e.g. `topics create`) and panics
    /// unless it succeeds within `secs`.
    pub(crate) async fn seckill_run(&self, args: &[&str], extra: &[(&str, &str)], secs: u64) {
        seckill::run_to_completion(self, args, extra, secs).await;
    }

    /// Runs `seckill <args>` to its end, whether it succeeds or fails, and
    /// says how it ended (for commands whose failure is the point).
    pub(crate) async fn seckill_exit(
        &self,
        args: &[&str],
        extra: &[(&str, &str)],
        secs: u64,
    ) -> seckill::Exit {
        seckill::run_to_exit(self, args, extra, secs).await
    }

    /// Runs `seckill <args>` to completion like [`Stack::seckill_run`] and
    /// returns what it printed on stdout (stderr goes to its log).
    pub(crate) async fn seckill_output(
        &self,
        args: &[&str],
        extra: &[(&str, &str)],
        secs: u64,
    ) -> String {
        seckill::run_to_completion(self, args, extra, secs).await
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let keep = std::env::var_os("SECKILL_TEST_KEEP").is_some();
        if std::thread::panicking() || keep {
            self.dir.disable_cleanup(true);
            eprintln!(
                "test files kept in {} (topic prefix {}, key prefix {})",
                self.dir.path().display(),
                self.topic_prefix,
                self.key_prefix
            );
        }
        // The services are killed by their own Drop right after this.
    }
}
