//! The decision script against a real redis-server that this test starts.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{Duration as ChronoDuration, Utc};
use seckill_processors::{Decider, Outcome};
use seckill_schemas::{
    CampaignKind, CampaignOutcome, CampaignSpec, DecisionStatus, KeyLayout, PurchaseRequested,
    RequestEvent, UpsertCampaign,
};

struct Redis {
    child: Child,
    url: String,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_redis() -> Redis {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH (scripts/install-deps installs it)");
    let url = format!("redis://127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Redis { child, url };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-server did not start on {port}");
}

fn campaign(id: &str, stock: u64, limit: u32, starts_in_secs: i64) -> RequestEvent {
    let now = Utc::now();
    RequestEvent::UpsertCampaign(UpsertCampaign {
        schema_version: 1,
        request_id: format!("create-{id}-{stock}-{limit}"),
        campaign: CampaignSpec {
            id: id.into(),
            name: "test".into(),
            kind: CampaignKind::Sale,
            stock,
            per_user_limit: limit,
            starts_at: now + ChronoDuration::seconds(starts_in_secs),
            ends_at: now + ChronoDuration::hours(1),
            payment_timeout_secs: 300,
            price: 1999,
        },
        requested_at_ms: None,
    })
}

fn buy(id: &str, request: &str, user: &str, quantity: u32) -> RequestEvent {
    RequestEvent::PurchaseRequested(PurchaseRequested {
        schema_version: 1,
        request_id: request.into(),
        campaign_id: id.into(),
        user_id: user.into(),
        quantity,
        requested_at_ms: None,
    })
}

fn status(o: &Outcome) -> DecisionStatus {
    match o {
        Outcome::Purchase { status, .. } => *status,
        Outcome::Campaign { .. } => panic!("expected a purchase outcome, got {o:?}"),
    }
}

async fn stock(con: &mut redis::aio::ConnectionManager, id: &str) -> (i64, i64, i64) {
    let k = KeyLayout::new("t").campaign(id);
    let (total, available, reserved): (i64, i64, i64) = redis::cmd("HMGET")
        .arg(&k.stock)
        .arg("total")
        .arg("available")
        .arg("reserved")
        .query_async(con)
        .await
        .unwrap();
    (total, available, reserved)
}

#[tokio::test]
async fn sells_exactly_the_stock_and_repeats_decisions() {
    let redis = start_redis().await;
    let mut con = seckill_processors::connect_redis(&redis.url).await.unwrap();
    let d = Decider::new("t");
    let create = campaign("c1", 3, 1, -1);
    let out = d.decide(&mut con, "c1", &[&create]).await.unwrap();
    assert!(matches!(
        out[0],
        Outcome::Campaign {
            outcome: CampaignOutcome::Created,
            ..
        }
    ));

    let reqs: Vec<RequestEvent> = (0..5)
        .map(|i| buy("c1", &format!("r{i}"), &format!("u{i}"), 1))
        .collect();
    let refs: Vec<&RequestEvent> = reqs.iter().collect();
    let first = d.decide(&mut con, "c1", &refs).await.unwrap();
    let statuses: Vec<_> = first.iter().map(status).collect();
    assert_eq!(
        statuses,
        vec![
            DecisionStatus::Reserved,
            DecisionStatus::Reserved,
            DecisionStatus::Reserved,
            DecisionStatus::SoldOut,
            DecisionStatus::SoldOut
        ]
    );
    assert_eq!(stock(&mut con, "c1").await, (3, 0, 3));

    // Redelivery of the whole batch: same answers, nothing changes.
    let again = d.decide(&mut con, "c1", &refs).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(stock(&mut con, "c1").await, (3, 0, 3));
}

#[tokio::test]
async fn enforces_the_per_user_limit_and_the_window() {
    let redis = start_redis().await;
    let mut con = seckill_processors::connect_redis(&redis.url).await.unwrap();
    let d = Decider::new("t");
    let c2 = campaign("c2", 100, 2, -1);
    let c3 = campaign("c3", 100, 1, 3600);
    d.decide(&mut con, "c2", &[&c2]).await.unwrap();
    d.decide(&mut con, "c3", &[&c3]).await.unwrap();

    let a = buy("c2", "a1", "alice", 1);
    let b = buy("c2", "a2", "alice", 1);
    let c = buy("c2", "a3", "alice", 1);
    let big = buy("c2", "b1", "bob", 3);
    let out = d.decide(&mut con, "c2", &[&a, &b, &c, &big]).await.unwrap();
    let s: Vec<_> = out.iter().map(status).collect();
    assert_eq!(
        s,
        vec![
            DecisionStatus::Reserved,
            DecisionStatus::Reserved,
            DecisionStatus::LimitExceeded,
            DecisionStatus::LimitExceeded
        ]
    );

    let early = buy("c3", "e1", "carol", 1);
    let out = d.decide(&mut con, "c3", &[&early]).await.unwrap();
    match &out[0] {
        Outcome::Purchase { status, reason, .. } => {
            assert_eq!(*status, DecisionStatus::NotActive);
            assert_eq!(reason, "not_started");
        }
        o => panic!("{o:?}"),
    }

    let unknown = buy("nope", "n1", "dave", 1);
    let out = d.decide(&mut con, "nope", &[&unknown]).await.unwrap();
    assert!(
        matches!(&out[0], Outcome::Purchase { status: DecisionStatus::NotActive, reason, .. } if reason == "unknown_campaign")
    );
}

#[tokio::test]
async fn a_repeated_create_is_unchanged_and_a_different_one_conflicts() {
    let redis = start_redis().await;
    let mut con = seckill_processors::connect_redis(&redis.url).await.unwrap();
    let d = Decider::new("t");
    let first = campaign("c4", 10, 1, -1);
    d.decide(&mut con, "c4", &[&first]).await.unwrap();
    let mut same = first.clone();
    if let RequestEvent::UpsertCampaign(u) = &mut same {
        u.request_id = "again".into();
    }
    let mut different = campaign("c4", 11, 1, -1);
    if let RequestEvent::UpsertCampaign(u) = &mut different {
        u.request_id = "other".into();
    }
    let out = d
        .decide(&mut con, "c4", &[&same, &different])
        .await
        .unwrap();
    assert!(matches!(
        out[0],
        Outcome::Campaign {
            outcome: CampaignOutcome::Unchanged,
            ..
        }
    ));
    assert!(matches!(
        out[1],
        Outcome::Campaign {
            outcome: CampaignOutcome::Conflict,
            ..
        }
    ));
    assert_eq!(stock(&mut con, "c4").await, (10, 10, 0));
}

#[tokio::test]
async fn survives_a_flushed_script_cache() {
    let redis = start_redis().await;
    let mut con = seckill_processors::connect_redis(&redis.url).await.unwrap();
    let d = Decider::new("t");
    let c = campaign("c5", 10, 1, -1);
    d.decide(&mut con, "c5", &[&c]).await.unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut con)
        .await
        .unwrap();
    let r = buy("c5", "x1", "erin", 1);
    let out = d.decide(&mut con, "c5", &[&r]).await.unwrap();
    assert_eq!(status(&out[0]), DecisionStatus::Reserved);
}
