//! The hub over a real SQLite store: the driver carries out what the core decides, and keeps
//! trying what the store could not take.

use std::sync::Arc;
use std::time::Duration;

use lull_protocol::message::{AgentMessage, AgentStatus, AttemptId, Capacity, TaskId};
use lull_protocol::{Digest, PROTOCOL_VERSION};
use sqlx::Connection as _;
use tokio::sync::mpsc;

use super::*;

/// Waits up to 10 s for `what` to hold.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_lost_attempt_the_store_cannot_record_keeps_its_lease_until_it_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lull.db");
    let store = Store::open(&db).await.unwrap();
    let blobs = BlobStore::open(&dir.path().join("blobs")).unwrap();
    let config = HubConfig {
        lease: Duration::from_millis(300),
        dev: true,
        ..HubConfig::default()
    };
    let hub = Hub::new(store, blobs, config, 1);
    let spec = crate::store::tests::spec(1, 3);
    let job = hub
        .store()
        .insert_job(&spec, crate::clock::now_ms())
        .await
        .unwrap();
    hub.recover().await.unwrap();
    let driver = tokio::spawn(hub.clone().run());
    let hello = AgentMessage::Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_id: "a-1".into(),
        name: "one".into(),
        capacity: Capacity {
            cores: 2,
            memory_total: 8 << 30,
            memory_available: 4 << 30,
            slots: 1,
            max_task_memory: 1 << 30,
            os: "linux".into(),
            arch: "x86_64".into(),
            ..Capacity::default()
        },
        running: vec![],
        status: AgentStatus::default(),
        compiled: vec![],
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    hub.agent_connected(&hello, Some(Digest::of(b"key")), tx)
        .await
        .unwrap();
    let state = |hub: Arc<Hub>| async move { hub.store().tasks(job).await.unwrap()[0].state };
    eventually("the task to be assigned", async || {
        state(hub.clone()).await == TaskState::Running
    })
    .await;
    let attempt = AttemptId {
        task: TaskId { job, index: 0 },
        attempt: 1,
    };
    let mut assigned = false;
    while let Ok(m) = rx.try_recv() {
        assigned |= matches!(m, CoordinatorMessage::Assign(a) if a.attempt == attempt);
    }
    assert!(assigned, "the agent was sent its assignment");

    // The store now fails every change of a task, with a real SQLite error, as a full disk
    // or a restarting database would.
    let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse BEFORE UPDATE ON tasks BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    )
    .execute(&mut other)
    .await
    .unwrap();
    // The agent says nothing: its lease runs out, the loss cannot be recorded, and the lease
    // comes back so that the loss is tried again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(state(hub.clone()).await, TaskState::Running);
    assert_eq!(
        hub.read_core(|core| core.holder(attempt).map(str::to_owned)),
        Some("a-1".to_owned()),
        "the lease is kept so that the loss is tried again"
    );

    // The store answers again: the next expiry records the loss and requeues the task.
    sqlx::query("DROP TRIGGER refuse")
        .execute(&mut other)
        .await
        .unwrap();
    eventually("the loss to be recorded", async || {
        state(hub.clone()).await != TaskState::Running
            || hub.store().tasks(job).await.unwrap()[0].attempt > 1
    })
    .await;
    let attempts = hub.store().attempts(attempt.task).await.unwrap();
    assert_eq!(
        attempts[0].outcome.as_deref(),
        Some("lost: the agent stopped reporting"),
        "{attempts:?}"
    );
    assert_ne!(
        hub.read_core(|core| core.holder(attempt).map(str::to_owned)),
        Some("a-1".to_owned())
    );
    driver.abort();
}
