//! A second broker for the security suite (tests/secure_kafka.rs): TLS,
//! SASL/SCRAM, or both, on its own free ports, next to a [`Stack`]'s
//! plain tansu.
//!
//! What tansu 0.6.0 can and cannot do (read off its source and tried):
//!
//! - **No TLS.** `tansu broker --cert PEM --key PEM` is refused by clap
//!   (`the argument '--cert <CERT>' cannot be used with '--key <KEY>'`: both
//!   are in one exclusive `tls` group), with `--cert` alone the TLS config
//!   is `None`, and the broker's accept loop never uses the `TlsAcceptor` it
//!   builds (`let _acceptor = ...` in tansu-broker's broker.rs). The scheme
//!   of `--listener-url` is ignored (only host and port are read), so
//!   `tls://` or `ssl://` change nothing. TLS here is therefore terminated
//!   by a small proxy in front of tansu (Python's `ssl` + `asyncio`, from
//!   the test virtualenv), and tansu advertises the proxy's address, so
//!   every connection a client opens (bootstrap and the advertised broker)
//!   goes through TLS.
//! - **SASL/SCRAM-SHA-256 and -512 work** with `--authentication`.
//!   Unauthenticated connections may only send ApiVersions, SaslHandshake
//!   and SaslAuthenticate, so `tansu user create` (which does not
//!   authenticate) fails against such a broker with `early eof`, and with
//!   no user yet nobody can authenticate to create one. The memory engine
//!   loses its users on restart, so a SASL broker uses the sqlite engine:
//!   started without `--authentication`, users created with `tansu user
//!   create`, stopped, and started again on the same file with
//!   `--authentication`.
//! - **No SASL/PLAIN**: the broker answers the handshake with no mechanism
//!   (`NoSharedMechanism` in its log; librdkafka: `SASL PLAIN mechanism
//!   handshake failed ... broker's supported mechanisms: (n/a)`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;

use super::seckill::seckill_bin;
use super::{command, free_port, kafka, log_tail, python, tansu_bin, token, Service, Stack};

/// A self-signed certificate for 127.0.0.1 and its key (PEM files).
#[derive(Debug, Clone)]
pub(crate) struct Tls {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// Makes a self-signed certificate (CN and subjectAltName 127.0.0.1) in
/// `dir` with the `openssl` command line; `name` tells the files apart.
pub(crate) fn self_signed(dir: &Path, name: &str) -> Tls {
    let cert = dir.join(format!("{name}-cert.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap_or_else(|e| panic!("run openssl (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "openssl req failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Tls { cert, key }
}

/// A SCRAM user the broker knows.
#[derive(Debug, Clone)]
pub(crate) struct ScramUser {
    pub(crate) name: String,
    pub(crate) password: String,
    /// `SCRAM-SHA-256` or `SCRAM-SHA-512` (librdkafka's spelling).
    pub(crate) mechanism: &'static str,
}

impl ScramUser {
    pub(crate) fn new(name: &str, password: &str, mechanism: &'static str) -> ScramUser {
        assert!(
            mechanism == "SCRAM-SHA-256" || mechanism == "SCRAM-SHA-512",
            "tansu knows SCRAM-SHA-256 and SCRAM-SHA-512, not {mechanism}"
        );
        ScramUser {
            name: name.to_owned(),
            password: password.to_owned(),
            mechanism,
        }
    }

    /// `tansu user create --mechanism` spelling.
    fn tansu_mechanism(&self) -> &'static str {
        if self.mechanism == "SCRAM-SHA-256" {
            "scram256"
        } else {
            "scram512"
        }
    }
}

/// The TLS-terminating proxy: `proxy.py LISTEN_PORT TARGET_PORT CERT KEY`.
/// Prints `ready` once listening; logs each connection and TLS failure.
const TLS_PROXY: &str = r#"
import asyncio, ssl, sys

listen_port, target_port, cert, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)

def log(*a):
    print(*a, file=sys.stderr, flush=True)

async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except Exception:
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass

async def handle(client_reader, client_writer):
    peer = client_writer.get_extra_info("peername")
    # The handshake by hand, so that its failures are logged.
    try:
        await client_writer.start_tls(ctx, ssl_handshake_timeout=10)
    except Exception as e:
        log("tls-proxy: TLS handshake with", peer, "failed:", repr(e))
        client_writer.close()
        return
    try:
        target_reader, target_writer = await asyncio.open_connection("127.0.0.1", target_port)
    except Exception as e:
        log("tls-proxy: cannot reach tansu:", e)
        client_writer.close()
        return
    log("tls-proxy: TLS connection from", peer, client_writer.get_extra_info("cipher"))
    await asyncio.gather(pipe(client_reader, target_writer), pipe(target_reader, client_writer))

def on_error(loop, context):
    log("tls-proxy:", context.get("message"), repr(context.get("exception")))

async def main():
    asyncio.get_running_loop().set_exception_handler(on_error)
    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"#;

/// A tansu broker reachable over TLS and/or SASL/SCRAM. Dropping it kills
/// the proxy and the broker.
pub(crate) struct SecureBroker {
    // Field order is drop order.
    pub(crate) proxy: Option<Service>,
    pub(crate) tansu: Service,
    /// The port clients use (the proxy's when TLS is on).
    pub(crate) port: u16,
    /// The port tansu itself listens on.
    pub(crate) tansu_port: u16,
    pub(crate) tls: Option<Tls>,
    pub(crate) users: Vec<ScramUser>,
}

impl SecureBroker {
    /// Starts tansu in `stack`'s dir; with `tls`, behind a TLS proxy; with
    /// `users`, requiring SASL (sqlite storage, see the module docs).
    pub(crate) async fn start(stack: &Stack, tls: Option<&Tls>, users: &[ScramUser]) -> Self {
        let mut last = String::new();
        for attempt in 1..=3 {
            match Self::try_start(stack.dir(), tls, users).await {
                Ok(b) => return b,
                Err(e) => {
                    eprintln!("secure broker, attempt {attempt}: {e}");
                    last = e;
                }
            }
        }
        panic!("could not start the secure broker: {last}");
    }

    async fn try_start(dir: &Path, tls: Option<&Tls>, users: &[ScramUser]) -> Result<Self, String> {
        let tansu_port = free_port();
        let port = if tls.is_some() {
            free_port()
        } else {
            tansu_port
        };
        let advertised = format!("tcp://127.0.0.1:{port}");
        let tansu = if users.is_empty() {
            spawn_tansu(dir, tansu_port, &advertised, "memory://tansu/", false)?
        } else {
            // Users first, on a broker that does not ask for them yet.
            let db = format!("sqlite://tansu-{tansu_port}.db");
            let own = format!("tcp://127.0.0.1:{tansu_port}");
            let mut setup = spawn_tansu(dir, tansu_port, &own, &db, false)?;
            wait_broker(&mut setup, &format!("127.0.0.1:{tansu_port}"), &[], 30).await?;
            for u in users {
                let log = dir.join(format!("tansu-user-{}.log", u.name));
                let status = command(&tansu_bin(), &log)
                    .args(["user", "create", "--broker", &own])
                    .args(["--mechanism", u.tansu_mechanism()])
                    .args([&u.name, &u.password])
                    .status()
                    .map_err(|e| format!("tansu user create: {e}"))?;
                if !status.success() {
                    return Err(format!(
                        "tansu user create {} failed with {status}: {}",
                        u.name,
                        log_tail(&log, 2000)
                    ));
                }
            }
            // A clean stop, so sqlite has everything on disk.
            super::sigterm(setup.pid())?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while setup.exited().is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            drop(setup);
            let mut last = String::new();
            let mut started = None;
            // The port may linger for a moment.
            for _ in 0..20 {
                let mut s = spawn_tansu(dir, tansu_port, &advertised, &db, true)?;
                tokio::time::sleep(Duration::from_millis(300)).await;
                match s.exited() {
                    None => {
                        started = Some(s);
                        break;
                    }
                    Some(status) => last = format!("{status}: {}", log_tail(&s.log, 1000)),
                }
            }
            started.ok_or_else(|| format!("tansu --authentication did not stay up: {last}"))?
        };
        let proxy = match tls {
            None => None,
            Some(t) => Some(spawn_proxy(dir, port, tansu_port, t).await?),
        };
        let mut broker = SecureBroker {
            proxy,
            tansu,
            port,
            tansu_port,
            tls: tls.cloned(),
            users: users.to_vec(),
        };
        let props = broker.properties(users.first());
        let brokers = broker.brokers();
        wait_broker(&mut broker.tansu, &brokers, &props, 30).await?;
        Ok(broker)
    }

    /// `127.0.0.1:PORT` of the client-facing listener.
    pub(crate) fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The librdkafka properties a client needs here, as `user` (SASL) when
    /// the broker wants one.
    pub(crate) fn properties(&self, user: Option<&ScramUser>) -> Vec<(String, String)> {
        let mut props = Vec::new();
        let protocol = match (self.tls.is_some(), user.is_some()) {
            (false, false) => "PLAINTEXT",
            (true, false) => "SSL",
            (false, true) => "SASL_PLAINTEXT",
            (true, true) => "SASL_SSL",
        };
        props.push(("security.protocol".to_owned(), protocol.to_owned()));
        if let Some(t) = &self.tls {
            props.push(("ssl.ca.location".to_owned(), t.cert.display().to_string()));
        }
        if let Some(u) = user {
            props.push(("sasl.mechanisms".to_owned(), u.mechanism.to_owned()));
            props.push(("sasl.username".to_owned(), u.name.clone()));
            props.push(("sasl.password".to_owned(), u.password.clone()));
        }
        props
    }

    /// The environment for seckill: SECKILL_KAFKA_BROKERS pointing here and
    /// `props` as SECKILL_KAFKA_PROPERTIES (`;`-separated).
    pub(crate) fn seckill_env(&self, props: &[(String, String)]) -> Vec<(String, String)> {
        let mut env = vec![("SECKILL_KAFKA_BROKERS".to_owned(), self.brokers())];
        if !props.is_empty() {
            env.push(("SECKILL_KAFKA_PROPERTIES".to_owned(), properties_env(props)));
        }
        env
    }

    /// The logs of the broker and the proxy, for assertions and reports.
    pub(crate) fn logs(&self) -> String {
        let mut out = format!("tansu log:\n{}", log_tail(&self.tansu.log, 3000));
        if let Some(p) = &self.proxy {
            out.push_str(&format!("\ntls proxy log:\n{}", log_tail(&p.log, 3000)));
        }
        out
    }
}

/// `k=v;k=v`, as SECKILL_KAFKA_PROPERTIES wants them.
pub(crate) fn properties_env(props: &[(String, String)]) -> String {
    props
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

fn spawn_tansu(
    dir: &Path,
    port: u16,
    advertised: &str,
    storage: &str,
    authentication: bool,
) -> Result<Service, String> {
    let bin = tansu_bin();
    let listener = format!("tcp://127.0.0.1:{port}");
    let log = dir.join(format!("tansu-secure-{port}.log"));
    let mut cmd = command(&bin, &log);
    cmd.arg("broker")
        .args(["--listener-url", &listener])
        .args(["--advertised-listener-url", advertised])
        .args(["--storage-engine", storage]);
    if authentication {
        cmd.arg("--authentication");
    }
    let child = cmd
        .env_remove("CLUSTER_ID")
        .env_remove("LISTENER_URL")
        .env_remove("ADVERTISED_LISTENER_URL")
        .env_remove("STORAGE_ENGINE")
        .env_remove("SCHEMA_REGISTRY")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .current_dir(dir)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    Ok(Service {
        name: format!(
            "tansu :{port}{}",
            if authentication {
                " --authentication"
            } else {
                ""
            }
        ),
        child,
        log,
    })
}

async fn spawn_proxy(dir: &Path, port: u16, target: u16, tls: &Tls) -> Result<Service, String> {
    let script = dir.join("tls-proxy.py");
    std::fs::write(&script, TLS_PROXY).map_err(|e| format!("write {}: {e}", script.display()))?;
    let log = dir.join(format!("tls-proxy-{port}.log"));
    let child = command(&python::interpreter(), &log)
        .arg(&script)
        .args([port.to_string(), target.to_string()])
        .arg(&tls.cert)
        .arg(&tls.key)
        .current_dir(dir)
        .spawn()
        .map_err(|e| format!("spawn the TLS proxy: {e}"))?;
    let mut service = Service {
        name: format!("tls proxy :{port} -> :{target}"),
        child,
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = service.exited() {
            return Err(format!(
                "TLS proxy exited with {status}: {}",
                log_tail(&service.log, 2000)
            ));
        }
        if log_tail(&service.log, 2000).contains("ready") {
            return Ok(service);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "TLS proxy not ready in 15s: {}",
                log_tail(&service.log, 2000)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until a client with `props` gets metadata from `brokers`.
async fn wait_broker(
    tansu: &mut Service,
    brokers: &str,
    props: &[(String, String)],
    secs: u64,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = tansu.exited() {
            return Err(format!(
                "{} exited with {status}: {}",
                tansu.name,
                log_tail(&tansu.log, 2000)
            ));
        }
        let last = if props.is_empty() {
            kafka::metadata_ok(brokers).await
        } else {
            metadata_with(brokers, props).await
        };
        match last {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "{} did not answer metadata on {brokers} in {secs}s ({e}): {}",
                    tansu.name,
                    log_tail(&tansu.log, 2000)
                ))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A metadata request from a client with `props` (blocking pool).
pub(crate) async fn metadata_with(brokers: &str, props: &[(String, String)]) -> Result<(), String> {
    let brokers = brokers.to_owned();
    let props = props.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &brokers)
            .set("log_level", "3");
        for (k, v) in &props {
            config.set(k, v);
        }
        let consumer: BaseConsumer = config.create().map_err(|e| e.to_string())?;
        consumer
            .fetch_metadata(None, Duration::from_secs(3))
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Records what librdkafka reports to a client (errors and log lines).
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl ClientContext for Recorder {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if let Ok(mut v) = self.0.lock() {
            v.push(format!("{level:?} {facility}: {message}"));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if let Ok(mut v) = self.0.lock() {
            v.push(format!("error {error}: {reason}"));
        }
    }
}

impl ConsumerContext for Recorder {}

/// What librdkafka tells a client with `props` that asks `brokers` for
/// metadata (for `secs`): the request's result and every error and log
/// line it reported. seckill's own log does not show these for its admin
/// client (see the suite's docs), so the suites read the cause here.
pub(crate) async fn client_diagnosis(
    brokers: &str,
    props: &[(String, String)],
    secs: u64,
) -> (Result<(), String>, Vec<String>) {
    let brokers = brokers.to_owned();
    let props = props.to_vec();
    tokio::task::spawn_blocking(move || {
        let recorder = Recorder::default();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &brokers)
            .set("group.id", "secure-diagnosis")
            .set("log_level", "6");
        for (k, v) in &props {
            config.set(k, v);
        }
        let consumer: BaseConsumer<Recorder> = match config.create_with_context(recorder.clone()) {
            Ok(c) => c,
            Err(e) => return (Err(e.to_string()), Vec::new()),
        };
        let result = consumer
            .fetch_metadata(None, Duration::from_secs(secs))
            .map(|_| ())
            .map_err(|e| e.to_string());
        // Errors are delivered as events: serve them.
        for _ in 0..5 {
            let _ = consumer.poll(Duration::from_millis(100));
        }
        let seen = recorder.0.lock().map(|v| v.clone()).unwrap_or_default();
        (result, seen)
    })
    .await
    .unwrap_or_else(|e| (Err(e.to_string()), Vec::new()))
}

/// How a `seckill` process that should not get ready ended.
#[derive(Debug)]
pub(crate) struct NotReady {
    /// `Some` when it exited by itself within the wait.
    pub(crate) exit: Option<ExitStatus>,
    pub(crate) after: Duration,
    pub(crate) log: String,
}

/// Starts `seckill <args>` with `stack`'s environment plus `extra` and
/// watches it for at most `secs`: panics if GET /readyz answers 200;
/// otherwise returns how it ended (killed after `secs` if still running).
pub(crate) async fn expect_never_ready(
    stack: &Stack,
    args: &[&str],
    extra: &[(String, String)],
    secs: u64,
) -> NotReady {
    let mut env = stack.seckill_env();
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    let http = format!("127.0.0.1:{}", free_port());
    env.retain(|(k, _)| k != "SECKILL_HTTP_ADDR");
    env.push(("SECKILL_HTTP_ADDR".to_owned(), http.clone()));
    let log = stack.dir().join(format!(
        "seckill-{}-unready-{}.log",
        args.join("-"),
        token(4)
    ));
    let mut cmd = command(&seckill_bin(), &log);
    for (k, _) in std::env::vars() {
        if k.starts_with("SECKILL_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(stack.dir())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn seckill: {e}"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .expect("http client");
    let started = Instant::now();
    let url = format!("http://{http}/readyz");
    let exit = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if let Ok(r) = client.get(&url).send().await {
            if r.status().as_u16() == 200 {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "seckill {} got ready after {:?} but should not have; log:\n{}",
                    args.join(" "),
                    started.elapsed(),
                    log_tail(&log, 6000)
                );
            }
        }
        if started.elapsed() >= Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    NotReady {
        exit,
        after: started.elapsed(),
        log: std::fs::read_to_string(&log).unwrap_or_default(),
    }
}
