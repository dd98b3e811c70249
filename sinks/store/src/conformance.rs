//! One conformance suite for every [`OrderStore`] backend. SQLite runs it
//! always; another backend runs the same functions when its server is
//! configured.

use seckill_schemas::{
    order_id_for, AwardType, DecisionStatus, OrderChanged, OrderEvent, OrderStatus, RefusalReason,
    Rejected, Reserved,
};

use crate::{OrderFilter, OrderStore};

fn reserved(request: &str, campaign: &str, user: &str) -> OrderEvent {
    OrderEvent::Reserved(Reserved {
        schema_version: 1,
        request_id: request.into(),
        order_id: order_id_for(request),
        campaign_id: campaign.into(),
        user_id: user.into(),
        quantity: 1,
        price: 500,
        requested_at_ms: 1,
        decided_at_ms: 2,
        expires_at_ms: 300_002,
        prize_id: None,
        item_name: "phone".into(),
        award_type: AwardType::Physical,
    })
}

fn changed(request: &str) -> OrderChanged {
    OrderChanged {
        schema_version: 1,
        request_id: format!("cmd-{request}"),
        order_id: order_id_for(request),
        purchase_request_id: request.into(),
        campaign_id: "c4".into(),
        user_id: "u4".into(),
        quantity: 1,
        price: 500,
        created_at_ms: 2,
        expires_at_ms: 300_002,
        decided_at_ms: 10,
        prize_id: None,
        item_name: "phone".into(),
        award_type: AwardType::Physical,
    }
}

pub(super) async fn status_only_moves_forward(store: &dyn OrderStore) {
    let id = order_id_for("m1");
    store.apply(&[reserved("m1", "c4", "u4")]).await.unwrap();
    store
        .apply(&[OrderEvent::Paid(changed("m1"))])
        .await
        .unwrap();
    // A replayed reservation and a competing terminal state change nothing.
    store
        .apply(&[
            reserved("m1", "c4", "u4"),
            OrderEvent::Cancelled(changed("m1")),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.get_order(&id).await.unwrap().unwrap().status,
        OrderStatus::Paid
    );

    // A state change whose creation the store never saw still lands whole.
    store
        .apply(&[OrderEvent::Expired(changed("m2"))])
        .await
        .unwrap();
    let o = store.get_order(&order_id_for("m2")).await.unwrap().unwrap();
    assert_eq!(
        (o.status.as_str(), o.request_id.as_str()),
        ("expired", "m2")
    );
}

pub(super) async fn applying_twice_leaves_one_row(store: &dyn OrderStore) {
    let e = reserved("r1", "c1", "u1");
    store.apply(&[e.clone(), e.clone()]).await.unwrap();
    store.apply(&[e]).await.unwrap();
    let rows = store
        .list_orders(&OrderFilter {
            campaign_id: Some("c1".into()),
            limit: 10,
            ..OrderFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].order_id, order_id_for("r1"));
    assert_eq!(rows[0].status, OrderStatus::Reserved);
    assert_eq!(rows[0].expires_at_ms, 300_002);
}

pub(super) async fn rejections_store_nothing(store: &dyn OrderStore) {
    let e = OrderEvent::Rejected(Rejected {
        schema_version: 1,
        request_id: "r2".into(),
        campaign_id: "c2".into(),
        user_id: "u2".into(),
        status: DecisionStatus::SoldOut,
        reason: RefusalReason::SoldOut,
        requested_at_ms: 1,
        decided_at_ms: 2,
    });
    store.apply(&[e]).await.unwrap();
    assert!(store
        .get_order(&order_id_for("r2"))
        .await
        .unwrap()
        .is_none());
}

pub(super) async fn filters_and_pages(store: &dyn OrderStore) {
    let events: Vec<_> = (0..25)
        .map(|i| {
            reserved(
                &format!("p{i}"),
                "c3",
                if i % 2 == 0 { "even" } else { "odd" },
            )
        })
        .collect();
    store.apply(&events).await.unwrap();
    let even = store
        .list_orders(&OrderFilter {
            campaign_id: Some("c3".into()),
            user_id: Some("even".into()),
            limit: 100,
            after: None,
        })
        .await
        .unwrap();
    assert_eq!(even.len(), 13);
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_orders(&OrderFilter {
                campaign_id: Some("c3".into()),
                user_id: None,
                limit: 10,
                after: after.clone(),
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|o| o.order_id.clone());
        seen.extend(page.into_iter().map(|o| o.order_id));
    }
    assert_eq!(seen.len(), 25);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "pages come in order-id order");
}

async fn run_all(store: &dyn OrderStore) {
    store.ping().await.unwrap();
    applying_twice_leaves_one_row(store).await;
    rejections_store_nothing(store).await;
    filters_and_pages(store).await;
    status_only_moves_forward(store).await;
}

#[tokio::test]
async fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/orders.db", dir.path().display());
    let store = super::open_store(&url).await.unwrap();
    run_all(&*store).await;
}

/// The same suite against ScyllaDB, when one is reachable: set
/// `SECKILL_SCYLLA_NODES=host:9042[,host:9042]`. Each run uses a keyspace of
/// its own.
#[tokio::test]
async fn scylla_conforms() {
    let Ok(nodes) = std::env::var("SECKILL_SCYLLA_NODES") else {
        eprintln!("SECKILL_SCYLLA_NODES is not set: the ScyllaDB conformance run is skipped");
        return;
    };
    let keyspace = format!("seckill_test_{}", std::process::id());
    let store = super::open_store(&format!("scylla://{nodes}/{keyspace}"))
        .await
        .unwrap();
    run_all(&*store).await;
}

#[tokio::test]
async fn unknown_schemes_are_refused_with_a_hint() {
    let err = match super::open_store("mysql://x").await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("mysql:// must be refused"),
    };
    assert!(err.contains("sqlite://"), "{err}");
}
