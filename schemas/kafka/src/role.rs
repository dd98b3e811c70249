//! What every role does at start and stop, and the metrics text every role
//! serves.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "no SIGTERM handler; only Ctrl-C stops this process");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Asks the broker for metadata through an existing producer's connection,
/// which tells a broker that is down from one that answers.
pub async fn broker_reachable(producer: &FutureProducer) -> Result<(), KafkaError> {
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(None, Duration::from_secs(2))
            .map(|_| ())
    })
    .await
    .unwrap_or(Err(KafkaError::Canceled))
}

/// Every metric this process registered, in the Prometheus text format
/// (what each role serves at /metrics).
pub fn metrics_text() -> String {
    let mut buf = String::new();
    if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&prometheus::gather(), &mut buf) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    buf
}

/// How long a role waits for a Kafka client to close as it stops.
pub const CLOSE_ON_STOP: Duration = Duration::from_secs(2);

/// Drops `value` on a thread of its own and waits at most
/// [`CLOSE_ON_STOP`] for it. A consumer's drop leaves the group and a
/// producer's purges its queue; both can block while the broker is
/// unreachable. One that does not finish in time is left to the process
/// exit.
pub async fn close_on_stop<T: Send + 'static>(what: &'static str, value: T) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("close-on-stop".to_owned())
        .spawn(move || {
            drop(value);
            let _ = tx.send(());
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, what, "no thread to close on; closing in place");
        return;
    }
    if tokio::time::timeout(CLOSE_ON_STOP, rx).await.is_err() {
        tracing::warn!(
            what,
            timeout_ms = CLOSE_ON_STOP.as_millis() as u64,
            "did not close in time (broker unreachable?); left to the process exit"
        );
    }
}
