//! The kernel settings forwarding needs (`net.ipv4.ip_forward`, `net.ipv4.vs.conntrack`,
//! `net.ipv6.conf.all.forwarding`): checked, set when they differ, and reported one by one so
//! the caller can log them and show them in the API.
//!
//! It owns only the settings in [`required`]. It never fails as a whole: a setting that cannot
//! be set is reported with its reason, and the caller decides what that means. It reads and
//! writes `/proc/sys` in the network namespace of the calling thread.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

/// One setting and the value forwarding needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sysctl {
    /// Dotted name, as `sysctl` spells it.
    pub name: &'static str,
    pub value: &'static str,
    /// What goes wrong without it, for the report.
    pub why: &'static str,
}

/// Routing between the client side and the nodes.
pub const IPV4_FORWARD: Sysctl = Sysctl {
    name: "net.ipv4.ip_forward",
    value: "1",
    why: "IPv4 packets are not forwarded",
};

/// Lets nftables see IPVS connections, which full NAT's source NAT needs. Exists only while
/// the `ip_vs` module is loaded.
pub const IPVS_CONNTRACK: Sysctl = Sysctl {
    name: "net.ipv4.vs.conntrack",
    value: "1",
    why: "full NAT gets no answers: nftables cannot source-NAT IPVS connections",
};

/// IPv6 routing. Note that with forwarding on, Linux ignores router advertisements on interfaces
/// whose `accept_ra` is 1: an appliance that takes its own IPv6 address from SLAAC needs
/// `accept_ra=2` on that interface.
pub const IPV6_FORWARD: Sysctl = Sysctl {
    name: "net.ipv6.conf.all.forwarding",
    value: "1",
    why: "IPv6 packets are not forwarded",
};

/// The settings for a data plane with IPVS (`ipvs`), and IPv6 VIPs (`ipv6`).
pub fn required(ipvs: bool, ipv6: bool) -> Vec<Sysctl> {
    let mut out = vec![IPV4_FORWARD];
    if ipvs {
        out.push(IPVS_CONNTRACK);
    }
    if ipv6 {
        out.push(IPV6_FORWARD);
    }
    out
}

/// What happened to one setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It already had the value.
    Ok,
    /// It had `previous`; it has the value now.
    Set { previous: String },
    /// It does not have the value, and could not be given it.
    Failed { reason: String },
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub sysctl: Sysctl,
    pub outcome: Outcome,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Sysctl { name, value, why } = self.sysctl;
        match &self.outcome {
            Outcome::Ok => write!(f, "{name} = {value}: ok"),
            Outcome::Set { previous } => write!(f, "{name} = {value}: set (was {previous})"),
            Outcome::Failed { reason } => write!(f, "{name} = {value}: FAILED, {reason} ({why})"),
        }
    }
}

/// The outcome of every setting asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    pub entries: Vec<Entry>,
}

impl Report {
    /// Whether every setting has its value now.
    pub fn all_ok(&self) -> bool {
        self.entries
            .iter()
            .all(|e| !matches!(e.outcome, Outcome::Failed { .. }))
    }

    /// The settings that could not be set.
    pub fn failures(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|e| matches!(e.outcome, Outcome::Failed { .. }))
    }
}

/// Reads and writes settings under a `/proc/sys`-shaped folder.
#[derive(Debug, Clone)]
pub struct Sysctls {
    root: PathBuf,
}

impl Default for Sysctls {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/proc/sys"),
        }
    }
}

impl Sysctls {
    /// Settings under `root` instead of `/proc/sys` (tests).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The file of a dotted name: `net.ipv4.ip_forward` -> `/proc/sys/net/ipv4/ip_forward`.
    pub fn path(&self, name: &str) -> PathBuf {
        name.split('.').fold(self.root.clone(), |p, part| p.join(part))
    }

    /// The current value (`sysctl -n NAME`).
    pub fn read(&self, name: &str) -> io::Result<String> {
        std::fs::read_to_string(self.path(name)).map(|v| v.trim().to_owned())
    }

    /// Checks each setting and sets those that differ (`sysctl -w NAME=VALUE`), then reads it
    /// back: the kernel may accept a write and keep another value.
    pub fn ensure(&self, wanted: &[Sysctl]) -> Report {
        let entries = wanted
            .iter()
            .map(|s| {
                let outcome = self.ensure_one(s);
                match &outcome {
                    Outcome::Ok => info!(sysctl = s.name, value = s.value, "kernel setting ok"),
                    Outcome::Set { previous } => {
                        info!(sysctl = s.name, value = s.value, previous = %previous, "kernel setting changed")
                    }
                    Outcome::Failed { reason } => {
                        warn!(sysctl = s.name, value = s.value, reason = %reason, impact = s.why, "kernel setting missing")
                    }
                }
                Entry {
                    sysctl: *s,
                    outcome,
                }
            })
            .collect();
        Report { entries }
    }

    fn ensure_one(&self, s: &Sysctl) -> Outcome {
        let path = self.path(s.name);
        let previous = match self.read(s.name) {
            Ok(v) if v == s.value => return Outcome::Ok,
            Ok(v) => v,
            Err(e) => {
                return Outcome::Failed {
                    reason: read_failure(s, &path, &e),
                };
            }
        };
        if let Err(e) = std::fs::write(&path, s.value) {
            let reason = match e.kind() {
                io::ErrorKind::PermissionDenied => {
                    format!(
                        "cannot write {} (needs root or CAP_NET_ADMIN, and /proc/sys writable): {e}",
                        path.display()
                    )
                }
                _ => format!("cannot write {}: {e}", path.display()),
            };
            return Outcome::Failed { reason };
        }
        match self.read(s.name) {
            Ok(v) if v == s.value => Outcome::Set { previous },
            Ok(v) => Outcome::Failed {
                reason: format!("the kernel kept {v} after writing {}", s.value),
            },
            Err(e) => Outcome::Failed {
                reason: read_failure(s, &path, &e),
            },
        }
    }
}

fn read_failure(s: &Sysctl, path: &Path, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound if s.name.starts_with("net.ipv4.vs.") => {
            format!(
                "{} does not exist: the ip_vs kernel module is not loaded",
                path.display()
            )
        }
        io::ErrorKind::NotFound if s.name.starts_with("net.ipv6.") => {
            format!("{} does not exist: IPv6 is disabled in this kernel", path.display())
        }
        _ => format!("cannot read {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(values: &[(&str, &str)]) -> (tempfile::TempDir, Sysctls) {
        let dir = tempfile::tempdir().expect("temp dir");
        let sysctls = Sysctls::with_root(dir.path());
        for (name, value) in values {
            let path = sysctls.path(name);
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
            std::fs::write(&path, format!("{value}\n")).expect("write");
        }
        (dir, sysctls)
    }

    #[test]
    fn names_map_to_proc_sys_paths() {
        assert_eq!(
            Sysctls::default().path("net.ipv4.vs.conntrack"),
            PathBuf::from("/proc/sys/net/ipv4/vs/conntrack")
        );
    }

    #[test]
    fn each_setting_is_reported_ok_set_or_failed_with_a_reason() {
        let (_dir, sysctls) = tree(&[("net.ipv4.ip_forward", "0"), ("net.ipv6.conf.all.forwarding", "1")]);
        let report = sysctls.ensure(&required(true, true));
        let outcomes: Vec<_> = report
            .entries
            .iter()
            .map(|e| (e.sysctl.name, e.outcome.clone()))
            .collect();
        assert_eq!(
            outcomes[0],
            ("net.ipv4.ip_forward", Outcome::Set { previous: "0".into() })
        );
        assert!(
            matches!(&outcomes[1], ("net.ipv4.vs.conntrack", Outcome::Failed { reason }) if reason.contains("ip_vs kernel module is not loaded")),
            "{outcomes:?}"
        );
        assert_eq!(outcomes[2], ("net.ipv6.conf.all.forwarding", Outcome::Ok));
        assert!(!report.all_ok());
        assert_eq!(report.failures().count(), 1);
        assert_eq!(sysctls.read("net.ipv4.ip_forward").ok().as_deref(), Some("1"));

        // A second pass finds everything it could set already set.
        let again = sysctls.ensure(&[IPV4_FORWARD]);
        assert_eq!(again.entries[0].outcome, Outcome::Ok);
        assert!(again.all_ok());
        assert_eq!(again.entries[0].to_string(), "net.ipv4.ip_forward = 1: ok");
    }

    #[test]
    fn required_settings_follow_the_data_plane() {
        let names = |ipvs, ipv6| required(ipvs, ipv6).iter().map(|s| s.name).collect::<Vec<_>>();
        assert_eq!(names(false, false), ["net.ipv4.ip_forward"]);
        assert_eq!(names(true, false), ["net.ipv4.ip_forward", "net.ipv4.vs.conntrack"]);
        assert_eq!(names(true, true).len(), 3);
    }
}
