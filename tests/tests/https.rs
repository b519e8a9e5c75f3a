//! The people's API over HTTPS on a real coordinator: `lull` pins the coordinator's key and
//! refuses any other; a plain-HTTP client gets no answer; an operator's certificate replaces
//! the coordinator's own; plain HTTP only when asked for; a client that never finishes its
//! handshake keeps no one else out.

use std::io::Write;
use std::time::Duration;

use base64::Engine;
use lull_protocol::identity::Identity;
use lull_tests::Cluster;

#[test]
fn lull_pins_the_coordinators_https_key_and_refuses_any_other() {
    let cluster = Cluster::start();
    let url = cluster.api_url();
    assert!(url.starts_with("https://"), "{url}");
    let pin = cluster
        .http_key()
        .expect("the coordinator announces its HTTPS key");
    assert_eq!(
        pin,
        cluster.coordinator_key(),
        "the API serves the same key agents pin"
    );

    // The right pin works.
    cluster
        .lull_reaching(&url, Some(pin), &["status"])
        .assert_success();

    // Another key: refused, naming both.
    let other = Identity::ephemeral(&["x"])
        .unwrap()
        .public_key_hash
        .to_string();
    let out = cluster.lull_reaching(&url, Some(&other), &["status"]);
    assert!(!out.success(), "a wrong pin was accepted:\n{out}");
    assert!(
        out.stderr.contains(&format!("not the pinned {other}")) && out.stderr.contains(pin),
        "the error names the key found and the one pinned:\n{out}"
    );

    // No pin: the self-signed certificate is not trusted, and the error says what to pin.
    let out = cluster.lull_reaching(&url, None, &["status"]);
    assert!(
        !out.success(),
        "an unpinned self-signed key was accepted:\n{out}"
    );
    assert!(
        out.stderr.contains("--coordinator-key"),
        "the error says how to pin:\n{out}"
    );

    // A pin that is not a hash: a clear error before any connection.
    let out = cluster.lull_reaching(&url, Some("d00d"), &["status"]);
    assert!(
        !out.success()
            && out.stderr.contains("--coordinator-key")
            && out.stderr.contains("sha256:"),
        "{out}"
    );

    // Plain HTTP to the HTTPS port: no answer, and a hint that the coordinator speaks HTTPS.
    let plain = format!("http://{}", cluster.http_addr());
    let out = cluster.lull_reaching(&plain, Some(pin), &["status"]);
    assert!(!out.success(), "plain HTTP was answered:\n{out}");
    assert!(out.stderr.contains("HTTPS"), "{out}");

    // `token create --user` tells submitters the key to pin.
    let made = cluster.coordinator_token(&["create", "--user", "alice"]);
    assert!(made.success(), "{made}");
    assert!(
        made.stderr.contains(&format!("--coordinator-key {pin}")),
        "token create prints the key to pin:\n{made}"
    );
}

#[test]
fn a_client_that_never_finishes_its_handshake_keeps_no_one_out() {
    let cluster = Cluster::start();
    // Many connections that say nothing, and one that sends a partial TLS record.
    let mut silent: Vec<_> = (0..50)
        .map(|_| std::net::TcpStream::connect(cluster.http_addr()).unwrap())
        .collect();
    silent[0].write_all(&[0x16, 0x03, 0x01, 0x02]).unwrap();
    let started = std::time::Instant::now();
    cluster.lull(&["status"]).assert_success();
    // Handshakes finished in the accept loop would hold the request until the silent peers
    // timed out (10 s each): it must not have waited for even one.
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "a request waited {:?} behind silent connections",
        started.elapsed()
    );
    drop(silent);
}

/// PEM text of DER bytes.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

#[test]
fn an_operators_certificate_replaces_the_coordinators_own() {
    let dir = tempfile::tempdir().unwrap();
    let operator = Identity::ephemeral(&["lull.example.org"]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, pem("CERTIFICATE", &operator.cert)).unwrap();
    std::fs::write(&key, pem("PRIVATE KEY", operator.secret_pkcs8_der())).unwrap();

    let cluster = Cluster::start_with(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let announced = cluster.http_key().expect("HTTPS");
    assert_eq!(announced, operator.public_key_hash.to_string());
    assert_ne!(
        announced,
        cluster.coordinator_key(),
        "agents still pin the coordinator's own key"
    );
    // The harness pins the announced key: the operator's certificate is what is served.
    cluster.lull(&["status"]).assert_success();
    let out = cluster.lull_reaching(
        &cluster.api_url(),
        Some(cluster.coordinator_key()),
        &["status"],
    );
    assert!(!out.success(), "{out}");

    // A key that does not go with the certificate: the coordinator does not start.
    let stranger = Identity::ephemeral(&["x"]).unwrap();
    std::fs::write(&key, pem("PRIVATE KEY", stranger.secret_pkcs8_der())).unwrap();
    let out = cluster.coordinator_command(&[
        "serve",
        "--quic-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("does not go with"), "{out}");
}

#[test]
fn plain_http_only_when_asked_for() {
    let cluster = Cluster::start_with(&["--plain-http"]);
    assert_eq!(cluster.http_key(), None);
    assert!(cluster.api_url().starts_with("http://"));
    cluster.lull(&["status"]).assert_success();
}
