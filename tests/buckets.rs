//! Stock buckets (hot items): a campaign's stock split across B buckets on
//! their own keys and partitions, users routed by FNV-1a(user) % B, a
//! drained bucket borrowing from its siblings through signed commands on
//! the requests topic.
//!
//! | guarantee | test |
//! | --- | --- |
//! | every unit sells although the demand reaches two buckets of four (borrowing), limits exact, invariants per bucket | `four_buckets_skewed_demand_sells_every_unit_by_borrowing` |
//! | buckets chosen from the expected rate, the configured rate per bucket, the partitions and the stock | `buckets_are_chosen_from_expected_rate_stock_and_partitions` |
//! | a campaign of one bucket keeps its keys and its Kafka key | `one_bucket_keeps_the_campaign_keys_and_kafka_key` |
//! | a purchase an upstream service keys by the bare campaign id is forwarded to its bucket and decided once | `upstream_purchases_keyed_by_the_campaign_id_are_decided_once_in_their_bucket` |
//! | a forged or re-keyed borrow/transfer changes nothing (DLQ, unauthenticated) | `forged_or_rekeyed_borrow_and_transfer_commands_change_nothing` |
//! | pay, cancel and expiry reach the bucket that holds the order | `pay_cancel_and_expiry_reach_the_bucket_that_holds_the_order` |
//! | a processor SIGKILLed twice while buckets borrow: nothing lost, nothing doubled, nothing in transit | `processor_sigkilled_while_buckets_borrow_nothing_lost_or_doubled` |
//!
//! Every test runs the real `seckill` binary on a private redis-server and
//! tansu broker (see tests/common), with 8 partitions on the requests
//! topic.
//!
//! Run: `cargo test -p seckill-cli --test buckets -- --test-threads=1`.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use futures::{stream, StreamExt};
use rdkafka::message::Message;
use serde_json::json;

use common::sale::{campaign_body, create, order_command, stock_of};
use common::{
    assert_clean, check_campaign, headers_of, new_request_id, purchase_json, read_decisions,
    read_topic, tally, token, within, Api, Checker, Stack,
};
use seckill_schemas::{
    bucket_key, bucket_of, CampaignAction, CampaignCommand, CampaignState, CampaignView, Decision,
    DecisionStatus, RequestEvent, StockView,
};

const PARTITIONS: &str = "8";

async fn start(stack: &Stack, extra: &[(&str, &str)]) -> common::Seckill {
    let mut env = vec![("SECKILL_PARTITIONS", PARTITIONS)];
    env.extend_from_slice(extra);
    stack.seckill(&["all"], &env).await
}

/// `n` user ids whose purchases belong to one of `buckets` of `count`.
fn users_in(prefix: &str, count: u32, buckets: &[u32], n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|u| buckets.contains(&bucket_of(u, count)))
        .take(n)
        .collect()
}

/// Units each user holds in each bucket's Redis `users` hash.
async fn holdings(stack: &Stack, cid: &str, count: u32) -> Vec<HashMap<String, i64>> {
    let mut con = stack.redis_con().await;
    let mut out = Vec::new();
    for b in 0..count {
        let h: HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(stack.keys.bucket(cid, b).users)
            .query_async(&mut con)
            .await
            .expect("HGETALL users");
        out.push(h);
    }
    out
}

fn empty() -> StockView {
    StockView::default()
}

/// Waits until the campaign view's stock is `want`.
async fn settled_view(api: &Api, cid: &str, want: (u64, u64, u64, u64)) -> CampaignView {
    common::eventually(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let v = api.campaign(cid).await?;
            if stock_of(&v) == want {
                Ok(v)
            } else {
                Err(format!("{:?} / {:?}", v.stock, v.bucket_stock))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{cid}: stock never reached {want:?}: {e}"))
}

// ---------------------------------------------------------------------------
// Borrowing

/// Four buckets of 10 units; every buyer's purchases belong to bucket 0 or
/// 1. Ten users (six of bucket 0) buy three times each (limit 2), one
/// after another, then 50 more race for what is left: all 40 units are
/// sold, exactly 2 to each of
/// the ten, so buckets 2 and 3 lent everything they had; exactly 30 of the
/// racers are sold out; the view adds the buckets up; the checker is clean
/// bucket by bucket with nothing in transit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_buckets_skewed_demand_sells_every_unit_by_borrowing() {
    let stack = Stack::start().await;
    let all = start(&stack, &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let cid = format!("hot-{}", token(6));
    let view = create(
        &api,
        &campaign_body(&cid, 40, json!({"buckets": 4, "per_user_limit": 2})),
        CampaignState::Active,
    )
    .await;
    assert_eq!(view.buckets, 4);
    assert_eq!(view.definition.buckets, Some(4));
    let shares: Vec<u64> = view.bucket_stock.iter().map(|b| b.available).collect();
    assert_eq!(shares, [10, 10, 10, 10]);

    // Six repeaters in bucket 0 want 12 units of its 10: it borrows even
    // before the race.
    let zero = users_in(&format!("{cid}-z"), 4, &[0], 31);
    let one = users_in(&format!("{cid}-o"), 4, &[1], 29);
    let repeaters: Vec<String> = zero[..6].iter().chain(&one[..4]).cloned().collect();
    let racers: Vec<String> = zero[6..].iter().chain(&one[4..]).cloned().collect();
    let repeaters = &repeaters[..];
    let mut results: Vec<Decision> = Vec::new();
    let started = std::time::Instant::now();
    for u in repeaters {
        let mut mine = Vec::new();
        for n in 0..3 {
            mine.push(
                api.purchase_decided(&cid, u, &format!("{u}-{n}"), None)
                    .await,
            );
        }
        let s: Vec<DecisionStatus> = mine.iter().map(|d| d.status).collect();
        assert_eq!(
            s,
            [
                DecisionStatus::Reserved,
                DecisionStatus::Reserved,
                DecisionStatus::LimitExceeded
            ],
            "{u}: {mine:?}"
        );
        results.extend(mine);
    }
    eprintln!("30 purchases one after another: {:?}", started.elapsed());
    let started = std::time::Instant::now();
    let raced: Vec<Decision> = within(
        300,
        "50 racing purchases",
        stream::iter(racers.iter().cloned())
            .map(|u| {
                let api = api.clone();
                let cid = cid.clone();
                async move {
                    api.purchase_decided(&cid, &u, &format!("{u}-race"), None)
                        .await
                }
            })
            .buffer_unordered(25)
            .collect(),
    )
    .await;
    eprintln!("50 racing purchases: {:?}", started.elapsed());
    let counts = tally(raced.iter());
    assert_eq!(counts.get("reserved"), Some(&20), "{counts:?}");
    assert_eq!(counts.get("sold_out"), Some(&30), "{counts:?}");
    results.extend(raced);

    let view = settled_view(&api, &cid, (40, 0, 40, 0)).await;
    assert_eq!(view.buckets, 4);
    assert_eq!(view.bucket_stock.len(), 4, "{view:?}");
    // Nobody buys in buckets 2 and 3: they lent every unit they had.
    assert_eq!(view.bucket_stock[2], empty(), "{:?}", view.bucket_stock);
    assert_eq!(view.bucket_stock[3], empty(), "{:?}", view.bucket_stock);
    let sum = view.bucket_stock.iter().map(|b| b.total).sum::<u64>();
    assert_eq!(sum, 40);
    // Each user's units sit in its own bucket only.
    for (b, h) in holdings(&stack, &cid, 4).await.iter().enumerate() {
        for (u, n) in h {
            assert_eq!(bucket_of(u, 4) as usize, b, "{u} holds {n} in bucket {b}");
        }
    }
    let orders = api.wait_orders(&cid, 40, Duration::from_secs(60)).await;
    assert_eq!(orders.len(), 40);
    // The stats and a buyer's participation read every bucket's records.
    let stats = common::sale::stats(&api, &cid).await;
    assert_eq!(stats["decisions"]["reserved"], 40, "{stats}");
    // Most sold-out answers came from ingest's fast path, once every
    // bucket showed nothing left: those never reach a bucket.
    assert_eq!(stats["decisions"]["limit_exceeded"], 10, "{stats}");
    assert_eq!(stats["users_holding"], 30, "{stats}");
    let in_bucket_1 = repeaters
        .iter()
        .find(|u| bucket_of(u, 4) == 1)
        .expect("a repeater in bucket 1");
    let p = common::sale::participation(&api, &cid, in_bucket_1).await;
    assert_eq!(p["units"], 2, "{p}");

    // 40 reservations and 10 refusals at least are on the log (sold-out
    // answers of the fast path are not).
    let log = read_decisions(
        &stack.kafka(),
        &stack.topics.orders,
        50,
        Duration::from_secs(60),
    )
    .await;
    let expected: HashMap<String, Option<Decision>> = results
        .into_iter()
        .map(|d| (d.request_id.clone(), Some(d)))
        .collect();
    let report = check_campaign(&stack, &api, &log, &cid, &expected, Duration::from_secs(60)).await;
    assert_clean(&report);
    // Units did move between buckets, through the log.
    let mut checker = Checker::new(&stack).await;
    let orders_log = checker.log().await;
    // Buckets 2 and 3 lent 20 (their totals are 0); bucket 1 may have
    // lent to bucket 0 before its own buyers drained it.
    let lent = orders_log.lent.get(&cid).copied().unwrap_or(0);
    assert!(lent >= 20, "{lent} units lent");
    assert_eq!(orders_log.received.get(&cid).copied(), Some(lent));
    let (r, _) = checker.settled(&cid, 2, &[], Duration::from_secs(30)).await;
    assert_clean(&r);
    drop(all);
}

// ---------------------------------------------------------------------------
// Choosing buckets

/// With 1,000 decisions/s per bucket, 10 units at least per bucket and 8
/// partitions: 3,500 expected purchases/s on 1,000 units give 4 buckets;
/// on 25 units, 2; no expected rate, 1 (the definition says nothing);
/// 100,000/s, the 8 partitions. The same body again is the same campaign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_are_chosen_from_expected_rate_stock_and_partitions() {
    let stack = Stack::start().await;
    let all = start(
        &stack,
        &[
            ("SECKILL_BUCKET_RATE_PER_SEC", "1000"),
            ("SECKILL_BUCKET_MIN_UNITS", "10"),
        ],
    )
    .await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let t = token(6);
    let cases = [
        (format!("rate-{t}"), 1000, Some(3500), 4),
        (format!("small-{t}"), 25, Some(3500), 2),
        (format!("plain-{t}"), 1000, None, 1),
        (format!("huge-{t}"), 1000, Some(100_000), 8),
    ];
    for (cid, stock, rate, want) in &cases {
        let extra = match rate {
            Some(r) => json!({ "expected_requests_per_sec": r }),
            None => json!({}),
        };
        let body = campaign_body(cid, *stock, extra);
        let view = create(&api, &body, CampaignState::Active).await;
        assert_eq!(view.buckets, *want, "{cid}: {view:?}");
        assert_eq!(
            view.definition.buckets,
            (*want > 1).then_some(*want),
            "{cid}"
        );
        assert_eq!(view.stock.total, *stock);
        if *want > 1 {
            let shares: Vec<u64> = view.bucket_stock.iter().map(|b| b.total).collect();
            assert_eq!(
                shares,
                seckill_schemas::buckets::shares(*stock, *want),
                "{cid}"
            );
        } else {
            assert!(view.bucket_stock.is_empty(), "{cid}: {view:?}");
        }
        let again = api.post_campaign(&body).await;
        assert_eq!(again.status, 200, "{cid}: {}", again.body);
    }
    // Explicit buckets win; a lottery may not have several.
    let bad = api
        .post_campaign(&campaign_body(
            &format!("lot-{t}"),
            10,
            json!({"kind": "lottery", "buckets": 2, "win_rate": 0.5}),
        ))
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.to_string().contains("buckets"), "{}", bad.body);
    drop(all);
}

// ---------------------------------------------------------------------------
// One bucket

/// A campaign without buckets writes only `{c:<id>}` keys and its requests
/// travel under the campaign id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bucket_keeps_the_campaign_keys_and_kafka_key() {
    let stack = Stack::start().await;
    let all = start(&stack, &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let cid = format!("cool-{}", token(6));
    let view = create(
        &api,
        &campaign_body(&cid, 1, json!({})),
        CampaignState::Active,
    )
    .await;
    assert_eq!((view.buckets, view.definition.buckets), (1, None));
    assert!(view.bucket_stock.is_empty());
    let a = api.purchase_decided(&cid, "ann", "ann-1", None).await;
    let b = api.purchase_decided(&cid, "ben", "ben-1", None).await;
    assert_eq!(
        (a.status, b.status),
        (DecisionStatus::Reserved, DecisionStatus::SoldOut)
    );
    let mut con = stack.redis_con().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*{cid}*", stack.key_prefix))
        .query_async(&mut con)
        .await
        .expect("KEYS");
    assert!(!keys.is_empty());
    for k in &keys {
        assert!(
            !k.contains('#'),
            "a bucket key for a one-bucket campaign: {k}"
        );
    }
    assert!(keys.contains(&stack.keys.campaign(&cid).stock), "{keys:?}");
    let requests = read_topic(&stack, &stack.topics.requests, 3, Duration::from_secs(30)).await;
    for m in requests {
        assert_eq!(m.key(), Some(cid.as_bytes()));
    }
    drop(all);
}

// ---------------------------------------------------------------------------
// Upstream producers

/// 24 purchases produced straight to the topic under the bare campaign id
/// (as an upstream service that ignores buckets would), each twice: each
/// is decided once, in its user's bucket (forwarded there, with the
/// forwarded-from header), and the invariants hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_purchases_keyed_by_the_campaign_id_are_decided_once_in_their_bucket() {
    let stack = Stack::start().await;
    let all = start(&stack, &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let cid = format!("up-{}", token(6));
    create(
        &api,
        &campaign_body(&cid, 40, json!({"buckets": 4})),
        CampaignState::Active,
    )
    .await;
    let users: Vec<String> = (0..24).map(|i| format!("{cid}-buyer-{i}")).collect();
    let spread: HashSet<u32> = users.iter().map(|u| bucket_of(u, 4)).collect();
    assert!(spread.len() >= 3, "users spread over buckets {spread:?}");
    let ids: Vec<String> = users.iter().map(|_| new_request_id()).collect();
    let messages: Vec<(String, Vec<u8>)> = ids
        .iter()
        .zip(&users)
        .map(|(rid, u)| (cid.clone(), purchase_json(rid, &cid, u, 1)))
        .collect();
    let producer = stack.producer();
    producer.send_all(&stack.topics.requests, &messages).await;
    producer.send_all(&stack.topics.requests, &messages).await;

    let log = read_decisions(
        &stack.kafka(),
        &stack.topics.orders,
        24,
        Duration::from_secs(120),
    )
    .await;
    for rid in &ids {
        let d = log.first(rid).unwrap_or_else(|| panic!("{rid} undecided"));
        assert_eq!(d.status, DecisionStatus::Reserved, "{d:?}");
    }
    let held = holdings(&stack, &cid, 4).await;
    for u in &users {
        let own = bucket_of(u, 4) as usize;
        for (b, h) in held.iter().enumerate() {
            let want = if b == own { Some(&1) } else { None };
            assert_eq!(h.get(u), want, "{u} (bucket {own}) in bucket {b}");
        }
    }
    // The purchases of buckets 1-3 were forwarded under their bucket's key.
    let requests = read_topic(&stack, &stack.topics.requests, 48, Duration::from_secs(30)).await;
    let forwarded: BTreeMap<String, usize> = requests
        .iter()
        .filter(|m| headers_of(m).contains_key(seckill_kafka::headers::FORWARDED_FROM))
        .fold(BTreeMap::new(), |mut acc, m| {
            let k = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            *acc.entry(k).or_default() += 1;
            acc
        });
    let outside: usize = users.iter().filter(|u| bucket_of(u, 4) != 0).count();
    assert_eq!(
        forwarded.values().sum::<usize>(),
        2 * outside,
        "{forwarded:?}"
    );
    assert!(
        forwarded.keys().all(|k| k.starts_with(&format!("{cid}#"))),
        "{forwarded:?}"
    );
    let expected: HashMap<String, Option<Decision>> =
        ids.iter().map(|r| (r.clone(), None)).collect();
    let report = check_campaign(&stack, &api, &log, &cid, &expected, Duration::from_secs(60)).await;
    assert_clean(&report);
    drop(all);
}

// ---------------------------------------------------------------------------
// Forged commands

/// A transfer without an authenticator, one signed with another key, a
/// correctly signed transfer for bucket 1 produced under bucket 0's key,
/// and an unsigned borrow: all dead-lettered as unauthenticated, and no
/// bucket's stock moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_rekeyed_borrow_and_transfer_commands_change_nothing() {
    let stack = Stack::start().await;
    let all = start(&stack, &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let cid = format!("forge-{}", token(6));
    create(
        &api,
        &campaign_body(&cid, 10, json!({"buckets": 2})),
        CampaignState::Active,
    )
    .await;
    let key = std::fs::read(stack.command_key_path()).expect("command key");
    let command = |rid: &str, action: CampaignAction| {
        RequestEvent::CampaignCommand(CampaignCommand {
            schema_version: 1,
            request_id: rid.to_owned(),
            campaign_id: cid.clone(),
            action,
            requested_at_ms: None,
            auth: None,
        })
    };
    let gift = |rid: &str| {
        command(
            rid,
            CampaignAction::Transfer {
                from: 1,
                units: 1000,
                round: 1,
                ask: 1,
            },
        )
    };
    let unsigned = gift("gift-unsigned");
    let mut other_key = gift("gift-other-key");
    other_key.sign_for_bucket(b"not-the-command-key-at-all", 1);
    let mut rekeyed = gift("gift-rekeyed");
    rekeyed.sign_for_bucket(key.trim_ascii(), 1);
    let borrow = command(
        "grab",
        CampaignAction::Borrow {
            from: 0,
            want: 5,
            round: 1,
            ask: 1,
        },
    );
    let producer = stack.producer();
    let sends = [
        (&unsigned, bucket_key(&cid, 1)),
        (&other_key, bucket_key(&cid, 1)),
        // Signed for bucket 1, produced under bucket 0's key.
        (&rekeyed, cid.clone()),
        (&borrow, bucket_key(&cid, 1)),
    ];
    for (e, k) in &sends {
        let payload = serde_json::to_vec(e).expect("json");
        producer
            .send(&stack.topics.requests, Some(k), &payload)
            .await;
    }
    let dlq = read_topic(
        &stack,
        &stack.topics.requests_dlq,
        4,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(dlq.len(), 4, "{} dead letters", dlq.len());
    for m in &dlq {
        let h = headers_of(m);
        assert_eq!(
            h.get(seckill_kafka::headers::ERROR_CLASS)
                .map(String::as_str),
            Some("unauthenticated"),
            "{h:?}"
        );
    }
    let view = api.campaign(&cid).await.expect("view");
    assert_eq!(stock_of(&view), (10, 10, 0, 0));
    let shares: Vec<u64> = view.bucket_stock.iter().map(|b| b.total).collect();
    assert_eq!(shares, [5, 5]);
    let d = api.purchase_decided(&cid, "still-open", "s1", None).await;
    assert_eq!(d.status, DecisionStatus::Reserved);
    let orders = read_topic(&stack, &stack.topics.orders, 3, Duration::from_secs(10)).await;
    for m in orders {
        let text = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
        assert!(
            !text.contains("\"transfer\""),
            "a transfer was applied: {text}"
        );
        assert!(!text.contains("\"borrow\""), "a borrow was applied: {text}");
    }
    drop(all);
}

// ---------------------------------------------------------------------------
// Orders

/// Twelve buyers over three buckets, two-second payment deadline: three
/// pay, three cancel, the rest expire; every order's command reaches its
/// bucket, every bucket is swept, and the stock comes back exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_cancel_and_expiry_reach_the_bucket_that_holds_the_order() {
    let stack = Stack::start().await;
    let all = start(&stack, &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let cid = format!("ord-{}", token(6));
    create(
        &api,
        &campaign_body(&cid, 30, json!({"buckets": 3, "payment_timeout_secs": 3})),
        CampaignState::Active,
    )
    .await;
    let mut users = Vec::new();
    for b in 0..3u32 {
        users.extend(users_in(&format!("{cid}-b{b}"), 3, &[b], 4));
    }
    let mut decided = Vec::new();
    for u in &users {
        let d = api.purchase_decided(&cid, u, &format!("{u}-1"), None).await;
        assert_eq!(d.status, DecisionStatus::Reserved, "{d:?}");
        decided.push(d);
    }
    // Pay the first of each bucket, cancel the second.
    for b in 0..3usize {
        let payer = &decided[b * 4];
        let order = payer.order_id.as_deref().expect("order");
        let paid = order_command(&api, order, &payer.user_id, "pay", None).await;
        assert!(paid.is_ok("paid"), "bucket {b}: {}", paid.describe());
        let canceller = &decided[b * 4 + 1];
        let order = canceller.order_id.as_deref().expect("order");
        let cancelled = order_command(&api, order, &canceller.user_id, "cancel", None).await;
        assert!(
            cancelled.is_ok("cancelled"),
            "bucket {b}: {}",
            cancelled.describe()
        );
    }
    // The other six expire, in every bucket.
    let view = settled_view(&api, &cid, (30, 27, 0, 3)).await;
    let per_bucket: Vec<(u64, u64)> = view
        .bucket_stock
        .iter()
        .map(|s| (s.available, s.paid))
        .collect();
    assert_eq!(per_bucket, [(9, 1), (9, 1), (9, 1)]);
    let log = read_decisions(
        &stack.kafka(),
        &stack.topics.orders,
        12,
        Duration::from_secs(60),
    )
    .await;
    let expected: HashMap<String, Option<Decision>> = decided
        .into_iter()
        .map(|d| (d.request_id.clone(), Some(d)))
        .collect();
    let report = check_campaign(&stack, &api, &log, &cid, &expected, Duration::from_secs(60)).await;
    assert_clean(&report);
    drop(all);
}

// ---------------------------------------------------------------------------
// Crash safety

/// Requests bucket `b` of `cid` has recorded (decided or parked), and the
/// commands between buckets it decided.
async fn recorded(stack: &Stack, cid: &str, buckets: u32) -> usize {
    let mut con = stack.redis_con().await;
    let mut n = 0;
    for b in 0..buckets {
        let len: usize = redis::cmd("HLEN")
            .arg(stack.keys.bucket(cid, b).requests)
            .query_async(&mut con)
            .await
            .unwrap_or(0);
        n += len;
    }
    n
}

/// A four-bucket sale of 200 units to 1,200 buyers of buckets 0 and 1,
/// produced straight to the topic as a stream (half keyed by the bare
/// campaign id, half by their bucket's key) while the processor (batches
/// of at most 50) is SIGKILLed twice mid-sale and restarted: every request
/// is decided, all 200 units are sold (buckets 2 and 3 lent all theirs),
/// and the checker finds every bucket conserved with nothing in transit,
/// no oversell, no request decided twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_sigkilled_while_buckets_borrow_nothing_lost_or_doubled() {
    const STOCK: u64 = 200;
    let stack = Stack::start().await;
    let mut roles = common::start_roles(
        &stack,
        &[("SECKILL_PARTITIONS", PARTITIONS)],
        &[],
        &[("SECKILL_BATCH_MAX", "50")],
    )
    .await;
    let cid = format!("crash-{}", token(6));
    create(
        &roles.api,
        &campaign_body(&cid, STOCK, json!({"buckets": 4})),
        CampaignState::Active,
    )
    .await;
    let users = users_in(&format!("{cid}-u"), 4, &[0, 1], 1200);
    let sent: Vec<String> = users.iter().map(|_| new_request_id()).collect();
    let messages: Vec<(String, Vec<u8>)> = sent
        .iter()
        .zip(&users)
        .enumerate()
        .map(|(i, (rid, u))| {
            let key = if i % 2 == 0 {
                cid.clone()
            } else {
                bucket_key(&cid, bucket_of(u, 4))
            };
            (key, purchase_json(rid, &cid, u, 1))
        })
        .collect();
    let producer = stack.producer();
    let topic = stack.topics.requests.clone();
    let stream = tokio::spawn(async move {
        for c in messages.chunks(100) {
            producer.send_all(&topic, c).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    for (threshold, restart_after_ms) in [(150, 3500), (600, 500)] {
        common::wait_for(240, "the processor to decide", || async {
            (recorded(&stack, &cid, 4).await >= threshold).then_some(())
        })
        .await;
        roles.process.kill9();
        eprintln!(
            "processor killed with {} records (stream finished: {})",
            recorded(&stack, &cid, 4).await,
            stream.is_finished()
        );
        tokio::time::sleep(Duration::from_millis(restart_after_ms)).await;
        roles.process.restart().await;
    }
    within(300, "produce the sale", stream)
        .await
        .expect("producer task");

    let mut checker = Checker::new(&stack).await;
    let log = common::wait_all_decided(&checker, &sent, 300).await;
    drop(log);
    let (report, log) = checker
        .settled(&cid, 1, &sent, Duration::from_secs(180))
        .await;
    eprintln!(
        "decisions {:?}; lent {:?}, received {:?}",
        tally(common::first_decisions(&log, &sent)),
        log.lent.get(&cid),
        log.received.get(&cid)
    );
    let broken = seckill_cli::check::crash_safety(std::slice::from_ref(&report));
    assert!(broken.is_empty(), "{broken:?}");
    assert_eq!(
        common::reserved_of(&log, &sent) as u64,
        STOCK,
        "the whole stock is sold"
    );
    let view = settled_view(&roles.api, &cid, (STOCK, 0, STOCK, 0)).await;
    assert_eq!(view.bucket_stock[2], empty(), "{:?}", view.bucket_stock);
    assert_eq!(view.bucket_stock[3], empty(), "{:?}", view.bucket_stock);
}
