//! Bounded shutdown: on SIGTERM every role finishes or abandons its batch
//! within the grace period (`SECKILL_SHUTDOWN_GRACE_SECS`), commits what it
//! can and exits, whether or not the broker answers. Real `seckill`
//! processes on a real redis-server and tansu broker; the broker is killed
//! (SIGKILL) while requests flow.
//!
//! | guarantee | test |
//! | --- | --- |
//! | with the broker up, `seckill all` exits promptly (well within the grace) with code 0 | `all_with_the_broker_up_exits_promptly_with_code_0_on_sigterm` |
//! | with the broker gone mid-stream, `seckill all` exits within the grace | `all_with_the_broker_killed_mid_stream_exits_within_the_grace_on_sigterm` |
//! | with the broker up, `seckill process` and `seckill sink` exit promptly with code 0 | `process_and_sink_with_the_broker_up_exit_promptly_with_code_0_on_sigterm` |
//! | with the broker gone, `seckill process` and `seckill sink` exit within the grace | `process_and_sink_with_the_broker_killed_exit_within_the_grace_on_sigterm` |
//!
//! Run: `cargo test -p seckill-cli --test shutdown -- --test-threads=1`.
//! Needs `redis-server` and `tansu` (see tests/common/mod.rs).

mod common;

use std::time::{Duration, Instant};

use common::{pid_alive, purchases, start_roles, token, Api, CampaignArgs, Seckill, Stack};

/// The grace period every process of this suite gets.
const GRACE_SECS: u64 = 8;
const GRACE: (&str, &str) = ("SECKILL_SHUTDOWN_GRACE_SECS", "8");
/// Slack on top of the grace for the test's own polling and process exit.
const MARGIN: Duration = Duration::from_millis(1500);
/// "Promptly": with the broker up a stop takes no drain, no timeout.
const PROMPT: Duration = Duration::from_secs(4);

/// How a SIGTERM went.
struct Stopped {
    /// How long after the SIGTERM the process was gone (`None`: still
    /// running at the limit, then SIGKILLed).
    after: Option<Duration>,
    /// Whether it exited by itself with code 0.
    success: bool,
}

/// Sends SIGTERM to `s` and measures how long it takes to exit, waiting at
/// most `limit` (SIGKILL after that).
async fn sigterm(s: &mut Seckill, limit: Duration) -> Stopped {
    let pid = s.pid().expect("process running");
    let started = Instant::now();
    common::sigterm(pid).unwrap_or_else(|e| panic!("{e}"));
    // A process that exited stays a zombie until reaped: not alive.
    while pid_alive(pid) && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let after = (!pid_alive(pid)).then_some(elapsed);
    // Reaps it (SIGKILL if it is still running) and reads its exit status.
    let success = s.terminate(1).await && after.is_some();
    eprintln!(
        "{}: SIGTERM -> {} ({})",
        s.name,
        match after {
            Some(d) => format!("exited after {} ms", d.as_millis()),
            None => format!("still running after {} ms", elapsed.as_millis()),
        },
        if success {
            "exit code 0"
        } else {
            "exit code not 0"
        }
    );
    Stopped { after, success }
}

/// The whole log of a process (every incarnation).
fn log_of(s: &Seckill) -> String {
    std::fs::read_to_string(&s.log).unwrap_or_default()
}

/// Kills the broker (SIGKILL): gone without a goodbye, like a lost host.
fn kill_broker(stack: &mut Stack) {
    let _ = stack.tansu.child.kill();
    let _ = stack.tansu.child.wait();
}

/// A campaign, a few decided purchases over HTTP (every stage has run
/// once), then a stream of requests straight to the requests topic that
/// keeps the processor busy. Returns the campaign and the stream's task.
async fn traffic(stack: &Stack, api: &Api) -> (String, tokio::task::JoinHandle<()>) {
    let cid = format!("stop-{}", token(6));
    api.create_campaign(&CampaignArgs::new(&cid, 100_000, 1_000))
        .await;
    for i in 0..5 {
        let d = api
            .purchase_decided(&cid, &format!("warm-{i}"), &format!("warm-key-{i}"), None)
            .await;
        eprintln!("warm-up purchase {i}: {:?}", d.status);
    }
    let producer = stack.producer();
    let topic = stack.topics.requests.clone();
    let campaign = cid.clone();
    let stream = tokio::spawn(async move {
        for round in 0.. {
            // Dense enough that the processor is always mid-batch, so a
            // broker killed now leaves events waiting for acknowledgements.
            let (_, messages) = purchases(&cid, 200, |i| format!("fan-{round}-{i}"));
            producer.send_all(&topic, &messages).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (campaign, stream)
}

/// Purchases that wait (up to 10 s) for their decision, left in flight:
/// each ends with the HTTP status it got, or the transport error.
fn waiting_purchases(
    api: &Api,
    cid: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<u16, String>>> {
    (0..n)
        .map(|i| {
            let (api, cid) = (api.clone(), cid.to_owned());
            tokio::spawn(async move {
                api.purchase(&cid, &format!("late-{i}"), None, None, Some(10_000))
                    .await
                    .map(|r| r.status)
            })
        })
        .collect()
}

/// Gone within the grace, and every role stopped by itself (none had to
/// be abandoned by the supervisor at the end of the grace).
fn assert_within_grace(name: &str, stopped: &Stopped, log: &str) {
    let abandoned = log.matches("abandoned").count();
    eprintln!("{name}: {abandoned} log lines about abandoned batches, commits or closes");
    let limit = Duration::from_secs(GRACE_SECS) + MARGIN;
    match stopped.after {
        Some(d) => assert!(
            d <= limit,
            "{name} took {d:?} to exit after SIGTERM (grace {GRACE_SECS}s + {MARGIN:?}); log:\n{}",
            tail(log)
        ),
        None => panic!(
            "{name} was still running {limit:?} after SIGTERM (grace {GRACE_SECS}s); log:\n{}",
            tail(log)
        ),
    }
    assert!(
        log.contains("every role stopped") && !log.contains("grace period exceeded"),
        "{name} exited, but a role did not stop by itself within the grace; log:\n{}",
        tail(log)
    );
}

fn assert_prompt_and_clean(name: &str, stopped: &Stopped, log: &str) {
    match stopped.after {
        Some(d) => assert!(
            d <= PROMPT,
            "{name} took {d:?} to exit after SIGTERM with the broker up (want at most \
             {PROMPT:?}, grace {GRACE_SECS}s); log:\n{}",
            tail(log)
        ),
        None => panic!("{name} did not exit after SIGTERM; log:\n{}", tail(log)),
    }
    assert!(
        stopped.success,
        "{name} exited with a failure code; log:\n{}",
        tail(log)
    );
    assert!(
        log.contains("every role stopped"),
        "{name} did not log a clean stop; log:\n{}",
        tail(log)
    );
    assert!(
        !log.contains("grace period exceeded"),
        "{name} exceeded its grace with the broker up; log:\n{}",
        tail(log)
    );
}

fn tail(log: &str) -> &str {
    let start = log.len().saturating_sub(8000);
    let start = (start..log.len())
        .find(|&i| log.is_char_boundary(i))
        .unwrap_or(log.len());
    &log[start..]
}

// ---------------------------------------------------------------------------
// seckill all

/// `seckill all` with traffic flowing and the broker up: SIGTERM, exit
/// well within the grace, code 0, every role stopped by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_with_the_broker_up_exits_promptly_with_code_0_on_sigterm() {
    let stack = Stack::start().await;
    let mut all = stack.seckill(&["all"], &[GRACE]).await;
    let api = Api::new(all.http.as_deref().expect("all http"));
    let (cid, stream) = traffic(&stack, &api).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = waiting_purchases(&api, &cid, 5);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped = sigterm(&mut all, Duration::from_secs(GRACE_SECS + 5)).await;
    stream.abort();
    let log = log_of(&all);
    assert_prompt_and_clean("seckill all", &stopped, &log);
    // Requests waiting for a decision when the stop came were answered
    // (decided, or 503 at the end of the drain), not cut off.
    for w in waiting {
        let answer = w.await.expect("purchase task");
        eprintln!("purchase waiting at the stop: {answer:?}");
        assert!(
            matches!(answer, Ok(200 | 202 | 503)),
            "a purchase in flight at the stop got {answer:?}"
        );
    }
}

/// `seckill all` with requests streaming in; the broker is SIGKILLed (the
/// processor's events wait for acknowledgements that never come, requests
/// wait for decisions), then SIGTERM: the process is gone within the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_with_the_broker_killed_mid_stream_exits_within_the_grace_on_sigterm() {
    let mut stack = Stack::start().await;
    let mut all = stack.seckill(&["all"], &[GRACE]).await;
    let api = Api::new(all.http.as_deref().expect("all http"));
    let (cid, stream) = traffic(&stack, &api).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    kill_broker(&mut stack);
    stream.abort();
    let waiting = waiting_purchases(&api, &cid, 5);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stopped = sigterm(&mut all, Duration::from_secs(GRACE_SECS + 10)).await;
    let log = log_of(&all);
    assert_within_grace("seckill all", &stopped, &log);
    // Requests stuck behind the dead broker were answered (503 at the end
    // of the drain), not cut off.
    for w in waiting {
        let answer = w.await.expect("purchase task");
        eprintln!("purchase waiting at the stop: {answer:?}");
        assert!(
            answer.is_ok(),
            "a purchase in flight at the stop got {answer:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// seckill process, seckill sink

/// The roles as processes of their own, traffic flowing, broker up:
/// `process` and `sink` each exit promptly with code 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_and_sink_with_the_broker_up_exit_promptly_with_code_0_on_sigterm() {
    let stack = Stack::start().await;
    let mut roles = start_roles(&stack, &[GRACE], &[], &[]).await;
    let (_, stream) = traffic(&stack, &roles.api).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let limit = Duration::from_secs(GRACE_SECS + 5);
    let (process, sink) = tokio::join!(
        sigterm(&mut roles.process, limit),
        sigterm(&mut roles.sink, limit)
    );
    stream.abort();
    assert_prompt_and_clean("seckill process", &process, &log_of(&roles.process));
    assert_prompt_and_clean("seckill sink", &sink, &log_of(&roles.sink));
}

/// The roles as processes of their own; the broker is SIGKILLed while
/// requests stream in: `process` and `sink` each exit within the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_and_sink_with_the_broker_killed_exit_within_the_grace_on_sigterm() {
    let mut stack = Stack::start().await;
    let mut roles = start_roles(&stack, &[GRACE], &[], &[]).await;
    let (_, stream) = traffic(&stack, &roles.api).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    kill_broker(&mut stack);
    stream.abort();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let limit = Duration::from_secs(GRACE_SECS + 10);
    let (process, sink) = tokio::join!(
        sigterm(&mut roles.process, limit),
        sigterm(&mut roles.sink, limit)
    );
    assert_within_grace("seckill process", &process, &log_of(&roles.process));
    assert_within_grace("seckill sink", &sink, &log_of(&roles.sink));
}
