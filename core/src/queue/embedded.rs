//! The embedded queue: job records in a SQLite file, shared by the processes of one machine.
//!
//! A worker leases records: a leased record is invisible to other workers until its lease
//! expires, and the worker renews the leases of the records it still processes. A record is
//! deleted once its result is in the job database. When a worker dies, its leases are
//! released as soon as another worker sees that the owning process is gone (on Linux, where
//! the owner id names a process and its start time), or else when they expire. Records thus
//! survive restarts, and no two live workers hold the same record at once.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::SqlitePool;
use sqlx::{Row, SqliteConnection};

use crate::db::PoolSettings;
use crate::job::{format_timestamp, now_micros};

/// How long a lease lasts without renewal.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// A record handed to one worker.
#[derive(Debug, Clone)]
pub struct LeasedRecord {
    pub seq: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    /// How many times the record has been leased, this time included.
    pub deliveries: i64,
}

/// Handle on an embedded queue file.
#[derive(Clone, Debug)]
pub struct EmbeddedQueue {
    pool: SqlitePool,
    owner: String,
    lease: Duration,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queue_records (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    record_key       TEXT,
    payload          BLOB    NOT NULL,
    enqueued_at      TEXT    NOT NULL,
    deliveries       INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    -- Unix milliseconds; 0 when the record is not leased.
    lease_expires_ms INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queue_records_lease_idx ON queue_records (lease_expires_ms, seq);
CREATE TABLE IF NOT EXISTS queue_dead_letters (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    record_key  TEXT,
    payload     BLOB,
    error_code  TEXT    NOT NULL,
    attempts    INTEGER NOT NULL,
    failed_at   TEXT    NOT NULL
);
";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// JSON array of sequence numbers, which `json_each` turns into a list in SQL.
fn seq_list(seqs: &[i64]) -> String {
    serde_json::to_string(seqs).unwrap_or_else(|_| "[]".to_owned())
}

impl EmbeddedQueue {
    /// Opens the queue file, creating it and its tables when missing.
    pub async fn open(path: &Path, lease: Duration) -> Result<EmbeddedQueue, sqlx::Error> {
        let settings = PoolSettings {
            statement_timeout: Duration::from_secs(10),
            ..PoolSettings::default()
        };
        let pool = crate::db::sqlite::open_pool(path, &settings).map_err(|e| e.0)?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        Ok(EmbeddedQueue {
            pool,
            owner: process_owner_id(std::process::id())
                .unwrap_or_else(|| format!("{}:0", std::process::id())),
            lease,
        })
    }

    /// Appends a record; returns once it is committed to the file.
    pub async fn publish(&self, key: &str, payload: &[u8]) -> Result<(), super::QueueError> {
        sqlx::query(
            "INSERT INTO queue_records (record_key, payload, enqueued_at) VALUES (?1, ?2, ?3)",
        )
        .bind(key)
        .bind(payload)
        .bind(format_timestamp(&now_micros()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Leases up to `max` records that no live worker holds, oldest first.
    pub async fn lease(&self, max: usize) -> Result<Vec<LeasedRecord>, sqlx::Error> {
        let now = now_ms();
        let rows = sqlx::query(
            "UPDATE queue_records SET lease_owner = ?1, lease_expires_ms = ?2, \
             deliveries = deliveries + 1 \
             WHERE seq IN (SELECT seq FROM queue_records WHERE lease_expires_ms < ?3 \
                           ORDER BY seq LIMIT ?4) \
             RETURNING seq, record_key, payload, deliveries",
        )
        .bind(&self.owner)
        .bind(now.saturating_add(ms(self.lease)))
        .bind(now)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        let mut records: Vec<LeasedRecord> = rows
            .into_iter()
            .map(|row| LeasedRecord {
                seq: row.get(0),
                key: row.get(1),
                payload: row.get(2),
                deliveries: row.get(3),
            })
            .collect();
        records.sort_by_key(|r| r.seq);
        Ok(records)
    }

    /// Extends the leases this process holds on `seqs`.
    pub async fn renew(&self, seqs: &[i64]) -> Result<(), sqlx::Error> {
        if seqs.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE queue_records SET lease_expires_ms = ?1 \
             WHERE seq IN (SELECT value FROM json_each(?2)) AND lease_owner = ?3",
        )
        .bind(now_ms().saturating_add(ms(self.lease)))
        .bind(seq_list(seqs))
        .bind(&self.owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes records whose results are recorded.
    pub async fn acknowledge(&self, seqs: &[i64]) -> Result<(), sqlx::Error> {
        if seqs.is_empty() {
            return Ok(());
        }
        sqlx::query("DELETE FROM queue_records WHERE seq IN (SELECT value FROM json_each(?1))")
            .bind(seq_list(seqs))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Gives leased records back at once, for a worker that stops before finishing them.
    pub async fn release(&self, seqs: &[i64]) -> Result<(), sqlx::Error> {
        if seqs.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE queue_records SET lease_expires_ms = 0, lease_owner = NULL \
             WHERE seq IN (SELECT value FROM json_each(?1)) AND lease_owner = ?2",
        )
        .bind(seq_list(seqs))
        .bind(&self.owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Moves a record to the dead letters, keeping its key and payload, in one transaction.
    pub async fn dead_letter(
        &self,
        seq: i64,
        code: &str,
        attempts: u32,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        move_to_dead_letters(&mut tx, seq, code, attempts).await?;
        tx.commit().await
    }

    /// Releases the leases of processes on this machine that no longer run. Returns how many
    /// records became visible again.
    pub async fn reclaim_abandoned(&self) -> Result<u64, sqlx::Error> {
        let owners: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT lease_owner FROM queue_records \
             WHERE lease_expires_ms >= ?1 AND lease_owner IS NOT NULL",
        )
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        let mut reclaimed = 0;
        for owner in owners.iter().filter(|o| owner_is_gone(o)) {
            let done = sqlx::query(
                "UPDATE queue_records SET lease_expires_ms = 0, lease_owner = NULL WHERE lease_owner = ?1",
            )
            .bind(owner)
            .execute(&self.pool)
            .await?;
            reclaimed += done.rows_affected();
        }
        Ok(reclaimed)
    }

    /// Number of records not yet acknowledged, leased or not.
    pub async fn depth(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM queue_records")
            .fetch_one(&self.pool)
            .await
    }

    /// Number of dead letters.
    pub async fn dead_letter_count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM queue_dead_letters")
            .fetch_one(&self.pool)
            .await
    }

    pub fn lease_duration(&self) -> Duration {
        self.lease
    }
}

async fn move_to_dead_letters(
    connection: &mut SqliteConnection,
    seq: i64,
    code: &str,
    attempts: u32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO queue_dead_letters (record_key, payload, error_code, attempts, failed_at) \
         SELECT record_key, payload, ?2, ?3, ?4 FROM queue_records WHERE seq = ?1",
    )
    .bind(seq)
    .bind(code)
    .bind(i64::from(attempts))
    .bind(format_timestamp(&now_micros()))
    .execute(&mut *connection)
    .await?;
    sqlx::query("DELETE FROM queue_records WHERE seq = ?1")
        .bind(seq)
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// Returns `PID:START` for a process, where START is its start time in clock ticks since boot
/// (field 22 of `/proc/PID/stat`), so that a reused pid names another owner. `None` where
/// `/proc` is missing.
fn process_owner_id(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in field 2 may contain spaces, so fields are counted after its ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let start = after_name.split_whitespace().nth(19)?;
    Some(format!("{pid}:{start}"))
}

/// Whether the process named by an owner id has ended. An owner id that cannot be checked
/// (no `/proc`, or another form) counts as alive, so its leases wait for expiry.
fn owner_is_gone(owner: &str) -> bool {
    let Some((pid, start)) = owner.split_once(':') else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    if start == "0" || !Path::new("/proc/self/stat").exists() {
        return false;
    }
    process_owner_id(pid).is_none_or(|current| current != owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn queue(lease: Duration) -> (EmbeddedQueue, std::path::PathBuf) {
        let path =
            std::env::temp_dir().join(format!("rfo-queue-{}/queue.db", uuid::Uuid::now_v7()));
        (EmbeddedQueue::open(&path, lease).await.unwrap(), path)
    }

    #[tokio::test]
    async fn lease_hides_records_from_other_workers() {
        let (first, path) = queue(DEFAULT_LEASE).await;
        let mut second = EmbeddedQueue::open(&path, DEFAULT_LEASE).await.unwrap();
        second.owner = "other:1".to_owned();
        for i in 0..3 {
            first.publish(&format!("k{i}"), b"{}").await.unwrap();
        }
        let a = first.lease(2).await.unwrap();
        let b = second.lease(5).await.unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(b.len(), 1, "only the unleased record is handed out");
        assert!(a.iter().all(|r| r.seq != b[0].seq));
        first.acknowledge(&[a[0].seq]).await.unwrap();
        assert_eq!(first.depth().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn expired_lease_is_delivered_again() {
        let (queue, _) = queue(Duration::from_millis(1)).await;
        queue.publish("k", b"{}").await.unwrap();
        let first = queue.lease(1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = queue.lease(1).await.unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].seq, first[0].seq);
        assert_eq!(second[0].deliveries, 2);
    }

    #[tokio::test]
    async fn dead_owner_leases_are_reclaimed() {
        let (queue, path) = queue(DEFAULT_LEASE).await;
        queue.publish("k", b"{}").await.unwrap();
        let mut dead = EmbeddedQueue::open(&path, DEFAULT_LEASE).await.unwrap();
        // A pid above the kernel's maximum (4194304) never runs.
        dead.owner = "999999999:12345".to_owned();
        assert_eq!(dead.lease(1).await.unwrap().len(), 1);
        assert!(
            queue.lease(1).await.unwrap().is_empty(),
            "the lease still hides the record"
        );
        let mut alive = queue.clone();
        alive.owner = process_owner_id(std::process::id()).unwrap();
        assert_eq!(queue.reclaim_abandoned().await.unwrap(), 1);
        assert_eq!(queue.lease(1).await.unwrap().len(), 1);
        assert_eq!(
            queue.reclaim_abandoned().await.unwrap(),
            0,
            "a live owner keeps its lease"
        );
    }

    #[tokio::test]
    async fn dead_letter_keeps_key_and_payload() {
        let (queue, _) = queue(DEFAULT_LEASE).await;
        queue.publish("key-1", b"not json").await.unwrap();
        let leased = queue.lease(1).await.unwrap();
        queue
            .dead_letter(leased[0].seq, "invalid_message", 0)
            .await
            .unwrap();
        assert_eq!(queue.depth().await.unwrap(), 0);
        assert_eq!(queue.dead_letter_count().await.unwrap(), 1);
        let (key, payload): (String, Vec<u8>) =
            sqlx::query_as("SELECT record_key, payload FROM queue_dead_letters")
                .fetch_one(&queue.pool)
                .await
                .unwrap();
        assert_eq!(key, "key-1");
        assert_eq!(payload, b"not json");
    }
}
