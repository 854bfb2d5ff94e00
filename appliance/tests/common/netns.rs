//! Network namespaces for tests: real `ip netns` namespaces joined by veth pairs, and running
//! code inside one (a thread that entered it with `setns`). Needs root and iproute2; a missing
//! tool fails the test with the package to install, never skips it.

use std::fs::File;
use std::future::Future;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

// --- namespaces -------------------------------------------------------------------------------

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a host program; a missing program fails the test with the package to install.
pub fn run(program: &str, args: &[&str]) -> Output {
    let package = match program {
        "ip" => "iproute2",
        "nft" => "nftables",
        other => other,
    };
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{program}` ({e}): install the Debian package `{package}`"))
}

/// Runs a host program that must succeed; returns its stdout.
pub fn must(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}): {} (these tests need root)",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "elb-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        must("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS ARGS...`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        must("ip", &all)
    }

    /// `ip -j -n NS addr show dev IFACE`, as (address, prefix, flags) triples.
    pub fn addresses(&self, iface: &str) -> Vec<(IpAddr, u8, Value)> {
        let json: Value = serde_json::from_str(&self.ip(&["-j", "addr", "show", "dev", iface])).expect("ip -j output");
        json[0]["addr_info"]
            .as_array()
            .expect("addr_info")
            .iter()
            .map(|a| {
                let addr = a["local"].as_str().expect("local").parse().expect("address");
                let len = a["prefixlen"].as_u64().expect("prefixlen") as u8;
                (addr, len, a.clone())
            })
            .collect()
    }

    pub fn mac(&self, iface: &str) -> [u8; 6] {
        let json: Value = serde_json::from_str(&self.ip(&["-j", "link", "show", "dev", iface])).expect("ip -j output");
        parse_mac(json[0]["address"].as_str().expect("address"))
    }

    /// The link-layer address the neighbour table holds for `addr` on `iface`.
    pub fn neighbour(&self, addr: &str, iface: &str) -> Option<[u8; 6]> {
        let json: Value =
            serde_json::from_str(&self.ip(&["-j", "neigh", "show", addr, "dev", iface])).expect("ip -j output");
        json[0]["lladdr"].as_str().map(parse_mac)
    }

    /// Waits until IPv6 is up on `iface`: its link-local address has finished duplicate address
    /// detection. Before that (link watch sees the carrier up to a second late) the kernel drops
    /// what arrives for ff02::1 as unroutable.
    pub fn wait_ipv6_ready(&self, iface: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let addrs = self.ip(&["-6", "addr", "show", "dev", iface, "scope", "link"]);
            if addrs.contains("fe80::") && !addrs.contains("tentative") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "IPv6 never came up on {iface} in {}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `nft ARGS...` inside the namespace.
    pub fn nft(&self, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", self.name.as_str(), "nft"];
        all.extend_from_slice(args);
        // `ip netns exec` reports a missing nft as exit 255 with "No such file": check first.
        run("nft", &["--version"]);
        run("ip", &all)
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&path);
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs the future `f` builds on a current-thread runtime inside this namespace.
    pub fn block_on<T: Send, F: Future<Output = T>>(&self, f: impl FnOnce() -> F + Send) -> T {
        self.run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(f())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = run("ip", &["netns", "del", &self.name]);
        if !out.status.success() {
            eprintln!(
                "cannot delete netns {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

pub fn parse_mac(text: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).expect("hex");
    }
    mac
}

/// Moves the calling thread (only) into the network namespace at `path`.
#[allow(unsafe_code)]
pub fn enter(path: &str) {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: the descriptor is open for the duration of the call; CLONE_NEWNET changes only the
    // calling thread's network namespace, which is what this test thread wants.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// A veth pair: `a_if` in `a`, `b_if` in `b`, both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    must(
        "ip",
        &[
            "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns", &b.name,
        ],
    );
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}
