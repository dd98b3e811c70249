//! Recovery: processes killed with SIGKILL, a Redis that crashes or loses
//! its data, an order store that is down. Real `seckill` processes on a
//! real redis-server and tansu broker, broken on purpose, and every test
//! checked by the shared invariant checker (`seckill_cli::check`, the code
//! `seckill bench` reports with; see tests/common/checker.rs): nothing
//! oversold, nothing doubled, nothing lost, no stock returned twice.
//!
//! | guarantee | test |
//! | --- | --- |
//! | a sink SIGKILLed mid-batch loses and doubles nothing | `sink_sigkilled_mid_batch_and_restarted_nothing_lost_nothing_doubled` |
//! | a member resuming inside a producer's record batch reads the rest of it (tansu's memory engine answers from the next batch) | `a_member_resuming_inside_a_record_batch_reads_the_rest_of_the_batch` |
//! | a processor SIGKILLed mid-batch (three times, once restarted in tansu's rejoin window) decides every request once, no oversell | `processor_sigkilled_three_times_mid_stream_and_restarted_no_oversell_no_duplicate_every_request_decided` |
//! | a store outage is outlasted by the retry tiers; nothing reaches the DLQ | `store_unavailable_20s_during_sale_events_flow_through_retry_tiers_and_land_nothing_in_dlq` |
//! | Redis with AOF, SIGKILLed mid-sale, comes back with every decision | `redis_restarted_mid_sale_with_aof_sale_continues_and_invariants_hold` |
//! | Redis wiped mid-sale: `reconcile --repair` restores it from the store plus the log | `redis_wiped_mid_sale_reconcile_repair_restores_counters_and_rest_of_sale_does_not_oversell`, `redis_wiped_while_store_lags_repair_counts_unstored_orders_and_sale_does_not_oversell` |
//!
//! Run: `cargo test -p seckill-cli --test recovery -- --test-threads=1`.
//! Needs `redis-server` and `tansu` (see tests/common/mod.rs).

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde_json::{json, Value};

use common::{
    assert_clean, check_campaign, fault_file, first_decisions, header_counts, headers_of,
    last_json, purchases, read_decisions, read_topic, reserved_of, start_roles, tally, token,
    wait_all_decided, wait_for, within, CampaignArgs, Checker, Producer, Roles, Stack,
};
use seckill_schemas::{Decision, DecisionStatus, KeyLayout};

// ---------------------------------------------------------------------------
// Helpers of this suite

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

/// Requests the campaign's Redis state has decided (its request hash, which
/// also holds the campaign's create command).
async fn decided_in_redis(con: &mut ConnectionManager, keys: &KeyLayout, cid: &str) -> usize {
    redis::cmd("HLEN")
        .arg(keys.campaign(cid).requests)
        .query_async(con)
        .await
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// SIGKILLed roles

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
            // (seckill_kafka watchdog).
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
        tally(first_decisions(&log, &sent)),
        log.messages
    );
    // Guarantee 5: after the kills, 1-4 hold.
    eprintln!("{report}");
    let broken = seckill_cli::check::crash_safety(std::slice::from_ref(&report));
    assert!(broken.is_empty(), "{broken:?}");
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

/// A group member resumes a partition at its committed offset even when
/// that offset falls inside a record batch (a processor or a sink stores
/// offsets at its own batch boundaries, never at a producer's). tansu 0.6's
/// memory engine answers a fetch with the first record batch that *starts*
/// at or after the offset asked for, so without `seckill_kafka`'s resume
/// guard a member silently skipped the rest of the batch: after a SIGKILL,
/// accepted requests were never decided (the flake of
/// `buckets::processor_sigkilled_while_buckets_borrow_nothing_lost_or_doubled`).
/// Deterministic: partition 0 holds a batch of 20 records and a later one
/// of 5, partition 1 only a batch of 20; offset 7 is committed on both; a
/// new member reads 7..=24 and 7..=19, nothing before 7, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_resuming_inside_a_record_batch_reads_the_rest_of_the_batch() {
    use rdkafka::consumer::{CommitMode, Consumer};
    use rdkafka::message::Message;
    use rdkafka::producer::FutureRecord;
    use rdkafka::{Offset, TopicPartitionList};

    let stack = Stack::start().await;
    let settings = stack.kafka();
    let topic = format!("{}.resume", stack.topic_prefix);
    let created = settings
        .admin()
        .expect("admin client")
        .create_topics(
            &[rdkafka::admin::NewTopic::new(
                &topic,
                2,
                rdkafka::admin::TopicReplication::Fixed(1),
            )],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .expect("create topic");
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    let producer = stack.producer();
    // Each call's records are queued at once: one record batch.
    let batch = |partition: i32, n: usize| {
        let (producer, topic) = (&producer.inner, &topic);
        async move {
            let payloads: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
            let sends: Vec<_> = payloads
                .iter()
                .map(|payload| {
                    producer.send(
                        FutureRecord::<str, str>::to(topic)
                            .partition(partition)
                            .key("k")
                            .payload(payload),
                        Duration::from_secs(30),
                    )
                })
                .collect();
            for r in futures::future::join_all(sends).await {
                r.expect("produce");
            }
        }
    };
    batch(0, 20).await;
    batch(0, 5).await;
    batch(1, 20).await;

    let group = format!("{}.resume-group", stack.topic_prefix);
    let committer = settings.reader(&group).expect("committer");
    let mut tpl = TopicPartitionList::new();
    for p in [0, 1] {
        tpl.add_partition_offset(&topic, p, Offset::Offset(7))
            .expect("offset");
    }
    committer
        .commit(&tpl, CommitMode::Sync)
        .expect("commit offset 7");
    drop(committer);

    let cancel = tokio_util::sync::CancellationToken::new();
    let member = settings
        .group_member(&group, &topic, &cancel)
        .expect("group member");
    let mut read: [Vec<i64>; 2] = [Vec::new(), Vec::new()];
    let deadline = Instant::now() + Duration::from_secs(40);
    while read[0].len() + read[1].len() < 18 + 13 && Instant::now() < deadline {
        let wait = tokio::time::timeout(
            Duration::from_secs(2),
            seckill_kafka::recv_batch(&member, 100, Duration::from_millis(200), &cancel),
        )
        .await;
        if let Ok(batch) = wait {
            for m in batch.expect("read the topic") {
                read[m.partition() as usize].push(m.offset());
            }
        }
    }
    cancel.cancel();
    assert_eq!(read[0], (7..25).collect::<Vec<i64>>(), "partition 0 from 7");
    assert_eq!(read[1], (7..20).collect::<Vec<i64>>(), "partition 1 from 7");
}

/// A sale of 5,000 requests (1,500 users, 2 units each at most) for 800
/// units, produced straight to Kafka as a steady stream; the processor
/// (batches of at most 200, so a kill lands inside one) is SIGKILLed three
/// times while it decides and restarted each time: the first time once
/// more than 1,000 requests are decided, restarted 3.5 s later (tansu 0.6's
/// rejoin window, see below), then at 45 % and 75 % of the sale, restarted
/// 0.5 s later. Every request decided (in Redis and on the orders topic),
/// reserved == min(stock, requests), no duplicate order, no request decided
/// two ways, no oversell; the counters, the store and both checkers agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_sigkilled_three_times_mid_stream_and_restarted_no_oversell_no_duplicate_every_request_decided(
) {
    const REQUESTS: usize = 5000;
    const USERS: usize = 1500;
    // Below 1,000: the HTTP-side checker lists the store 1,000 orders at most.
    const STOCK: u64 = 800;
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

    // Each kill once a share is decided (the campaign's request hash holds
    // one entry per decided request, plus the campaign command).
    let mut kills = Vec::new();
    for (threshold, restart_after_ms) in [
        (1001, 3500),
        (REQUESTS * 45 / 100, 500),
        (REQUESTS * 75 / 100, 500),
    ] {
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
        eprintln!(
            "processor killed with {at_kill} requests decided (stream finished: {})",
            stream.is_finished()
        );
        kills.push(at_kill);
        // Restarted a moment later, as an orchestrator would. The 3.5 s
        // delay lands the new member in a window in which tansu 0.6 expels
        // the dead leader between the newcomer's JoinGroup and SyncGroup
        // and then settles a generation that gives the newcomer nothing;
        // the processor must notice that and rejoin
        // (seckill_kafka watchdog).
        tokio::time::sleep(Duration::from_millis(restart_after_ms)).await;
        roles.process.restart().await;
    }
    within(300, "produce the sale", stream)
        .await
        .expect("producer task");
    assert!(
        kills.iter().all(|k| *k < REQUESTS),
        "every kill must land before the sale is decided (the test needs a longer stream): \
         {kills:?}"
    );

    // Every request decided (the campaign's request hash has them all).
    let mut con = con;
    let settled = common::eventually(Duration::from_secs(300), Duration::from_millis(250), || {
        let mut con = con.clone();
        let key = keys.campaign(&cid).requests;
        let sent = &sent;
        async move {
            let decided: HashSet<String> = con.hkeys(&key).await.map_err(|e| e.to_string())?;
            let missing = sent.iter().filter(|r| !decided.contains(*r)).count();
            if missing == 0 {
                Ok(())
            } else {
                Err(format!("{missing} of {REQUESTS} requests undecided"))
            }
        }
    })
    .await;
    if let Err(e) = settled {
        roles.process.assert_alive();
        panic!("not every request was decided after the restarts: {e}");
    }

    // The checker of `seckill_cli::check`, on the store, Redis and the log.
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
        tally(first_decisions(&log, &sent)),
        events - REQUESTS
    );
    // Guarantee 5: after the kills, 1-4 hold.
    eprintln!("{report}");
    let broken = seckill_cli::check::crash_safety(std::slice::from_ref(&report));
    assert!(broken.is_empty(), "{broken:?}");
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

    // The same, read over HTTP and with the HTTP-side checker. Decision
    // events of the last batches may still be on their way.
    let log = common::eventually(Duration::from_secs(120), Duration::from_secs(1), || async {
        let log = read_decisions(
            &stack.kafka(),
            &stack.topics.orders,
            REQUESTS,
            Duration::from_secs(120),
        )
        .await;
        if sent.iter().all(|r| log.first(r).is_some()) {
            Ok(log)
        } else {
            Err(log)
        }
    })
    .await
    .unwrap_or_else(|log| log);
    let undecided: Vec<&String> = sent.iter().filter(|r| log.first(r).is_none()).collect();
    assert!(
        undecided.is_empty(),
        "{} requests without a decision event, e.g. {:?}",
        undecided.len(),
        &undecided[..undecided.len().min(5)]
    );
    let reserved: HashSet<&str> = sent
        .iter()
        .filter(|r| log.first(r).map(|d| d.status) == Some(DecisionStatus::Reserved))
        .map(|r| r.as_str())
        .collect();
    assert_eq!(
        reserved.len() as u64,
        STOCK.min(REQUESTS as u64),
        "reserved requests"
    );
    let stock: HashMap<String, i64> = con
        .hgetall(&keys.campaign(&cid).stock)
        .await
        .expect("HGETALL");
    assert_eq!(stock.get("reserved"), Some(&(STOCK as i64)), "{stock:?}");
    assert_eq!(stock.get("available"), Some(&0), "{stock:?}");

    let api = &roles.api;
    let orders = api
        .wait_orders(&cid, STOCK as usize, Duration::from_secs(180))
        .await;
    let order_ids: HashSet<&str> = orders.iter().map(|o| o.order_id.as_str()).collect();
    assert_eq!(order_ids.len(), orders.len(), "duplicate order rows");
    let store_requests: HashSet<&str> = orders.iter().map(|o| o.request_id.as_str()).collect();
    assert_eq!(
        store_requests, reserved,
        "store orders == distinct reserved request ids"
    );

    let expected: HashMap<String, Option<Decision>> =
        sent.iter().map(|r| (r.clone(), None)).collect();
    let report = check_campaign(&stack, api, &log, &cid, &expected, Duration::from_secs(60)).await;
    assert_clean(&report);
    roles.process.assert_alive();
}

// ---------------------------------------------------------------------------
// The store down

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
    eprintln!("decisions {:?}", tally(first_decisions(&log, &sent)));
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
        let msgs = read_topic(&stack, &topic, 0, Duration::from_secs(20)).await;
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

    let dlq = read_topic(&stack, &stack.topics.orders_dlq, 0, Duration::from_secs(10)).await;
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
// Redis crashes; Redis loses its data

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
    eprintln!("decisions {:?}", tally(first_decisions(&log, &sent)));
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
        tally(first_decisions(&log, &phase2)),
        tally(first_decisions(&log, &again))
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
/// `reconcile --repair` must count those orders (the design: rebuilt "from
/// the store plus events not yet stored"), and the rest of the sale must not sell the
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
    eprintln!(
        "after the repair {:?}; {report}",
        tally(first_decisions(&log, &later))
    );
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

/// `reconcile --repair` while the sale goes on: a stray user holding in
/// Redis (a difference the repair must remove) and 1,500 buyers streaming
/// in for 500 units across the repair. The repair fences the campaign
/// through its partition: its processor settles what came before, holds
/// what comes after, and decides it once the repaired state is written.
/// Nothing decided during the repair may vanish from Redis (it would be
/// sold again: oversold), and every request is decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_during_a_live_sale_loses_no_decision_and_does_not_oversell() {
    const STOCK: u64 = 500;
    const BUYERS: usize = 1_500;

    let mut drill = WipeDrill::start("live-repair", STOCK).await;
    let cid = drill.cid.clone();
    let keys = KeyLayout::new(drill.stack.key_prefix.clone());
    let mut con = drill.checker.redis.clone();
    let _: () = con
        .hset(keys.campaign(&cid).users, "ghost", 1)
        .await
        .expect("HSET");

    let (sent, messages) = drill.purchases(BUYERS, |i| format!("buyer-{i:04}"));
    // About 300 requests/s for 5 s; the repair starts a second in.
    let stream = spawn_stream(
        drill.producer.clone(),
        drill.topic.clone(),
        messages,
        30,
        Duration::from_millis(100),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let repair = drill.reconcile(true).await;
    eprintln!(
        "reconcile --repair during the sale: {} difference(s), record {}",
        repair["discrepancies"], repair["record"]
    );
    assert_eq!(repair["repaired"], json!(true), "{repair}");
    assert!(
        repair["details"].as_array().is_some_and(|d| d
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains("ghost")))),
        "the stray holding was not among the differences: {repair}"
    );
    stream.await.expect("stream");

    wait_all_decided(&drill.checker, &sent, 180).await;
    let (report, log) = drill
        .checker
        .settled(&cid, 1, &sent, Duration::from_secs(120))
        .await;
    eprintln!("{:?}\n{report}", tally(first_decisions(&log, &sent)));
    let mut problems = Vec::new();
    if !report.is_clean() {
        problems.push(format!("invariants violated: {report}"));
    }
    let served = reserved_of(&log, &sent) as u64;
    if served != STOCK {
        problems.push(format!("{served} buyers served for {STOCK} units"));
    }
    let end = drill.checker.stock(&cid).await;
    if end != drill.counters_with(STOCK as usize) {
        problems.push(format!("counters at the end: {end:?}"));
    }
    let after = drill.reconcile(false).await;
    if after["discrepancies"] != json!(0) {
        problems.push(format!("reconcile after the sale: {}", after["details"]));
    }
    assert_no_problems(&problems);
    drill.roles.process.assert_alive();
}
