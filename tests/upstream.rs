//! What upstream services see when they feed seckill from their own Kafka
//! clients instead of HTTP: a Python `confluent-kafka` producer (its own
//! librdkafka) stands in for a Java or Go service.
//!
//! | guarantee | test |
//! |---|---|
//! | a campaign keeps one writer and stays ordered with its commands whatever partitioner the producer uses | `upstream_purchases_partitioned_by_crc32_or_murmur2_keep_one_writer_per_campaign_and_order_with_its_commands` |

mod common;

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::message::Message;
use serde_json::{json, Value};

use common::kafka::header;
use common::python;
use common::{
    assert_clean, check_campaign, consume_topic, new_request_id, purchase_json, read_decisions,
    token, Api, CampaignArgs, Stack,
};
use seckill_kafka::partition_for;
use seckill_schemas::{Decision, DecisionStatus, RefusalReason};

const PARTITIONS: i32 = 4;

/// Produces `messages` (key, payload) from the Python client with
/// `partitioner`; returns where each landed: (key, partition, offset).
fn produce_from_python(
    stack: &Stack,
    partitioner: &str,
    messages: &[(String, Vec<u8>)],
) -> Vec<(String, i32, i64)> {
    let list: Vec<Value> = messages
        .iter()
        .map(|(k, v)| json!({"key": k, "value": String::from_utf8_lossy(v)}))
        .collect();
    let file = stack
        .dir()
        .join(format!("upstream-{partitioner}-{}.json", token(6)));
    std::fs::write(&file, serde_json::to_vec(&list).expect("json")).expect("write messages");
    let placed = python::run_json(
        "upstream_producer.py",
        &[
            &stack.brokers(),
            &stack.topics.requests,
            partitioner,
            file.to_str().expect("utf-8 path"),
        ],
    );
    placed
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| {
            (
                p["key"].as_str().expect("key").to_owned(),
                p["partition"].as_i64().expect("partition") as i32,
                p["offset"].as_i64().expect("offset"),
            )
        })
        .collect()
}

/// Upstream services partition by their own client's default: CRC32 for
/// librdkafka (`consistent_random`), murmur2 for Java and Go. Two
/// processors share the group. Every purchase, whichever partition it was
/// produced to, is decided once, by the processor of the partition its
/// campaign's key maps to under murmur2 - the one that also applies the
/// campaign's create and close: each misplaced message has exactly one
/// forwarded copy, on that partition; purchases produced after a close
/// are all refused `closed`; the checker is clean for every campaign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_purchases_partitioned_by_crc32_or_murmur2_keep_one_writer_per_campaign_and_order_with_its_commands(
) {
    const CAMPAIGNS: usize = 20;
    const PER_CLIENT: usize = 3;
    let python = python::interpreter();
    eprintln!("python client: {}", python.display());
    let stack = Stack::start().await;
    let parts = PARTITIONS.to_string();
    let env = [("SECKILL_PARTITIONS", parts.as_str())];
    let all = stack.seckill(&["all"], &env).await;
    let _second = stack.seckill(&["process"], &env).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let campaigns: Vec<String> = (0..CAMPAIGNS)
        .map(|i| format!("up{i}-{}", token(5)))
        .collect();
    for c in &campaigns {
        api.create_campaign(&CampaignArgs::new(c.clone(), 100, 1))
            .await;
    }

    // Phase 1: purchases from both clients, open campaigns.
    let mut expected: HashMap<String, HashMap<String, Option<Decision>>> = HashMap::new();
    let batch = |phase: &str, partitioner: &str| {
        let mut rids = Vec::new();
        let mut messages = Vec::new();
        for c in &campaigns {
            for u in 0..PER_CLIENT {
                let rid = new_request_id();
                let user = format!("{phase}-{partitioner}-{u}");
                messages.push((c.clone(), purchase_json(&rid, c, &user, 1)));
                rids.push((c.clone(), rid));
            }
        }
        (rids, messages)
    };
    let mut misplaced: Vec<(String, i32, i64)> = Vec::new();
    let mut phase_one = Vec::new();
    for partitioner in ["consistent_random", "murmur2_random"] {
        let (rids, messages) = batch("open", partitioner);
        let placed = produce_from_python(&stack, partitioner, &messages);
        for (key, partition, offset) in &placed {
            let own = partition_for(key.as_bytes(), PARTITIONS);
            if partitioner == "murmur2_random" {
                assert_eq!(
                    *partition, own,
                    "librdkafka's murmur2_random placed {key} on {partition}, seckill's murmur2 says {own}"
                );
            } else if *partition != own {
                misplaced.push((key.clone(), *partition, *offset));
            }
        }
        phase_one.extend(rids);
    }
    let misplaced_campaigns: std::collections::BTreeSet<&str> =
        misplaced.iter().map(|(k, _, _)| k.as_str()).collect();
    eprintln!(
        "CRC32 put {} of {} campaigns on another partition than murmur2",
        misplaced_campaigns.len(),
        CAMPAIGNS
    );
    assert!(
        !misplaced.is_empty(),
        "the CRC32 client placed every campaign like murmur2: the test proves nothing"
    );
    for (c, rid) in &phase_one {
        let d = api.wait_decision(rid, Duration::from_secs(90)).await;
        assert_eq!(d.status, DecisionStatus::Reserved, "{d:?}");
        expected
            .entry(c.clone())
            .or_default()
            .insert(rid.clone(), Some(d));
    }

    // Phase 2: every campaign closed (the answer comes once the close is
    // applied), then more purchases from both clients: each is decided
    // after the close in its campaign's own stream, so all are refused.
    for c in &campaigns {
        let r = api
            .post(&format!("/v1/campaigns/{c}/close"), &json!({}), &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 200, "close {c}: {}", r.body);
    }
    for partitioner in ["consistent_random", "murmur2_random"] {
        let (rids, messages) = batch("closed", partitioner);
        for (key, partition, offset) in produce_from_python(&stack, partitioner, &messages) {
            if partition != partition_for(key.as_bytes(), PARTITIONS) {
                misplaced.push((key, partition, offset));
            }
        }
        for (c, rid) in rids {
            let d = api.wait_decision(&rid, Duration::from_secs(90)).await;
            assert!(
                d.status == DecisionStatus::NotActive && d.reason == Some(RefusalReason::Closed),
                "a purchase produced after {c} closed was decided {d:?}"
            );
            expected.entry(c).or_default().insert(rid, Some(d));
        }
    }

    // One writer: each misplaced message was forwarded exactly once, to the
    // partition its key maps to, and nothing else was forwarded.
    let requests = consume_topic(
        &stack.kafka(),
        &stack.topics.requests,
        0,
        Duration::from_secs(3),
        Duration::from_secs(60),
    )
    .await;
    let mut copies: HashMap<String, Vec<(String, i32)>> = HashMap::new();
    for m in &requests {
        if let Some(from) = header(m, seckill_kafka::headers::FORWARDED_FROM) {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            copies.entry(from).or_default().push((key, m.partition()));
        }
    }
    let mut problems = Vec::new();
    for (key, partition, offset) in &misplaced {
        let from = format!("{partition}:{offset}");
        let own = partition_for(key.as_bytes(), PARTITIONS);
        match copies.get(&from).map(Vec::as_slice) {
            Some([(k, p)]) if k == key && *p == own => {}
            other => problems.push(format!(
                "{key} produced to {from} (its partition is {own}): forwarded copies {other:?}"
            )),
        }
    }
    if copies.len() != misplaced.len() {
        problems.push(format!(
            "{} messages forwarded, {} were misplaced",
            copies.len(),
            misplaced.len()
        ));
    }
    assert!(problems.is_empty(), "{problems:#?}");

    let log = read_decisions(
        &stack.kafka(),
        &stack.topics.orders,
        0,
        Duration::from_secs(60),
    )
    .await;
    for c in &campaigns {
        let report =
            check_campaign(&stack, &api, &log, c, &expected[c], Duration::from_secs(60)).await;
        assert_clean(&report);
    }
}
