//! The embedded default store: one SQLite file in WAL mode. One connection
//! writes (SQLite allows one writer); another serves reads so that API reads
//! never wait for a batch transaction.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use seckill_schemas::{OrderEvent, OrderView};

use crate::{OrderFilter, OrderStore, StoreError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
    order_id      TEXT PRIMARY KEY,
    request_id    TEXT NOT NULL,
    campaign_id   TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    quantity      INTEGER NOT NULL,
    price         INTEGER NOT NULL,
    status        TEXT NOT NULL,
    status_rank   INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    prize_id      TEXT,
    item_name     TEXT NOT NULL DEFAULT '',
    award_type    TEXT NOT NULL DEFAULT 'physical',
    payment_ref   TEXT
);
CREATE INDEX IF NOT EXISTS orders_campaign_user ON orders (campaign_id, user_id);
CREATE INDEX IF NOT EXISTS orders_user ON orders (user_id);
";

// A status only moves to a higher rank, so a late or replayed event never
// takes an order back; the payment reference comes with the move to paid.
const UPSERT: &str = "
INSERT INTO orders (order_id, request_id, campaign_id, user_id, quantity, price,
                    status, status_rank, created_at_ms, updated_at_ms, expires_at_ms,
                    prize_id, item_name, award_type, payment_ref)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
ON CONFLICT (order_id) DO UPDATE SET
    status = excluded.status,
    status_rank = excluded.status_rank,
    updated_at_ms = excluded.updated_at_ms,
    payment_ref = COALESCE(excluded.payment_ref, orders.payment_ref)
WHERE excluded.status_rank > orders.status_rank
";

const COLUMNS: &str = "order_id, request_id, campaign_id, user_id, quantity, price, status, \
                       created_at_ms, updated_at_ms, expires_at_ms, prize_id, item_name, award_type, \
                       payment_ref";

/// Columns added after the first release, for files created before them.
const ADDED_COLUMNS: [(&str, &str); 4] = [
    ("prize_id", "TEXT"),
    ("item_name", "TEXT NOT NULL DEFAULT ''"),
    ("award_type", "TEXT NOT NULL DEFAULT 'physical'"),
    ("payment_ref", "TEXT"),
];

/// SQLite-backed [`OrderStore`].
pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(ref f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Invalid(e.to_string())
        }
        e => StoreError::Unavailable(e.to_string()),
    }
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| {
        StoreError::Unavailable(format!("cannot open SQLite file {}: {e}", path.display()))
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(unavailable)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(unavailable)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(unavailable)?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare("SELECT name FROM pragma_table_info('orders')")
        .map_err(unavailable)?;
    let have: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .map_err(unavailable)?
        .collect::<Result<_, _>>()
        .map_err(unavailable)?;
    for (name, kind) in ADDED_COLUMNS {
        if !have.iter().any(|h| h == name) {
            conn.execute_batch(&format!("ALTER TABLE orders ADD COLUMN {name} {kind}"))
                .map_err(unavailable)?;
        }
    }
    Ok(())
}

fn row_to_view(row: &rusqlite::Row<'_>) -> rusqlite::Result<OrderView> {
    Ok(OrderView {
        order_id: row.get(0)?,
        request_id: row.get(1)?,
        campaign_id: row.get(2)?,
        user_id: row.get(3)?,
        quantity: row.get(4)?,
        price: row.get::<_, i64>(5)? as u64,
        status: {
            let raw: String = row.get(6)?;
            raw.parse().map_err(|e: seckill_schemas::UnknownStatus| {
                rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, e.into())
            })?
        },
        created_at_ms: row.get(7)?,
        updated_at_ms: row.get(8)?,
        expires_at_ms: row.get(9)?,
        prize_id: row.get(10)?,
        item_name: row.get(11)?,
        award_type: serde_json::from_value(serde_json::Value::String(row.get(12)?))
            .unwrap_or_default(),
        payment_ref: row.get(13)?,
    })
}

impl SqliteStore {
    /// Opens (and creates if needed) the database at `path`.
    pub async fn open(path: &str) -> Result<Self, StoreError> {
        let path = Path::new(path).to_path_buf();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
            let writer = connect(&path)?;
            writer.execute_batch(SCHEMA).map_err(unavailable)?;
            migrate(&writer)?;
            let reader = connect(&path)?;
            Ok(Self {
                writer: Arc::new(Mutex::new(writer)),
                reader: Arc::new(Mutex::new(reader)),
            })
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }

    async fn with<T, F>(conn: &Arc<Mutex<Connection>>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(conn);
        tokio::task::spawn_blocking(move || {
            // A std Mutex is right here: it is held only inside this blocking
            // task, never across an await. A poisoned lock means a panic
            // mid-statement; SQLite rolled the transaction back, so the
            // connection is still usable.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }
}

#[async_trait]
impl OrderStore for SqliteStore {
    async fn apply(&self, events: &[OrderEvent]) -> Result<(), StoreError> {
        let events = events.to_vec();
        Self::with(&self.writer, move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            {
                let mut upsert = tx.prepare_cached(UPSERT).map_err(unavailable)?;
                for e in &events {
                    if let Some(campaign_id) = e.reset_campaign() {
                        tx.execute(
                            "DELETE FROM orders WHERE campaign_id = ?1",
                            params![campaign_id],
                        )
                        .map_err(unavailable)?;
                        continue;
                    }
                    let Some((status, r)) = e.order_state() else {
                        continue;
                    };
                    upsert
                        .execute(params![
                            r.order_id,
                            r.purchase_request_id,
                            r.campaign_id,
                            r.user_id,
                            r.quantity,
                            r.price as i64,
                            status.as_str(),
                            status.rank(),
                            r.created_at_ms,
                            r.changed_at_ms,
                            r.expires_at_ms,
                            r.prize_id,
                            r.item_name,
                            r.award_type.as_str(),
                            r.payment_ref,
                        ])
                        .map_err(unavailable)?;
                }
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn get_order(&self, order_id: &str) -> Result<Option<OrderView>, StoreError> {
        let id = order_id.to_owned();
        Self::with(&self.reader, move |conn| {
            conn.query_row(
                &format!("SELECT {COLUMNS} FROM orders WHERE order_id = ?1"),
                params![id],
                row_to_view,
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn list_orders(&self, filter: &OrderFilter) -> Result<Vec<OrderView>, StoreError> {
        let f = filter.clone();
        Self::with(&self.reader, move |conn| {
            let sql = format!(
                "SELECT {COLUMNS} FROM orders
                 WHERE (?1 IS NULL OR campaign_id = ?1)
                   AND (?2 IS NULL OR user_id = ?2)
                   AND (?3 IS NULL OR order_id > ?3)
                 ORDER BY order_id LIMIT ?4"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(unavailable)?;
            let rows = stmt
                .query_map(
                    params![f.campaign_id, f.user_id, f.after, f.limit as i64],
                    row_to_view,
                )
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Self::with(&self.reader, |conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))
                .map_err(unavailable)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seckill_schemas::{order_id_for, AwardType, OrderChanged, OrderStatus};

    /// A file written before payment references: opening it adds the
    /// column, its orders read without one, and a pay stores its reference.
    #[tokio::test]
    async fn a_file_without_payment_refs_is_migrated() {
        let dir = tempfile::tempdir().expect("sqlite");
        let path = dir.path().join("orders.db");
        let id = order_id_for("old-1");
        {
            let conn = Connection::open(&path).expect("sqlite");
            conn.execute_batch(
                "CREATE TABLE orders (
                    order_id TEXT PRIMARY KEY, request_id TEXT NOT NULL,
                    campaign_id TEXT NOT NULL, user_id TEXT NOT NULL,
                    quantity INTEGER NOT NULL, price INTEGER NOT NULL,
                    status TEXT NOT NULL, status_rank INTEGER NOT NULL,
                    created_at_ms INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL,
                    expires_at_ms INTEGER NOT NULL, prize_id TEXT,
                    item_name TEXT NOT NULL DEFAULT '',
                    award_type TEXT NOT NULL DEFAULT 'physical');",
            )
            .expect("sqlite");
            conn.execute(
                "INSERT INTO orders VALUES (?1, 'old-1', 'c', 'u', 1, 5, 'reserved', 1, 1, 1, 9,
                 NULL, 'phone', 'physical')",
                params![id],
            )
            .expect("sqlite");
        }
        let store = SqliteStore::open(path.to_str().expect("UTF-8 path"))
            .await
            .expect("sqlite");
        let before = store.get_order(&id).await.expect("read").expect("stored");
        assert_eq!(
            (before.status, before.payment_ref),
            (OrderStatus::Reserved, None)
        );
        store
            .apply(&[OrderEvent::Paid(OrderChanged {
                schema_version: 1,
                request_id: "pay-1".into(),
                order_id: id.clone(),
                purchase_request_id: "old-1".into(),
                campaign_id: "c".into(),
                user_id: "u".into(),
                quantity: 1,
                price: 5,
                created_at_ms: 1,
                expires_at_ms: 9,
                decided_at_ms: 4,
                prize_id: None,
                item_name: "phone".into(),
                award_type: AwardType::Physical,
                payment_ref: Some("psp-9".into()),
            })])
            .await
            .expect("sqlite");
        let after = store.get_order(&id).await.expect("read").expect("stored");
        assert_eq!(
            (after.status, after.payment_ref.as_deref()),
            (OrderStatus::Paid, Some("psp-9"))
        );
        drop(store);
        // Opening it again migrates nothing more.
        let again = SqliteStore::open(path.to_str().expect("UTF-8 path"))
            .await
            .expect("sqlite");
        assert_eq!(again.get_order(&id).await.expect("sqlite"), Some(after));
    }
}
