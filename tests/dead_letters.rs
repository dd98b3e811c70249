//! Dead letters: what cannot be applied goes to a dead-letter topic, once,
//! with headers that say why and where it came from, and the stream goes
//! on; `seckill dlq` lists, shows, exports and replays it. Real `seckill`
//! processes on a real redis-server and tansu broker, checked by the shared
//! invariant checker (see tests/common/checker.rs).
//!
//! | guarantee | test |
//! | --- | --- |
//! | poison on the requests and orders topics lands in its DLQ with class, reason and trace context; nothing invalid is stored; later purchases are decided and stored | `poison_messages_on_both_topics_land_in_their_dlqs_with_reasons_and_later_purchases_are_decided_and_stored` |
//! | a permanent store failure skips the retry tiers for the DLQ; replay makes the store whole, a second replay changes nothing | `permanent_store_failure_goes_to_dlq_then_replay_makes_store_whole_and_second_replay_changes_nothing` |
//!
//! The retry tiers under a passing outage are in recovery.rs
//! (`store_unavailable_20s_during_sale_events_flow_through_retry_tiers_and_land_nothing_in_dlq`).
//!
//! Run: `cargo test -p seckill-cli --test dead_letters -- --test-threads=1`.
//! Needs `redis-server` and `tansu` (see tests/common/mod.rs).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use serde_json::{json, Value};

use common::{
    assert_clean, check_campaign, fault_file, first_decisions, header_counts, headers_of,
    last_json, new_request_id, purchase_json, purchases, read_decisions, read_topic, reserved_of,
    start_roles, tally, token, wait_all_decided, wait_for, CampaignArgs, Checker, Producer, Stack,
};
use seckill_schemas::{Decision, DecisionStatus};

// ---------------------------------------------------------------------------
// Helpers of this suite

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

// ---------------------------------------------------------------------------
// Poison messages

/// Poison on both topics. On the requests topic: two messages that are
/// not JSON (text, and bytes that are not even text), JSON that is not a
/// request event (a required field missing, an unknown type), and request
/// events that are readable but invalid (quantity 0, a key that is not the
/// campaign). On the orders topic: a
/// message that is not JSON, JSON that is not an order event (required
/// fields missing, an unknown type), and an order event that is readable
/// but invalid (no user, no request, quantity 0, an order id not derived
/// from its request). Each lands in its DLQ once, keeping its key and
/// payload, with the error class and reason that fit it and its trace
/// context, and the DLQs hold nothing else; nothing invalid reaches the
/// store; purchases produced after the poison (straight to Kafka and over
/// HTTP, also once the DLQs are checked) are decided and stored, and both
/// checkers find the campaign clean.
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
    let missing_rid = json!({
        "type": "purchase_requested",
        "schema_version": 1,
        "campaign_id": cid,
        "user_id": "mallory",
        "quantity": 1,
    });
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
            what: "requests: not JSON (text)",
            topic: requests.clone(),
            key: cid.clone(),
            payload: b"this is {not JSON".to_vec(),
            class: "unparseable",
            words: &["JSON"],
        },
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
    for (i, rid) in after.iter().enumerate() {
        let d = roles.api.wait_decision(rid, Duration::from_secs(60)).await;
        assert_eq!(d.status, DecisionStatus::Reserved, "{d:?}");
        assert_eq!(d.user_id, format!("after-{i}"));
    }
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
    assert_eq!(
        report.stored_orders,
        sent.len(),
        "{:?}",
        tally(first_decisions(&log, &sent))
    );
    assert_eq!(
        log.unparsed, 3,
        "the orders topic holds three unreadable messages"
    );

    // Each poison message is in its DLQ, once, with the right reason.
    let request_dlq = read_topic(
        &stack,
        &stack.topics.requests_dlq,
        6,
        Duration::from_secs(60),
    )
    .await;
    let order_dlq = read_topic(&stack, &stack.topics.orders_dlq, 4, Duration::from_secs(30)).await;
    let mut problems: Vec<String> = Vec::new();
    // Guarantee 6 as the checker states it: each topic's poison is in its
    // DLQ, every DLQ entry says why and names its source topic.
    for (source, dlq_topic) in [
        (&requests, &stack.topics.requests_dlq),
        (&orders, &stack.topics.orders_dlq),
    ] {
        let dead = seckill_cli::check::read_dead_letters(&stack.kafka(), dlq_topic)
            .await
            .unwrap_or_else(|e| panic!("read {dlq_topic}: {e:#}"));
        let sent_bad: Vec<&[u8]> = poison
            .iter()
            .filter(|p| &p.topic == source)
            .map(|p| p.payload.as_slice())
            .collect();
        problems.extend(seckill_cli::check::bad_input(&dead, &sent_bad, source));
    }
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
    if request_dlq.len() != 6 || order_dlq.len() != 4 {
        problems.push(format!(
            "not just the poison in the DLQs: {} in the requests DLQ (want 6), {} in the \
             orders DLQ (want 4)",
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
    ) != (Some(6), 4, 2)
    {
        problems.push(format!("dlq --source requests list: {list}"));
    }

    // The stream goes on: a purchase over HTTP after all that is decided
    // too, and the HTTP-side checker finds the campaign clean.
    let late = roles
        .api
        .purchase_decided(&cid, "grace", "grace-1", None)
        .await;
    assert_eq!(late.status, DecisionStatus::Reserved, "{late:?}");
    let decisions = read_decisions(
        &stack.kafka(),
        &orders,
        sent.len() + 1,
        Duration::from_secs(60),
    )
    .await;
    let mut expected: HashMap<String, Option<Decision>> =
        after.iter().map(|rid| (rid.clone(), None)).collect();
    expected.insert(good_before.clone(), None);
    expected.insert(late_http.request_id.clone(), Some(late_http.clone()));
    expected.insert(late.request_id.clone(), Some(late));
    let http_report = check_campaign(
        &stack,
        &roles.api,
        &decisions,
        &cid,
        &expected,
        Duration::from_secs(30),
    )
    .await;
    assert_clean(&http_report);
    roles.process.assert_alive();
    roles.sink.assert_alive();
    roles.ingest.assert_alive();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------
// A permanent failure, the DLQ and replay

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
            let n = read_topic(stack, &stack.topics.orders, 1, Duration::from_secs(5))
                .await
                .len();
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
        tally(first_decisions(&log, &sent))
    );
    let orders_msgs = read_topic(
        &stack,
        &stack.topics.orders,
        before_fault + REQUESTS,
        Duration::from_secs(30),
    )
    .await;
    let events = orders_msgs.len() - before_fault;

    // Every event of the sale lands in the DLQ, with the reason.
    let dlq = wait_for(120, "the sale's events in the DLQ", || {
        let stack = &stack;
        async move {
            let m = read_topic(
                stack,
                &stack.topics.orders_dlq,
                events,
                Duration::from_secs(5),
            )
            .await;
            (m.len() >= events).then_some(m)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dlq_again = read_topic(
        &stack,
        &stack.topics.orders_dlq,
        events,
        Duration::from_secs(5),
    )
    .await;
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
        let n = read_topic(&stack, &topic, 0, Duration::from_secs(5))
            .await
            .len();
        assert_eq!(n, 0, "a permanent failure skips the retry tiers ({topic})");
    }

    // The checker sees the loss.
    let lost = checker.check(&cid, 1, &sent, &log).await.expect("check");
    eprintln!("while refused: {lost}");
    assert_eq!(lost.stored_orders, 0);
    assert_eq!(lost.orders_missing_from_store.len() as u64, STOCK, "{lost}");

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
    let replayed = read_topic(
        &stack,
        &stack.topics.orders,
        orders_msgs.len() + events,
        Duration::from_secs(30),
    )
    .await;
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
    let after = read_topic(
        &stack,
        &stack.topics.orders,
        replayed.len(),
        Duration::from_secs(30),
    )
    .await;
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
// Replay destinations

/// A message on the requests DLQ whose headers claim it came from the
/// orders log (anyone who may produce to the DLQ can write them): a forged
/// paid order. `dlq --source requests replay` sends it to the requests
/// topic, the only home of that DLQ, and the orders log never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlq_message_naming_another_topic_is_replayed_only_to_its_home_topic() {
    let stack = Stack::start().await;
    stack.seckill_run(&["topics", "create"], &[], 60).await;
    let producer = stack.producer();
    let forged = json!({
        "type": "order_paid", "schema_version": 1, "campaign_id": "c-forged",
        "order_id": "o-forged", "request_id": "r-forged", "user_id": "mallory",
        "quantity": 1, "price": 1, "decided_at_ms": 1
    })
    .to_string();
    let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&stack.topics.requests_dlq)
        .key("c-forged")
        .payload(forged.as_bytes())
        .headers(
            OwnedHeaders::new()
                .insert(Header {
                    key: "seckill-original-topic",
                    value: Some(stack.topics.orders.as_str()),
                })
                .insert(Header {
                    key: "seckill-error-class",
                    value: Some("permanent"),
                }),
        );
    producer
        .inner
        .send(record, Duration::from_secs(60))
        .await
        .unwrap_or_else(|(e, _)| panic!("produce to the requests DLQ: {e}"));

    let replay = last_json(
        &stack
            .seckill_output(&["dlq", "--source", "requests", "replay"], &[], 120)
            .await,
    );
    eprintln!("replay: {replay}");
    assert_eq!(replay["replayed"], json!(1), "{replay}");
    let requests = read_topic(&stack, &stack.topics.requests, 1, Duration::from_secs(30)).await;
    assert_eq!(
        requests.len(),
        1,
        "the replay did not reach the requests topic"
    );
    assert_eq!(requests[0].payload(), Some(forged.as_bytes()));
    let orders = read_topic(&stack, &stack.topics.orders, 0, Duration::from_secs(5)).await;
    assert!(
        orders.is_empty(),
        "a requests-DLQ message reached the orders log: {:?}",
        orders.iter().map(|m| m.offset()).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------
// Authenticated commands

/// Anyone who can produce to the requests topic can buy, and nothing more:
/// a close without an authenticator, a reset with a forged one and a create
/// signed with another key change nothing and land in the requests DLQ as
/// `unauthenticated`; a correctly signed reset is refused too, because the
/// processors do not enable resets. The campaign keeps selling and its
/// orders stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_commands_on_the_topic_change_nothing_and_land_in_the_dlq_as_unauthenticated() {
    use seckill_schemas::{CampaignAction, CampaignCommand, RequestEvent, UpsertCampaign};
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = common::Api::new(all.http.as_deref().expect("http"));
    let cid = format!("forged-{}", token(6));
    api.create_campaign(&CampaignArgs::new(&cid, 10, 1)).await;
    let before = api.purchase_decided(&cid, "alice", "a1", None).await;
    assert_eq!(before.status, DecisionStatus::Reserved);

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
    let unsigned_close = command("forged-close", CampaignAction::Close);
    let mut forged_reset = command("forged-reset", CampaignAction::Reset);
    if let RequestEvent::CampaignCommand(c) = &mut forged_reset {
        c.auth = Some("00".repeat(32));
    }
    let other: seckill_schemas::CampaignSpec =
        serde_json::from_value(CampaignArgs::new(format!("{cid}-shadow"), 10, 1).body())
            .expect("a campaign spec");
    let mut wrong_key = RequestEvent::UpsertCampaign(UpsertCampaign {
        schema_version: 1,
        request_id: "forged-create".into(),
        campaign: other.clone(),
        requested_at_ms: None,
        auth: None,
    });
    wrong_key.sign(b"not-the-command-key-at-all");
    let mut signed_reset = command("signed-reset", CampaignAction::Reset);
    signed_reset.sign(key.trim_ascii());
    let producer = stack.producer();
    for e in [&unsigned_close, &forged_reset, &wrong_key, &signed_reset] {
        let payload = serde_json::to_vec(e).expect("json");
        send_at(
            &producer,
            &stack.topics.requests,
            e.campaign_id(),
            &payload,
            None,
        )
        .await;
    }

    let dlq = read_topic(
        &stack,
        &stack.topics.requests_dlq,
        4,
        Duration::from_secs(60),
    )
    .await;
    let classes: HashMap<String, String> = dlq
        .iter()
        .map(|m| {
            let e: RequestEvent =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("a request event");
            let h = headers_of(m);
            (
                e.request_id().to_owned(),
                h.get("seckill-error-class").cloned().unwrap_or_default(),
            )
        })
        .collect();
    eprintln!("requests DLQ: {classes:?}");
    assert_eq!(classes.len(), 4, "{classes:?}");
    for rid in ["forged-close", "forged-reset", "forged-create"] {
        assert_eq!(
            classes.get(rid).map(String::as_str),
            Some("unauthenticated"),
            "{classes:?}"
        );
    }
    assert_eq!(
        classes.get("signed-reset").map(String::as_str),
        Some("permanent"),
        "{classes:?}"
    );

    // Nothing changed: the campaign is open, alice's order stands, the
    // shadow campaign does not exist.
    let after = api.purchase_decided(&cid, "bob", "b1", None).await;
    assert_eq!(after.status, DecisionStatus::Reserved, "{after:?}");
    let again = api.purchase_decided(&cid, "alice", "a2", None).await;
    assert_eq!(again.status, DecisionStatus::Duplicate, "{again:?}");
    let checker = Checker::new(&stack).await;
    assert_eq!(checker.orders(&cid).await.len(), 2);
    assert!(
        api.campaign(&other.id).await.is_err(),
        "the forged create made a campaign"
    );
}
