//! Security: librdkafka properties (`--kafka-property KEY=VALUE`, or
//! `SECKILL_KAFKA_PROPERTIES="k=v;k=v"`) reach every Kafka client of
//! `seckill all`, so it works against a broker that wants TLS and
//! SASL/SCRAM, and does not get ready without them.
//!
//! | guarantee | test |
//! | --- | --- |
//! | TLS (`security.protocol=SSL`, `ssl.ca.location`): topics created, a purchase reserved and stored | `tls_with_ca_location_creates_topics_and_reserves_a_purchase` |
//! | TLS without the properties, or with the wrong CA: never ready | `tls_without_properties_or_with_a_wrong_ca_never_gets_ready` |
//! | SASL/SCRAM-SHA-512 over TLS (env form): a purchase reserved | `sasl_scram_sha_512_over_tls_reserves_a_purchase` |
//! | SASL/SCRAM-SHA-256 over TLS (`--kafka-property` flags): a purchase reserved | `sasl_scram_sha_256_over_tls_with_flags_reserves_a_purchase` |
//! | a wrong password, or no SASL at all: refused, never ready | `sasl_scram_wrong_password_or_no_sasl_is_refused` |
//!
//! tansu 0.6.0 has no TLS listener and loses SCRAM users on restart with
//! memory storage: see tests/common/secure.rs for what the secure broker
//! is made of (a TLS-terminating proxy in front of tansu; users created
//! before `--authentication` on sqlite storage). SASL/PLAIN is not offered
//! by tansu 0.6.0, so it is not tested.
//!
//! A refused `seckill all` says only `creating topics <prefix>.* on <brokers>
//! (is the broker running?)` / `OperationTimedOut`, after
//! `socket.timeout.ms` (librdkafka default 60 s; the tests set 8 s): the
//! admin client's own librdkafka errors (`SSL handshake failed: certificate
//! verify failed`, `SASL authentication error: ... invalid-proof`) never
//! reach its log, so the tests read the cause from a probe client
//! (`client_diagnosis`) and from the TLS proxy's log.
//!
//! Run: `cargo test -p seckill-cli --test secure_kafka -- --test-threads=1`.

mod common;

use std::time::{Duration, Instant};

use common::kafka::partition_count;
use common::secure::{
    client_diagnosis, expect_never_ready, metadata_with, properties_env, self_signed, NotReady,
    ScramUser, SecureBroker,
};
use common::{new_request_id, token, within, Api, CampaignArgs, Seckill, Stack};
use seckill_kafka::KafkaSettings;
use seckill_schemas::DecisionStatus;

/// How long a seckill that should not get ready is watched.
const NOT_READY_SECS: u64 = 20;

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Starts `seckill all <args>` with `env`, timing how long it takes to be
/// ready.
async fn start_all(stack: &Stack, args: &[&str], env: &[(String, String)]) -> Seckill {
    let started = Instant::now();
    let mut all_args = vec!["all"];
    all_args.extend_from_slice(args);
    let all = within(
        90,
        "seckill all ready",
        stack.seckill(&all_args, &pairs(env)),
    )
    .await;
    eprintln!("seckill all ready after {:?}", started.elapsed());
    all
}

/// One campaign of 5 units, one purchase: reserved, and its order stored.
async fn buy_one_reserved(all: &Seckill) {
    let api = Api::new(all.http.as_deref().expect("http"));
    let cid = format!("secure-{}", token(6));
    let started = Instant::now();
    api.create_campaign(&CampaignArgs::new(&cid, 5, 1)).await;
    let d = within(
        60,
        "purchase decided",
        api.purchase_decided(&cid, "alice-user", &new_request_id(), None),
    )
    .await;
    assert_eq!(d.status, DecisionStatus::Reserved, "{d:?}");
    assert_eq!(d.campaign_id, cid, "{d:?}");
    let orders = api.wait_orders(&cid, 1, Duration::from_secs(30)).await;
    assert_eq!(orders.len(), 1, "the reserved order is stored: {orders:?}");
    eprintln!(
        "campaign {cid}: created, purchase reserved (order {:?}) and stored in {:?}",
        d.order_id,
        started.elapsed()
    );
}

/// The seckill topics were made on the secure broker, not on the stack's
/// plain one.
async fn assert_topics_on(stack: &Stack, broker: &SecureBroker, props: &[(String, String)]) {
    let plain = partition_count(&stack.kafka(), &stack.topics.requests).await;
    assert!(
        plain.is_err(),
        "{} exists on the plain broker: {plain:?}",
        stack.topics.requests
    );
    // partition_count does not take properties: ask metadata directly.
    metadata_with(&broker.brokers(), props)
        .await
        .unwrap_or_else(|e| panic!("metadata from the secure broker: {e}"));
    let mut settings = stack.kafka();
    settings.brokers = broker.brokers();
    settings.properties = props.to_vec();
    let admin_topics = seckill_topics(&settings, &stack.topics.requests).await;
    assert!(
        admin_topics,
        "{} not found on the secure broker",
        stack.topics.requests
    );
}

/// Whether `topic` is in the metadata of the broker `settings` reach.
async fn seckill_topics(settings: &KafkaSettings, topic: &str) -> bool {
    use rdkafka::consumer::Consumer;
    let settings = settings.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer = settings.plain_consumer("secure-probe").expect("consumer");
        let md = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .expect("metadata");
        md.topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
    })
    .await
    .expect("join")
}

/// Starts `seckill all` against `broker` with `props` (plus a short
/// `socket.timeout.ms`, see below) and asserts it exits non-zero without
/// getting ready, saying it could not create its topics on the broker.
/// Returns the properties it ran with.
///
/// seckill's first Kafka call is creating its topics; the admin request
/// waits `socket.timeout.ms` (librdkafka's default: 60 s) for a broker it
/// can talk to. 8 s keeps the suite short; the default gives the same
/// error after about 60 s.
async fn refused(
    stack: &Stack,
    broker: &SecureBroker,
    props: &[(String, String)],
    what: &str,
) -> Vec<(String, String)> {
    let mut props = props.to_vec();
    props.push(("socket.timeout.ms".to_owned(), "8000".to_owned()));
    let env = broker.seckill_env(&props);
    let n = expect_never_ready(stack, &["all"], &env, NOT_READY_SECS).await;
    let errors = lines_with(&n.log, &["error", "caused by", "timed out"]);
    eprintln!(
        "seckill all {what} (SECKILL_KAFKA_PROPERTIES={}): {}; log:\n  {}",
        properties_env(&props),
        describe(&n),
        errors.join("\n  ")
    );
    let status = n.exit.unwrap_or_else(|| {
        panic!(
            "seckill all {what} did not exit in {NOT_READY_SECS}s:\n{}",
            n.log
        )
    });
    assert!(
        !status.success(),
        "seckill all {what} exited successfully:\n{}",
        n.log
    );
    assert!(
        n.log.contains("(is the broker running?)") && n.log.contains("OperationTimedOut"),
        "seckill all {what}: no 'could not reach the broker' error in the log:\n{}",
        n.log
    );
    props
}

fn report_diagnosis(who: &str, result: &Result<(), String>, seen: &[String]) {
    let interesting: Vec<&String> = seen
        .iter()
        .filter(|l| {
            let l = l.to_lowercase();
            l.contains("error") || l.contains("fail") || l.contains("disconnected")
        })
        .take(4)
        .collect();
    eprintln!("{who}: metadata {result:?}; librdkafka said:");
    for l in interesting {
        eprintln!("  {l}");
    }
}

fn describe(n: &NotReady) -> String {
    match n.exit {
        Some(status) => format!("exited with {status} after {:?}", n.after),
        None => format!("still not ready after {:?} (killed)", n.after),
    }
}

/// The lines of `log` that mention any of `needles` (case-insensitive).
fn lines_with<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| {
            let l = l.to_lowercase();
            needles.iter().any(|n| l.contains(&n.to_lowercase()))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_ca_location_creates_topics_and_reserves_a_purchase() {
    let stack = Stack::start().await;
    let tls = self_signed(stack.dir(), "broker");
    let broker = SecureBroker::start(&stack, Some(&tls), &[]).await;
    let props = broker.properties(None);
    eprintln!("SECKILL_KAFKA_PROPERTIES={}", properties_env(&props));

    let all = start_all(&stack, &[], &broker.seckill_env(&props)).await;
    assert_topics_on(&stack, &broker, &props).await;
    buy_one_reserved(&all).await;

    let proxy_log = broker.logs();
    assert!(
        proxy_log.contains("tls-proxy: TLS connection from"),
        "no TLS connection went through the proxy:\n{proxy_log}"
    );
    let handshakes = proxy_log.matches("tls-proxy: TLS connection from").count();
    eprintln!("{handshakes} TLS connections through the proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_properties_or_with_a_wrong_ca_never_gets_ready() {
    let stack = Stack::start().await;
    let tls = self_signed(stack.dir(), "broker");
    let other = self_signed(stack.dir(), "other-ca");
    let broker = SecureBroker::start(&stack, Some(&tls), &[]).await;

    // Plaintext to a TLS listener: no security properties at all.
    let plain = refused(&stack, &broker, &[], "without the TLS properties").await;
    let proxy = broker.logs();
    assert!(
        proxy.contains("tls-proxy: TLS handshake with"),
        "the proxy saw no failed handshake:\n{proxy}"
    );
    let (result, seen) = client_diagnosis(&broker.brokers(), &plain, 4).await;
    report_diagnosis("plaintext client", &result, &seen);
    assert!(result.is_err(), "a plaintext client got metadata over TLS");

    // TLS, but a CA that did not sign the broker's certificate.
    let wrong_ca = vec![
        ("security.protocol".to_owned(), "SSL".to_owned()),
        (
            "ssl.ca.location".to_owned(),
            other.cert.display().to_string(),
        ),
    ];
    let wrong_ca = refused(&stack, &broker, &wrong_ca, "with the wrong CA").await;
    let (result, seen) = client_diagnosis(&broker.brokers(), &wrong_ca, 4).await;
    report_diagnosis("client with the wrong CA", &result, &seen);
    assert!(result.is_err(), "a client with the wrong CA got metadata");
    assert!(
        seen.iter().any(|l| l.contains("certificate verify failed")),
        "librdkafka did not report a certificate verification failure: {seen:#?}"
    );
}

// ---------------------------------------------------------------------------
// SASL/SCRAM over TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_sha_512_over_tls_reserves_a_purchase() {
    let stack = Stack::start().await;
    let tls = self_signed(stack.dir(), "broker");
    let alice = ScramUser::new("alice", "alice-s3cret", "SCRAM-SHA-512");
    let broker = SecureBroker::start(&stack, Some(&tls), std::slice::from_ref(&alice)).await;
    let props = broker.properties(Some(&alice));
    assert!(props.contains(&("security.protocol".to_owned(), "SASL_SSL".to_owned())));

    let all = start_all(&stack, &[], &broker.seckill_env(&props)).await;
    assert_topics_on(&stack, &broker, &props).await;
    buy_one_reserved(&all).await;
}

/// The same with SCRAM-SHA-256, the properties given as `--kafka-property`
/// flags instead of the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_sha_256_over_tls_with_flags_reserves_a_purchase() {
    let stack = Stack::start().await;
    let tls = self_signed(stack.dir(), "broker");
    let bob = ScramUser::new("bob", "bob-hunter2", "SCRAM-SHA-256");
    let broker = SecureBroker::start(&stack, Some(&tls), std::slice::from_ref(&bob)).await;
    let props = broker.properties(Some(&bob));
    let flags: Vec<String> = props
        .iter()
        .flat_map(|(k, v)| ["--kafka-property".to_owned(), format!("{k}={v}")])
        .collect();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();

    let all = start_all(&stack, &flags, &broker.seckill_env(&[])).await;
    assert_topics_on(&stack, &broker, &props).await;
    buy_one_reserved(&all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_wrong_password_or_no_sasl_is_refused() {
    let stack = Stack::start().await;
    let tls = self_signed(stack.dir(), "broker");
    let alice = ScramUser::new("alice", "alice-s3cret", "SCRAM-SHA-512");
    let broker = SecureBroker::start(&stack, Some(&tls), std::slice::from_ref(&alice)).await;

    // The right user, the wrong password.
    let mallory = ScramUser::new("alice", "not-the-password", "SCRAM-SHA-512");
    let wrong = refused(
        &stack,
        &broker,
        &broker.properties(Some(&mallory)),
        "with a wrong password",
    )
    .await;
    let (result, seen) = client_diagnosis(&broker.brokers(), &wrong, 4).await;
    report_diagnosis("client with a wrong password", &result, &seen);
    assert!(result.is_err(), "a wrong password got metadata");
    assert!(
        seen.iter().any(|l| l.contains("SASL authentication error")),
        "librdkafka did not report a SASL authentication error: {seen:#?}"
    );

    // TLS only: the broker wants SASL.
    let tls_only = refused(
        &stack,
        &broker,
        &broker.properties(None),
        "with TLS but no SASL",
    )
    .await;
    let (result, seen) = client_diagnosis(&broker.brokers(), &tls_only, 4).await;
    report_diagnosis("client without SASL", &result, &seen);
    assert!(result.is_err(), "a client without SASL got metadata");
}
