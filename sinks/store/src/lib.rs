//! The order store: the `OrderStore` trait, and backends chosen by URL
//! scheme (SQLite embedded, ScyllaDB in production), a fault-injection
//! wrapper for drills, and one conformance suite every backend passes.

mod faults;
mod scylla;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use seckill_schemas::{OrderEvent, OrderView};

pub use faults::FaultInjection;
pub use scylla::ScyllaStore;
pub use sqlite::SqliteStore;

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported store URL {0:?}: use sqlite://PATH (e.g. sqlite://data/orders.db) or scylla://HOST:9042[,HOST:9042]/KEYSPACE[?rf=N]")]
    Url(String),
    /// The backend could not be reached or timed out; trying again later may
    /// succeed.
    #[error("order store unavailable: {0}")]
    Unavailable(String),
    /// The data cannot be stored as it is; retrying will not help.
    #[error("order store refused the data: {0}")]
    Invalid(String),
}

impl StoreError {
    /// Whether trying the same write again later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Which orders to list.
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    pub campaign_id: Option<String>,
    pub user_id: Option<String>,
    /// Most rows returned.
    pub limit: usize,
    /// Return orders whose id sorts after this one (paging).
    pub after: Option<String>,
}

/// Where orders are kept. Writes are idempotent: applying the same events
/// again, in any number of copies, leaves the same rows.
#[async_trait]
pub trait OrderStore: Send + Sync + 'static {
    /// Applies order events in one unit of work: a new order is inserted, a
    /// known one only moves forward in status (`reserved` -> `paid` |
    /// `cancelled` | `expired`), so a late or replayed event never takes an
    /// order back; an applied campaign reset removes the campaign's orders;
    /// other events are skipped.
    async fn apply(&self, events: &[OrderEvent]) -> Result<(), StoreError>;

    async fn get_order(&self, order_id: &str) -> Result<Option<OrderView>, StoreError>;

    /// Orders matching `filter`, ordered by order id.
    async fn list_orders(&self, filter: &OrderFilter) -> Result<Vec<OrderView>, StoreError>;

    /// Cheap check that the backend answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Opens the store named by `url`: `sqlite://PATH` (relative or absolute) or
/// `scylla://HOST:PORT[,HOST:PORT]/KEYSPACE[?rf=N]`.
pub async fn open_store(url: &str) -> Result<Arc<dyn OrderStore>, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(StoreError::Url(url.to_owned()));
        }
        return Ok(Arc::new(SqliteStore::open(path).await?));
    }
    if let Some(rest) = url.strip_prefix("scylla://") {
        return Ok(Arc::new(ScyllaStore::open(rest).await?));
    }
    Err(StoreError::Url(url.to_owned()))
}

#[cfg(test)]
mod conformance;
