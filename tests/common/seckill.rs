//! Handles on `seckill` processes, and the output of its ops commands.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::{command, free_port, log_tail, Stack};

pub(crate) fn seckill_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_seckill"))
}

/// Builds the command line of `seckill <args>` with the stack's environment;
/// inherited `SECKILL_*` variables are removed so the host cannot leak in.
fn seckill_command(
    log: &std::path::Path,
    args: &[String],
    env: &[(String, String)],
    cwd: &std::path::Path,
) -> Command {
    let mut cmd = command(&seckill_bin(), log);
    for (k, _) in std::env::vars() {
        if k.starts_with("SECKILL_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd);
    cmd
}

/// One `seckill` role process. Killed with SIGKILL on drop.
pub(crate) struct Seckill {
    pub(crate) name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    child: Option<Child>,
    /// Log file (stdout and stderr of every incarnation, appended).
    pub(crate) log: PathBuf,
    /// `http://127.0.0.1:PORT` of the public API (all, ingest).
    pub(crate) http: Option<String>,
    /// `http://127.0.0.1:PORT` of /metrics and /healthz (process, sink).
    pub(crate) metrics: Option<String>,
    incarnation: u32,
}

impl Seckill {
    /// Prepares (does not start) `seckill <args>`. `all` and `ingest` get a
    /// free SECKILL_HTTP_ADDR, `process` and `sink` a free
    /// SECKILL_METRICS_ADDR, unless `extra` sets them.
    pub(crate) fn new(stack: &Stack, args: &[&str], extra: &[(&str, &str)]) -> Seckill {
        let mut env = stack.seckill_env();
        // An empty value removes the variable.
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != k);
            if !v.is_empty() {
                env.push(((*k).to_owned(), (*v).to_owned()));
            }
        }
        let role = args.first().copied().unwrap_or("");
        let lookup = |env: &[(String, String)], key: &str| {
            env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
        };
        let mut http = None;
        let mut metrics = None;
        if matches!(role, "all" | "ingest") {
            let addr = lookup(&env, "SECKILL_HTTP_ADDR").unwrap_or_else(|| {
                let a = format!("127.0.0.1:{}", free_port());
                env.push(("SECKILL_HTTP_ADDR".to_owned(), a.clone()));
                a
            });
            http = Some(format!("http://{addr}"));
        }
        if matches!(role, "process" | "sink") {
            let addr = lookup(&env, "SECKILL_METRICS_ADDR").unwrap_or_else(|| {
                let a = format!("127.0.0.1:{}", free_port());
                env.push(("SECKILL_METRICS_ADDR".to_owned(), a.clone()));
                a
            });
            metrics = Some(format!("http://{addr}"));
        }
        let name = format!("seckill {}", args.join(" "));
        // Arguments may hold paths: keep the file name a file name.
        let mut stem: String = args
            .join("-")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        stem.truncate(80);
        let log = stack
            .dir()
            .join(format!("seckill-{stem}-{}.log", super::token(4)));
        Seckill {
            name,
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            env,
            cwd: stack.dir().to_path_buf(),
            child: None,
            log,
            http,
            metrics,
            incarnation: 0,
        }
    }

    /// Spawns the process (a new incarnation if it ran before).
    pub(crate) fn start(&mut self) {
        assert!(self.child.is_none(), "{} is running already", self.name);
        self.incarnation += 1;
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&self.log) {
            let _ = writeln!(
                f,
                "===== {} incarnation {} =====",
                self.name, self.incarnation
            );
        }
        let child = seckill_command(&self.log, &self.args, &self.env, &self.cwd)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.name));
        self.child = Some(child);
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Panics (with the log) if the process has exited.
    pub(crate) fn assert_alive(&mut self) {
        if let Err(e) = self.check_alive() {
            panic!("{e}");
        }
    }

    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.as_mut() {
            None => Err(format!("{} is not running", self.name)),
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Err(format!(
                    "{} exited with {status}; log:\n{}",
                    self.name,
                    log_tail(&self.log, 6000)
                )),
                _ => Ok(()),
            },
        }
    }

    /// Waits (at most 90 s) until the role answers: GET /readyz = 200 on
    /// the API port, or GET /healthz = 200 on the metrics port. Panics with
    /// the log if the process exits or never gets ready.
    pub(crate) async fn wait_ready(&mut self) {
        if let Err(e) = self.try_wait_ready().await {
            panic!("{e}");
        }
    }

    pub(crate) async fn try_wait_ready(&mut self) -> Result<(), String> {
        let url = match (&self.http, &self.metrics) {
            (Some(h), _) => format!("{h}/readyz"),
            (None, Some(m)) => format!("{m}/healthz"),
            (None, None) => {
                // Nothing to probe: being alive for a moment is all we know.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return self.check_alive();
            }
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            self.check_alive()?;
            let last = match client.get(&url).send().await {
                Ok(r) if r.status().as_u16() == 200 => return Ok(()),
                Ok(r) => {
                    let status = r.status();
                    format!("{status}: {}", r.text().await.unwrap_or_default())
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} not ready after 90s (GET {url}: {last}); log:\n{}",
                    self.name,
                    log_tail(&self.log, 6000)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no clean shutdown, no final commit.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // std's Child::kill sends SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits (at most `secs`) for a clean exit; SIGKILL after.
    /// Returns whether the process exited by itself and with success.
    pub(crate) async fn terminate(&mut self, secs: u64) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if let Err(e) = super::sigterm(child.id()) {
            eprintln!("{}: {e}", self.name);
        }
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }

    /// Starts a new incarnation with the same command line and environment
    /// (same ports) and waits until it is ready.
    pub(crate) async fn restart(&mut self) {
        self.kill9();
        self.start();
        self.wait_ready().await;
    }

    pub(crate) fn log_tail(&self, max: u64) -> String {
        log_tail(&self.log, max)
    }
}

impl Drop for Seckill {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}) -----\n{}\n----- end of {} log -----",
                self.name,
                self.log.display(),
                log_tail(&self.log, 8000),
                self.name
            );
        }
    }
}

/// The JSON line a `seckill` ops command printed last.
pub(crate) fn last_json(out: &str) -> serde_json::Value {
    out.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .unwrap_or_else(|| panic!("no JSON line in the output:\n{out}"))
}

/// Runs `seckill <args>` to completion; panics with its output unless it
/// exits successfully within `secs`. Returns its stdout (kept in a file
/// next to its log); stderr goes to the log.
pub(crate) async fn run_to_completion(
    stack: &Stack,
    args: &[&str],
    extra: &[(&str, &str)],
    secs: u64,
) -> String {
    let run = run_to_exit(stack, args, extra, secs).await;
    assert!(
        run.success,
        "{} failed with {}; stdout:\n{}\nlog:\n{}",
        run.name, run.status, run.stdout, run.log
    );
    run.stdout
}

/// How a `seckill` command that ran to its end ended.
pub(crate) struct Exit {
    pub(crate) name: String,
    pub(crate) success: bool,
    pub(crate) status: String,
    /// What it printed on stdout.
    pub(crate) stdout: String,
    /// The end of its log (stderr).
    pub(crate) log: String,
}

/// Runs `seckill <args>` to its end, successful or not (panics only if it
/// does not end within `secs`).
pub(crate) async fn run_to_exit(
    stack: &Stack,
    args: &[&str],
    extra: &[(&str, &str)],
    secs: u64,
) -> Exit {
    let mut s = Seckill::new(stack, args, extra);
    let out_path = s.log.with_extension("out");
    let out = std::fs::File::create(&out_path)
        .unwrap_or_else(|e| panic!("create {}: {e}", out_path.display()));
    s.incarnation += 1;
    let child = seckill_command(&s.log, &s.args, &s.env, &s.cwd)
        .stdout(out)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", s.name));
    s.child = Some(child);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        let child = s.child.as_mut().expect("started");
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Ok(None) => panic!(
                "{} did not finish in {secs}s; log:\n{}",
                s.name,
                s.log_tail(6000)
            ),
            Err(e) => panic!("waiting for {}: {e}", s.name),
        }
    };
    s.child = None;
    Exit {
        name: s.name.clone(),
        success: status.success(),
        status: status.to_string(),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        log: s.log_tail(6000),
    }
}
