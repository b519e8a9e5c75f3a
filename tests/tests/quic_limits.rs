//! The coordinator's QUIC limits, against a real `lull-coordinator serve` on loopback: past
//! `--max-agent-connections` new connections are refused; with many handshakes under way new
//! peers are made to validate their address first (a QUIC Retry) and still get in; a connection
//! holds no more streams than `--max-streams-per-agent`; a silent one is dropped after
//! `--agent-idle-timeout`.

use std::time::Duration;

use lull_agent::link::Dialer;
use lull_protocol::Digest;
use lull_tests::Cluster;

fn dialer(cluster: &Cluster) -> Dialer {
    let pin: Digest = cluster.coordinator_key().parse().expect("coordinator key");
    lull_tests::stranger_dialer(pin)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn connections_past_the_limit_are_refused() {
    let cluster = Cluster::start_with(&["--max-agent-connections", "2"]);
    let addr = cluster.quic_addr().to_string();
    runtime().block_on(async {
        // Separate endpoints, as separate agents would be.
        let (a, b, c) = (dialer(&cluster), dialer(&cluster), dialer(&cluster));
        let first = a.connect(&addr).await.expect("first connection");
        let second = b.connect(&addr).await.expect("second connection");
        let third = c.connect(&addr).await;
        assert!(third.is_err(), "a third connection was accepted");
        // One leaves: there is room again.
        first.close(0u32.into(), b"bye");
        drop(first);
        let mut again = None;
        for _ in 0..50 {
            if let Ok(conn) = c.connect(&addr).await {
                again = Some(conn);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(again.is_some(), "no room after a connection closed");
        drop(second);
    });
    assert!(
        cluster
            .coordinator_log()
            .contains("refusing a connection: at the connection limit"),
        "the refusal is logged:\n{}",
        cluster.coordinator_log()
    );
}

#[test]
fn busy_handshakes_make_new_peers_validate_their_address_first() {
    // With no handshake allowed without validation, every new peer gets a Retry first.
    let cluster = Cluster::start_with(&["--max-handshakes", "0"]);
    let addr = cluster.quic_addr().to_string();
    runtime().block_on(async {
        let conn = dialer(&cluster)
            .connect(&addr)
            .await
            .expect("a peer that answers the Retry gets in");
        let (mut send, _recv) = conn.open_bi().await.expect("stream");
        send.write_all(b"").await.expect("write");
    });
    assert!(
        cluster
            .coordinator_log()
            .contains("asking for address validation"),
        "the Retry is logged:\n{}",
        cluster.coordinator_log()
    );
}

#[test]
fn streams_and_silence_are_bounded() {
    let cluster =
        Cluster::start_with(&["--max-streams-per-agent", "2", "--agent-idle-timeout", "1s"]);
    let addr = cluster.quic_addr().to_string();
    runtime().block_on(async {
        let conn = dialer(&cluster).connect(&addr).await.expect("connection");
        // Two streams open (a stream counts once its first bytes arrive)...
        let mut held = Vec::new();
        for _ in 0..2 {
            let (mut send, recv) = conn.open_bi().await.expect("stream within the limit");
            send.write_all(&[0]).await.expect("write");
            held.push((send, recv));
        }
        // ... and a third waits for one of them to end.
        let third = tokio::time::timeout(Duration::from_millis(500), conn.open_bi()).await;
        assert!(third.is_err(), "a third stream opened past the limit");
        drop(held);
        conn.close(0u32.into(), b"done");
    });

    // A peer that goes silent (no keep-alives) is dropped after the idle timeout.
    runtime().block_on(async {
        let silent = dialer(&cluster).keep_alive(None).expect("dialer");
        let conn = silent.connect(&addr).await.expect("connection");
        let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
        match closed {
            Ok(reason) => assert!(
                matches!(reason, quinn::ConnectionError::TimedOut),
                "closed for another reason: {reason}"
            ),
            Err(_) => panic!("a silent connection outlived the 1 s idle timeout by 9 s"),
        }
    });
}

#[test]
fn a_peer_without_a_key_is_turned_away_at_the_handshake() {
    let cluster = Cluster::start();
    let pin: Digest = cluster.coordinator_key().parse().expect("coordinator key");
    let addr = cluster.quic_addr().to_string();
    runtime().block_on(async {
        let keyless = Dialer::new(Some(pin), None).expect("dialer");
        // The handshake fails, or the connection is closed as soon as the coordinator sees that
        // no certificate came.
        if let Ok(conn) = keyless.connect(&addr).await {
            let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
            assert!(closed.is_ok(), "a keyless connection stayed open");
            assert!(conn.open_bi().await.is_err());
        }
    });
}

#[test]
fn a_peer_that_says_no_hello_in_time_is_closed() {
    let cluster = Cluster::start_with(&["--agent-hello-timeout", "1s"]);
    let addr = cluster.quic_addr().to_string();
    runtime().block_on(async {
        let conn = dialer(&cluster).connect(&addr).await.expect("connection");
        // It announces a frame and trickles nothing more: a peer that has proved nothing.
        let (mut send, _recv) = conn.open_bi().await.expect("stream");
        send.write_all(&1000u32.to_be_bytes()).await.expect("write");
        let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("closed within the deadline");
        match closed {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.reason.as_ref(), b"no hello in time", "{close:?}");
            }
            other => panic!("closed for another reason: {other}"),
        }
    });
    assert!(
        cluster
            .coordinator_log()
            .contains("closing a connection that said no hello in time"),
        "{}",
        cluster.coordinator_log()
    );
}

#[test]
fn connections_from_one_address_past_its_cap_are_refused() {
    let cluster = Cluster::start_with(&["--max-agent-connections-per-address", "2"]);
    let addr = cluster.quic_addr().to_string();
    runtime().block_on(async {
        let (a, b, c) = (dialer(&cluster), dialer(&cluster), dialer(&cluster));
        let _first = a.connect(&addr).await.expect("first connection");
        let _second = b.connect(&addr).await.expect("second connection");
        assert!(
            c.connect(&addr).await.is_err(),
            "a third connection from 127.0.0.1 was accepted"
        );
    });
    assert!(
        cluster
            .coordinator_log()
            .contains("refusing a connection: at the connection limit"),
        "{}",
        cluster.coordinator_log()
    );
}
