//! `seckill bench` against a private stack: the real binary, its JSON line
//! and its exit code.
//!
//! | guarantee | test |
//! | --- | --- |
//! | an open loop with `--ceilings` decides every accepted request, exits 0, reports ceilings, ratios and memory, and leaves no ceiling keys behind; a request that finds `--max-in-flight` reached is counted late | `open_loop_with_ceilings_decides_every_request_and_reports_memory` |
//! | accepted requests left undecided (the processor killed mid-load) make the bench exit non-zero, saying so | `requests_left_undecided_make_the_bench_exit_non_zero` |
//!
//! Run: `cargo test -p seckill-cli --test bench -- --test-threads=1`.
//! Needs what `scripts/install-deps` installs.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{last_json, start_roles, Stack};
use serde_json::Value;

/// The processes of `stack` and its `seckill all` as `--pid` arguments.
fn pid_args(stack: &Stack, seckill_pid: u32) -> Vec<String> {
    [
        ("seckill", seckill_pid),
        ("redis", stack.redis.pid()),
        ("tansu", stack.tansu.pid()),
    ]
    .iter()
    .flat_map(|(name, pid)| ["--pid".to_owned(), format!("{name}={pid}")])
    .collect()
}

fn positive(v: &Value) -> bool {
    v.as_f64().is_some_and(|x| x > 0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_with_ceilings_decides_every_request_and_reports_memory() {
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let url = all.http.clone().expect("http");
    let pids = pid_args(&stack, all.pid().expect("running"));
    let mut args: Vec<String> = [
        "bench",
        "--url",
        &url,
        "--via",
        "http",
        "--rate",
        "200",
        "--duration",
        "3",
        "--users",
        "600",
        "--stock",
        "400",
        "--ceilings",
        "--ceiling-secs",
        "1",
        "--settle-secs",
        "60",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(pids.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = stack.seckill_exit(&args, &[], 240).await;
    assert!(
        run.success,
        "bench exited with {}; stdout:\n{}\nlog:\n{}",
        run.status, run.stdout, run.log
    );
    let line = last_json(&run.stdout);
    eprintln!("{line}");

    assert_eq!(line["mode"], "open", "{line}");
    assert_eq!(line["requests"], 600, "{line}");
    let accepted = line["accepted"].as_u64().expect("accepted");
    assert!(accepted > 0, "{line}");
    assert_eq!(line["decided"].as_u64(), Some(accepted), "{line}");
    for (name, n) in line["invariants"].as_object().expect("invariants") {
        assert_eq!(n, 0, "invariant {name} in {line}");
    }
    // 400 units, 600 users wanting one each: the stock sells out.
    assert_eq!(line["reserved"], 400, "{line}");
    assert_eq!(line["late_sends"], 0, "{line}");
    let lat = &line["latency_ms"];
    assert_eq!(
        lat["accept"]["count"], 600,
        "every request answered: {line}"
    );
    assert_eq!(lat["decision"]["count"].as_u64(), Some(accepted), "{line}");
    for q in ["p50", "p90", "p99", "p999", "max"] {
        assert!(positive(&lat["decision"][q]), "decision {q} in {line}");
    }

    let c = &line["ceilings"];
    for name in [
        "redis_evalsha_per_request",
        "redis_pipelined",
        "http_healthz",
    ] {
        assert!(positive(&c[name]), "ceiling {name} in {line}");
    }
    for size in ["64", "256", "1024"] {
        assert!(
            positive(&c["redis_batch_call"][size]),
            "batch {size} in {line}"
        );
    }
    let r = &line["ratios"];
    assert_eq!(r["redis_batch_call_size"], 1024, "{line}");
    for name in [
        "decided_per_sec_to_redis_batch_call",
        "accepted_per_sec_to_http_healthz",
    ] {
        assert!(positive(&r[name]), "ratio {name} in {line}");
    }
    let expected = line["decided_per_sec"].as_f64().expect("decided_per_sec")
        / c["redis_batch_call"]["1024"].as_f64().expect("batch 1024");
    let got = r["decided_per_sec_to_redis_batch_call"]
        .as_f64()
        .expect("ratio");
    assert!(
        (got - expected).abs() < 0.002,
        "{got} vs {expected}: {line}"
    );

    let m = &line["memory_mib"];
    for name in ["seckill", "redis", "tansu"] {
        let p = &m["processes"][name];
        for field in ["vm_rss", "vm_hwm", "peak_rss_sampled"] {
            assert!(positive(&p[field]), "{name} {field} in {line}");
        }
        assert!(
            p["vm_hwm"].as_f64() >= p["vm_rss"].as_f64(),
            "{name}: {line}"
        );
    }
    assert_eq!(m["processes"]["redis"]["command"], "redis-server", "{line}");
    assert!(positive(&m["redis_used_memory_rss"]), "{line}");

    // The ceilings cleaned up after themselves.
    let mut redis = stack.redis_con().await;
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:{{ceiling:*", stack.key_prefix))
        .query_async(&mut redis)
        .await
        .expect("KEYS");
    assert!(left.is_empty(), "ceiling keys left behind: {left:?}");

    // One request in flight at most, 2000 due per second: most of them find
    // the cap reached, and the bench says so instead of quietly slowing down.
    let run = stack
        .seckill_exit(
            &[
                "bench",
                "--url",
                &url,
                "--rate",
                "2000",
                "--duration",
                "0.5",
                "--max-in-flight",
                "1",
                "--users",
                "1000",
                "--settle-secs",
                "60",
            ],
            &[],
            180,
        )
        .await;
    assert!(run.success, "{}\n{}", run.stdout, run.log);
    let line = last_json(&run.stdout);
    assert_eq!(line["requests"], 1000, "{line}");
    let late = line["late_sends"].as_u64().expect("late_sends");
    assert!(late > 0, "{line}");
    // Waiting for the cap counts in the latency: measured from the due time.
    assert!(
        positive(&line["send_lag_ms"]["max"]),
        "the generator's lag is reported: {line}"
    );
    assert!(
        line["latency_ms"]["accept"]["max"].as_f64() >= line["send_lag_ms"]["max"].as_f64(),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_left_undecided_make_the_bench_exit_non_zero() {
    let stack = Stack::start().await;
    let mut roles = start_roles(&stack, &[], &[], &[]).await;
    let url = roles.ingest.http.clone().expect("http");

    // The bench creates its campaign through the processor, then loads for
    // 3 s; the processor is killed as the load starts, so what ingest
    // accepts from then on is never decided.
    let log = stack.dir().join("bench-undecided.log");
    let out_path = stack.dir().join("bench-undecided.out");
    let mut cmd = common::command(std::path::Path::new(env!("CARGO_BIN_EXE_seckill")), &log);
    for (k, _) in std::env::vars() {
        if k.starts_with("SECKILL_") {
            cmd.env_remove(k);
        }
    }
    let mut bench = cmd
        .args([
            "bench",
            "--url",
            &url,
            "--rate",
            "100",
            "--duration",
            "3",
            "--users",
            "300",
            "--settle-secs",
            "3",
        ])
        .envs(stack.seckill_env())
        .current_dir(stack.dir())
        .stdout(Stdio::from(
            std::fs::File::create(&out_path).expect("bench stdout"),
        ))
        .spawn()
        .expect("spawn seckill bench");
    let started = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("bench: load starts")
    {
        if let Some(status) = bench.try_wait().expect("bench status") {
            panic!(
                "bench ended with {status} before its load: {}",
                common::log_tail(&log, 4000)
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the bench did not start its load in 60 s: {}",
            common::log_tail(&log, 4000)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    roles.process.kill9();

    let status = loop {
        if let Some(status) = bench.try_wait().expect("bench status") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the bench did not end: {}",
            common::log_tail(&log, 4000)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stdout = std::fs::read_to_string(&out_path).expect("bench stdout");
    let stderr = common::log_tail(&log, 8000);
    assert!(
        !status.success(),
        "requests were left undecided, yet the bench exited with {status}:\n{stdout}\n{stderr}"
    );
    // The JSON line is printed before the failing exit, and says how many.
    let line = last_json(&stdout);
    let accepted = line["accepted"].as_u64().expect("accepted");
    let decided = line["decided"].as_u64().expect("decided");
    let undecided = line["invariants"]["undecided_requests"]
        .as_u64()
        .expect("undecided_requests");
    assert!(undecided > 0, "{line}");
    assert_eq!(undecided, accepted - decided, "{line}");
    assert!(
        stderr.contains("FAILED undecided_requests"),
        "stderr names the failed check:\n{stderr}"
    );
}
