/// The Kafka topics of one deployment, all derived from one prefix so tests
/// and parallel environments never share a topic by accident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Purchases and every command that changes a campaign, key = campaign id.
    pub requests: String,
    /// One event per decision and per order state change, key = campaign id.
    pub orders: String,
    /// Request-topic messages that could not be parsed or validated.
    pub requests_dlq: String,
    /// Order events the sinks could not store.
    pub orders_dlq: String,
    /// One event per paid order or free prize: deliver it (key = order id).
    pub fulfilment: String,
    /// DLQ messages replayed too often: kept aside, never replayed again.
    pub requests_quarantine: String,
    pub orders_quarantine: String,
    prefix: String,
}

impl Topics {
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            requests: format!("{prefix}.requests"),
            orders: format!("{prefix}.orders"),
            requests_dlq: format!("{prefix}.requests.dlq"),
            orders_dlq: format!("{prefix}.orders.dlq"),
            fulfilment: format!("{prefix}.fulfilment"),
            requests_quarantine: format!("{prefix}.requests.quarantine"),
            orders_quarantine: format!("{prefix}.orders.quarantine"),
            prefix: prefix.to_owned(),
        }
    }

    /// Retry tier `tier` (1-based) of the sinks.
    pub fn orders_retry(&self, tier: usize) -> String {
        format!("{}.orders.retry.{tier}", self.prefix)
    }

    /// Consumer group of the sinks' retry tier `tier`.
    pub fn retry_group(&self, tier: usize) -> String {
        format!("{}.sinks.retry.{tier}", self.prefix)
    }

    /// Consumer group of the processors.
    pub fn processors_group(prefix: &str) -> String {
        format!("{prefix}.processors")
    }

    /// Consumer group of the sinks.
    pub fn sinks_group(prefix: &str) -> String {
        format!("{prefix}.sinks")
    }
}
