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
