//! `seckill bench --ceilings`: what the same Redis and the same HTTP server
//! do at most on this host, measured in the same run just before the load,
//! so every figure of the load can be read as a share of its ceiling.
//!
//! The Redis ceilings run a reference script shaped like the processors'
//! decide path (dedup check on the request id, stock check and deduct,
//! the answer recorded under the request id), on keys of their own
//! (`<key-prefix>:{ceiling:<run-id>}:stock|answers`, one slot) that are
//! deleted afterwards:
//! - `redis_evalsha_per_request`: one EVALSHA per request, 64 tasks with a
//!   connection each, one call in flight per task;
//! - `redis_pipelined`: the same EVALSHA, 32 per pipeline, from 4
//!   connections;
//! - `redis_batch_call`: the same logic as ONE EVALSHA per batch of 64, 256
//!   and 1024 request ids (reads and writes in bulk, as decide.lua does),
//!   from one connection.
//!
//! `http_healthz` is ingest's `GET /healthz` from the bench's HTTP client
//! with `--concurrency` requests in flight.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};

/// Tasks (and connections) of the per-request ceiling.
const PER_REQUEST_TASKS: usize = 64;
/// Calls in one pipeline of the pipelined ceiling.
const PIPELINE_DEPTH: usize = 32;
/// Connections of the pipelined ceiling.
const PIPELINE_CONNECTIONS: usize = 4;
/// Batch sizes of the one-call-per-batch ceiling.
pub(super) const BATCH_SIZES: [usize; 3] = [64, 256, 1024];
/// Stock of the reference campaign: enough that every call deducts (the
/// dearer path) for as long as a ceiling runs.
const REFERENCE_STOCK: u64 = 1_000_000_000_000;

/// One request: KEYS[1] stock hash, KEYS[2] answers hash (request id ->
/// answer), ARGV[1] the request id. Returns the answer.
const PER_REQUEST_LUA: &str = r"
local prev = redis.call('HGET', KEYS[2], ARGV[1])
if prev then return prev end
local left = tonumber(redis.call('HGET', KEYS[1], 'available') or '0')
local answer = 'sold_out'
if left > 0 then
  redis.call('HINCRBY', KEYS[1], 'available', -1)
  answer = 'reserved'
end
redis.call('HSET', KEYS[2], ARGV[1], answer)
return answer
";

/// A batch: the same keys, ARGV the request ids. The answers already
/// recorded are read in one HMGET and the stock once; each request is
/// decided in order (a repeated id gets its first answer); the new answers
/// are written in one HSET and the stock once. One answer per request.
const BATCH_LUA: &str = r"
local prev = redis.call('HMGET', KEYS[2], unpack(ARGV))
local left = tonumber(redis.call('HGET', KEYS[1], 'available') or '0')
local out, writes, seen, taken = {}, {}, {}, 0
for i = 1, #ARGV do
  local rid = ARGV[i]
  local answer = prev[i] or seen[rid]
  if not answer then
    if left > 0 then
      left = left - 1
      taken = taken + 1
      answer = 'reserved'
    else
      answer = 'sold_out'
    end
    seen[rid] = answer
    writes[#writes + 1] = rid
    writes[#writes + 1] = answer
  end
  out[i] = answer
end
if #writes > 0 then redis.call('HSET', KEYS[2], unpack(writes)) end
if taken > 0 then redis.call('HINCRBY', KEYS[1], 'available', -taken) end
return out
";

/// Where and for how long the ceilings are measured.
pub(super) struct Target<'a> {
    pub(super) redis_url: &'a str,
    pub(super) key_prefix: &'a str,
    pub(super) run_id: &'a str,
    pub(super) http: &'a reqwest::Client,
    pub(super) url: &'a str,
    pub(super) concurrency: usize,
    pub(super) secs: f64,
}

/// The measured ceilings, per second.
#[derive(Debug, Clone)]
pub(super) struct Ceilings {
    pub(super) redis_evalsha_per_request: f64,
    pub(super) redis_pipelined: f64,
    /// Decisions per second by batch size.
    pub(super) redis_batch_call: BTreeMap<usize, f64>,
    pub(super) http_healthz: f64,
}

impl Ceilings {
    pub(super) fn to_json(&self, secs: f64) -> Value {
        let batch: serde_json::Map<String, Value> = self
            .redis_batch_call
            .iter()
            .map(|(size, rate)| (size.to_string(), json!(rate.round())))
            .collect();
        json!({
            "secs_each": secs,
            "redis_evalsha_per_request": self.redis_evalsha_per_request.round(),
            "redis_pipelined": self.redis_pipelined.round(),
            "redis_batch_call": batch,
            "http_healthz": self.http_healthz.round(),
        })
    }
}

/// A request id shaped like the real ones (36 characters), unique per
/// (task, n), cheap to make.
fn request_id(task: usize, n: u64) -> String {
    format!("{task:08x}-0000-4000-8000-{n:012x}")
}

struct Keys {
    stock: String,
    answers: String,
}

async fn connect(client: &redis::Client) -> anyhow::Result<MultiplexedConnection> {
    // A loaded host may answer a batch of 1024 in more than the client's
    // default 500 ms: a timeout would measure the client, not Redis.
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_secs(30)))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .context("connecting to Redis for the ceilings")
}

/// Fresh reference keys: the stock set, no answers recorded.
async fn reset(con: &mut MultiplexedConnection, keys: &Keys) -> anyhow::Result<()> {
    redis::pipe()
        .cmd("UNLINK")
        .arg(&keys.stock)
        .arg(&keys.answers)
        .ignore()
        .cmd("HSET")
        .arg(&keys.stock)
        .arg("available")
        .arg(REFERENCE_STOCK)
        .ignore()
        .query_async::<()>(con)
        .await
        .context("setting up the ceiling keys")
}

/// Runs `tasks` copies of `body(task, con)` on a connection each until
/// `secs` have passed; each returns how many decisions it made. Returns
/// decisions per second over the time all of them took.
async fn timed<F, Fut>(
    client: &redis::Client,
    tasks: usize,
    secs: f64,
    body: F,
) -> anyhow::Result<f64>
where
    F: Fn(usize, MultiplexedConnection, Instant) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    let mut cons = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        cons.push(connect(client).await?);
    }
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(secs);
    let handles: Vec<_> = cons
        .into_iter()
        .enumerate()
        .map(|(task, con)| tokio::spawn(body(task, con, until)))
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.await.context("a ceiling task panicked")??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Measures every ceiling, one after the other, `secs` each; the reference
/// keys are deleted afterwards, also when a measurement fails.
pub(super) async fn measure(t: &Target<'_>) -> anyhow::Result<Ceilings> {
    let client = redis::Client::open(t.redis_url)
        .with_context(|| format!("{} is not a Redis URL", t.redis_url))?;
    let tag = format!("{}:{{ceiling:{}}}", t.key_prefix, t.run_id);
    let keys = Keys {
        stock: format!("{tag}:stock"),
        answers: format!("{tag}:answers"),
    };
    let mut con = connect(&client).await?;
    let result = measure_on(&client, &mut con, &keys, t).await;
    let cleanup = redis::cmd("UNLINK")
        .arg(&keys.stock)
        .arg(&keys.answers)
        .query_async::<u64>(&mut con)
        .await;
    let ceilings = result?;
    cleanup.context("deleting the ceiling keys")?;
    release_memory(&mut con).await;
    Ok(ceilings)
}

/// Waits (at most 5 s) until Redis has freed the deleted ceiling keys in
/// the background (UNLINK), then asks it to hand the freed pages back to
/// the system (MEMORY PURGE, a no-op without jemalloc): the memory sampled
/// during the load is then the load's, not the reference answers'.
/// Redis's VmHWM and used_memory_peak still count them.
async fn release_memory(con: &mut MultiplexedConnection) {
    for _ in 0..100 {
        let pending = redis::cmd("INFO")
            .arg("memory")
            .query_async::<String>(con)
            .await
            .ok()
            .and_then(|info| {
                super::rss::parse_info(&info)
                    .get("lazyfree_pending_objects")
                    .copied()
            });
        if pending.is_none_or(|n| n == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Err(e) = redis::cmd("MEMORY")
        .arg("PURGE")
        .query_async::<()>(con)
        .await
    {
        eprintln!("bench: MEMORY PURGE after the ceilings: {e}");
    }
}

async fn measure_on(
    client: &redis::Client,
    con: &mut MultiplexedConnection,
    keys: &Keys,
    t: &Target<'_>,
) -> anyhow::Result<Ceilings> {
    let load = |src: &'static str| {
        let mut con = con.clone();
        async move {
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(src)
                .query_async::<String>(&mut con)
                .await
                .context("SCRIPT LOAD of a reference script")
        }
    };
    let one_sha = Arc::new(load(PER_REQUEST_LUA).await?);
    let batch_sha = Arc::new(load(BATCH_LUA).await?);
    let stock = Arc::new(keys.stock.clone());
    let answers = Arc::new(keys.answers.clone());

    reset(con, keys).await?;
    let per_request = timed(client, PER_REQUEST_TASKS, t.secs, |task, mut con, until| {
        let (sha, stock, answers) = (one_sha.clone(), stock.clone(), answers.clone());
        async move {
            let mut n = 0;
            while Instant::now() < until {
                let answer: String = redis::cmd("EVALSHA")
                    .arg(sha.as_str())
                    .arg(2)
                    .arg(stock.as_str())
                    .arg(answers.as_str())
                    .arg(request_id(task, n))
                    .query_async(&mut con)
                    .await
                    .context("EVALSHA of the per-request reference script")?;
                check_answer(&answer)?;
                n += 1;
            }
            Ok(n)
        }
    })
    .await?;
    eprintln!("bench: ceiling redis_evalsha_per_request {per_request:.0}/s");

    reset(con, keys).await?;
    let pipelined = timed(
        client,
        PIPELINE_CONNECTIONS,
        t.secs,
        |task, mut con, until| {
            let (sha, stock, answers) = (one_sha.clone(), stock.clone(), answers.clone());
            async move {
                let mut n = 0;
                while Instant::now() < until {
                    let mut pipe = redis::pipe();
                    for i in 0..PIPELINE_DEPTH as u64 {
                        pipe.cmd("EVALSHA")
                            .arg(sha.as_str())
                            .arg(2)
                            .arg(stock.as_str())
                            .arg(answers.as_str())
                            .arg(request_id(task, n + i));
                    }
                    let replies: Vec<String> = pipe
                        .query_async(&mut con)
                        .await
                        .context("a pipeline of EVALSHA of the per-request reference script")?;
                    if replies.len() != PIPELINE_DEPTH {
                        bail!(
                            "a pipeline of {PIPELINE_DEPTH} got {} replies",
                            replies.len()
                        );
                    }
                    replies.iter().try_for_each(|a| check_answer(a))?;
                    n += PIPELINE_DEPTH as u64;
                }
                Ok(n)
            }
        },
    )
    .await?;
    eprintln!("bench: ceiling redis_pipelined {pipelined:.0}/s");

    let mut batch_call = BTreeMap::new();
    for size in BATCH_SIZES {
        reset(con, keys).await?;
        let rate = timed(client, 1, t.secs, |task, mut con, until| {
            let (sha, stock, answers) = (batch_sha.clone(), stock.clone(), answers.clone());
            async move {
                let mut n = 0;
                while Instant::now() < until {
                    let mut cmd = redis::cmd("EVALSHA");
                    cmd.arg(sha.as_str())
                        .arg(2)
                        .arg(stock.as_str())
                        .arg(answers.as_str());
                    for i in 0..size as u64 {
                        cmd.arg(request_id(task, n + i));
                    }
                    let replies: Vec<String> = cmd
                        .query_async(&mut con)
                        .await
                        .context("EVALSHA of the batch reference script")?;
                    if replies.len() != size {
                        bail!("a batch of {size} got {} answers", replies.len());
                    }
                    replies.iter().try_for_each(|a| check_answer(a))?;
                    n += size as u64;
                }
                Ok(n)
            }
        })
        .await?;
        eprintln!("bench: ceiling redis_batch_call at {size}: {rate:.0} decisions/s");
        batch_call.insert(size, rate);
    }

    let http_healthz = healthz(t).await?;
    eprintln!("bench: ceiling http_healthz {http_healthz:.0}/s");
    Ok(Ceilings {
        redis_evalsha_per_request: per_request,
        redis_pipelined: pipelined,
        redis_batch_call: batch_call,
        http_healthz,
    })
}

/// Every reference call deducts (the stock does not run out while a
/// ceiling runs, and ids are new): anything else means the script did not
/// do the work being measured.
fn check_answer(answer: &str) -> anyhow::Result<()> {
    if answer == "reserved" {
        Ok(())
    } else {
        bail!("the reference script answered {answer:?} where it should have reserved")
    }
}

/// `GET /healthz` answered 200 per second, `concurrency` in flight.
async fn healthz(t: &Target<'_>) -> anyhow::Result<f64> {
    let url = Arc::new(format!("{}/healthz", t.url));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(t.secs);
    let handles: Vec<_> = (0..t.concurrency.max(1))
        .map(|_| {
            let (http, url, ok, failed) = (t.http.clone(), url.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    match http.get(url.as_str()).send().await {
                        Ok(r) if r.status().is_success() => {
                            // Read the body: the connection goes back to the pool.
                            let _ = r.bytes().await;
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.await.context("a /healthz task panicked")?;
    }
    let secs = started.elapsed().as_secs_f64();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    if ok == 0 {
        bail!("GET {url} never answered 200 ({failed} failures): is ingest running?");
    }
    if failed > 0 {
        eprintln!("bench: {failed} of {} GET /healthz failed", ok + failed);
    }
    Ok(ok as f64 / secs)
}
