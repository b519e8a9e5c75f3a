//! Hosts on one machine: a network namespace joined to this one by a veth pair, so that a test
//! can cut a link and mend it (`ip link set ... down|up`) between real processes. Needs root
//! (or `CAP_NET_ADMIN`) and iproute2, as `cargo xtask test` runs.

use std::net::Ipv4Addr;
use std::process::Command;

/// A network namespace with one link to this one: this side is [`Host::outside`], the
/// namespace's side [`Host::inside`], on a /30 of their own. Removed (with its link) when
/// dropped.
#[derive(Debug)]
pub struct Host {
    /// The namespace's name, for `ip netns exec` (and [`crate::AgentOptions::netns`]).
    pub name: String,
    /// This side's end of the link.
    link: String,
    /// This side's address, which the namespace reaches.
    pub outside: Ipv4Addr,
    /// The namespace's address.
    pub inside: Ipv4Addr,
}

/// Runs `ip ARGS...`; panics with its output when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?} (iproute2 is needed): {e}"));
    assert!(
        out.status.success(),
        "ip {} failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Host {
    /// Makes a namespace named after `tag` and this process (so that tests running at once do
    /// not meet), linked to this one; `subnet` (0..=63) picks its /30 within 10.213.0.0/24.
    pub fn new(tag: &str, subnet: u8) -> Host {
        assert!(subnet < 64, "subnet {subnet} is out of 0..64");
        let pid = std::process::id();
        let name = format!("lull-{tag}-{pid}");
        let link = format!("lh{subnet}-{}", pid % 100_000);
        let peer = format!("ln{subnet}-{}", pid % 100_000);
        let outside = Ipv4Addr::new(10, 213, 0, subnet * 4 + 1);
        let inside = Ipv4Addr::new(10, 213, 0, subnet * 4 + 2);
        // Left over by a run that was killed.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &link]).output();
        ip(&["netns", "add", &name]);
        let host = Host {
            name,
            link,
            outside,
            inside,
        };
        ip(&[
            "link", "add", &host.link, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &host.name]);
        ip(&["addr", "add", &format!("{outside}/30"), "dev", &host.link]);
        ip(&["link", "set", &host.link, "up"]);
        let inside_ip = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &host.name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside_ip(&["link", "set", "lo", "up"]);
        inside_ip(&["addr", "add", &format!("{inside}/30"), "dev", &peer]);
        inside_ip(&["link", "set", &peer, "up"]);
        host
    }

    /// Cuts the link: nothing passes either way until [`Host::mend`].
    pub fn cut(&self) {
        ip(&["link", "set", &self.link, "down"]);
    }

    /// Mends the link cut by [`Host::cut`].
    pub fn mend(&self) {
        ip(&["link", "set", &self.link, "up"]);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the link, and with it this end.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .output();
    }
}
