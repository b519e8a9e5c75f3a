//! Durable state: jobs, tasks, attempts and agents in SQLite.
//!
//! The database is the truth: the coordinator can be killed at any instant and restarted on the
//! same data directory without losing a job or recording a result twice. Every state change of a
//! task is one transaction guarded by the state it expects (`WHERE state = 'running' AND attempt
//! = ?`), so a late or duplicate result cannot overwrite a newer one. Writing transactions
//! start with `BEGIN IMMEDIATE`, taking SQLite's write lock up front, so concurrent writers wait
//! (up to the busy timeout) instead of failing when one of them upgrades a read to a write.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use lull_protocol::Digest;
use lull_protocol::job::JobSpec;
use lull_protocol::message::{AttemptId, CheckpointRef, TaskId, TaskResult};
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, ConnectOptions, Connection, Executor, Row};

mod agents;
mod clusters;
#[cfg(test)]
mod testing;
mod tokens;
pub use agents::{AgentRecord, EnrollRefusal, Enrolled};
pub use clusters::{ClusterInfo, ClusterRefusal};
pub use tokens::{Token, TokenInfo, TokenKind, TokenRefusal, TokenSpec};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error. (Its text already includes its causes, so it is not
    /// chained as a source, which would print them twice.)
    #[error("database: {0}")]
    Db(sqlx::Error),
    /// A migration failed.
    #[error("database migration: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// A stored JSON column could not be read back.
    #[error("stored data is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// No such job.
    #[error("no job {0}")]
    NoJob(u64),
    /// Not possible on this backend.
    #[error("{0}")]
    Unsupported(&'static str),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Db(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(e)
    }
}

type Result<T> = std::result::Result<T, StoreError>;

/// A task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for an agent.
    Pending,
    /// Assigned to an agent.
    Running,
    /// Ended well.
    Succeeded,
    /// Ended badly after its last attempt.
    Failed,
    /// Cancelled by a person.
    Cancelled,
}

impl TaskState {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Whether the task has ended for good.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }
}

impl FromStr for TaskState {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => TaskState::Pending,
            "running" => TaskState::Running,
            "succeeded" => TaskState::Succeeded,
            "failed" => TaskState::Failed,
            "cancelled" => TaskState::Cancelled,
            other => {
                return Err(StoreError::Corrupt(serde::de::Error::custom(format!(
                    "unknown task state {other:?}"
                ))));
            }
        })
    }
}

/// A job as stored.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// Its number.
    pub id: u64,
    /// Its definition.
    pub spec: JobSpec,
    /// When it was submitted (ms since the Unix epoch).
    pub created_ms: i64,
    /// Whether a person cancelled it.
    pub cancelled: bool,
}

/// A job as lists show it, without its definition.
#[derive(Debug, Clone)]
pub struct JobHeader {
    /// Its number.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// When it was submitted (ms since the Unix epoch).
    pub created_ms: i64,
    /// Whether a person cancelled it.
    pub cancelled: bool,
    /// Its tasks by state.
    pub counts: Counts,
}

/// A task as stored.
#[derive(Debug, Clone, Serialize)]
pub struct TaskRow {
    /// The task.
    #[serde(flatten)]
    pub id: TaskId,
    /// Its state.
    pub state: TaskState,
    /// The current or last attempt (0 before the first).
    pub attempt: u32,
    /// The agent of the current or last attempt.
    pub agent: Option<String>,
    /// Why it failed or was cancelled.
    pub cause: Option<String>,
}

/// One attempt as stored.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRow {
    /// The attempt number.
    pub attempt: u32,
    /// The agent it ran on.
    pub agent: String,
    /// When it was assigned.
    pub assigned_ms: i64,
    /// When its guest started.
    pub started_ms: Option<i64>,
    /// Microseconds from the assignment reaching the agent to its guest running.
    pub setup_us: Option<i64>,
    /// When it ended.
    pub finished_ms: Option<i64>,
    /// How it ended, in words (`succeeded`, `lost`, a cause...).
    pub outcome: Option<String>,
    /// Its result, when the agent sent one.
    pub result: Option<TaskResult>,
}

/// Task counts by state.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Waiting for an agent.
    pub pending: u64,
    /// On an agent.
    pub running: u64,
    /// Done well.
    pub succeeded: u64,
    /// Done badly.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
}

impl Counts {
    fn add(&mut self, state: TaskState, n: u64) {
        match state {
            TaskState::Pending => self.pending += n,
            TaskState::Running => self.running += n,
            TaskState::Succeeded => self.succeeded += n,
            TaskState::Failed => self.failed += n,
            TaskState::Cancelled => self.cancelled += n,
        }
    }
    /// All tasks.
    pub fn total(&self) -> u64 {
        self.pending + self.running + self.succeeded + self.failed + self.cancelled
    }
}

/// A change of an agent's scavenging state.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AgentEvent {
    /// When the coordinator heard of it (ms since the Unix epoch).
    pub at_ms: i64,
    /// The state left.
    pub from: String,
    /// The state entered.
    pub to: String,
    /// Why.
    pub reason: String,
    /// The attempts running or paused on the agent then.
    pub attempts: Vec<AttemptId>,
}

/// `$first, $first+1, ...`: `n` placeholders for an `IN (...)` list.
pub(crate) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The advisory lock PostgreSQL writers take (an arbitrary constant: "lull" in ASCII).
const WRITE_LOCK: i64 = 0x6c75_6c6c;
/// The advisory lock of the coordinator looking for expired leases ("lulh").
const HOUSEKEEPING_LOCK: i64 = 0x6c75_6c68;

/// What recording a result did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Stored; the task is now in this state.
    Stored(TaskState),
    /// Not stored: the attempt is not the task's current one, or was already recorded.
    Stale,
}

/// What [`Store::record_checkpoint`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointRecorded {
    /// Kept as the task's latest; `superseded` is the state it replaced, when that was a
    /// different one.
    Kept {
        /// The state no longer the task's latest.
        superseded: Option<Digest>,
    },
    /// Not kept: the attempt is not the agent's running one, or a newer checkpoint is kept.
    Stale,
}

/// Which database a store is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (the default).
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// The schema's migrations, one directory per backend, with the same versions.
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The coordinator's database: SQLite, or PostgreSQL for coordinators sharing one.
///
/// Every query is one SQL text for both, with `$N` placeholders (which SQLite reads as named
/// parameters and sqlx binds by their number). Writing transactions go one at a time on both:
/// SQLite's `BEGIN IMMEDIATE` takes its write lock, and on PostgreSQL the transaction takes a
/// transaction-scoped advisory lock first (`Store::begin_write`).
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// How long an assignment's lease lasts in the database without renewal, in ms.
    lease_ms: i64,
    /// The database's clock minus this machine's, in ms (0 on SQLite): see [`Store::now_ms`].
    clock_offset_ms: Arc<AtomicI64>,
}

/// This machine's wall clock, in milliseconds since the Unix epoch.
fn local_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A clock this far off the database's is said in the log.
const CLOCK_OFF_WARNING_MS: i64 = 1_000;

impl Store {
    /// Opens (creating if needed) the SQLite database at `path`, in WAL mode with full sync,
    /// and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        let url = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .to_url_lossy();
        Self::connect_url(url.as_str(), Backend::Sqlite).await
    }

    /// Opens the database `database` names: a `postgres://` or `postgresql://` URL, or the
    /// path of a SQLite file.
    pub async fn connect(database: &str) -> Result<Self> {
        if database.starts_with("postgres://") || database.starts_with("postgresql://") {
            Self::connect_url(database, Backend::Postgres).await
        } else {
            Self::open(Path::new(database)).await
        }
    }

    async fn connect_url(url: &str, backend: Backend) -> Result<Self> {
        static DRIVERS: std::sync::Once = std::sync::Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        if backend == Backend::Postgres {
            // One connection first, so that a wrong address or password is reported as such
            // rather than as the pool's timeout.
            let conn = sqlx::AnyConnection::connect(url).await?;
            conn.close().await?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 8,
            })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL and full sync: a result acknowledged is on disk; writers wait
                        // for each other up to 10 s rather than failing.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        match backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        let store = Self {
            pool,
            backend,
            lease_ms: 30_000,
            clock_offset_ms: Arc::default(),
        };
        store.sync_clock().await?;
        Ok(store)
    }

    /// Now, in milliseconds since the Unix epoch, on the database's clock: on PostgreSQL the
    /// server's (as last measured by [`Store::sync_clock`]), so that coordinators whose clocks
    /// differ still agree on leases and on the order of events; on SQLite, this machine's.
    /// Every time the store is given or compares comes from here.
    pub fn now_ms(&self) -> i64 {
        local_ms().saturating_add(self.clock_offset_ms.load(Ordering::Relaxed))
    }

    /// Measures how far the database's clock is from this machine's (PostgreSQL only), for
    /// [`Store::now_ms`]; returns the difference in ms, the database's minus this machine's.
    pub async fn sync_clock(&self) -> Result<i64> {
        if self.backend != Backend::Postgres {
            return Ok(0);
        }
        let before = local_ms();
        let server: i64 = sqlx::query(
            "SELECT CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT)",
        )
        .fetch_one(&self.pool)
        .await?
        .get(0);
        let after = local_ms();
        // The server read its clock about halfway through the round trip.
        let offset = server - (before + (after - before) / 2);
        let previous = self.clock_offset_ms.swap(offset, Ordering::Relaxed);
        if offset.abs() >= CLOCK_OFF_WARNING_MS && (offset - previous).abs() >= CLOCK_OFF_WARNING_MS
        {
            tracing::warn!(
                offset_ms = offset,
                "this machine's clock is off the database server's; times and leases follow the server's"
            );
        }
        Ok(offset)
    }

    /// The same store, giving assignments leases of `lease` in the database.
    pub fn with_lease(mut self, lease: std::time::Duration) -> Self {
        self.lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        self
    }

    /// Renews, until `until_ms`, the leases of the tasks running on these agents (those
    /// connected to this coordinator).
    pub async fn renew_leases(&self, agents: &[String], until_ms: i64) -> Result<u64> {
        let mut done = 0;
        for chunk in agents.chunks(500) {
            let sql = format!(
                "UPDATE tasks SET lease_until_ms = $1 WHERE state = 'running' AND agent_id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(until_ms);
            for a in chunk {
                q = q.bind(a);
            }
            done += q.execute(&self.pool).await?.rows_affected();
        }
        Ok(done)
    }

    /// Gives every running task a lease until `until_ms` (at a coordinator's start, so that
    /// agents have a lease's time to come back).
    pub async fn extend_running_leases(&self, until_ms: i64) -> Result<()> {
        sqlx::query("UPDATE tasks SET lease_until_ms = $1 WHERE state = 'running'")
            .bind(until_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The running attempts whose lease in the database ran out before `now_ms`, with their
    /// agents. On PostgreSQL only one coordinator at a time gets them (the others get none
    /// while it looks); ending them is guarded by the attempt's state anyway.
    pub async fn expired_leases(&self, now_ms: i64) -> Result<Vec<(AttemptId, String)>> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            let got: bool = sqlx::query("SELECT pg_try_advisory_xact_lock($1)")
                .bind(HOUSEKEEPING_LOCK)
                .fetch_one(&mut *tx)
                .await?
                .get(0);
            if !got {
                return Ok(Vec::new());
            }
        }
        let rows = sqlx::query(
            "SELECT job_id, idx, attempt, agent_id FROM tasks \
             WHERE state = 'running' AND lease_until_ms IS NOT NULL AND lease_until_ms < $1",
        )
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    AttemptId {
                        task: TaskId {
                            job: r.get::<i64, _>(0) as u64,
                            index: r.get::<i64, _>(1) as u32,
                        },
                        attempt: r.get::<i64, _>(2) as u32,
                    },
                    r.get::<Option<String>, _>(3).unwrap_or_default(),
                )
            })
            .collect())
    }

    /// Pending tasks after `after` in the order (time they became pending, job, index), at
    /// most `limit`, with that time: how coordinators sharing a database learn of work
    /// submitted or requeued by another. Start from `(0, 0, 0)`; go on from the last one seen.
    pub async fn pending_after(
        &self,
        after: (i64, TaskId),
        limit: u32,
    ) -> Result<Vec<(TaskId, i64)>> {
        let (at, task) = after;
        let rows = sqlx::query(
            "SELECT job_id, idx, updated_ms FROM tasks WHERE state = 'pending' \
             AND (updated_ms > $1 OR (updated_ms = $1 AND (job_id > $2 OR (job_id = $2 AND idx > $3)))) \
             ORDER BY updated_ms, job_id, idx LIMIT $4",
        )
        .bind(at)
        .bind(task.job as i64)
        .bind(i64::from(task.index))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    TaskId {
                        job: r.get::<i64, _>(0) as u64,
                        index: r.get::<i64, _>(1) as u32,
                    },
                    r.get(2),
                )
            })
            .collect())
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Starts a writing transaction, which runs alone among writers: on SQLite it takes the
    /// write lock at once (`BEGIN IMMEDIATE`), so two writers never deadlock upgrading a read;
    /// on PostgreSQL it takes a transaction-scoped advisory lock, so that the checks each
    /// transaction makes before it writes (is the attempt current, is the token unused) hold
    /// until it commits, as they do on SQLite.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        match self.backend {
            Backend::Sqlite => Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?),
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(WRITE_LOCK)
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
    }

    /// Which of these jobs are cancelled.
    pub async fn cancelled_among(&self, jobs: &[u64]) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for chunk in jobs.chunks(500) {
            let sql = format!(
                "SELECT id FROM jobs WHERE cancelled != 0 AND id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for j in chunk {
                q = q.bind(*j as i64);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.push(r.get::<i64, _>(0) as u64);
            }
        }
        Ok(out)
    }

    /// Writes a consistent copy of the database to `path` (which must not exist), while other
    /// connections go on (SQLite's `VACUUM INTO`). PostgreSQL databases are backed up with
    /// PostgreSQL's own tools (`pg_dump`).
    pub async fn backup_into(&self, path: &Path) -> Result<()> {
        if self.backend == Backend::Postgres {
            return Err(StoreError::Unsupported(
                "this coordinator's database is PostgreSQL: back it up with pg_dump",
            ));
        }
        sqlx::query("VACUUM INTO $1")
            .bind(path.to_string_lossy().into_owned())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Stores a job and its tasks (all pending); returns its number.
    pub async fn insert_job(&self, spec: &JobSpec, now_ms: i64) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO jobs (name, spec, created_ms) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(&spec.name)
        .bind(serde_json::to_string(spec)?)
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        // Tasks in chunks of rows sharing the job, state and time: `($1, idx, 'pending', 0,
        // $2)`, with the indexes written into the SQL (they are numbers we made).
        const CHUNK: u32 = 1000;
        let mut start = 0u32;
        while start < spec.count {
            let end = (start + CHUNK).min(spec.count);
            let rows: Vec<String> = (start..end)
                .map(|idx| format!("($1, {idx}, 'pending', 0, $2)"))
                .collect();
            let sql = format!(
                "INSERT INTO tasks (job_id, idx, state, attempt, updated_ms) VALUES {}",
                rows.join(", ")
            );
            sqlx::query(&sql)
                .bind(id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            start = end;
        }
        tx.commit().await?;
        Ok(id as u64)
    }

    /// A job by number.
    pub async fn job(&self, id: u64) -> Result<JobRow> {
        let row = sqlx::query("SELECT id, spec, created_ms, cancelled FROM jobs WHERE id = $1")
            .bind(id as i64)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NoJob(id))?;
        job_row(&row)
    }

    /// All jobs, newest first.
    pub async fn jobs(&self) -> Result<Vec<JobRow>> {
        let rows = sqlx::query("SELECT id, spec, created_ms, cancelled FROM jobs ORDER BY id DESC")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_row).collect()
    }

    /// The newest jobs (all of them, or the newest `limit`), newest first, with their task
    /// counts but not their definitions: cheap enough to read every second.
    pub async fn newest_jobs(&self, limit: Option<u32>) -> Result<Vec<JobHeader>> {
        let rows = sqlx::query(
            "SELECT id, name, created_ms, cancelled FROM jobs ORDER BY id DESC LIMIT $1",
        )
        .bind(limit.map_or(i64::MAX, i64::from))
        .fetch_all(&self.pool)
        .await?;
        let mut jobs: Vec<JobHeader> = rows
            .iter()
            .map(|r| JobHeader {
                id: r.get::<i64, _>(0) as u64,
                name: r.get(1),
                created_ms: r.get(2),
                cancelled: r.get::<i64, _>(3) != 0,
                counts: Counts::default(),
            })
            .collect();
        let Some(oldest) = jobs.last().map(|j| j.id) else {
            return Ok(jobs);
        };
        let rows = sqlx::query(
            "SELECT job_id, state, COUNT(*) FROM tasks WHERE job_id >= $1 GROUP BY job_id, state",
        )
        .bind(oldest as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut counts = job_state_counts(&rows)?;
        for j in &mut jobs {
            j.counts = counts.remove(&j.id).unwrap_or_default();
        }
        Ok(jobs)
    }

    /// Task counts by state over every job.
    pub async fn total_counts(&self) -> Result<Counts> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM tasks GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        state_counts(&rows)
    }

    /// Jobs that still have pending or running tasks.
    pub async fn unfinished_jobs(&self) -> Result<Vec<JobRow>> {
        let rows = sqlx::query(
            "SELECT id, spec, created_ms, cancelled FROM jobs WHERE id IN \
             (SELECT DISTINCT job_id FROM tasks WHERE state IN ('pending', 'running'))",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_row).collect()
    }

    /// Every blob a stored job refers to: its modules and files, and the outputs and logs of
    /// its recorded results. Reads every job and result: the blob collector's query, run
    /// now and then.
    pub async fn referenced_blobs(&self) -> Result<std::collections::HashSet<Digest>> {
        use futures::TryStreamExt;
        let mut out = std::collections::HashSet::new();
        let mut jobs = sqlx::query("SELECT spec FROM jobs").fetch(&self.pool);
        while let Some(row) = jobs.try_next().await? {
            let spec: JobSpec = serde_json::from_str(&row.get::<String, _>(0))?;
            out.extend(spec.blobs().map(|(d, _)| d));
        }
        drop(jobs);
        let mut checkpoints = sqlx::query("SELECT digest FROM checkpoints").fetch(&self.pool);
        while let Some(row) = checkpoints.try_next().await? {
            let digest: String = row.get(0);
            out.extend(digest.parse::<Digest>().ok());
        }
        drop(checkpoints);
        let mut results =
            sqlx::query("SELECT result FROM attempts WHERE result IS NOT NULL").fetch(&self.pool);
        while let Some(row) = results.try_next().await? {
            let result: TaskResult = serde_json::from_str(&row.get::<String, _>(0))?;
            out.extend(result.blobs());
        }
        Ok(out)
    }

    /// Deletes a job whose tasks have all ended, with its tasks, attempts and results (its
    /// blobs are collected later, unless other jobs refer to them). `Ok(false)` when some task
    /// is still pending or running.
    pub async fn delete_job(&self, id: u64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let exists = sqlx::query("SELECT 1 FROM jobs WHERE id = $1")
            .bind(id as i64)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !exists {
            return Err(StoreError::NoJob(id));
        }
        let unfinished: i64 = sqlx::query(
            "SELECT COUNT(*) FROM tasks WHERE job_id = $1 AND state IN ('pending', 'running')",
        )
        .bind(id as i64)
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        if unfinished > 0 {
            return Ok(false);
        }
        for table in ["checkpoints", "attempts", "tasks"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE job_id = $1"))
                .bind(id as i64)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM jobs WHERE id = $1")
            .bind(id as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Every task's count, by state (for `/metrics`).
    pub async fn task_state_counts(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM tasks GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) as u64))
            .collect())
    }

    /// Task counts of one job.
    pub async fn job_counts(&self, job: u64) -> Result<Counts> {
        let rows =
            sqlx::query("SELECT state, COUNT(*) FROM tasks WHERE job_id = $1 GROUP BY state")
                .bind(job as i64)
                .fetch_all(&self.pool)
                .await?;
        state_counts(&rows)
    }

    /// The tasks of a job, by index.
    pub async fn tasks(&self, job: u64) -> Result<Vec<TaskRow>> {
        let rows = sqlx::query(
            "SELECT job_id, idx, state, attempt, agent_id, cause FROM tasks WHERE job_id = $1 ORDER BY idx",
        )
        .bind(job as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_row).collect()
    }

    /// Every task in a state, oldest job first.
    pub async fn tasks_in_state(&self, state: TaskState) -> Result<Vec<TaskRow>> {
        let rows = sqlx::query(
            "SELECT job_id, idx, state, attempt, agent_id, cause FROM tasks WHERE state = $1 ORDER BY job_id, idx",
        )
        .bind(state.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_row).collect()
    }

    /// The attempts of a task, oldest first.
    pub async fn attempts(&self, task: TaskId) -> Result<Vec<AttemptRow>> {
        let rows = sqlx::query(
            "SELECT attempt, agent_id, assigned_ms, started_ms, finished_ms, outcome, result, setup_us \
             FROM attempts WHERE job_id = $1 AND idx = $2 ORDER BY attempt",
        )
        .bind(task.job as i64)
        .bind(task.index as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let result: Option<String> = r.get(6);
                Ok(AttemptRow {
                    attempt: r.get::<i64, _>(0) as u32,
                    agent: r.get(1),
                    assigned_ms: r.get(2),
                    started_ms: r.get(3),
                    setup_us: r.get(7),
                    finished_ms: r.get(4),
                    outcome: r.get(5),
                    result: result.map(|s| serde_json::from_str(&s)).transpose()?,
                })
            })
            .collect()
    }

    /// The recorded result of the task's last attempt that has one.
    pub async fn last_results(
        &self,
        job: u64,
    ) -> Result<std::collections::HashMap<u32, TaskResult>> {
        let rows = sqlx::query(
            "SELECT a.idx, a.result FROM attempts a JOIN tasks t ON t.job_id = a.job_id AND t.idx = a.idx \
             WHERE a.job_id = $1 AND a.result IS NOT NULL ORDER BY a.idx, a.attempt",
        )
        .bind(job as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut out = std::collections::HashMap::new();
        for r in rows {
            let idx: i64 = r.get(0);
            let text: String = r.get(1);
            out.insert(idx as u32, serde_json::from_str(&text)?);
        }
        Ok(out)
    }

    /// Assigns a pending task to an agent, starting its next attempt. Returns the attempt, or
    /// `None` when the task was no longer pending.
    pub async fn assign(
        &self,
        task: TaskId,
        agent: &str,
        now_ms: i64,
    ) -> Result<Option<AttemptId>> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "UPDATE tasks SET state = 'running', attempt = attempt + 1, agent_id = $1, updated_ms = $2, \
             lease_until_ms = $5 WHERE job_id = $3 AND idx = $4 AND state = 'pending' RETURNING attempt",
        )
        .bind(agent)
        .bind(now_ms)
        .bind(task.job as i64)
        .bind(task.index as i64)
        .bind(now_ms.saturating_add(self.lease_ms))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let attempt = row.get::<i64, _>(0) as u32;
        sqlx::query(
            "INSERT INTO attempts (job_id, idx, attempt, agent_id, assigned_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(task.job as i64)
        .bind(task.index as i64)
        .bind(attempt as i64)
        .bind(agent)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(AttemptId { task, attempt }))
    }

    /// Keeps a checkpoint as its task's latest, if `attempt` is the task's running attempt on
    /// `agent` and the checkpoint is newer than the one kept (a later attempt, or a later `seq`
    /// of the same attempt). Returns whether it was kept, and the state it replaced.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_checkpoint(
        &self,
        agent: &str,
        attempt: AttemptId,
        digest: &Digest,
        size: u64,
        seq: u64,
        progress: Option<f64>,
        now_ms: i64,
    ) -> Result<CheckpointRecorded> {
        let task = attempt.task;
        let mut tx = self.begin_write().await?;
        let running = sqlx::query(
            "SELECT 1 FROM tasks WHERE job_id = $1 AND idx = $2 AND attempt = $3 AND state = 'running' AND agent_id = $4",
        )
        .bind(task.job as i64)
        .bind(task.index as i64)
        .bind(attempt.attempt as i64)
        .bind(agent)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
        if !running {
            return Ok(CheckpointRecorded::Stale);
        }
        let kept = sqlx::query(
            "SELECT attempt, seq, digest FROM checkpoints WHERE job_id = $1 AND idx = $2",
        )
        .bind(task.job as i64)
        .bind(task.index as i64)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| {
            (
                (r.get::<i64, _>(0), r.get::<i64, _>(1)),
                r.get::<String, _>(2),
            )
        });
        if kept
            .as_ref()
            .is_some_and(|(k, _)| *k >= (attempt.attempt as i64, seq as i64))
        {
            return Ok(CheckpointRecorded::Stale);
        }
        let superseded = kept
            .and_then(|(_, d)| d.parse::<Digest>().ok())
            .filter(|d| d != digest);
        sqlx::query("DELETE FROM checkpoints WHERE job_id = $1 AND idx = $2")
            .bind(task.job as i64)
            .bind(task.index as i64)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO checkpoints (job_id, idx, attempt, seq, agent_id, digest, size, progress, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(task.job as i64)
        .bind(task.index as i64)
        .bind(attempt.attempt as i64)
        .bind(seq as i64)
        .bind(agent)
        .bind(digest.to_string())
        .bind(size as i64)
        .bind(progress)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(CheckpointRecorded::Kept { superseded })
    }

    /// The progress the latest checkpoint of each of a job's tasks recorded, by task index.
    pub async fn checkpoint_progress(
        &self,
        job: u64,
    ) -> Result<std::collections::HashMap<u32, f64>> {
        let rows = sqlx::query(
            "SELECT idx, progress FROM checkpoints WHERE job_id = $1 AND progress IS NOT NULL",
        )
        .bind(job as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<i64, _>(0) as u32, r.get::<f64, _>(1)))
            .collect())
    }

    /// The latest checkpoint kept for a task.
    pub async fn checkpoint(&self, task: TaskId) -> Result<Option<CheckpointRef>> {
        let row = sqlx::query(
            "SELECT digest, size, attempt FROM checkpoints WHERE job_id = $1 AND idx = $2",
        )
        .bind(task.job as i64)
        .bind(task.index as i64)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let digest: String = r.get(0);
            Ok(CheckpointRef {
                digest: digest
                    .parse()
                    .map_err(|e| StoreError::Corrupt(serde::de::Error::custom(e)))?,
                size: r.get::<i64, _>(1) as u64,
                attempt: r.get::<i64, _>(2) as u32,
            })
        })
        .transpose()
    }

    /// Records that an attempt's guest started.
    pub async fn mark_started(&self, attempt: AttemptId, setup_us: u64, now_ms: i64) -> Result<()> {
        sqlx::query(
            "UPDATE attempts SET started_ms = $1, setup_us = $2 WHERE job_id = $3 AND idx = $4 AND attempt = $5 AND started_ms IS NULL",
        )
        .bind(now_ms)
        .bind(setup_us as i64)
        .bind(attempt.task.job as i64)
        .bind(attempt.task.index as i64)
        .bind(attempt.attempt as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records an attempt's result, once. The task moves to succeeded, cancelled, failed, or back
    /// to pending when attempts remain.
    pub async fn record_result(
        &self,
        agent: &str,
        result: &TaskResult,
        now_ms: i64,
    ) -> Result<Recorded> {
        let outcome = if result.succeeded() {
            "succeeded".to_owned()
        } else {
            result.cause().unwrap_or_else(|| "failed".into())
        };
        let json = serde_json::to_string(result)?;
        let next = |job: &JobRow, attempt: u32| {
            if result.succeeded() {
                TaskState::Succeeded
            } else if job.cancelled || result.cancelled() {
                TaskState::Cancelled
            } else if result.evicted() {
                // Not the task's fault: it runs again, whatever its attempts.
                TaskState::Pending
            } else if attempt < job.spec.max_attempts {
                TaskState::Pending
            } else {
                TaskState::Failed
            }
        };
        self.end_attempt(
            result.attempt,
            Some(agent),
            &outcome,
            Some(&json),
            now_ms,
            next,
        )
        .await
    }

    /// Ends an attempt whose agent was lost: the task goes back to pending while attempts
    /// remain, else fails; a cancelled job's task is cancelled.
    pub async fn attempt_lost(
        &self,
        attempt: AttemptId,
        why: &str,
        now_ms: i64,
    ) -> Result<Recorded> {
        let next = |job: &JobRow, n: u32| {
            if job.cancelled {
                TaskState::Cancelled
            } else if n < job.spec.max_attempts {
                TaskState::Pending
            } else {
                TaskState::Failed
            }
        };
        self.end_attempt(attempt, None, why, None, now_ms, next)
            .await
    }

    async fn end_attempt(
        &self,
        attempt: AttemptId,
        agent: Option<&str>,
        outcome: &str,
        result: Option<&str>,
        now_ms: i64,
        next: impl Fn(&JobRow, u32) -> TaskState,
    ) -> Result<Recorded> {
        let job = self.job(attempt.task.job).await?;
        let mut tx = self.begin_write().await?;
        // The attempt must be the task's current one and still running -- or, for a success
        // that arrives after its lease expired, the task must still be waiting for its next
        // attempt: then the work is done and nothing is gained by running it again.
        let late_success_ok = result.is_some() && outcome == "succeeded";
        let current = sqlx::query(
            "SELECT agent_id FROM tasks WHERE job_id = $1 AND idx = $2 AND attempt = $3 \
             AND (state = 'running' OR (state = 'pending' AND $4))",
        )
        .bind(attempt.task.job as i64)
        .bind(attempt.task.index as i64)
        .bind(attempt.attempt as i64)
        .bind(late_success_ok)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(current) = current else {
            return Ok(Recorded::Stale);
        };
        if let Some(agent) = agent {
            let holder: Option<String> = current.get(0);
            if holder.as_deref() != Some(agent) {
                return Ok(Recorded::Stale);
            }
        }
        let state = next(&job, attempt.attempt);
        let cause = match state {
            TaskState::Succeeded | TaskState::Pending => None,
            TaskState::Cancelled => Some("cancelled".to_owned()),
            _ => Some(outcome.to_owned()),
        };
        sqlx::query(
            "UPDATE attempts SET finished_ms = $1, outcome = $2, result = $3 \
             WHERE job_id = $4 AND idx = $5 AND attempt = $6 AND (finished_ms IS NULL OR result IS NULL)",
        )
        .bind(now_ms)
        .bind(outcome)
        .bind(result)
        .bind(attempt.task.job as i64)
        .bind(attempt.task.index as i64)
        .bind(attempt.attempt as i64)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE tasks SET state = $1, cause = $2, updated_ms = $3 WHERE job_id = $4 AND idx = $5",
        )
        .bind(state.as_str())
        .bind(cause)
        .bind(now_ms)
        .bind(attempt.task.job as i64)
        .bind(attempt.task.index as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Recorded::Stored(state))
    }

    /// Cancels a job: pending tasks become cancelled at once; returns the running attempts and
    /// their agents, which the caller asks to stop.
    pub async fn cancel_job(&self, job: u64, now_ms: i64) -> Result<Vec<(AttemptId, String)>> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE jobs SET cancelled = 1 WHERE id = $1")
            .bind(job as i64)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NoJob(job));
        }
        sqlx::query(
            "UPDATE tasks SET state = 'cancelled', cause = 'cancelled before it started', updated_ms = $1 \
             WHERE job_id = $2 AND state = 'pending'",
        )
        .bind(now_ms)
        .bind(job as i64)
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(
            "SELECT idx, attempt, agent_id FROM tasks WHERE job_id = $1 AND state = 'running'",
        )
        .bind(job as i64)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    AttemptId {
                        task: TaskId {
                            job,
                            index: r.get::<i64, _>(0) as u32,
                        },
                        attempt: r.get::<i64, _>(1) as u32,
                    },
                    r.get::<Option<String>, _>(2).unwrap_or_default(),
                )
            })
            .collect())
    }

    /// Records a change of an agent's scavenging state.
    pub async fn record_agent_event(&self, agent: &str, event: &AgentEvent) -> Result<()> {
        sqlx::query(
            "INSERT INTO agent_events (agent_id, at_ms, from_state, to_state, reason, attempts) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(agent)
        .bind(event.at_ms)
        .bind(&event.from)
        .bind(&event.to)
        .bind(&event.reason)
        .bind(serde_json::to_string(&event.attempts)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An agent's latest state changes, newest first.
    pub async fn agent_events(&self, agent: &str, limit: u32) -> Result<Vec<AgentEvent>> {
        let rows = sqlx::query(
            "SELECT at_ms, from_state, to_state, reason, attempts FROM agent_events \
             WHERE agent_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(agent)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let attempts: String = r.get(4);
                Ok(AgentEvent {
                    at_ms: r.get(0),
                    from: r.get(1),
                    to: r.get(2),
                    reason: r.get(3),
                    attempts: serde_json::from_str(&attempts)?,
                })
            })
            .collect()
    }
}

/// Rows of `(state, count)` added up.
fn state_counts(rows: &[AnyRow]) -> Result<Counts> {
    let mut c = Counts::default();
    for r in rows {
        let state: String = r.get(0);
        c.add(state.parse()?, r.get::<i64, _>(1) as u64);
    }
    Ok(c)
}

/// Rows of `(job, state, count)` added up per job.
fn job_state_counts(rows: &[AnyRow]) -> Result<std::collections::HashMap<u64, Counts>> {
    let mut out = std::collections::HashMap::<u64, Counts>::new();
    for r in rows {
        let state: String = r.get(1);
        out.entry(r.get::<i64, _>(0) as u64)
            .or_default()
            .add(state.parse()?, r.get::<i64, _>(2) as u64);
    }
    Ok(out)
}

fn job_row(r: &AnyRow) -> Result<JobRow> {
    let spec: String = r.get(1);
    Ok(JobRow {
        id: r.get::<i64, _>(0) as u64,
        spec: serde_json::from_str(&spec)?,
        created_ms: r.get(2),
        cancelled: r.get::<i64, _>(3) != 0,
    })
}

fn task_row(r: &AnyRow) -> Result<TaskRow> {
    let state: String = r.get(2);
    Ok(TaskRow {
        id: TaskId {
            job: r.get::<i64, _>(0) as u64,
            index: r.get::<i64, _>(1) as u32,
        },
        state: state.parse()?,
        attempt: r.get::<i64, _>(3) as u32,
        agent: r.get(4),
        cause: r.get(5),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::testing::on_each_backend;

    on_each_backend!(
        a_result_is_recorded_once_and_only_for_the_current_attempt,
        failures_retry_until_attempts_run_out,
        a_lost_attempt_is_requeued_and_its_late_success_still_counts,
        an_evicted_attempt_runs_again_whatever_its_attempts,
        agent_state_changes_are_kept_newest_first,
        cancel_stops_pending_tasks_and_lists_running_ones,
        leases_in_the_database_expire_unless_renewed_and_pending_tasks_are_found_by_time,
        references_cover_jobs_and_results_until_the_job_is_deleted,
        only_the_running_attempt_keeps_checkpoints_and_the_newest_wins,
        the_newest_jobs_come_with_their_counts,
    );
    use lull_protocol::Digest;
    use lull_protocol::job::{ModuleSpec, Placement, Resources};
    use lull_protocol::message::{ModuleResult, Outcome};

    /// A job of `count` tasks of one module `m`, for the coordinator's tests.
    pub(crate) fn spec(count: u32, max_attempts: u32) -> JobSpec {
        JobSpec {
            cluster: "default".into(),
            name: "t".into(),
            count,
            modules: vec![ModuleSpec {
                name: "m".into(),
                digest: Digest::of(b"m"),
                size: 1,
                signature: None,
                args: vec![],
                env: Default::default(),
                stdin: None,
                inputs: vec![],
            }],
            resources: Resources {
                memory: 1 << 20,
                timeout_ms: 1000,
                cpu_millis: 1000,
            },
            placement: Placement::default(),
            max_attempts,
        }
    }

    fn result(attempt: AttemptId, code: i32) -> TaskResult {
        TaskResult {
            attempt,
            modules: vec![ModuleResult {
                name: "m".into(),
                outcome: Outcome::Exited { code },
                stdout: None,
                stderr: None,
            }],
            outputs: vec![],
            elapsed_ms: 1,
            outputs_truncated: false,
        }
    }

    async fn a_result_is_recorded_once_and_only_for_the_current_attempt(s: Store) {
        let job = s.insert_job(&spec(2, 3), 0).await.unwrap();
        let task = TaskId { job, index: 0 };
        let a1 = s.assign(task, "agent-a", 1).await.unwrap().unwrap();
        assert_eq!(a1.attempt, 1);
        // Assigning a running task again does nothing.
        assert_eq!(s.assign(task, "agent-b", 1).await.unwrap(), None);
        // Another agent cannot report this attempt.
        assert_eq!(
            s.record_result("agent-b", &result(a1, 0), 2).await.unwrap(),
            Recorded::Stale
        );
        assert_eq!(
            s.record_result("agent-a", &result(a1, 0), 2).await.unwrap(),
            Recorded::Stored(TaskState::Succeeded)
        );
        // The duplicate is ignored.
        assert_eq!(
            s.record_result("agent-a", &result(a1, 0), 3).await.unwrap(),
            Recorded::Stale
        );
        let attempts = s.attempts(task).await.unwrap();
        assert_eq!(attempts.len(), 1);
        assert!(attempts[0].result.is_some());
    }

    async fn references_cover_jobs_and_results_until_the_job_is_deleted(s: Store) {
        let job = s.insert_job(&spec(1, 1), 0).await.unwrap();
        let module = Digest::of(b"m");
        assert_eq!(
            s.referenced_blobs().await.unwrap(),
            [module].into_iter().collect()
        );
        let task = TaskId { job, index: 0 };
        let a1 = s.assign(task, "a", 1).await.unwrap().unwrap();
        // Not while it runs.
        assert!(!s.delete_job(job).await.unwrap());
        let log = Digest::of(b"log");
        let mut r = result(a1, 0);
        r.modules[0].stdout = Some(lull_protocol::message::Captured {
            digest: log,
            size: 3,
            truncated: false,
        });
        s.record_result("a", &r, 2).await.unwrap();
        assert_eq!(
            s.referenced_blobs().await.unwrap(),
            [module, log].into_iter().collect()
        );
        assert!(s.delete_job(job).await.unwrap());
        assert!(s.referenced_blobs().await.unwrap().is_empty());
        assert!(matches!(s.job(job).await, Err(StoreError::NoJob(_))));
        assert!(s.attempts(task).await.unwrap().is_empty());
        assert!(matches!(s.delete_job(job).await, Err(StoreError::NoJob(_))));
    }

    async fn only_the_running_attempt_keeps_checkpoints_and_the_newest_wins(s: Store) {
        let job = s.insert_job(&spec(1, 3), 0).await.unwrap();
        let task = TaskId { job, index: 0 };
        assert_eq!(s.checkpoint(task).await.unwrap(), None);
        let a1 = s.assign(task, "a", 1).await.unwrap().unwrap();
        let (d1, d2) = (Digest::of(b"one"), Digest::of(b"two"));
        // Not from another agent.
        assert_eq!(
            s.record_checkpoint("b", a1, &d1, 3, 1, None, 2)
                .await
                .unwrap(),
            CheckpointRecorded::Stale
        );
        assert_eq!(
            s.record_checkpoint("a", a1, &d1, 3, 1, Some(0.25), 2)
                .await
                .unwrap(),
            CheckpointRecorded::Kept { superseded: None }
        );
        assert_eq!(
            s.record_checkpoint("a", a1, &d2, 3, 2, Some(0.5), 3)
                .await
                .unwrap(),
            CheckpointRecorded::Kept {
                superseded: Some(d1)
            }
        );
        // An older one arriving late changes nothing.
        assert_eq!(
            s.record_checkpoint("a", a1, &d1, 3, 1, None, 4)
                .await
                .unwrap(),
            CheckpointRecorded::Stale
        );
        let kept = s.checkpoint(task).await.unwrap().unwrap();
        assert_eq!((kept.digest, kept.size, kept.attempt), (d2, 3, 1));
        assert_eq!(
            s.checkpoint_progress(job).await.unwrap().get(&0),
            Some(&0.5)
        );
        assert!(s.referenced_blobs().await.unwrap().contains(&d2));

        // The attempt ends (evicted): it keeps no more; the next one restores d2, then keeps
        // its own.
        let mut r = result(a1, 0);
        r.modules[0].outcome = lull_protocol::message::Outcome::Evicted {
            reason: "drained".into(),
        };
        s.record_result("a", &r, 5).await.unwrap();
        assert_eq!(
            s.record_checkpoint("a", a1, &d1, 3, 3, None, 6)
                .await
                .unwrap(),
            CheckpointRecorded::Stale
        );
        let a2 = s.assign(task, "b", 7).await.unwrap().unwrap();
        assert_eq!(s.checkpoint(task).await.unwrap().unwrap().digest, d2);
        assert_eq!(
            s.record_checkpoint("b", a2, &d1, 3, 1, None, 8)
                .await
                .unwrap(),
            CheckpointRecorded::Kept {
                superseded: Some(d2)
            }
        );
        let kept = s.checkpoint(task).await.unwrap().unwrap();
        assert_eq!((kept.digest, kept.attempt), (d1, 2));
    }

    async fn failures_retry_until_attempts_run_out(s: Store) {
        let job = s.insert_job(&spec(1, 2), 0).await.unwrap();
        let task = TaskId { job, index: 0 };
        let a1 = s.assign(task, "a", 1).await.unwrap().unwrap();
        assert_eq!(
            s.record_result("a", &result(a1, 1), 2).await.unwrap(),
            Recorded::Stored(TaskState::Pending)
        );
        let a2 = s.assign(task, "a", 3).await.unwrap().unwrap();
        assert_eq!(a2.attempt, 2);
        assert_eq!(
            s.record_result("a", &result(a2, 1), 4).await.unwrap(),
            Recorded::Stored(TaskState::Failed)
        );
        let t = &s.tasks(job).await.unwrap()[0];
        assert_eq!(t.cause.as_deref(), Some("module m: exited with code 1"));
    }

    async fn a_lost_attempt_is_requeued_and_its_late_success_still_counts(s: Store) {
        let job = s.insert_job(&spec(1, 3), 0).await.unwrap();
        let task = TaskId { job, index: 0 };
        let a1 = s.assign(task, "a", 1).await.unwrap().unwrap();
        assert_eq!(
            s.attempt_lost(a1, "lost", 2).await.unwrap(),
            Recorded::Stored(TaskState::Pending)
        );
        // The agent was only slow: its success arrives before the task is reassigned.
        assert_eq!(
            s.record_result("a", &result(a1, 0), 3).await.unwrap(),
            Recorded::Stored(TaskState::Succeeded)
        );
        assert_eq!(s.assign(task, "b", 4).await.unwrap(), None);
        // A late failure of a lost attempt is not taken.
        let job2 = s.insert_job(&spec(1, 3), 0).await.unwrap();
        let t2 = TaskId {
            job: job2,
            index: 0,
        };
        let b1 = s.assign(t2, "a", 1).await.unwrap().unwrap();
        s.attempt_lost(b1, "lost", 2).await.unwrap();
        assert_eq!(
            s.record_result("a", &result(b1, 1), 3).await.unwrap(),
            Recorded::Stale
        );
    }

    async fn an_evicted_attempt_runs_again_whatever_its_attempts(s: Store) {
        let job = s.insert_job(&spec(1, 1), 0).await.unwrap();
        let task = TaskId { job, index: 0 };
        let a1 = s.assign(task, "a", 1).await.unwrap().unwrap();
        let mut evicted = result(a1, 0);
        evicted.modules[0].outcome = Outcome::Evicted {
            reason: "the owner needs the machine".into(),
        };
        assert_eq!(
            s.record_result("a", &evicted, 2).await.unwrap(),
            Recorded::Stored(TaskState::Pending)
        );
        let a2 = s.assign(task, "b", 3).await.unwrap().unwrap();
        assert_eq!(a2.attempt, 2);
    }

    async fn agent_state_changes_are_kept_newest_first(s: Store) {
        for (i, to) in ["paused", "running"].iter().enumerate() {
            let e = AgentEvent {
                at_ms: i as i64,
                from: "x".into(),
                to: to.to_string(),
                reason: "because".into(),
                attempts: vec![],
            };
            s.record_agent_event("a", &e).await.unwrap();
        }
        let events = s.agent_events("a", 10).await.unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].to, "running");
        assert!(s.agent_events("b", 10).await.unwrap().is_empty());
    }

    async fn leases_in_the_database_expire_unless_renewed_and_pending_tasks_are_found_by_time(
        s: Store,
    ) {
        let s = s.with_lease(std::time::Duration::from_millis(1000));
        let job = s.insert_job(&spec(3, 3), 0).await.unwrap();
        let t = |index| TaskId { job, index };
        let a = s.assign(t(0), "a", 0).await.unwrap().unwrap();
        let b = s.assign(t(1), "b", 0).await.unwrap().unwrap();
        assert_eq!(
            s.renew_leases(&["a".into(), "c".into()], 5000)
                .await
                .unwrap(),
            1
        );
        assert_eq!(s.renew_leases(&[], 5000).await.unwrap(), 0);
        assert_eq!(s.expired_leases(999).await.unwrap(), vec![]);
        assert_eq!(
            s.expired_leases(2000).await.unwrap(),
            vec![(b, "b".to_owned())]
        );
        // Only the never-assigned task is pending, since the job's insertion.
        let start = (0, TaskId { job: 0, index: 0 });
        let pending = s.pending_after(start, 100).await.unwrap();
        assert_eq!(pending, vec![(t(2), 0)]);
        assert!(matches!(
            s.attempt_lost(b, "lost", 2500).await.unwrap(),
            Recorded::Stored(TaskState::Pending)
        ));
        // Going on from the last seen finds only the requeued one.
        assert_eq!(
            s.pending_after((0, t(2)), 100).await.unwrap(),
            vec![(t(1), 2500)]
        );
        assert_eq!(s.pending_after((2500, t(1)), 100).await.unwrap(), vec![]);
        assert_eq!(
            s.pending_after(start, 1).await.unwrap(),
            vec![(t(2), 0)],
            "the limit holds"
        );
        s.extend_running_leases(10_000).await.unwrap();
        assert_eq!(s.expired_leases(9_999).await.unwrap(), vec![]);
        assert_eq!(
            s.expired_leases(10_001).await.unwrap(),
            vec![(a, "a".to_owned())]
        );
    }

    async fn cancel_stops_pending_tasks_and_lists_running_ones(s: Store) {
        let job = s.insert_job(&spec(3, 1), 0).await.unwrap();
        let a = s
            .assign(TaskId { job, index: 1 }, "x", 1)
            .await
            .unwrap()
            .unwrap();
        let running = s.cancel_job(job, 2).await.unwrap();
        assert_eq!(running, vec![(a, "x".to_string())]);
        let c = s.job_counts(job).await.unwrap();
        assert_eq!((c.cancelled, c.running), (2, 1));
        assert!(matches!(
            s.cancel_job(999, 2).await,
            Err(StoreError::NoJob(999))
        ));
        assert_eq!(s.cancelled_among(&[job, 999]).await.unwrap(), vec![job]);
        assert_eq!(s.cancelled_among(&[]).await.unwrap(), Vec::<u64>::new());
    }

    async fn the_newest_jobs_come_with_their_counts(s: Store) {
        assert!(s.newest_jobs(Some(10)).await.unwrap().is_empty());
        let old = s.insert_job(&spec(1, 1), 0).await.unwrap();
        let middle = s.insert_job(&spec(2, 1), 1).await.unwrap();
        let new = s.insert_job(&spec(3, 1), 2).await.unwrap();
        s.assign(TaskId { job: new, index: 2 }, "x", 1)
            .await
            .unwrap()
            .unwrap();
        let jobs = s.newest_jobs(Some(2)).await.unwrap();
        let ids: Vec<u64> = jobs.iter().map(|j| j.id).collect();
        assert_eq!(ids, vec![new, middle]);
        assert_eq!((jobs[0].counts.pending, jobs[0].counts.running), (2, 1));
        assert_eq!(jobs[1].counts.pending, 2);
        assert_eq!((jobs[1].name.as_str(), jobs[1].created_ms), ("t", 1));
        assert_eq!(
            s.newest_jobs(Some(10)).await.unwrap().last().unwrap().id,
            old
        );
        assert_eq!(s.newest_jobs(None).await.unwrap().len(), 3);
        let all = s.total_counts().await.unwrap();
        assert_eq!((all.pending, all.running), (5, 1));
    }

    #[tokio::test]
    async fn the_database_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lull.db");
        let job = {
            let s = Store::open(&path).await.unwrap();
            s.insert_job(&spec(4, 1), 0).await.unwrap()
        };
        let s = Store::open(&path).await.unwrap();
        assert_eq!(s.job_counts(job).await.unwrap().pending, 4);
        assert_eq!(s.unfinished_jobs().await.unwrap().len(), 1);
    }
}
