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
        payment_ref: None,
    }
}

fn paid(request: &str, campaign: &str, payment_ref: &str) -> OrderEvent {
    OrderEvent::Paid(OrderChanged {
        campaign_id: campaign.into(),
        user_id: "u5".into(),
        payment_ref: Some(payment_ref.into()),
        ..changed(request)
    })
}

pub(super) async fn paid_orders_keep_their_payment_ref(store: &dyn OrderStore) {
    let get = |request: &str| {
        let id = order_id_for(request);
        async move { store.get_order(&id).await.expect("read").expect("stored") }
    };
    // Reserved, then paid: the reference comes with the move to paid, and
    // the time of the pay.
    store
        .apply(&[reserved("pr1", "c5", "u5")])
        .await
        .expect("store call");
    assert_eq!(get("pr1").await.payment_ref, None, "reserved has none");
    store
        .apply(&[paid("pr1", "c5", "psp-1|a b~")])
        .await
        .expect("store call");
    let o = get("pr1").await;
    assert_eq!(
        (o.status, o.payment_ref.as_deref(), o.updated_at_ms),
        (OrderStatus::Paid, Some("psp-1|a b~"), 10)
    );
    // A replay, a pay with another reference, a reservation and a cancel
    // arriving late change none of it.
    let mut other = paid("pr1", "c5", "psp-2");
    if let OrderEvent::Paid(c) = &mut other {
        c.decided_at_ms = 20;
    }
    store
        .apply(&[
            paid("pr1", "c5", "psp-1|a b~"),
            other,
            reserved("pr1", "c5", "u5"),
            OrderEvent::Cancelled(OrderChanged {
                campaign_id: "c5".into(),
                user_id: "u5".into(),
                ..changed("pr1")
            }),
        ])
        .await
        .expect("store call");
    let again = get("pr1").await;
    assert_eq!(again, o, "a later event changed a paid order");

    // A pay whose reservation the store never saw lands with its reference;
    // so does a listing.
    store
        .apply(&[paid("pr2", "c5", "psp-3")])
        .await
        .expect("store call");
    assert_eq!(get("pr2").await.payment_ref.as_deref(), Some("psp-3"));
    let listed = store
        .list_orders(&OrderFilter {
            campaign_id: Some("c5".into()),
            limit: 10,
            ..OrderFilter::default()
        })
        .await
        .expect("store call");
    let refs: Vec<_> = listed.iter().map(|o| o.payment_ref.as_deref()).collect();
    assert_eq!(refs.len(), 2);
    for (o, r) in listed.iter().zip(&refs) {
        let want = if o.order_id == order_id_for("pr1") {
            "psp-1|a b~"
        } else {
            "psp-3"
        };
        assert_eq!(*r, Some(want), "{}", o.order_id);
    }

    // Cancelled and born-paid (a free prize) orders carry none.
    store
        .apply(&[reserved("pr3", "c5", "u5")])
        .await
        .expect("store call");
    store
        .apply(&[OrderEvent::Cancelled(OrderChanged {
            campaign_id: "c5".into(),
            user_id: "u5".into(),
            ..changed("pr3")
        })])
        .await
        .expect("store call");
    assert_eq!(get("pr3").await.payment_ref, None);
    let OrderEvent::Reserved(free) = reserved("pr4", "c5", "u5") else {
        unreachable!()
    };
    store
        .apply(&[OrderEvent::Confirmed(free)])
        .await
        .expect("store call");
    let o = get("pr4").await;
    assert_eq!((o.status, o.payment_ref), (OrderStatus::Paid, None));
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
    paid_orders_keep_their_payment_ref(store).await;
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
