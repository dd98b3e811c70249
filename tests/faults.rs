//! Fault-injection suite (issue 4): real `seckill` processes on a real
//! redis-server and tansu broker, broken on purpose — SIGKILLed sinks and
//! processors, an order store that is down or refuses writes, a Redis that
//! crashes or loses its data, poison messages — and every test checked by
//! the one invariant checker, `seckill_cli::check` (the same code
//! `seckill bench` reports with): nothing oversold, nothing doubled,
//! nothing lost, no stock returned twice.
//!
//! Run: `cargo test -p seckill-cli --test faults -- --test-threads=2`.
//! Needs `redis-server` and `tansu` (see tests/common/mod.rs).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use redis::aio::ConnectionManager;
use serde_json::{json, Value};

use common::{
    consume_topic, purchase_json, token, within, Api, CampaignArgs, Producer, Seckill, Stack,
};
use seckill_cli::check::{
    check_campaign_with, read_order_log, redis_stock, stored_orders, CampaignReport, Evidence,
    OrderLog,
};
use seckill_kafka::KafkaSettings;
use seckill_schemas::{DecisionStatus, KeyLayout, OrderView};
use seckill_store::OrderStore;

// ---------------------------------------------------------------------------
// The checker, as the tests use it

/// The invariant checker bound to one stack: its own store handle (the
/// SQLite file the sink writes), Redis connection and orders topic.
struct Checker {
    store: Arc<dyn OrderStore>,
    redis: ConnectionManager,
    keys: KeyLayout,
    kafka: KafkaSettings,
    orders_topic: String,
}

impl Checker {
    async fn new(stack: &Stack) -> Checker {
        let store = seckill_store::open_store(&stack.store_url())
            .await
            .unwrap_or_else(|e| panic!("open the order store {}: {e}", stack.store_url()));
        let redis = seckill_processors::connect_redis(&stack.redis_url())
            .await
            .unwrap_or_else(|e| panic!("connect to redis: {e}"));
        Checker {
            store,
            redis,
            keys: stack.keys.clone(),
            kafka: stack.kafka(),
            orders_topic: stack.topics.orders.clone(),
        }
    }

    async fn log(&self) -> OrderLog {
        read_order_log(&self.kafka, &self.orders_topic)
            .await
            .unwrap_or_else(|e| panic!("read {}: {e:#}", self.orders_topic))
    }

    async fn orders(&self, cid: &str) -> Vec<OrderView> {
        let mut orders = stored_orders(&*self.store, cid)
            .await
            .unwrap_or_else(|e| panic!("list orders of {cid}: {e:#}"));
        orders.sort_by(|a, b| a.order_id.cmp(&b.order_id));
        orders
    }

    async fn stock(&mut self, cid: &str) -> (i64, i64, i64, i64) {
        redis_stock(&mut self.redis, &self.keys, cid)
            .await
            .unwrap_or_else(|e| panic!("redis stock of {cid}: {e:#}"))
    }

    async fn check(
        &mut self,
        cid: &str,
        limit: u32,
        sent: &[String],
        log: &OrderLog,
    ) -> anyhow::Result<CampaignReport> {
        check_campaign_with(
            &*self.store,
            &mut self.redis,
            &self.keys,
            cid,
            limit,
            &Evidence {
                decisions: &[],
                log: Some(log),
                sent,
            },
        )
        .await
    }

    /// Reads the orders topic and checks the campaign until nothing is
    /// left to settle (see `CampaignReport::unsettled`) or `timeout`
    /// passes; returns the last report and the log it was made with.
    async fn settled(
        &mut self,
        cid: &str,
        limit: u32,
        sent: &[String],
        timeout: Duration,
    ) -> (CampaignReport, OrderLog) {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log().await;
            match self.check(cid, limit, sent, &log).await {
                Ok(r) if r.unsettled() == 0 || Instant::now() >= deadline => return (r, log),
                Ok(_) => {}
                Err(e) if Instant::now() >= deadline => panic!("checking {cid}: {e:#}"),
                Err(e) => eprintln!("checking {cid} failed, retrying: {e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn assert_clean(report: &CampaignReport) {
    eprintln!("{report}");
    assert!(report.is_clean(), "invariants violated:\n{report}");
}

/// Counts first decisions of `sent` requests by status.
fn tally(log: &OrderLog, sent: &[String]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in sent {
        let status = log
            .first(r)
            .map_or("undecided".to_owned(), |d| d.status.as_str().to_owned());
        *out.entry(status).or_default() += 1;
    }
    out
}

fn reserved_of(log: &OrderLog, sent: &[String]) -> usize {
    sent.iter()
        .filter(|r| log.first(r).map(|d| d.status) == Some(DecisionStatus::Reserved))
        .count()
}

// ---------------------------------------------------------------------------
// Traffic

fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `n` purchase events for `cid` (one unit each), user `user(i)` for the
/// i-th: their request ids and the (key, payload) messages.
fn purchases(
    cid: &str,
    n: usize,
    user: impl Fn(usize) -> String,
) -> (Vec<String>, Vec<(String, Vec<u8>)>) {
    let ids: Vec<String> = (0..n).map(|_| new_request_id()).collect();
    let messages = ids
        .iter()
        .enumerate()
        .map(|(i, rid)| (cid.to_owned(), purchase_json(rid, cid, &user(i), 1)))
        .collect();
    (ids, messages)
}

/// Produces `messages` to `topic` in chunks of `chunk`, one chunk every
/// `every`: a sale that goes on while the test breaks things.
fn spawn_stream(
    producer: Producer,
    topic: String,
    messages: Vec<(String, Vec<u8>)>,
    chunk: usize,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for c in messages.chunks(chunk) {
            producer.send_all(&topic, c).await;
            tokio::time::sleep(every).await;
        }
    })
}

/// Produces one message (with a W3C `traceparent` header if given) and
/// returns its (partition, offset).
async fn send_at(
    producer: &Producer,
    topic: &str,
    key: &str,
    payload: &[u8],
    traceparent: Option<&str>,
) -> (i32, i64) {
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key).payload(payload);
    if let Some(t) = traceparent {
        record = record.headers(OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some(t),
        }));
    }
    let d = producer
        .inner
        .send(record, Duration::from_secs(60))
        .await
        .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
    (d.partition, d.offset)
}

/// Polls `probe` (every 20 ms, at most `secs`) until it returns `Some`.
async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
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

/// Requests the campaign's Redis state has decided (its request hash, which
/// also holds the campaign's create command).
async fn decided_in_redis(con: &mut ConnectionManager, keys: &KeyLayout, cid: &str) -> usize {
    redis::cmd("HLEN")
        .arg(keys.campaign(cid).requests)
        .query_async(con)
        .await
        .unwrap_or(0)
}

/// Waits until every one of `sent` has a decision event on the orders
/// topic; returns that log.
async fn wait_all_decided(checker: &Checker, sent: &[String], secs: u64) -> OrderLog {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let log = checker.log().await;
        let missing = sent.iter().filter(|r| log.first(r).is_none()).count();
        if missing == 0 {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} requests still undecided after {secs}s",
            sent.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// ---------------------------------------------------------------------------
// The roles as separate processes

struct Roles {
    ingest: Seckill,
    process: Seckill,
    sink: Seckill,
    api: Api,
}

/// `seckill topics create`, then ingest, sink and one processor, each a
/// process of its own. `env` goes to all of them, `sink_env` and
/// `process_env` to the sink and the processor only.
async fn start_roles(
    stack: &Stack,
    env: &[(&str, &str)],
    sink_env: &[(&str, &str)],
    process_env: &[(&str, &str)],
) -> Roles {
    let sink_vars: Vec<(&str, &str)> = env.iter().chain(sink_env).copied().collect();
    let process_vars: Vec<(&str, &str)> = env.iter().chain(process_env).copied().collect();
    stack.seckill_run(&["topics", "create"], env, 120).await;
    let ingest = stack.seckill(&["ingest"], env).await;
    let sink = stack.seckill(&["sink"], &sink_vars).await;
    let process = stack.seckill(&["process"], &process_vars).await;
    let api = Api::new(ingest.http.as_deref().expect("ingest http"));
    Roles {
        ingest,
        process,
        sink,
        api,
    }
}

// ---------------------------------------------------------------------------
// Dead letters

fn headers_of(m: &OwnedMessage) -> BTreeMap<String, String> {
    m.headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        h.value
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How often each header name occurs on a message (overwritten, never
/// appended, means once).
fn header_counts(m: &OwnedMessage) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            *out.entry(h.key.to_owned()).or_default() += 1;
        }
    }
    out
}

/// Reads a whole topic (what is there now, give or take `idle`).
async fn read_topic(stack: &Stack, topic: &str, min: usize, secs: u64) -> Vec<OwnedMessage> {
    consume_topic(
        &stack.kafka(),
        topic,
        min,
        Duration::from_secs(2),
        Duration::from_secs(secs),
    )
    .await
}

/// The JSON line a `seckill` ops command printed last.
fn last_json(out: &str) -> Value {
    out.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .unwrap_or_else(|| panic!("no JSON line in the output:\n{out}"))
}

fn fault_file(stack: &Stack) -> PathBuf {
    stack.dir().join("store-fault")
}

// ---------------------------------------------------------------------------
// 1. The sink SIGKILLed mid-batch

/// A sale of 4,000 requests (2,000 users, 2 units each at most) for 3,000
/// units, produced as a steady stream over about 20 s; the sink (batches of
/// at most 50, so a kill lands inside one) is SIGKILLed twice while orders
/// flow — once early, once while it catches up after the first restart —
/// and restarted.
/// Every reserved decision's order is in the store, no user holds more than
/// the limit, no order is doubled, every request is decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_sigkilled_mid_batch_and_restarted_nothing_lost_nothing_doubled() {
    const REQUESTS: usize = 4000;
    const USERS: usize = 2000;
    const STOCK: u64 = 3000;
    const LIMIT: u32 = 2;

    let stack = Stack::start().await;
    let mut roles = start_roles(
        &stack,
        &[("SECKILL_PARTITIONS", "2")],
        &[("SECKILL_SINK_BATCH_MAX", "50")],
        &[],
    )
    .await;
    let cid = format!("sinkkill-{}", token(6));
    roles
        .api
        .create_campaign(&CampaignArgs::new(&cid, STOCK, LIMIT))
        .await;
    let mut checker = Checker::new(&stack).await;

    let (sent, messages) = purchases(&cid, REQUESTS, |i| format!("fan-{:04}", i % USERS));
    let stream = spawn_stream(
        stack.producer(),
        stack.topics.requests.clone(),
        messages,
        50,
        Duration::from_millis(250),
    );

    let mut kills: Vec<usize> = Vec::new();
    for _ in 0..2 {
        // Early in the sale; then while the restarted sink catches up.
        let threshold = kills.last().map_or(300, |k| k + 300);
        let at_kill = wait_for(240, "orders to reach the store", || {
            let checker = &checker;
            let cid = &cid;
            async move {
                let n = checker.orders(cid).await.len();
                (n >= threshold).then_some(n)
            }
        })
        .await;
        roles.sink.kill9();
        // Dead: nothing more lands.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let while_dead = checker.orders(&cid).await.len();
        eprintln!("sink killed with {at_kill} orders stored ({while_dead} a second later)");
        kills.push(while_dead);
        if kills.len() == 2 {
            // The second restart comes 3.5 s after the kill, where tansu
            // 0.6 tends to settle the newcomer's groups without giving it
            // a partition; it must notice and rejoin
            // (runtime::watch_assignment).
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
        roles.sink.restart().await;
    }
    within(300, "produce the sale", stream)
        .await
        .expect("producer task");

    let (report, log) = checker
        .settled(&cid, LIMIT, &sent, Duration::from_secs(180))
        .await;
    let reserved = reserved_of(&log, &sent);
    eprintln!(
        "decisions {:?}; {} decision events on the orders topic",
        tally(&log, &sent),
        log.messages
    );
    assert_clean(&report);
    assert!(
        kills.iter().all(|k| (*k as u64) < STOCK),
        "every kill must land while orders still flow: stored at the kills {kills:?}"
    );
    assert_eq!(reserved as u64, STOCK, "the whole stock is sold");
    assert_eq!(
        report.stored_orders as u64, STOCK,
        "one order per reservation"
    );
    assert_eq!(log.unparsed, 0);
    roles.sink.assert_alive();
    roles.process.assert_alive();
}

// ---------------------------------------------------------------------------
// 2. The store down for 20 s

/// The order store is down for 20 s in the middle of a sale (injected with
/// SECKILL_STORE_FAULT_FILE, so every write fails as an outage). Retry tiers
/// of 5 s, 10 s and 20 s outlast it: the failed events wait in
/// `orders.retry.N` (with headers that say why and when they are due), land
/// once the store is back, and nothing reaches the DLQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_unavailable_20s_during_sale_events_flow_through_retry_tiers_and_land_nothing_in_dlq()
{
    const REQUESTS: usize = 600;
    const STOCK: u64 = 400;

    let stack = Stack::start().await;
    let fault = fault_file(&stack);
    let fault_env = fault.display().to_string();
    let delays = ("SECKILL_RETRY_DELAYS_MS", "5000,10000,20000");
    let mut roles = start_roles(
        &stack,
        &[("SECKILL_PARTITIONS", "2"), delays],
        &[("SECKILL_STORE_FAULT_FILE", fault_env.as_str())],
        &[],
    )
    .await;
    let cid = format!("outage-{}", token(6));
    roles
        .api
        .create_campaign(&CampaignArgs::new(&cid, STOCK, 1))
        .await;
    let mut checker = Checker::new(&stack).await;

    // 600 purchases over about 30 s.
    let (sent, messages) = purchases(&cid, REQUESTS, |i| format!("buyer-{i:04}"));
    let stream = spawn_stream(
        stack.producer(),
        stack.topics.requests.clone(),
        messages,
        20,
        Duration::from_secs(1),
    );

    let before = wait_for(120, "the first orders to land", || {
        let checker = &checker;
        let cid = &cid;
        async move {
            let n = checker.orders(cid).await.len();
            (n >= 40).then_some(n)
        }
    })
    .await;
    std::fs::write(&fault, "unavailable").expect("write the fault file");
    let outage_started = Instant::now();
    eprintln!("store down with {before} orders stored");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_outage_start = checker.orders(&cid).await.len();
    tokio::time::sleep(Duration::from_secs(20) - outage_started.elapsed()).await;
    let at_outage_end = checker.orders(&cid).await.len();
    std::fs::remove_file(&fault).expect("remove the fault file");
    eprintln!(
        "store back after {:?}: {at_outage_start} -> {at_outage_end} orders during the outage",
        outage_started.elapsed()
    );
    assert_eq!(
        at_outage_start, at_outage_end,
        "nothing is written while the store is down"
    );
    within(120, "produce the sale", stream)
        .await
        .expect("producer task");

    // Everything lands: the last tier is due 35 s after a first failure.
    let (report, log) = checker
        .settled(&cid, 1, &sent, Duration::from_secs(150))
        .await;
    eprintln!("decisions {:?}", tally(&log, &sent));
    assert_clean(&report);
    assert_eq!(report.stored_orders as u64, STOCK);
    assert!(
        report.stored_orders > at_outage_end,
        "orders decided during the outage landed after it"
    );

    // The tiers were used, with the headers that say why.
    let mut per_tier = Vec::new();
    for tier in 1..=3 {
        let topic = format!("{}.orders.retry.{tier}", stack.topic_prefix);
        let msgs = read_topic(&stack, &topic, 0, 20).await;
        for m in &msgs {
            let h = headers_of(m);
            let counts = header_counts(m);
            assert!(
                counts.values().all(|n| *n == 1),
                "headers appended, not overwritten: {counts:?}"
            );
            assert_eq!(
                h.get("seckill-error-class").map(String::as_str),
                Some("transient"),
                "{h:?}"
            );
            assert!(
                h.get("seckill-error")
                    .is_some_and(|e| e.contains("injected outage")),
                "{h:?}"
            );
            assert_eq!(h.get("seckill-attempt"), Some(&tier.to_string()), "{h:?}");
            assert_eq!(
                h.get("seckill-original-topic"),
                Some(&stack.topics.orders),
                "{h:?}"
            );
            for name in [
                "seckill-original-partition",
                "seckill-original-offset",
                "seckill-original-timestamp",
                "seckill-first-failure-at",
                "seckill-last-failure-at",
                "seckill-retry-at",
            ] {
                assert!(
                    h.get(name).is_some_and(|v| v.parse::<i64>().is_ok()),
                    "{name} missing or not a number: {h:?}"
                );
            }
            let last: i64 = h["seckill-last-failure-at"].parse().unwrap_or(0);
            let due: i64 = h["seckill-retry-at"].parse().unwrap_or(0);
            let delay = [5000, 10000, 20000][tier - 1];
            assert!(
                (due - last - delay).abs() < 1000,
                "tier {tier} due {} ms after the failure: {h:?}",
                due - last
            );
        }
        per_tier.push(msgs.len());
    }
    eprintln!("messages per retry tier: {per_tier:?}");
    assert!(per_tier[0] > 0, "nothing went through retry tier 1");
    assert!(
        per_tier[1] > 0,
        "nothing failed its first retry during a 20 s outage with a 5 s tier"
    );

    let dlq = read_topic(&stack, &stack.topics.orders_dlq, 0, 10).await;
    assert!(dlq.is_empty(), "{} messages in the orders DLQ", dlq.len());
    let list = last_json(
        &stack
            .seckill_output(&["dlq", "list", "--json"], &[delays], 60)
            .await,
    );
    assert_eq!(list["messages"], json!(0), "{list}");
    roles.sink.assert_alive();
    drop(roles);
}

// ---------------------------------------------------------------------------
// 3. A permanent failure, the DLQ and replay

/// The store refuses every write (fault file says `permanent`): every order
/// event of a sale goes straight to the orders DLQ — not through the retry
/// tiers — with headers that say why and where it came from. Once the
/// cause is fixed, `seckill dlq replay` (after a dry run that changes
/// nothing) makes the store whole; a second replay replays nothing and
/// leaves the store as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_store_failure_goes_to_dlq_then_replay_makes_store_whole_and_second_replay_changes_nothing(
) {
    const REQUESTS: usize = 30;
    const STOCK: u64 = 20;

    let stack = Stack::start().await;
    let fault = fault_file(&stack);
    let fault_env = fault.display().to_string();
    let mut roles = start_roles(
        &stack,
        &[("SECKILL_PARTITIONS", "2")],
        &[("SECKILL_STORE_FAULT_FILE", fault_env.as_str())],
        &[],
    )
    .await;
    let cid = format!("refused-{}", token(6));
    roles
        .api
        .create_campaign(&CampaignArgs::new(&cid, STOCK, 1))
        .await;
    let mut checker = Checker::new(&stack).await;
    // The create event is stored before the fault, so the DLQ holds exactly
    // the sale's events.
    let before_fault = wait_for(60, "the create event to be consumed", || {
        let stack = &stack;
        async move {
            let n = read_topic(stack, &stack.topics.orders, 1, 5).await.len();
            (n >= 1).then_some(n)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::write(&fault, "permanent\n").expect("write the fault file");

    let (sent, messages) = purchases(&cid, REQUESTS, |i| format!("client-{i:02}"));
    stack
        .producer()
        .send_all(&stack.topics.requests, &messages)
        .await;
    let log = wait_all_decided(&checker, &sent, 120).await;
    assert_eq!(
        reserved_of(&log, &sent) as u64,
        STOCK,
        "{:?}",
        tally(&log, &sent)
    );
    let orders_msgs = read_topic(&stack, &stack.topics.orders, before_fault + REQUESTS, 30).await;
    let events = orders_msgs.len() - before_fault;

    // Every event of the sale lands in the DLQ, with the reason.
    let dlq = wait_for(120, "the sale's events in the DLQ", || {
        let stack = &stack;
        async move {
            let m = read_topic(stack, &stack.topics.orders_dlq, events, 5).await;
            (m.len() >= events).then_some(m)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dlq_again = read_topic(&stack, &stack.topics.orders_dlq, events, 5).await;
    assert_eq!(dlq_again.len(), events, "one DLQ entry per refused event");
    let originals: HashMap<(i32, i64), &OwnedMessage> = orders_msgs
        .iter()
        .map(|m| ((m.partition(), m.offset()), m))
        .collect();
    for m in &dlq {
        let h = headers_of(m);
        assert_eq!(
            h.get("seckill-error-class").map(String::as_str),
            Some("permanent"),
            "{h:?}"
        );
        assert!(
            h.get("seckill-error")
                .is_some_and(|e| e.contains("injected permanent fault")),
            "{h:?}"
        );
        assert_eq!(
            h.get("seckill-attempt").map(String::as_str),
            Some("1"),
            "{h:?}"
        );
        assert_eq!(
            h.get("seckill-original-topic"),
            Some(&stack.topics.orders),
            "{h:?}"
        );
        assert!(
            h.get("seckill-retry-at").is_none(),
            "a DLQ entry is not due again: {h:?}"
        );
        for name in [
            "seckill-first-failure-at",
            "seckill-last-failure-at",
            "seckill-original-timestamp",
        ] {
            assert!(
                h.get(name).is_some_and(|v| v.parse::<i64>().is_ok()),
                "{name}: {h:?}"
            );
        }
        let p: i32 = h["seckill-original-partition"].parse().expect("partition");
        let o: i64 = h["seckill-original-offset"].parse().expect("offset");
        let original = originals
            .get(&(p, o))
            .unwrap_or_else(|| panic!("no orders message at {p}@{o}: {h:?}"));
        assert_eq!(m.payload(), original.payload(), "the DLQ keeps the payload");
        assert_eq!(m.key(), Some(cid.as_bytes()), "the DLQ keeps the key");
        assert_eq!(
            header_counts(m).values().max(),
            Some(&1),
            "headers appended"
        );
    }
    for tier in 1..=3 {
        let topic = format!("{}.orders.retry.{tier}", stack.topic_prefix);
        let n = read_topic(&stack, &topic, 0, 5).await.len();
        assert_eq!(n, 0, "a permanent failure skips the retry tiers ({topic})");
    }

    // The checker sees the loss.
    let lost = checker.check(&cid, 1, &sent, &log).await.expect("check");
    eprintln!("while refused: {lost}");
    assert_eq!(lost.stored_orders, 0);
    assert_eq!(lost.missing_from_store as u64, STOCK, "{lost}");

    // The ops view.
    let list = last_json(
        &stack
            .seckill_output(&["dlq", "list", "--json"], &[], 60)
            .await,
    );
    assert_eq!(list["messages"], json!(events), "{list}");
    let permanent: u64 = list["by_error_class"]["permanent"]
        .as_object()
        .map(|ages| ages.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    assert_eq!(permanent, events as u64, "{list}");
    let first = &dlq[0];
    let shown: Value = serde_json::from_str(
        &stack
            .seckill_output(
                &[
                    "dlq",
                    "show",
                    "--partition",
                    &first.partition().to_string(),
                    "--offset",
                    &first.offset().to_string(),
                ],
                &[],
                60,
            )
            .await,
    )
    .expect("dlq show prints JSON");
    assert_eq!(
        shown["headers"]["seckill-error-class"],
        json!("permanent"),
        "{shown}"
    );
    assert_eq!(
        shown["payload"].as_str().map(str::as_bytes),
        first.payload(),
        "{shown}"
    );
    let csv_path = stack.dir().join("dlq.csv");
    stack
        .seckill_output(
            &[
                "dlq",
                "export",
                "--csv",
                "--out",
                &csv_path.display().to_string(),
            ],
            &[],
            60,
        )
        .await;
    let csv = std::fs::read_to_string(&csv_path).expect("read the export");
    assert_eq!(
        csv.lines().count(),
        events + 1,
        "header + one row per entry:\n{csv}"
    );
    assert!(
        csv.lines().next().unwrap_or("").contains("error_class"),
        "{csv}"
    );

    // The cause is fixed. A dry run says what it would do and does nothing.
    std::fs::remove_file(&fault).expect("remove the fault file");
    let dry = last_json(
        &stack
            .seckill_output(&["dlq", "replay", "--dry-run"], &[], 120)
            .await,
    );
    assert_eq!(dry["dry_run"], json!(true), "{dry}");
    assert_eq!(dry["replayed"], json!(events), "{dry}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        checker.orders(&cid).await.is_empty(),
        "a dry run stored something"
    );

    // The replay makes the store whole.
    let replay = last_json(&stack.seckill_output(&["dlq", "replay"], &[], 120).await);
    eprintln!("replay: {replay}");
    assert_eq!(replay["dry_run"], json!(false), "{replay}");
    assert_eq!(replay["replayed"], json!(events), "{replay}");
    assert_eq!(replay["quarantined"], json!(0), "{replay}");
    let (report, log) = checker
        .settled(&cid, 1, &sent, Duration::from_secs(120))
        .await;
    assert_clean(&report);
    assert_eq!(report.stored_orders as u64, STOCK);
    let replayed = read_topic(&stack, &stack.topics.orders, orders_msgs.len() + events, 30).await;
    let with_count = replayed
        .iter()
        .filter(|m| {
            headers_of(m)
                .get("seckill-replay-count")
                .map(String::as_str)
                == Some("1")
        })
        .count();
    assert_eq!(
        with_count, events,
        "replayed events carry seckill-replay-count 1"
    );
    let snapshot = checker.orders(&cid).await;

    // A second replay finds nothing new and changes nothing.
    let again = last_json(&stack.seckill_output(&["dlq", "replay"], &[], 120).await);
    eprintln!("second replay: {again}");
    assert_eq!(again["replayed"], json!(0), "{again}");
    assert_eq!(again["quarantined"], json!(0), "{again}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        checker.orders(&cid).await,
        snapshot,
        "the second replay changed the store"
    );
    let after = read_topic(&stack, &stack.topics.orders, replayed.len(), 30).await;
    assert_eq!(
        after.len(),
        replayed.len(),
        "the second replay republished something"
    );
    let report = checker.check(&cid, 1, &sent, &log).await.expect("check");
    assert_clean(&report);
    roles.sink.assert_alive();
}

// ---------------------------------------------------------------------------
// 4. A processor SIGKILLed mid-batch, three times

/// A sale of 4,000 requests (1,500 users, 2 units each at most) for 1,000
/// units, produced straight to Kafka; the processor (batches of at most 200)
/// is SIGKILLed three times while it decides and restarted each time. No
/// oversell, no duplicate, no request decided two ways, every request
/// decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_sigkilled_mid_batch_three_times_no_oversell_no_duplicate_every_request_decided()
{
    const REQUESTS: usize = 4000;
    const USERS: usize = 1500;
    const STOCK: u64 = 1000;
    const LIMIT: u32 = 2;

    let stack = Stack::start().await;
    let mut roles = start_roles(
        &stack,
        &[("SECKILL_PARTITIONS", "2")],
        &[],
        &[("SECKILL_BATCH_MAX", "200")],
    )
    .await;
    let cid = format!("prockill-{}", token(6));
    roles
        .api
        .create_campaign(&CampaignArgs::new(&cid, STOCK, LIMIT))
        .await;
    let mut checker = Checker::new(&stack).await;
    let keys = stack.keys.clone();
    let con = checker.redis.clone();

    let (sent, messages) = purchases(&cid, REQUESTS, |i| format!("fan-{:04}", i % USERS));
    let stream = spawn_stream(
        stack.producer(),
        stack.topics.requests.clone(),
        messages,
        100,
        Duration::from_millis(200),
    );

    let mut kills = Vec::new();
    for share in [0.15, 0.45, 0.75] {
        let threshold = (REQUESTS as f64 * share) as usize;
        let at_kill = wait_for(240, "the processor to decide", || {
            let mut con = con.clone();
            let (keys, cid) = (&keys, &cid);
            async move {
                let n = decided_in_redis(&mut con, keys, cid).await;
                (n >= threshold).then_some(n)
            }
        })
        .await;
        roles.process.kill9();
        eprintln!("processor killed with {at_kill} requests decided");
        kills.push(at_kill);
        tokio::time::sleep(Duration::from_millis(500)).await;
        roles.process.restart().await;
    }
    within(300, "produce the sale", stream)
        .await
        .expect("producer task");
    assert!(
        kills.iter().all(|k| *k < REQUESTS),
        "every kill must land before the sale is decided: {kills:?}"
    );

    let log = wait_all_decided(&checker, &sent, 300).await;
    let (report, log) = {
        drop(log);
        checker
            .settled(&cid, LIMIT, &sent, Duration::from_secs(180))
            .await
    };
    let events: usize = sent
        .iter()
        .map(|r| log.decisions.get(r).map_or(0, Vec::len))
        .sum();
    eprintln!(
        "decisions {:?}; {events} decision events for {REQUESTS} requests ({} redelivered)",
        tally(&log, &sent),
        events - REQUESTS
    );
    assert_clean(&report);
    assert_eq!(
        reserved_of(&log, &sent) as u64,
        STOCK,
        "the whole stock is sold"
    );
    let (total, available, reserved, paid) = checker.stock(&cid).await;
    assert_eq!(
        (total, available, reserved, paid),
        (STOCK as i64, 0, STOCK as i64, 0)
    );
    roles.process.assert_alive();
}

// ---------------------------------------------------------------------------
// 5. Redis crashes; Redis loses its data

/// Redis runs with AOF (appendonly yes, appendfsync always) and is
/// SIGKILLed in the middle of a sale, then restarted on the same port. It
/// comes back with every decision made before the crash; the sale goes on
/// and every invariant holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_sale_with_aof_sale_continues_and_invariants_hold() {
    const REQUESTS: usize = 2000;
    const STOCK: u64 = 800;

    let mut stack =
        Stack::start_with_redis_args(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let roles = start_roles(&stack, &[("SECKILL_PARTITIONS", "2")], &[], &[]).await;
    let cid = format!("aof-{}", token(6));
    roles
        .api
        .create_campaign(&CampaignArgs::new(&cid, STOCK, 1))
        .await;
    let keys = stack.keys.clone();

    let (sent, messages) = purchases(&cid, REQUESTS, |i| format!("user-{i:04}"));
    let stream = spawn_stream(
        stack.producer(),
        stack.topics.requests.clone(),
        messages,
        100,
        Duration::from_millis(300),
    );
    let mut con = seckill_processors::connect_redis(&stack.redis_url())
        .await
        .expect("redis");
    let before = wait_for(240, "the sale to get going", || {
        let mut con = con.clone();
        let (keys, cid) = (&keys, &cid);
        async move {
            let n = decided_in_redis(&mut con, keys, cid).await;
            (n >= 500).then_some(n)
        }
    })
    .await;
    stack.kill_redis();
    let at_crash = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.start_redis_again().await;
    let after = wait_for(30, "redis to answer after the restart", || {
        let mut con = con.clone();
        let (keys, cid) = (&keys, &cid);
        async move {
            let n = decided_in_redis(&mut con, keys, cid).await;
            (n > 0).then_some(n)
        }
    })
    .await;
    eprintln!(
        "redis SIGKILLed with {before}+ requests decided; back after {:?} with {after}",
        at_crash.elapsed()
    );
    assert!(
        after >= before,
        "AOF lost decisions: {before} before the crash, {after} after"
    );
    assert!(after < REQUESTS, "the crash must land mid-sale");
    within(300, "produce the sale", stream)
        .await
        .expect("producer task");

    let mut checker = Checker::new(&stack).await;
    wait_all_decided(&checker, &sent, 300).await;
    let (report, log) = checker
        .settled(&cid, 1, &sent, Duration::from_secs(180))
        .await;
    eprintln!("decisions {:?}", tally(&log, &sent));
    assert_clean(&report);
    assert_eq!(reserved_of(&log, &sent) as u64, STOCK);
    let stock = checker.stock(&cid).await;
    assert_eq!(stock, (STOCK as i64, 0, STOCK as i64, 0));
    let _: () = redis::cmd("PING")
        .query_async(&mut con)
        .await
        .expect("PING");
    let mut roles = roles;
    roles.process.assert_alive();
    roles.ingest.assert_alive();
}

/// The common part of the Redis-wipe drills: every role on two
/// partitions, one campaign of `stock` units (one per user), a checker and
/// a producer on the requests topic. Fields drop in order, roles first.
struct WipeDrill {
    roles: Roles,
    checker: Checker,
    producer: Producer,
    topic: String,
    cid: String,
    stock: u64,
    stack: Stack,
}

impl WipeDrill {
    async fn start(name: &str, stock: u64) -> WipeDrill {
        let stack = Stack::start().await;
        let roles = start_roles(&stack, &[("SECKILL_PARTITIONS", "2")], &[], &[]).await;
        let cid = format!("{name}-{}", token(6));
        roles
            .api
            .create_campaign(&CampaignArgs::new(&cid, stock, 1))
            .await;
        WipeDrill {
            roles,
            checker: Checker::new(&stack).await,
            producer: stack.producer(),
            topic: stack.topics.requests.clone(),
            cid,
            stock,
            stack,
        }
    }

    /// New purchases of the campaign, one user each: (request ids, messages).
    fn purchases(
        &self,
        n: usize,
        user: impl Fn(usize) -> String,
    ) -> (Vec<String>, Vec<(String, Vec<u8>)>) {
        purchases(&self.cid, n, user)
    }

    async fn send(&self, messages: &[(String, Vec<u8>)]) {
        self.producer.send_all(&self.topic, messages).await;
    }

    /// (total, available, reserved, paid) with `reserved` units reserved.
    fn counters_with(&self, reserved: usize) -> (i64, i64, i64, i64) {
        let total = self.stock as i64;
        (total, total - reserved as i64, reserved as i64, 0)
    }

    async fn wipe_redis(&mut self) {
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut self.checker.redis)
            .await
            .expect("FLUSHALL");
    }

    /// `seckill reconcile <campaign> [--repair]`'s JSON line.
    async fn reconcile(&self, repair: bool) -> Value {
        let mut args = vec!["reconcile", self.cid.as_str()];
        if repair {
            args.push("--repair");
        }
        last_json(&self.stack.seckill_output(&args, &[], 120).await)
    }
}

/// Fails with every problem collected after a repair, so one wrong number
/// does not hide what it leads to.
fn assert_no_problems(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "after the repair:\n{}",
        problems.join("\n")
    );
}

/// Redis loses its data mid-sale (FLUSHALL) while the store lags behind the
/// order log (the sink was SIGKILLed, so the last 100 orders are only on
/// the log). Requests decided while Redis is empty are refused (the
/// campaign is unknown). `seckill reconcile` reports the damage; `--repair`
/// rebuilds the counters, users, reservations and recorded decisions from
/// the store plus the events not yet stored; a second reconcile finds
/// nothing; and the rest of the sale — new buyers, earlier buyers again,
/// and redeliveries of requests decided before the repair — does not
/// oversell, double or decide a request twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_wiped_mid_sale_reconcile_repair_restores_counters_and_rest_of_sale_does_not_oversell(
) {
    const STOCK: u64 = 300;
    const STORED: usize = 100;
    const LOGGED: usize = 100;
    const PHASE1: usize = STORED + LOGGED;
    const WIPED: usize = 10;
    const PHASE2: usize = 300;

    let mut drill = WipeDrill::start("wiped", STOCK).await;
    let cid = drill.cid.clone();

    // Phase 1: 200 buyers, all served; the first 100 stored, the next 100
    // only on the order log (the sink is down).
    let (phase1, messages1) = drill.purchases(PHASE1, |i| format!("early-{i:03}"));
    drill.send(&messages1[..STORED]).await;
    wait_all_decided(&drill.checker, &phase1[..STORED], 120).await;
    let (report, _) = drill
        .checker
        .settled(&cid, 1, &phase1[..STORED], Duration::from_secs(60))
        .await;
    assert_clean(&report);
    drill.roles.sink.kill9();
    drill.send(&messages1[STORED..]).await;
    wait_all_decided(&drill.checker, &phase1, 120).await;
    assert_eq!(
        drill.checker.orders(&cid).await.len(),
        STORED,
        "the store lags"
    );
    assert_eq!(drill.checker.stock(&cid).await, drill.counters_with(PHASE1));

    // The wipe, and a few requests decided against the empty Redis.
    drill.wipe_redis().await;
    let (wiped, messages_w) = drill.purchases(WIPED, |i| format!("unlucky-{i:02}"));
    drill.send(&messages_w).await;
    let log = wait_all_decided(&drill.checker, &wiped, 120).await;
    let during: Vec<&str> = wiped
        .iter()
        .map(|r| log.first(r).map_or("?", |d| d.status.as_str()))
        .collect();
    eprintln!("decided while Redis was empty: {during:?}");
    assert!(
        during.iter().all(|s| *s != "reserved"),
        "nothing can be sold from a Redis that lost the campaign: {during:?}"
    );

    // reconcile sees it; --repair fixes it; reconcile again finds nothing.
    let seen = drill.reconcile(false).await;
    eprintln!("reconcile after the wipe: {}", seen["discrepancies"]);
    assert!(seen["discrepancies"].as_u64().unwrap_or(0) > 0, "{seen}");
    assert_eq!(seen["repaired"], json!(false), "{seen}");
    let repair = drill.reconcile(true).await;
    eprintln!("reconcile --repair: record {}", repair["record"]);
    assert_eq!(repair["repaired"], json!(true), "{repair}");
    let clean = drill.reconcile(false).await;
    assert_eq!(clean["discrepancies"], json!(0), "{clean}");

    // From here on, problems are collected and reported together, so one
    // wrong number does not hide what it leads to.
    let mut problems: Vec<String> = Vec::new();
    // Every order and decision is in the store or on the log; the repair
    // must have used them all.
    let (orders_read, decisions_read) = (
        repair["record"]["orders"].as_u64().unwrap_or(0),
        repair["record"]["decisions"].as_u64().unwrap_or(0),
    );
    if (orders_read, decisions_read) != (PHASE1 as u64, (PHASE1 + WIPED) as u64) {
        problems.push(format!(
            "reconcile --repair rebuilt from {orders_read} orders and {decisions_read} decisions; \
             {PHASE1} orders and {} decisions were made",
            PHASE1 + WIPED
        ));
    }
    let repaired = drill.checker.stock(&cid).await;
    let want = drill.counters_with(PHASE1);
    if repaired != want {
        problems.push(format!(
            "counters after the repair (total, available, reserved, paid) = {repaired:?}, \
             want {want:?}"
        ));
    }

    // The rest of the sale, with the sink back: 300 new buyers for the 100
    // units left, the 200 early buyers again (new requests; limit 1), and
    // redeliveries of requests decided before the repair (the first and
    // last 20 early ones, and the 10 refused while Redis was empty): each
    // must get the decision it had.
    drill.roles.sink.restart().await;
    let (phase2, messages2) = drill.purchases(PHASE2, |i| format!("late-{i:03}"));
    let (again, messages_again) = drill.purchases(PHASE1, |i| format!("early-{i:03}"));
    let mut rest = messages2;
    rest.extend(messages_again);
    rest.extend(messages1[..20].iter().cloned());
    rest.extend(messages1[PHASE1 - 20..].iter().cloned());
    rest.extend(messages_w.iter().cloned());
    drill.send(&rest).await;
    let mut all_sent: Vec<String> = phase1.iter().chain(&wiped).cloned().collect();
    all_sent.extend(phase2.iter().cloned());
    all_sent.extend(again.iter().cloned());
    wait_all_decided(&drill.checker, &all_sent, 180).await;
    let (report, log) = drill
        .checker
        .settled(&cid, 1, &all_sent, Duration::from_secs(120))
        .await;
    eprintln!(
        "phase 2 {:?}; early buyers again {:?}",
        tally(&log, &phase2),
        tally(&log, &again)
    );
    eprintln!("{report}");
    if !report.is_clean() {
        problems.push(format!("invariants violated: {report}"));
    }
    let end = drill.checker.stock(&cid).await;
    if end != drill.counters_with(STOCK as usize) {
        problems.push(format!("counters at the end: {end:?}"));
    }
    let served_late = reserved_of(&log, &phase2) as u64;
    if served_late != STOCK - PHASE1 as u64 {
        problems.push(format!(
            "{served_late} late buyers served for the {} units left",
            STOCK - PHASE1 as u64
        ));
    }
    let served_again = reserved_of(&log, &again);
    if served_again != 0 {
        problems.push(format!("{served_again} early buyers bought a second unit"));
    }
    let redelivered = phase1[..20]
        .iter()
        .chain(&phase1[PHASE1 - 20..])
        .chain(&wiped);
    let mut redecided = 0;
    for r in redelivered {
        let ds = &log.decisions[r];
        if let Some(other) = ds.iter().find(|d| *d != &ds[0]) {
            redecided += 1;
            if redecided <= 3 {
                problems.push(format!(
                    "request {r} redelivered after the repair was decided again: {} then {}",
                    ds[0].status.as_str(),
                    other.status.as_str()
                ));
            }
        }
    }
    if redecided > 3 {
        problems.push(format!("... {} more requests decided again", redecided - 3));
    }
    let after = drill.reconcile(false).await;
    if after["discrepancies"] != json!(0) {
        problems.push(format!("reconcile after the sale: {}", after["details"]));
    }
    assert_no_problems(&problems);
    drill.roles.process.assert_alive();
}

/// The same drill in its plainest form: the sink is down, so the latest
/// orders exist only on the order log, when Redis loses its data.
/// `reconcile --repair` must count those orders (the issue: "from the store
/// plus events not yet stored"), and the rest of the sale must not sell the
/// units they hold a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_wiped_while_store_lags_repair_counts_unstored_orders_and_sale_does_not_oversell() {
    const STOCK: u64 = 100;
    const FIRST: usize = 60;
    const LATER: usize = 100;

    let mut drill = WipeDrill::start("lagging", STOCK).await;
    let cid = drill.cid.clone();

    drill.roles.sink.kill9();
    let (first, messages) = drill.purchases(FIRST, |i| format!("first-{i:03}"));
    drill.send(&messages).await;
    wait_all_decided(&drill.checker, &first, 120).await;
    let before = drill.checker.stock(&cid).await;
    assert_eq!(before, drill.counters_with(FIRST));
    assert!(
        drill.checker.orders(&cid).await.is_empty(),
        "the sink is down"
    );

    drill.wipe_redis().await;
    let repair = drill.reconcile(true).await;
    eprintln!("reconcile --repair: record {}", repair["record"]);
    assert_eq!(repair["repaired"], json!(true), "{repair}");
    let mut problems: Vec<String> = Vec::new();
    if repair["record"]["orders"] != json!(FIRST) {
        problems.push(format!(
            "reconcile --repair rebuilt from {} orders; {FIRST} were reserved (all on the log)",
            repair["record"]["orders"]
        ));
    }
    let repaired = drill.checker.stock(&cid).await;
    if repaired != before {
        problems.push(format!(
            "counters after the repair (total, available, reserved, paid) = {repaired:?}, \
             before the wipe {before:?}"
        ));
    }

    drill.roles.sink.restart().await;
    let (later, messages) = drill.purchases(LATER, |i| format!("later-{i:03}"));
    drill.send(&messages).await;
    let mut sent = first.clone();
    sent.extend(later.iter().cloned());
    wait_all_decided(&drill.checker, &sent, 120).await;
    let (report, log) = drill
        .checker
        .settled(&cid, 1, &sent, Duration::from_secs(45))
        .await;
    eprintln!("after the repair {:?}; {report}", tally(&log, &later));
    if !report.is_clean() {
        problems.push(format!("invariants violated: {report}"));
    }
    let served = reserved_of(&log, &later);
    if served != STOCK as usize - FIRST {
        problems.push(format!(
            "{served} later buyers served for the {} units left",
            STOCK as usize - FIRST
        ));
    }
    assert_no_problems(&problems);
}

// ---------------------------------------------------------------------------
// 6. Poison messages

/// Poison on both topics. On the requests topic: a message that is not
/// JSON, JSON that is not a request event (a required field missing, an
/// unknown type), and request events that are readable but invalid
/// (quantity 0, a key that is not the campaign). On the orders topic: a
/// message that is not JSON, JSON that is not an order event (required
/// fields missing, an unknown type), and an order event that is readable
/// but invalid (no user, no request, quantity 0, an order id not derived
/// from its request). Each lands in its DLQ once, with the error class and
/// reason that fit it and its trace context; nothing invalid reaches the
/// store; and purchases produced after the poison are decided and stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_on_both_topics_land_in_their_dlqs_with_reasons_and_later_purchases_are_decided_and_stored(
) {
    let stack = Stack::start().await;
    let mut roles = start_roles(&stack, &[("SECKILL_PARTITIONS", "2")], &[], &[]).await;
    let cid = format!("poison-{}", token(6));
    roles
        .api
        .create_campaign(&CampaignArgs::new(&cid, 10, 1))
        .await;
    let mut checker = Checker::new(&stack).await;
    let producer = stack.producer();
    let requests = stack.topics.requests.clone();
    let orders = stack.topics.orders.clone();

    let good_before = new_request_id();
    send_at(
        &producer,
        &requests,
        &cid,
        &purchase_json(&good_before, &cid, "before", 1),
        None,
    )
    .await;

    let purchase = |rid: &str, user: &str, q: u32| -> Value {
        json!({"type": "purchase_requested", "schema_version": 1, "request_id": rid,
               "campaign_id": cid, "user_id": user, "quantity": q})
    };
    let mut missing_rid = purchase("x", "mallory", 1);
    missing_rid
        .as_object_mut()
        .expect("object")
        .remove("request_id");
    let bytes = |v: Value| serde_json::to_vec(&v).expect("json");
    // An order event for a campaign of its own, so that if the sink stores
    // it, it shows there and not as noise in the sale's campaign.
    let forged_campaign = format!("{cid}-forged");
    let forged = bytes(json!({
        "type": "reserved", "schema_version": 1, "request_id": "", "order_id": "forged-order",
        "campaign_id": forged_campaign, "user_id": "", "quantity": 0, "price": 0,
        "requested_at_ms": 0, "decided_at_ms": 0, "expires_at_ms": 0
    }));
    struct Poison {
        what: &'static str,
        topic: String,
        key: String,
        payload: Vec<u8>,
        class: &'static str,
        words: &'static [&'static str],
    }
    let poison = vec![
        Poison {
            what: "requests: not JSON",
            topic: requests.clone(),
            key: cid.clone(),
            payload: b"\x00\x01 this is {not JSON".to_vec(),
            class: "unparseable",
            words: &["JSON"],
        },
        Poison {
            what: "requests: required field missing",
            topic: requests.clone(),
            key: cid.clone(),
            payload: bytes(missing_rid),
            class: "unparseable",
            words: &["request_id"],
        },
        Poison {
            what: "requests: unknown event type",
            topic: requests.clone(),
            key: cid.clone(),
            payload: bytes(
                json!({"type": "launch_missiles", "schema_version": 1, "campaign_id": cid}),
            ),
            class: "unparseable",
            words: &["launch_missiles"],
        },
        Poison {
            what: "requests: quantity 0",
            topic: requests.clone(),
            key: cid.clone(),
            payload: bytes(purchase(&new_request_id(), "mallory", 0)),
            class: "permanent",
            words: &["quantity"],
        },
        Poison {
            what: "requests: keyed by another campaign",
            topic: requests.clone(),
            key: format!("{cid}-other"),
            payload: bytes(purchase(&new_request_id(), "mallory", 1)),
            class: "permanent",
            words: &["key"],
        },
        Poison {
            what: "orders: not JSON",
            topic: orders.clone(),
            key: cid.clone(),
            payload: b"<html>not an order</html>".to_vec(),
            class: "unparseable",
            words: &["JSON"],
        },
        Poison {
            what: "orders: required fields missing",
            topic: orders.clone(),
            key: cid.clone(),
            payload: bytes(
                json!({"type": "reserved", "schema_version": 1, "order_id": "o-1",
                                  "campaign_id": cid}),
            ),
            class: "unparseable",
            words: &["missing field"],
        },
        Poison {
            what: "orders: unknown event type",
            topic: orders.clone(),
            key: cid.clone(),
            payload: bytes(
                json!({"type": "refunded_twice", "schema_version": 1, "campaign_id": cid}),
            ),
            class: "unparseable",
            words: &["refunded_twice"],
        },
        Poison {
            what: "orders: readable but invalid (no user, no request, quantity 0)",
            topic: orders.clone(),
            key: cid.clone(),
            payload: forged,
            class: "permanent",
            words: &[],
        },
    ];
    let mut placed = Vec::new();
    for (i, p) in poison.iter().enumerate() {
        let trace = format!("00-{:032x}-{:016x}-01", i + 1, i + 1);
        let at = send_at(&producer, &p.topic, &p.key, &p.payload, Some(&trace)).await;
        placed.push((at, trace));
    }

    // Purchases after the poison are decided and stored.
    let (after, messages) = purchases(&cid, 5, |i| format!("after-{i}"));
    producer.send_all(&requests, &messages).await;
    let late_http = roles
        .api
        .purchase_decided(&cid, "after-http", "after-http-1", None)
        .await;
    assert_eq!(late_http.status, DecisionStatus::Reserved, "{late_http:?}");
    let mut sent = vec![good_before.clone(), late_http.request_id.clone()];
    sent.extend(after.iter().cloned());
    wait_all_decided(&checker, &sent, 120).await;
    let (report, log) = checker
        .settled(&cid, 1, &sent, Duration::from_secs(60))
        .await;
    assert_clean(&report);
    assert_eq!(report.stored_orders, sent.len(), "{:?}", tally(&log, &sent));
    assert_eq!(
        log.unparsed, 3,
        "the orders topic holds three unreadable messages"
    );

    // Each poison message is in its DLQ, once, with the right reason.
    let request_dlq = read_topic(&stack, &stack.topics.requests_dlq, 5, 30).await;
    let order_dlq = read_topic(&stack, &stack.topics.orders_dlq, 4, 30).await;
    let mut problems: Vec<String> = Vec::new();
    for (p, ((partition, offset), trace)) in poison.iter().zip(&placed) {
        let what = p.what;
        let dlq = if p.topic == orders {
            &order_dlq
        } else {
            &request_dlq
        };
        let hits: Vec<&OwnedMessage> = dlq
            .iter()
            .filter(|m| {
                let h = headers_of(m);
                h.get("seckill-original-partition") == Some(&partition.to_string())
                    && h.get("seckill-original-offset") == Some(&offset.to_string())
                    && h.get("seckill-original-topic") == Some(&p.topic)
            })
            .collect();
        if hits.len() != 1 {
            problems.push(format!("{what}: {} DLQ entries, want 1", hits.len()));
            continue;
        }
        let m = hits[0];
        let h = headers_of(m);
        eprintln!(
            "{what}: class {:?}, error {:?}",
            h.get("seckill-error-class"),
            h.get("seckill-error")
        );
        if m.payload() != Some(p.payload.as_slice()) || m.key() != Some(p.key.as_bytes()) {
            problems.push(format!("{what}: payload or key not kept"));
        }
        if h.get("seckill-error-class").map(String::as_str) != Some(p.class) {
            problems.push(format!(
                "{what}: class {:?}, want {:?}",
                h.get("seckill-error-class"),
                p.class
            ));
        }
        let error = h.get("seckill-error").cloned().unwrap_or_default();
        if error.trim().is_empty() || !p.words.iter().all(|w| error.contains(w)) {
            problems.push(format!(
                "{what}: reason {error:?} does not mention {:?}",
                p.words
            ));
        }
        if h.get("seckill-attempt").map(String::as_str) != Some("1") {
            problems.push(format!("{what}: attempt {:?}", h.get("seckill-attempt")));
        }
        if h.get("traceparent") != Some(trace) {
            problems.push(format!(
                "{what}: traceparent {:?}, want {trace:?}",
                h.get("traceparent")
            ));
        }
        for name in ["seckill-first-failure-at", "seckill-last-failure-at"] {
            if !h.get(name).is_some_and(|v| v.parse::<i64>().is_ok()) {
                problems.push(format!("{what}: {name} missing"));
            }
        }
    }
    let stray_requests = request_dlq.len() as i64 - 5;
    let stray_orders = order_dlq.len() as i64 - 4;
    if stray_requests > 0 || stray_orders > 0 {
        problems.push(format!(
            "more than the poison in the DLQs: {} in the requests DLQ, {} in the orders DLQ",
            request_dlq.len(),
            order_dlq.len()
        ));
    }
    let forged_stored = checker.orders(&forged_campaign).await;
    if !forged_stored.is_empty() {
        problems.push(format!(
            "the sink stored an invalid order event: {forged_stored:?}"
        ));
    }
    if checker
        .orders(&cid)
        .await
        .iter()
        .any(|o| o.order_id == "o-1")
    {
        problems.push("an unreadable order event was stored".to_owned());
    }

    // The ops view tells the classes apart.
    let list = last_json(
        &stack
            .seckill_output(&["dlq", "--source", "requests", "list", "--json"], &[], 60)
            .await,
    );
    eprintln!("requests DLQ: {list}");
    let count = |class: &str| -> u64 {
        list["by_error_class"][class]
            .as_object()
            .map(|a| a.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0)
    };
    if (
        list["messages"].as_u64(),
        count("unparseable"),
        count("permanent"),
    ) != (Some(5), 3, 2)
    {
        problems.push(format!("dlq --source requests list: {list}"));
    }
    roles.process.assert_alive();
    roles.sink.assert_alive();
    roles.ingest.assert_alive();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
