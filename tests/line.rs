//! A pending request's place in line (`queue` on `GET /v1/requests/{id}`
//! and on a `wait_ms` that runs out), on a requests topic of ONE
//! partition, where the count is exact: ingest, processor and sink as
//! processes of their own, the processor stopped and started to hold the
//! line still.
//!
//! | guarantee | test |
//! |---|---|
//! | with the processor stopped, the k-th purchase queued has exactly k-1 ahead (from the processors' progress, and from their committed offset when no progress is recorded), its owner and an admin see it, a stranger gets 403 and nothing of it; a position stored the way an older ingest did (a key per request) still answers; a `wait_ms` that runs out says the same; once the processor runs every answer becomes its decision; after the processor learnt a rate, the counts are exact relative to its progress and come with an estimated wait | `place_in_line_is_exact_on_one_partition_and_only_for_the_owner` |
//!
//! Run: `cargo test -p seckill-cli --test line -- --test-threads=1`.
//! Needs `redis-server` and `tansu` (see tests/common/mod.rs).

mod common;

use std::time::Duration;

use serde_json::Value;

use common::{start_roles, token, wait_for, Api, CampaignArgs, Stack};
use seckill_schemas::state::{position_windows, LookupWindows, Progress};
use seckill_schemas::DecisionStatus;

/// Purchases queued while the processor is stopped, in the first round.
const ROUND_ONE: usize = 20;
/// Purchases decided one by one, so the processor learns a rate.
const WARM_UP: usize = 3;
/// Purchases queued behind the processor's progress in the second round.
const ROUND_TWO: usize = 10;

/// Queues a purchase of `cid` for `user` (no wait) and returns its
/// request id.
async fn queue_purchase(api: &Api, cid: &str, user: &str) -> String {
    let reply = api
        .purchase(cid, user, None, None, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply.status, 202, "purchase by {user}: {}", reply.body);
    assert!(
        reply.body.get("queue").is_none(),
        "an answer without wait_ms does not look at the line: {}",
        reply.body
    );
    reply.body["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no request_id in {}", reply.body))
        .to_owned()
}

/// `GET /v1/requests/{id}` as `auth`, polled until the answer is pending
/// with a place in line (ingest records positions a moment after the
/// answer); returns the place.
async fn place_of(api: &Api, request_id: &str, auth: &str) -> Value {
    wait_for(10, &format!("a place in line for {request_id}"), || async {
        let reply = api
            .get_as(&format!("/v1/requests/{request_id}"), Some(auth))
            .await
            .ok()?;
        assert_eq!(reply.status, 200, "{request_id}: {}", reply.body);
        assert_eq!(
            reply.body["status"], "pending",
            "{request_id} decided while the processor is stopped: {}",
            reply.body
        );
        reply.body.get("queue").cloned()
    })
    .await
}

fn int(place: &Value, field: &str) -> i64 {
    place[field]
        .as_i64()
        .unwrap_or_else(|| panic!("no {field} in {place}"))
}

/// The processors' progress record of partition 0.
async fn progress(stack: &Stack) -> Option<Progress> {
    let mut con = stack.redis_con().await;
    let raw: Option<String> = redis::cmd("HGET")
        .arg(stack.keys.progress())
        .arg(0)
        .query_async(&mut con)
        .await
        .expect("read the progress hash");
    raw.map(|r| Progress::parse(&r).unwrap_or_else(|e| panic!("{e}")))
}

/// Waits until every request of `ids` has its decision, a reservation.
async fn all_reserved(api: &Api, ids: &[String]) {
    for id in ids {
        let d = api.wait_decision(id, Duration::from_secs(60)).await;
        assert_eq!(d.status, DecisionStatus::Reserved, "{id}: {d:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn place_in_line_is_exact_on_one_partition_and_only_for_the_owner() {
    let stack = Stack::start().await;
    let mut roles = start_roles(&stack, &[("SECKILL_PARTITIONS", "1")], &[], &[]).await;
    let api = roles.api.clone();
    let cid = format!("line-{}", token(6));
    // The create is the partition's first message; the processor decides
    // it and records its progress, then stops (committing its offset).
    api.create_campaign(&CampaignArgs::new(&cid, 1000, 1)).await;
    let created = wait_for(30, "the processors' first progress record", || async {
        progress(&stack).await
    })
    .await;
    assert!(
        roles.process.terminate(20).await,
        "the processor did not stop cleanly"
    );

    // Round one: ROUND_ONE purchases queued behind a stopped processor.
    let mut round_one = Vec::new();
    for k in 0..ROUND_ONE {
        round_one.push(queue_purchase(&api, &cid, &format!("first-{k:02}")).await);
    }
    let mut first_offset = None;
    for (k, id) in round_one.iter().enumerate() {
        let owner = Api::bearer(&format!("first-{k:02}"));
        let place = place_of(&api, id, &owner).await;
        eprintln!("round one #{}: {place}", k + 1);
        let offset = int(&place, "offset");
        let first = *first_offset.get_or_insert(offset);
        assert_eq!(int(&place, "partition"), 0, "{place}");
        assert_eq!(
            offset,
            first + k as i64,
            "offsets follow the queue: {place}"
        );
        assert_eq!(
            int(&place, "ahead"),
            k as i64,
            "purchase #{}: {place}",
            k + 1
        );
        // One batch seen: no rate, so no estimate.
        assert!(place.get("decided_rate_per_sec").is_none(), "{place}");
        assert!(place.get("estimated_wait_ms").is_none(), "{place}");
        // An admin sees the same place.
        let admin = place_of(&api, id, &Api::admin()).await;
        assert_eq!(admin, place);
        // A stranger learns nothing but that it is not theirs, as for a
        // decided request.
        let stranger = api
            .get_as(
                &format!("/v1/requests/{id}"),
                Some(&Api::bearer("stranger")),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stranger.status, 403, "{}", stranger.body);
        for field in ["queue", "partition", "offset", "ahead"] {
            assert!(stranger.body.get(field).is_none(), "{}", stranger.body);
        }
    }
    let first = first_offset.expect("round one placed");
    assert_eq!(
        created.decided_offset + 1,
        first,
        "the create was the only message before the first purchase"
    );

    // A position an older ingest wrote as a key of its own (before the
    // position hashes) still answers: moved there, the last purchase of
    // round one keeps its place.
    let moved = round_one.last().expect("round one queued");
    let before = place_of(&api, moved, &Api::admin()).await;
    let mut con = stack.redis_con().await;
    let mut found = None;
    for w in position_windows().to_read(LookupWindows::now_secs()) {
        let key = stack.keys.position(moved, w);
        let raw: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg(moved)
            .query_async(&mut con)
            .await
            .expect("read a position hash");
        if let Some(raw) = raw {
            let _: () = redis::cmd("HDEL")
                .arg(&key)
                .arg(moved)
                .query_async(&mut con)
                .await
                .expect("delete the position field");
            found = Some(raw);
        }
    }
    let raw = found.expect("the position is a field of a position hash");
    let _: () = redis::cmd("SET")
        .arg(stack.keys.legacy_position(moved))
        .arg(&raw)
        .arg("EX")
        .arg(3600)
        .query_async(&mut con)
        .await
        .expect("write the position as an older ingest did");
    assert_eq!(place_of(&api, moved, &Api::admin()).await, before);

    // A buyer who waits and runs out of time gets the place with the 202.
    let waited = api
        .purchase(&cid, "first-waits", None, None, Some(300))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(waited.status, 202, "{}", waited.body);
    let place = waited
        .body
        .get("queue")
        .cloned()
        .expect("a place with the 202");
    assert_eq!(int(&place, "offset"), first + ROUND_ONE as i64, "{place}");
    assert_eq!(int(&place, "ahead"), ROUND_ONE as i64, "{place}");
    round_one.push(waited.body["request_id"].as_str().expect("id").to_owned());

    // Without the processors' progress (never written, or lost), the
    // count comes from their group's committed offset, still exact.
    let _: () = redis::cmd("DEL")
        .arg(stack.keys.progress())
        .query_async(&mut con)
        .await
        .expect("delete the progress hash");
    for (k, id) in round_one.iter().enumerate().take(ROUND_ONE).step_by(4) {
        let place = place_of(&api, id, &Api::admin()).await;
        assert_eq!(
            int(&place, "ahead"),
            k as i64,
            "from the committed offset: {place}"
        );
        assert!(place.get("decided_rate_per_sec").is_none(), "{place}");
    }

    // The processor runs: every answer becomes its decision.
    roles.process.start();
    roles.process.wait_ready().await;
    all_reserved(&api, &round_one).await;
    let mine = api
        .get_as(
            &format!("/v1/requests/{}", round_one[0]),
            Some(&Api::bearer("first-00")),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(mine.body["status"], "reserved", "{}", mine.body);
    assert!(mine.body.get("queue").is_none(), "{}", mine.body);

    // A few purchases decided one by one: batches apart, so the processor
    // learns a rate; then it stops again.
    for k in 0..WARM_UP {
        let reply = api
            .purchase(&cid, &format!("warm-{k}"), None, None, Some(10_000))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reply.status, 200, "{}", reply.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for(10, "a known decision rate", || async {
        progress(&stack).await.filter(|p| p.rate_per_sec.is_some())
    })
    .await;
    assert!(
        roles.process.terminate(20).await,
        "the processor did not stop cleanly"
    );
    let stopped_at = progress(&stack).await.expect("progress after the stop");
    let rate = stopped_at.rate_per_sec.expect("a rate");

    // Round two: exact counts relative to the processor's progress, with
    // an estimate from its rate.
    let mut round_two = Vec::new();
    for j in 0..ROUND_TWO {
        round_two.push(queue_purchase(&api, &cid, &format!("second-{j:02}")).await);
    }
    for (j, id) in round_two.iter().enumerate() {
        let place = place_of(&api, id, &Api::bearer(&format!("second-{j:02}"))).await;
        eprintln!("round two #{}: {place}", j + 1);
        assert_eq!(
            int(&place, "offset"),
            stopped_at.decided_offset + 1 + j as i64,
            "{place}"
        );
        assert_eq!(
            int(&place, "ahead"),
            j as i64,
            "purchase #{}: {place}",
            j + 1
        );
        assert_eq!(
            place["decided_rate_per_sec"].as_f64(),
            Some(rate),
            "{place}"
        );
        let expected = ((j as f64 + 1.0) * 1000.0 / rate).ceil() as i64;
        assert_eq!(int(&place, "estimated_wait_ms"), expected, "{place}");
    }

    roles.process.start();
    roles.process.wait_ready().await;
    all_reserved(&api, &round_two).await;
}
