//! The agent's side of its control stream, against a coordinator the test plays by hand: a
//! real `lull-agent` process over real QUIC on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lull_agent::link;
use lull_protocol::identity::Identity;
use lull_protocol::message::{AgentMessage, AttemptId, CoordinatorMessage, TaskId};
use lull_tests::{AgentOptions, Cluster, Enroll};
use tokio::io::AsyncWriteExt;

/// A QUIC endpoint on loopback presenting `identity` as a coordinator does.
fn fake_coordinator(identity: &Identity) -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert.clone()], identity.private_key())
        .expect("the coordinator's certificate");
    tls.alpn_protocols = vec![lull_protocol::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("QUIC crypto");
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).expect("a UDP socket")
}

/// A frame that arrives in pieces, with the agent's report timer firing between them, is read
/// whole: the control stream stays in step and the session goes on.
#[test]
fn a_frame_arriving_in_pieces_between_reports_is_read_whole() {
    let mut cluster = Cluster::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let identity = Identity::ephemeral(&["lull-coordinator"]).expect("a key");
    let endpoint = rt.block_on(async { fake_coordinator(&identity) });
    let addr = endpoint.local_addr().unwrap();
    cluster.start_agent(
        "split",
        AgentOptions {
            coordinator: Some(addr),
            coordinator_key: Some(identity.public_key_hash.to_string()),
            enroll: Enroll::Never,
            slots: Some(1),
            ..Default::default()
        },
    );
    rt.block_on(async {
        let incoming = tokio::time::timeout(Duration::from_secs(60), endpoint.accept())
            .await
            .expect("the agent to connect")
            .expect("an incoming connection");
        let conn = incoming.await.expect("the handshake");
        let (mut send, mut recv) = conn.accept_bi().await.expect("the control stream");
        let hello: Option<AgentMessage> = link::read_frame(&mut recv).await.expect("a hello");
        assert!(
            matches!(hello, Some(AgentMessage::Hello { .. })),
            "{hello:?}"
        );
        let welcome = CoordinatorMessage::Welcome {
            protocol_version: lull_protocol::PROTOCOL_VERSION,
            lease_ms: 60_000,
            report_interval_ms: 100,
        };
        link::write_frame(&mut send, &welcome).await.unwrap();

        // Everything the agent says from here on, counted as it arrives.
        let reports = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = reports.clone();
        let reader = tokio::spawn(async move {
            loop {
                match link::read_frame::<AgentMessage>(&mut recv).await {
                    Ok(Some(AgentMessage::Report { .. })) => {
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return "the agent closed its control stream".to_owned(),
                    Err(e) => return format!("the agent's control stream failed: {e}"),
                }
            }
        });

        // Acknowledgements of results the agent never sent are ignored; each goes in three
        // pieces (part of its length, the rest of it with part of the body, the rest of the
        // body), the agent's 100 ms report timer firing between them.
        let attempt = AttemptId {
            task: TaskId { job: 7, index: 3 },
            attempt: 1,
        };
        let frame = lull_protocol::frame::to_bytes(
            &CoordinatorMessage::ResultAck { attempt },
            lull_protocol::frame::DEFAULT_MAX_FRAME,
        )
        .unwrap();
        for _ in 0..3 {
            for piece in [&frame[..2], &frame[2..8], &frame[8..]] {
                let lost = "the agent ended its session while a frame arrived in pieces";
                send.write_all(piece).await.expect(lost);
                send.flush().await.expect(lost);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        let before = reports.load(std::sync::atomic::Ordering::SeqCst);
        let watch_until = Instant::now() + Duration::from_secs(2);
        // The session goes on: no new connection, reports keep coming on this stream.
        let reconnected = tokio::time::timeout_at(watch_until.into(), endpoint.accept()).await;
        assert!(
            reconnected.is_err(),
            "the agent connected again: its session ended after a frame arrived in pieces"
        );
        assert!(
            !reader.is_finished(),
            "{}",
            reader.await.unwrap_or_else(|e| e.to_string())
        );
        let after = reports.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            before >= 5 && after >= before + 5,
            "reports before the check {before}, after it {after}: the session stalled"
        );
        reader.abort();
    });
    let log = cluster.agent_log("split");
    assert!(
        !log.contains("connection to the coordinator lost"),
        "the agent's log shows a failed session:\n{log}"
    );
}
