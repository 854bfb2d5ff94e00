//! Finding the host programs the kernel lab needs. A missing one is a loud error naming the
//! Debian package to install; the lab never skips because a tool is absent.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result, bail};
use crate::process;

/// Busybox applets the init script and `lab/lib.sh` rely on.
const APPLETS: &[&str] = &[
    "sh", "mount", "insmod", "modprobe", "poweroff", "sysctl", "httpd", "wget", "timeout", "sed", "grep", "cat",
    "sleep", "mkdir",
];

/// Absolute paths of the tools the lab runs or ships, found once at start-up.
#[derive(Debug)]
pub struct Tools {
    pub qemu: PathBuf,
    pub busybox: PathBuf,
    pub cpio: PathBuf,
    pub depmod: PathBuf,
    pub ipvsadm: PathBuf,
    pub ip: PathBuf,
    pub nft: PathBuf,
    pub ldd: PathBuf,
    pub apt_get: PathBuf,
    pub apt_cache: PathBuf,
    pub dpkg: PathBuf,
}

impl Tools {
    /// Finds every required tool, or fails listing all that are missing at once.
    pub fn find() -> Result<Self> {
        let dirs = search_dirs(env::var_os("PATH").as_deref().map(Path::new));
        let mut missing = Vec::new();
        let mut tool = |name: &'static str, package: &'static str| {
            find_in(name, &dirs).unwrap_or_else(|| {
                missing.push((name, package));
                PathBuf::new()
            })
        };
        let tools = Self {
            qemu: tool("qemu-system-x86_64", "qemu-system-x86"),
            busybox: tool("busybox", "busybox-static"),
            cpio: tool("cpio", "cpio"),
            depmod: tool("depmod", "kmod"),
            ipvsadm: tool("ipvsadm", "ipvsadm"),
            ip: tool("ip", "iproute2"),
            nft: tool("nft", "nftables"),
            ldd: tool("ldd", "libc-bin"),
            apt_get: tool("apt-get", "apt"),
            apt_cache: tool("apt-cache", "apt"),
            dpkg: tool("dpkg", "dpkg"),
        };
        if !missing.is_empty() {
            return Err(Error::msg(missing_message(&missing)));
        }
        tools.check_busybox()?;
        Ok(tools)
    }

    /// Debian's dynamic `busybox` package installs the same path; only the static one works
    /// as PID 1 without its libraries, and it must carry the applets the scripts use.
    fn check_busybox(&self) -> Result<()> {
        let ldd = Command::new(&self.ldd).arg(&self.busybox).output();
        let ldd = ldd.map_err(|e| Error::msg(format!("cannot run ldd: {e}")))?;
        let text = String::from_utf8_lossy(&ldd.stdout) + String::from_utf8_lossy(&ldd.stderr);
        if !is_static(&text) {
            bail!(
                "{} is dynamically linked: install the static one (apt-get install busybox-static)",
                self.busybox.display()
            );
        }
        let list = process::stdout(Command::new(&self.busybox).arg("--list"))?;
        let missing: Vec<&str> = APPLETS
            .iter()
            .copied()
            .filter(|applet| !list.lines().any(|l| l.trim() == *applet))
            .collect();
        if !missing.is_empty() {
            bail!(
                "{} lacks the applets {}: install Debian's busybox-static",
                self.busybox.display(),
                missing.join(", ")
            );
        }
        Ok(())
    }
}

/// `$PATH` plus the sbin directories a non-root `$PATH` often lacks.
fn search_dirs(path: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = path.map(|p| env::split_paths(p).collect()).unwrap_or_default();
    for extra in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        if !dirs.iter().any(|d| d == Path::new(extra)) {
            dirs.push(PathBuf::from(extra));
        }
    }
    dirs
}

fn find_in(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    dirs.iter().map(|dir| dir.join(name)).find(|path| {
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Whether `ldd`'s output says the file has no dynamic dependencies.
pub fn is_static(ldd_output: &str) -> bool {
    ldd_output.contains("not a dynamic executable") || ldd_output.contains("statically linked")
}

fn missing_message(missing: &[(&str, &str)]) -> String {
    let mut packages: Vec<&str> = Vec::new();
    for &(_, package) in missing {
        if !packages.contains(&package) {
            packages.push(package);
        }
    }
    let lines: Vec<String> = missing
        .iter()
        .map(|(tool, package)| format!("  {tool} (Debian package {package})"))
        .collect();
    format!(
        "the kernel lab cannot run, tools are missing:\n{}\n\
         install them with:\n  apt-get install -y {}",
        lines.join("\n"),
        packages.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tools_name_their_packages_once() {
        let message = missing_message(&[("apt-get", "apt"), ("apt-cache", "apt"), ("nft", "nftables")]);
        assert!(message.contains("  nft (Debian package nftables)"));
        assert!(message.ends_with("apt-get install -y apt nftables"));
    }

    #[test]
    fn ldd_static_answers() {
        assert!(is_static("\tnot a dynamic executable\n"));
        assert!(is_static("\tstatically linked\n"));
        assert!(!is_static("\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n"));
    }

    #[test]
    fn sbin_is_searched_even_when_path_lacks_it() {
        let dirs = search_dirs(Some(Path::new("/usr/bin:/bin")));
        assert!(dirs.contains(&PathBuf::from("/usr/sbin")));
        assert_eq!(dirs.iter().filter(|d| *d == Path::new("/usr/bin")).count(), 1);
    }
}
