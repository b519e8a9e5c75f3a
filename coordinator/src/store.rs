//! Durable state: jobs, tasks, attempts and agents in SQLite.
//!
//! The database is the truth: the coordinator can be killed at any instant and restarted on the
//! same data directory without losing a job or recording a result twice. Every state change of a
//! task is one transaction guarded by the state it expects (`WHERE state = 'running' AND attempt
//! = ?`), so a late or duplicate result cannot overwrite a newer one. Writing transactions
//! start with `BEGIN IMMEDIATE`, taking SQLite's write lock up front, so concurrent writers wait
//! (up to the busy timeout) instead of failing when one of them upgrades a read to a write.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use lull_protocol::Digest;
use lull_protocol::job::{JobSpec, TaskItem};
use lull_protocol::message::{AttemptId, CheckpointRef, TaskId, TaskResult};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, ConnectOptions, Connection, Executor, Row};

mod agents;
mod attempts;
mod checkpoints;
mod clusters;
mod events;
mod jobs;
mod leases;
mod quotas;
#[cfg(test)]
mod testing;
mod tokens;
mod usage;
pub use agents::{AgentRecord, EnrollRefusal, Enrolled};
pub use attempts::{PagedTask, TaskPage};
pub use clusters::{ClusterInfo, ClusterRefusal};
pub use quotas::QuotaRow;
pub use tokens::{Grant, Token, TokenInfo, TokenKind, TokenRefusal, TokenSpec};
pub use usage::UsageKind;

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

use lull_dispatch::Ending;
pub use lull_dispatch::TaskState;
pub use lull_protocol::api::{AgentEvent, Attempt as AttemptRow, Counts, Task as TaskRow};

impl From<lull_dispatch::UnknownTaskState> for StoreError {
    fn from(e: lull_dispatch::UnknownTaskState) -> Self {
        StoreError::Corrupt(serde::de::Error::custom(e))
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
    /// Whether it waits for the jobs it comes after ([`JobSpec::after`]).
    pub held: bool,
    /// Why it stays held for good, once one of those jobs did not succeed.
    pub hold: Option<String>,
    /// When it was released from its hold (ms since the Unix epoch).
    pub released_ms: Option<i64>,
}

impl JobRow {
    /// How long ago it was submitted, or released from its hold, at `now_ms` (zero for a
    /// clock that went back): what its deadline and queue timeout count from.
    pub fn age(&self, now_ms: i64) -> std::time::Duration {
        let from = self.released_ms.unwrap_or(self.created_ms);
        std::time::Duration::from_millis(u64::try_from(now_ms - from).unwrap_or(0))
    }
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
    /// The user who submitted it.
    pub owner: String,
    /// Whether it waits for the jobs it comes after.
    pub held: bool,
}

/// An attempt and its agent from a row of `job_id, idx, attempt, agent_id`.
fn attempt_and_agent(r: &AnyRow) -> (AttemptId, String) {
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
        crate::clock::now_ms().saturating_add(self.clock_offset_ms.load(Ordering::Relaxed))
    }

    /// Measures how far the database's clock is from this machine's (PostgreSQL only), for
    /// [`Store::now_ms`]; returns the difference in ms, the database's minus this machine's.
    pub async fn sync_clock(&self) -> Result<i64> {
        if self.backend != Backend::Postgres {
            return Ok(0);
        }
        let before = crate::clock::now_ms();
        let server: i64 = sqlx::query(
            "SELECT CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT)",
        )
        .fetch_one(&self.pool)
        .await?
        .get(0);
        let after = crate::clock::now_ms();
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
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::testing::on_each_backend;

    on_each_backend!(
        a_result_is_recorded_once_and_only_for_the_current_attempt,
        an_ended_attempt_moves_its_task_where_it_is_told_with_its_cause,
        a_lost_attempt_is_requeued_and_its_late_success_still_counts,
        a_task_of_a_job_cancelled_meanwhile_is_cancelled_not_requeued,
        a_batch_of_changes_is_written_in_order_in_one_transaction,
        agent_state_changes_are_kept_newest_first,
        cancel_stops_pending_tasks_and_lists_running_ones,
        leases_in_the_database_expire_unless_renewed_and_pending_tasks_are_found_by_time,
        references_cover_jobs_and_results_until_the_job_is_deleted,
        only_the_running_attempt_keeps_checkpoints_and_the_newest_wins,
        the_newest_jobs_come_with_their_counts,
        each_user_lists_the_jobs_their_filter_admits,
        a_page_of_tasks_holds_its_tasks_with_their_results_and_where_the_next_starts,
        a_jobs_counts_follow_every_change_of_its_tasks,
        verified_runs_keep_their_digests_and_an_outvoted_agent_is_counted,
        tasks_that_ran_out_of_time_fail_only_while_pending,
        a_result_offered_under_a_key_is_taken_by_a_later_pending_task,
        each_task_gets_its_own_part_with_its_assignment,
        a_held_job_is_released_with_the_outputs_of_the_jobs_it_comes_after,
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
                success_exit_codes: vec![0],
                env_extra: true,
                mounts: vec![],
            }],
            resources: Resources {
                memory: 1 << 20,
                timeout_ms: 1000,
                cpu_millis: 1000,
            },
            placement: Placement::default(),
            max_attempts,
            retry_on: lull_protocol::job::Failure::ALL.to_vec(),
            priority: 0,
            owner: String::new(),
            verify: 1,
            group: None,
            queue_timeout_ms: None,
            deadline_ms: None,
            cache: false,
            items: None,
            after: vec![],
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

    /// Ends an attempt with the agent's result, moving the task to `next`.
    async fn record(
        s: &Store,
        agent: &str,
        r: &TaskResult,
        next: TaskState,
        now_ms: i64,
    ) -> Result<Recorded> {
        let ending = Ending {
            attempt: r.attempt,
            holder: Some(agent.to_owned()),
            outcome: if r.succeeded(&spec(1, 1)) {
                "succeeded".into()
            } else {
                r.cause(&spec(1, 1)).unwrap_or_else(|| "failed".into())
            },
            result: Some(Box::new(r.clone())),
            next,
            verified: None,
            cache_key: None,
        };
        s.end_attempt(&ending, now_ms).await
    }

    /// Ends an attempt as lost, moving the task to `next`.
    async fn verified_runs_keep_their_digests_and_an_outvoted_agent_is_counted(s: Store) {
        let job = s.insert_job(&spec(2, 3), 0).await.unwrap();
        for agent in ["liar", "a", "b"] {
            s.upsert_agent(
                agent,
                agent,
                &lull_protocol::message::Capacity::default(),
                0,
            )
            .await
            .unwrap();
        }
        let task = TaskId { job, index: 0 };
        let (forged, honest) = (Digest::of(b"forged"), Digest::of(b"honest"));
        let end = |attempt, agent: &str, next, digest, dissenters: Vec<(u32, String)>| Ending {
            attempt,
            holder: Some(agent.to_owned()),
            outcome: "succeeded; 1 more agent must agree".into(),
            result: Some(Box::new(result(attempt, 0))),
            next,
            verified: Some(lull_dispatch::Verified { digest, dissenters }),
            cache_key: None,
        };
        let a1 = s.assign(task, "liar", 1).await.unwrap().unwrap();
        let e1 = end(a1, "liar", TaskState::Pending, forged, vec![]);
        assert_eq!(
            s.end_attempt(&e1, 2).await.unwrap(),
            Recorded::Stored(TaskState::Pending)
        );
        let a2 = s.assign(task, "a", 3).await.unwrap().unwrap();
        let e2 = end(a2, "a", TaskState::Pending, honest, vec![]);
        assert_eq!(
            s.end_attempt(&e2, 4).await.unwrap(),
            Recorded::Stored(TaskState::Pending)
        );
        // What a restarted coordinator reads to go on: both runs, with their agents.
        let replicas = s.replicas(job).await.unwrap();
        let seen: Vec<(u32, &str, Digest)> = replicas
            .iter()
            .map(|(t, r)| {
                assert_eq!(*t, task);
                (r.attempt, r.agent.as_str(), r.digest)
            })
            .collect();
        assert_eq!(seen, [(1, "liar", forged), (2, "a", honest)]);
        // The third settles it and outvotes the liar.
        let a3 = s.assign(task, "b", 5).await.unwrap().unwrap();
        let e3 = end(
            a3,
            "b",
            TaskState::Succeeded,
            honest,
            vec![(1, "liar".into())],
        );
        assert_eq!(
            s.end_attempt(&e3, 6).await.unwrap(),
            Recorded::Stored(TaskState::Succeeded)
        );
        let attempts = s.attempts(task).await.unwrap();
        assert_eq!(attempts[0].outcome.as_deref(), Some(attempts::DISAGREED));
        assert_ne!(attempts[1].outcome.as_deref(), Some(attempts::DISAGREED));
        let count = |agent: &'static str| {
            let s = &s;
            async move { s.agent_record(agent).await.unwrap().unwrap().disagreements }
        };
        assert_eq!(
            (count("liar").await, count("a").await, count("b").await),
            (1, 0, 0)
        );
        // A decided task needs no runs kept in memory.
        assert!(s.replicas(job).await.unwrap().is_empty());
        // A dissent naming an attempt its agent did not run changes nothing.
        let a4 = s
            .assign(TaskId { job, index: 1 }, "a", 7)
            .await
            .unwrap()
            .unwrap();
        let e4 = end(
            a4,
            "a",
            TaskState::Succeeded,
            honest,
            vec![(1, "liar".into())],
        );
        s.end_attempt(&e4, 8).await.unwrap();
        assert_eq!(count("liar").await, 1);
    }

    async fn lose(s: &Store, attempt: AttemptId, next: TaskState, now_ms: i64) -> Result<Recorded> {
        let ending = Ending {
            attempt,
            holder: None,
            outcome: "lost".into(),
            result: None,
            next,
            verified: None,
            cache_key: None,
        };
        s.end_attempt(&ending, now_ms).await
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
            record(&s, "agent-b", &result(a1, 0), TaskState::Succeeded, 2)
                .await
                .unwrap(),
            Recorded::Stale
        );
        assert_eq!(
            record(&s, "agent-a", &result(a1, 0), TaskState::Succeeded, 2)
                .await
                .unwrap(),
            Recorded::Stored(TaskState::Succeeded)
        );
        // The duplicate is ignored.
        assert_eq!(
            record(&s, "agent-a", &result(a1, 0), TaskState::Succeeded, 3)
                .await
                .unwrap(),
            Recorded::Stale
        );
        let attempts = s.attempts(task).await.unwrap();
        assert_eq!(attempts.len(), 1);
        assert!(attempts[0].result.is_some());
    }

    async fn a_held_job_is_released_with_the_outputs_of_the_jobs_it_comes_after(s: Store) {
        use lull_dispatch::{Change, Persisted};
        use lull_protocol::job::Mount;
        use lull_protocol::message::OutputFile;
        let s = &s;
        let release = |job| async move {
            let mut out = s.persist(&[Change::Release { job }], 10).await.unwrap();
            out.pop().unwrap()
        };
        let map = s.insert_job(&spec(2, 1), 0).await.unwrap();
        let failing = s.insert_job(&spec(1, 1), 0).await.unwrap();
        let mut reduce = spec(1, 1);
        reduce.after = vec![map];
        reduce.modules[0].mounts = vec![Mount {
            path: "/map".into(),
            files: vec![],
            job: Some(map),
        }];
        let reduce = s.insert_job(&reduce, 1).await.unwrap();
        let mut after_failing = spec(1, 1);
        after_failing.after = vec![map, failing];
        let after_failing = s.insert_job(&after_failing, 1).await.unwrap();
        let mut last = spec(1, 1);
        last.after = vec![after_failing];
        let last = s.insert_job(&last, 1).await.unwrap();
        let row = s.job(reduce).await.unwrap();
        assert!(row.held && row.hold.is_none() && row.released_ms.is_none());
        async fn held(s: &Store) -> Vec<(u64, bool)> {
            let mut ids: Vec<(u64, bool)> = s
                .held_jobs()
                .await
                .unwrap()
                .into_iter()
                .map(|(id, _, hold)| (id, hold.is_some()))
                .collect();
            ids.sort_unstable();
            ids
        }
        assert_eq!(
            held(s).await,
            [(reduce, false), (after_failing, false), (last, false)]
        );
        assert_eq!(
            s.held_jobs().await.unwrap()[0].1,
            vec![map],
            "with the jobs it comes after"
        );

        // While the map runs, the reduce waits.
        assert!(matches!(release(reduce).await, Persisted::Done));
        for index in 0..2 {
            let a = s
                .assign(TaskId { job: map, index }, "a", 2)
                .await
                .unwrap()
                .unwrap();
            let mut r = result(a, 0);
            r.outputs = vec![OutputFile {
                path: format!("counts/{index}.txt"),
                digest: Digest::of(&[index as u8]),
                size: 1,
            }];
            record(s, "a", &r, TaskState::Succeeded, 3).await.unwrap();
        }
        let a = s
            .assign(
                TaskId {
                    job: failing,
                    index: 0,
                },
                "a",
                2,
            )
            .await
            .unwrap()
            .unwrap();
        record(s, "a", &result(a, 1), TaskState::Failed, 3)
            .await
            .unwrap();

        let Persisted::Released(released) = release(reduce).await else {
            panic!("not released");
        };
        let files: Vec<(String, Digest)> = released.modules[0].mounts[0]
            .files
            .iter()
            .map(|f| (f.path.clone(), f.digest))
            .collect();
        assert_eq!(
            files,
            [
                ("0/counts/0.txt".to_owned(), Digest::of(&[0])),
                ("1/counts/1.txt".to_owned(), Digest::of(&[1]))
            ]
        );
        let row = s.job(reduce).await.unwrap();
        assert!(!row.held && row.released_ms == Some(10));
        assert_eq!(row.spec.modules[0].mounts, released.modules[0].mounts);
        assert!(
            matches!(release(reduce).await, Persisted::NotPending),
            "released once"
        );

        // A job after one that failed is held for good, and so is the one after it.
        let Persisted::Blocked(why) = release(after_failing).await else {
            panic!("not blocked");
        };
        assert_eq!(
            why,
            format!(
                "job {failing} (t), which it comes after, did not succeed: 1 task(s) failed, 0 cancelled"
            )
        );
        assert_eq!(
            s.job(after_failing).await.unwrap().hold.as_deref(),
            Some(why.as_str())
        );
        let Persisted::Blocked(then) = release(last).await else {
            panic!("not blocked");
        };
        assert!(
            then.starts_with(&format!(
                "job {after_failing} (t), which it comes after, is held: job {failing}"
            )),
            "{then}"
        );
        // Cancelled, it is no longer to be released.
        s.cancel_job(last, 11).await.unwrap();
        assert!(matches!(release(last).await, Persisted::NotPending));
        assert_eq!(
            held(s).await,
            [(after_failing, true)],
            "released and cancelled jobs are no longer held; a blocked one says so"
        );
    }

    async fn each_task_gets_its_own_part_with_its_assignment(s: Store) {
        use lull_dispatch::{Change, Persisted};
        use lull_protocol::job::{FileRef, ItemFiles};
        let shard = |i: u32| FileRef {
            path: format!("part-{i}.txt"),
            digest: Digest::of(format!("shard {i}").as_bytes()),
            size: 7,
        };
        // More tasks than one statement writes, so that the rows are numbered across them.
        let count = 700;
        let items: Vec<TaskItem> = (0..count)
            .map(|i| TaskItem {
                values: [("n".to_owned(), i.to_string())].into(),
                modules: vec![ItemFiles {
                    stdin: None,
                    inputs: vec![shard(i)],
                }],
            })
            .collect();
        let job = s
            .insert_job_of(&spec(count, 1), "alice", None, 0, &items)
            .await
            .unwrap()
            .unwrap();
        let task = |index| TaskId { job, index };
        assert_eq!(
            s.task_item(task(650)).await.unwrap(),
            Some(items[650].clone())
        );
        let assign = |index, with_item| Change::Assign {
            task: task(index),
            agent: "a".into(),
            with_item,
        };
        let outcomes = s
            .persist(&[assign(0, true), assign(321, true), assign(2, false)], 1)
            .await
            .unwrap();
        let given: Vec<Option<TaskItem>> = outcomes
            .into_iter()
            .map(|o| match o {
                Persisted::Assigned { item, .. } => item.map(|i| *i),
                other => panic!("not assigned: {other:?}"),
            })
            .collect();
        assert_eq!(
            given,
            vec![Some(items[0].clone()), Some(items[321].clone()), None]
        );
        // A job without parts has none to give.
        let plain = s.insert_job(&spec(1, 1), 2).await.unwrap();
        assert_eq!(
            s.task_item(TaskId {
                job: plain,
                index: 0
            })
            .await
            .unwrap(),
            None
        );
        // Their files are kept while the job is, and go with it.
        let referenced = s.referenced_blobs().await.unwrap();
        assert!(referenced.contains(&shard(0).digest) && referenced.contains(&shard(699).digest));
        s.cancel_job(job, 3).await.unwrap();
        for (index, agent) in [(0, "a"), (321, "a"), (2, "a")] {
            s.persist(
                &[Change::End(Ending {
                    attempt: AttemptId {
                        task: task(index),
                        attempt: 1,
                    },
                    holder: Some(agent.into()),
                    outcome: "cancelled".into(),
                    result: None,
                    next: TaskState::Cancelled,
                    verified: None,
                    cache_key: None,
                })],
                4,
            )
            .await
            .unwrap();
        }
        assert!(s.delete_job(job).await.unwrap());
        assert_eq!(s.task_item(task(650)).await.unwrap(), None);
        assert!(
            !s.referenced_blobs()
                .await
                .unwrap()
                .contains(&shard(0).digest)
        );
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
        record(&s, "a", &r, TaskState::Succeeded, 2).await.unwrap();
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
        let page = s.task_page(job, 0, 1, None).await.unwrap();
        assert_eq!(page.tasks[0].checkpoint_progress, Some(0.5));
        assert!(s.referenced_blobs().await.unwrap().contains(&d2));

        // The attempt ends (evicted): it keeps no more; the next one restores d2, then keeps
        // its own.
        let mut r = result(a1, 0);
        r.modules[0].outcome = lull_protocol::message::Outcome::Evicted {
            reason: "drained".into(),
        };
        record(&s, "a", &r, TaskState::Pending, 5).await.unwrap();
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

    async fn an_ended_attempt_moves_its_task_where_it_is_told_with_its_cause(s: Store) {
        let job = s.insert_job(&spec(1, 2), 0).await.unwrap();
        let task = TaskId { job, index: 0 };
        let a1 = s.assign(task, "a", 1).await.unwrap().unwrap();
        assert_eq!(
            record(&s, "a", &result(a1, 1), TaskState::Pending, 2)
                .await
                .unwrap(),
            Recorded::Stored(TaskState::Pending)
        );
        let a2 = s.assign(task, "a", 3).await.unwrap().unwrap();
        assert_eq!(a2.attempt, 2);
        assert_eq!(
            record(&s, "a", &result(a2, 1), TaskState::Failed, 4)
                .await
                .unwrap(),
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
            lose(&s, a1, TaskState::Pending, 2).await.unwrap(),
            Recorded::Stored(TaskState::Pending)
        );
        // The agent was only slow: its success arrives before the task is reassigned.
        assert_eq!(
            record(&s, "a", &result(a1, 0), TaskState::Succeeded, 3)
                .await
                .unwrap(),
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
        lose(&s, b1, TaskState::Pending, 2).await.unwrap();
        assert_eq!(
            record(&s, "a", &result(b1, 1), TaskState::Failed, 3)
                .await
                .unwrap(),
            Recorded::Stale
        );
    }

    async fn a_task_of_a_job_cancelled_meanwhile_is_cancelled_not_requeued(s: Store) {
        let job = s.insert_job(&spec(2, 3), 0).await.unwrap();
        let task = |index| TaskId { job, index };
        let a1 = s.assign(task(0), "a", 1).await.unwrap().unwrap();
        let b1 = s.assign(task(1), "a", 1).await.unwrap().unwrap();
        // The core decided "pending" before the cancel reached it; the store knows better.
        s.cancel_job(job, 2).await.unwrap();
        assert_eq!(
            record(&s, "a", &result(a1, 1), TaskState::Pending, 3)
                .await
                .unwrap(),
            Recorded::Stored(TaskState::Cancelled)
        );
        assert_eq!(
            lose(&s, b1, TaskState::Pending, 3).await.unwrap(),
            Recorded::Stored(TaskState::Cancelled)
        );
        let tasks = s.tasks(job).await.unwrap();
        assert!(
            tasks.iter().all(|t| t.state == TaskState::Cancelled),
            "{tasks:?}"
        );
        assert_eq!(tasks[0].cause.as_deref(), Some("cancelled"));
    }

    async fn a_result_offered_under_a_key_is_taken_by_a_later_pending_task(s: Store) {
        use lull_dispatch::Change;
        let first = s.insert_job(&spec(1, 1), 0).await.unwrap();
        let key = Digest::of(b"key");
        let attempt = |job, index| AttemptId {
            task: TaskId { job, index },
            attempt: 1,
        };
        s.persist(
            &[Change::Assign {
                task: TaskId {
                    job: first,
                    index: 0,
                },
                agent: "a".into(),
                with_item: false,
            }],
            1,
        )
        .await
        .unwrap();
        let ending = Ending {
            attempt: attempt(first, 0),
            holder: Some("a".into()),
            outcome: "succeeded".into(),
            result: Some(Box::new(result(attempt(first, 0), 0))),
            next: TaskState::Succeeded,
            verified: None,
            cache_key: Some(key),
        };
        s.persist(&[Change::End(ending)], 2).await.unwrap();
        let second = s.insert_job(&spec(3, 1), 3).await.unwrap();
        let other = Digest::of(b"other");
        let taken = s
            .take_cached(second, &[(0, other), (2, key)], 4)
            .await
            .unwrap();
        assert_eq!(taken, [2]);
        let tasks = s.tasks(second).await.unwrap();
        assert_eq!(tasks[2].state, TaskState::Succeeded);
        assert_eq!(
            tasks[2].cause.as_deref(),
            Some(format!("cached: the result of task {first}/0 (attempt 1)").as_str())
        );
        assert_eq!(tasks[0].state, TaskState::Pending);
        let counts = s.job_counts(second).await.unwrap();
        assert_eq!((counts.succeeded, counts.pending), (1, 2));
        // Only while pending; and a deleted source offers nothing more.
        assert!(
            s.take_cached(second, &[(2, key)], 5)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(s.delete_job(first).await.unwrap());
        let third = s.insert_job(&spec(1, 1), 6).await.unwrap();
        assert!(
            s.take_cached(third, &[(0, key)], 7)
                .await
                .unwrap()
                .is_empty()
        );
    }

    async fn tasks_that_ran_out_of_time_fail_only_while_pending(s: Store) {
        use lull_dispatch::{Change, Persisted};
        let job = s.insert_job(&spec(5, 3), 0).await.unwrap();
        let task = |index| TaskId { job, index };
        s.persist(
            &[Change::Assign {
                task: task(0),
                agent: "a".into(),
                with_item: false,
            }],
            1,
        )
        .await
        .unwrap();
        let expire = |tasks: Option<Vec<u32>>, cause: &str| Change::Expire {
            job,
            tasks,
            cause: cause.into(),
        };
        // Named tasks: the running one and the others are left alone.
        let outcomes = s
            .persist(&[expire(Some(vec![0, 1]), "waited")], 2)
            .await
            .unwrap();
        assert!(matches!(outcomes[0], Persisted::Done));
        // Every pending one.
        s.persist(&[expire(None, "deadline")], 3).await.unwrap();
        let tasks = s.tasks(job).await.unwrap();
        let seen: Vec<(TaskState, Option<&str>)> = tasks
            .iter()
            .map(|t| (t.state, t.cause.as_deref()))
            .collect();
        assert_eq!(
            seen,
            [
                (TaskState::Running, None),
                (TaskState::Failed, Some("waited")),
                (TaskState::Failed, Some("deadline")),
                (TaskState::Failed, Some("deadline")),
                (TaskState::Failed, Some("deadline")),
            ]
        );
        let counts = s.job_counts(job).await.unwrap();
        assert_eq!((counts.running, counts.failed, counts.pending), (1, 4, 0));
    }

    async fn a_batch_of_changes_is_written_in_order_in_one_transaction(s: Store) {
        use lull_dispatch::{Change, Persisted};
        let job = s.insert_job(&spec(3, 3), 0).await.unwrap();
        let task = |index| TaskId { job, index };
        let assign = |index, agent: &str| Change::Assign {
            task: task(index),
            agent: agent.into(),
            with_item: false,
        };
        let outcomes = s
            .persist(&[assign(0, "a"), assign(1, "b"), assign(0, "c")], 1)
            .await
            .unwrap();
        let a0 = AttemptId {
            task: task(0),
            attempt: 1,
        };
        assert!(matches!(outcomes[0], Persisted::Assigned { attempt, .. } if attempt == a0));
        assert!(matches!(outcomes[1], Persisted::Assigned { .. }));
        // Later changes see the earlier ones: the task is no longer pending.
        assert!(matches!(outcomes[2], Persisted::NotPending));
        // A start, a result and a duplicate of it, and an assignment of the third task.
        let ending = Ending {
            attempt: a0,
            holder: Some("a".into()),
            outcome: "succeeded".into(),
            result: Some(Box::new(result(a0, 0))),
            next: TaskState::Succeeded,
            verified: None,
            cache_key: None,
        };
        let outcomes = s
            .persist(
                &[
                    Change::Start {
                        attempt: a0,
                        setup_us: 7,
                    },
                    Change::End(ending.clone()),
                    Change::End(ending),
                    assign(2, "a"),
                ],
                2,
            )
            .await
            .unwrap();
        assert!(matches!(outcomes[0], Persisted::Done));
        assert!(matches!(
            outcomes[1],
            Persisted::Ended(TaskState::Succeeded)
        ));
        assert!(matches!(outcomes[2], Persisted::Stale));
        assert!(matches!(outcomes[3], Persisted::Assigned { .. }));
        let attempts = s.attempts(task(0)).await.unwrap();
        assert_eq!(attempts[0].setup_us, Some(7));
        let states: Vec<TaskState> = s
            .tasks(job)
            .await
            .unwrap()
            .iter()
            .map(|t| t.state)
            .collect();
        assert_eq!(
            states,
            [TaskState::Succeeded, TaskState::Running, TaskState::Running]
        );
        // The job's counts, written once at the end of each batch, follow every change in it.
        let c = assert_counts_follow_tasks(&s, job).await;
        assert_eq!((c.pending, c.running, c.succeeded), (0, 2, 1), "{c:?}");
        // A loss, and an assignment of a task that does not exist: not an error, just not
        // pending; the loss is written.
        let missing = TaskId { job: 999, index: 0 };
        let lost = Change::End(Ending {
            attempt: AttemptId {
                task: task(1),
                attempt: 1,
            },
            holder: None,
            outcome: "lost".into(),
            result: None,
            next: TaskState::Pending,
            verified: None,
            cache_key: None,
        });
        let nobody = Change::Assign {
            task: missing,
            agent: "a".into(),
            with_item: false,
        };
        let outcomes = s.persist(&[lost, nobody], 3).await.unwrap();
        assert!(matches!(outcomes[0], Persisted::Ended(TaskState::Pending)));
        assert!(matches!(outcomes[1], Persisted::NotPending));
        assert_eq!(s.tasks(job).await.unwrap()[1].state, TaskState::Pending);
        let c = assert_counts_follow_tasks(&s, job).await;
        assert_eq!((c.pending, c.running, c.succeeded), (1, 1, 1), "{c:?}");
    }

    async fn agent_state_changes_are_kept_newest_first(s: Store) {
        use lull_protocol::message::AgentState;
        for (i, to) in [AgentState::Paused, AgentState::Running]
            .into_iter()
            .enumerate()
        {
            let e = AgentEvent {
                at_ms: i as i64,
                from: AgentState::WaitingForIdle,
                to,
                reason: "because".into(),
                attempts: vec![],
            };
            s.record_agent_event("a", &e).await.unwrap();
        }
        let events = s.agent_events("a", 10).await.unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].to, AgentState::Running);
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
            lose(&s, b, TaskState::Pending, 2500).await.unwrap(),
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

    fn all_jobs() -> crate::access::JobFilter {
        crate::access::JobFilter::default()
    }

    async fn each_user_lists_the_jobs_their_filter_admits(s: Store) {
        use crate::access::JobFilter;
        let mut lab = spec(1, 1);
        lab.cluster = "lab".into();
        let mut lab2 = spec(1, 1);
        lab2.cluster = "lab2".into();
        let a = s
            .insert_job_of(&spec(1, 1), "alice", None, 0, &[])
            .await
            .unwrap()
            .unwrap();
        let b = s
            .insert_job_of(&lab, "bob", None, 1, &[])
            .await
            .unwrap()
            .unwrap();
        let c = s
            .insert_job_of(&lab2, "alice", None, 2, &[])
            .await
            .unwrap()
            .unwrap();
        let ids = |filter: JobFilter| {
            let s = s.clone();
            async move {
                s.newest_jobs(None, &filter)
                    .await
                    .unwrap()
                    .iter()
                    .map(|j| (j.id, j.owner.clone()))
                    .collect::<Vec<_>>()
            }
        };
        let (alice, bob) = ("alice".to_owned(), "bob".to_owned());
        assert_eq!(
            ids(JobFilter::default()).await,
            vec![(c, alice.clone()), (b, bob.clone()), (a, alice.clone())]
        );
        let mine = JobFilter {
            owner: Some(alice.clone()),
            clusters: None,
        };
        assert_eq!(
            ids(mine).await,
            vec![(c, alice.clone()), (a, alice.clone())]
        );
        // `lab` is not `lab2`: clusters match whole.
        let in_lab = JobFilter {
            owner: None,
            clusters: Some(vec!["lab".into(), "default".into()]),
        };
        assert_eq!(ids(in_lab).await, vec![(b, bob), (a, alice.clone())]);
        assert_eq!(s.job(b).await.unwrap().spec.owner, "bob");
        assert_eq!(
            s.job_owner(b).await.unwrap(),
            ("bob".to_owned(), "lab".to_owned())
        );
        assert!(matches!(
            s.job_owner(999).await,
            Err(StoreError::NoJob(999))
        ));
    }

    async fn the_newest_jobs_come_with_their_counts(s: Store) {
        assert!(
            s.newest_jobs(Some(10), &all_jobs())
                .await
                .unwrap()
                .is_empty()
        );
        let old = s.insert_job(&spec(1, 1), 0).await.unwrap();
        let middle = s.insert_job(&spec(2, 1), 1).await.unwrap();
        let new = s.insert_job(&spec(3, 1), 2).await.unwrap();
        s.assign(TaskId { job: new, index: 2 }, "x", 1)
            .await
            .unwrap()
            .unwrap();
        let jobs = s.newest_jobs(Some(2), &all_jobs()).await.unwrap();
        let ids: Vec<u64> = jobs.iter().map(|j| j.id).collect();
        assert_eq!(ids, vec![new, middle]);
        assert_eq!((jobs[0].counts.pending, jobs[0].counts.running), (2, 1));
        assert_eq!(jobs[1].counts.pending, 2);
        assert_eq!((jobs[1].name.as_str(), jobs[1].created_ms), ("t", 1));
        assert_eq!(
            s.newest_jobs(Some(10), &all_jobs())
                .await
                .unwrap()
                .last()
                .unwrap()
                .id,
            old
        );
        assert_eq!(s.newest_jobs(None, &all_jobs()).await.unwrap().len(), 3);
        let all = s.total_counts().await.unwrap();
        assert_eq!((all.pending, all.running), (5, 1));
    }

    async fn a_page_of_tasks_holds_its_tasks_with_their_results_and_where_the_next_starts(
        s: Store,
    ) {
        let job = s.insert_job(&spec(10, 1), 0).await.unwrap();
        let other = s.insert_job(&spec(3, 1), 0).await.unwrap();
        let task = |index| TaskId { job, index };
        // Tasks 1, 4 and 7 fail, 2 succeeds after a first attempt lost; 3 runs with a
        // checkpoint; the other job's tasks never show.
        for index in [1, 4, 7] {
            let a = s.assign(task(index), "a", 1).await.unwrap().unwrap();
            record(&s, "a", &result(a, 1), TaskState::Failed, 2)
                .await
                .unwrap();
        }
        let lost = s.assign(task(2), "a", 1).await.unwrap().unwrap();
        lose(&s, lost, TaskState::Pending, 2).await.unwrap();
        let second = s.assign(task(2), "b", 3).await.unwrap().unwrap();
        record(&s, "b", &result(second, 0), TaskState::Succeeded, 4)
            .await
            .unwrap();
        let running = s.assign(task(3), "a", 1).await.unwrap().unwrap();
        s.record_checkpoint("a", running, &Digest::of(b"c"), 1, 1, Some(0.5), 2)
            .await
            .unwrap();
        s.assign(
            TaskId {
                job: other,
                index: 0,
            },
            "a",
            1,
        )
        .await
        .unwrap();

        let indexes = |p: &crate::store::TaskPage| -> Vec<u32> {
            p.tasks.iter().map(|t| t.task.id.index).collect()
        };
        let first = s.task_page(job, 0, 4, None).await.unwrap();
        assert_eq!(indexes(&first), [0, 1, 2, 3]);
        assert_eq!(first.next, Some(4));
        assert!(first.tasks.iter().all(|t| t.task.id.job == job));
        assert_eq!(first.tasks[0].result, None);
        let failed_first = AttemptId {
            task: task(1),
            attempt: 1,
        };
        assert_eq!(first.tasks[1].result, Some(result(failed_first, 1)));
        // The last attempt's result, not the lost one's (which has none).
        assert_eq!(first.tasks[2].result, Some(result(second, 0)));
        assert_eq!(first.tasks[2].task.attempt, 2);
        assert_eq!(first.tasks[3].checkpoint_progress, Some(0.5));
        assert_eq!(first.tasks[3].task.state, TaskState::Running);
        assert!(
            first.tasks[..3]
                .iter()
                .all(|t| t.checkpoint_progress.is_none())
        );
        let last = s.task_page(job, 8, 4, None).await.unwrap();
        assert_eq!((indexes(&last), last.next), (vec![8, 9], None));
        // A page that ends with the job's last task has no next.
        let exact = s.task_page(job, 6, 4, None).await.unwrap();
        assert_eq!((indexes(&exact), exact.next), (vec![6, 7, 8, 9], None));
        let past = s.task_page(job, 10, 4, None).await.unwrap();
        assert_eq!((past.tasks.len(), past.next), (0, None));
        // No task, but whether any follows.
        let none = s.task_page(job, 3, 0, None).await.unwrap();
        assert_eq!((none.tasks.len(), none.next), (0, Some(3)));

        // Only the failed ones, two at a time: the next page starts at the next failed one.
        let failed = Some(TaskState::Failed);
        let page = s.task_page(job, 0, 2, failed).await.unwrap();
        assert_eq!((indexes(&page), page.next), (vec![1, 4], Some(7)));
        let page = s.task_page(job, 7, 2, failed).await.unwrap();
        assert_eq!((indexes(&page), page.next), (vec![7], None));
        let page = s.task_page(job, 5, 0, failed).await.unwrap();
        assert_eq!((page.tasks.len(), page.next), (0, Some(7)));
        let page = s
            .task_page(job, 0, 10, Some(TaskState::Cancelled))
            .await
            .unwrap();
        assert_eq!((page.tasks.len(), page.next), (0, None));
        let pending = s
            .task_page(job, 0, 10, Some(TaskState::Pending))
            .await
            .unwrap();
        assert_eq!(indexes(&pending), [0, 5, 6, 8, 9]);
        let page = s.task_page(999, 0, 10, None).await.unwrap();
        assert_eq!((page.tasks.len(), page.next), (0, None));
    }

    /// Checks that a job's kept counts are those of its tasks.
    async fn assert_counts_follow_tasks(s: &Store, job: u64) -> Counts {
        let mut counted = Counts::default();
        for t in s.tasks(job).await.unwrap() {
            counted.add(t.state, 1);
        }
        let kept = s.job_counts(job).await.unwrap();
        assert_eq!(kept, counted, "job {job}'s counts");
        kept
    }

    async fn a_jobs_counts_follow_every_change_of_its_tasks(s: Store) {
        let job = s.insert_job(&spec(6, 2), 0).await.unwrap();
        let other = s.insert_job(&spec(2, 1), 0).await.unwrap();
        let task = |index| TaskId { job, index };
        assert_eq!(assert_counts_follow_tasks(&s, job).await.pending, 6);
        // Succeeds; fails for good; fails once and waits for its second attempt; is lost and
        // requeued, then its late success counts; runs when the job is cancelled.
        let a0 = s.assign(task(0), "a", 1).await.unwrap().unwrap();
        assert_eq!(assert_counts_follow_tasks(&s, job).await.running, 1);
        record(&s, "a", &result(a0, 0), TaskState::Succeeded, 2)
            .await
            .unwrap();
        let a1 = s.assign(task(1), "a", 1).await.unwrap().unwrap();
        record(&s, "a", &result(a1, 1), TaskState::Pending, 2)
            .await
            .unwrap();
        let again = s.assign(task(1), "a", 3).await.unwrap().unwrap();
        record(&s, "a", &result(again, 1), TaskState::Failed, 4)
            .await
            .unwrap();
        let a2 = s.assign(task(2), "a", 1).await.unwrap().unwrap();
        record(&s, "a", &result(a2, 1), TaskState::Pending, 2)
            .await
            .unwrap();
        let a3 = s.assign(task(3), "b", 1).await.unwrap().unwrap();
        lose(&s, a3, TaskState::Pending, 2).await.unwrap();
        record(&s, "b", &result(a3, 0), TaskState::Succeeded, 3)
            .await
            .unwrap();
        // Stale endings change nothing.
        assert_eq!(
            record(&s, "a", &result(a0, 1), TaskState::Failed, 5)
                .await
                .unwrap(),
            Recorded::Stale
        );
        assert_eq!(s.assign(task(0), "a", 5).await.unwrap(), None);
        s.assign(task(4), "a", 5).await.unwrap().unwrap();
        let c = assert_counts_follow_tasks(&s, job).await;
        assert_eq!(
            (c.pending, c.running, c.succeeded, c.failed),
            (2, 1, 2, 1),
            "{c:?}"
        );
        s.cancel_job(job, 6).await.unwrap();
        let c = assert_counts_follow_tasks(&s, job).await;
        assert_eq!((c.pending, c.running, c.cancelled), (0, 1, 2), "{c:?}");
        assert_eq!(assert_counts_follow_tasks(&s, other).await.pending, 2);
        let all = s.total_counts().await.unwrap();
        assert_eq!((all.pending, all.running, all.total()), (2, 1, 8));
        let by_state = s.task_state_counts().await.unwrap();
        assert_eq!(by_state.get("cancelled"), Some(&2));
        assert_eq!(by_state.get("failed"), Some(&1));
        assert_eq!(
            by_state.len(),
            5,
            "every state, with 0 when none: {by_state:?}"
        );
        assert_eq!(s.job_counts(999).await.unwrap(), Counts::default());
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
