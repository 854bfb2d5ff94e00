//! A real PostgreSQL server for tests, started once per test process from Debian's `postgresql`
//! binaries, in a temporary directory, as an ordinary user, listening on loopback only.
//!
//! [`database`] gives each test a database of its own on that server. The server dies with the
//! test process (the kernel kills it: `setpriv --pdeathsig`), and its directory is removed by the
//! next test process that starts one. A machine without the binaries fails the test that asks,
//! with what to install: nothing is skipped.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The role every test connects as (a superuser of the throwaway cluster, trusted on loopback).
pub const USER: &str = "edgelb";

/// Where temporary clusters live: `<temp dir>/edgelb-pgtest-<pid>`.
const PREFIX: &str = "edgelb-pgtest-";

/// The running server of this test process.
pub struct Server {
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
}

/// The server of this test process, started at the first call.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| Server::start().unwrap_or_else(|e| panic!("cannot start the test PostgreSQL: {e}")))
}

/// A new, empty database on this process's server, and its URL (`postgres://edgelb@127.0.0.1:PORT/NAME`).
/// `hint` (letters, digits, `_`) goes into its name, to tell tests apart in the server's log.
pub fn database(hint: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let s = server();
    let clean: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let name = format!("t{}_{clean}", N.fetch_add(1, Ordering::Relaxed));
    s.psql("postgres", &format!("CREATE DATABASE \"{name}\""))
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    s.url(&name)
}

impl Server {
    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs one statement with `psql` (for what a test does to the server itself).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                USER,
            ])
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql])
            .output()
            .map_err(|e| format!("running psql: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The cluster's directory (its log is `log` in it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn start() -> Result<Server, String> {
        let bin = find_bin()?;
        remove_stale_clusters();
        let dir = std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let data = dir.join("data");
        // initdb refuses to run as root: as root, the cluster belongs to `nobody`.
        let root = is_root();
        if root {
            chown_nobody(&dir)?;
        }
        let as_user = |cmd: &Path| {
            let mut c = if root {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                    .arg(cmd);
                c
            } else {
                Command::new(cmd)
            };
            c.stdin(Stdio::null());
            c
        };
        let out = as_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
            .output()
            .map_err(|e| format!("running initdb (is setpriv, from util-linux, installed?): {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("log")).map_err(|e| format!("creating the log: {e}"))?;
        if root {
            chown_nobody(&dir.join("log"))?;
        }
        // A thread of its own forks the server and lives as long as it: the death signal is
        // sent when the forking thread ends, and this one ends only with the process.
        let (tx, rx) = std::sync::mpsc::channel();
        let mut cmd = if root {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--pdeathsig",
                "KILL",
                "--",
            ]);
            c.arg(bin.join("postgres"));
            c
        } else {
            let mut c = Command::new("setpriv");
            c.args(["--pdeathsig", "KILL", "--"]).arg(bin.join("postgres"));
            c
        };
        cmd.arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&dir)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            // Throwaway data: durability costs time and proves nothing here.
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args(["-c", "max_connections=300", "-c", "shared_buffers=64MB"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        std::thread::Builder::new()
            .name("pgtest-server".into())
            .spawn(move || match cmd.spawn() {
                Err(e) => {
                    let _ = tx.send(Err(format!("starting postgres: {e}")));
                }
                Ok(mut child) => {
                    let _ = tx.send(Ok(()));
                    let status = child.wait();
                    eprintln!("the test PostgreSQL ended: {status:?}");
                }
            })
            .map_err(|e| e.to_string())?;
        rx.recv().map_err(|e| e.to_string())??;
        let server = Server { port, bin, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match server.psql("postgres", "SELECT 1") {
                Ok(_) => return Ok(server),
                Err(e) if Instant::now() > deadline => {
                    let log = std::fs::read_to_string(server.dir.join("log")).unwrap_or_default();
                    return Err(format!("postgres did not answer in 60 s: {e}\n{log}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// Debian's binaries: `EDGELB_PG_BIN` if set, else the newest `/usr/lib/postgresql/*/bin`.
fn find_bin() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("EDGELB_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin: install Debian's `postgresql` \
         package (scripts/test.sh does), or set EDGELB_PG_BIN to the directory holding initdb"
            .to_owned()
    })
}

/// Removes the clusters of test processes that have ended (their servers died with them).
fn remove_stale_clusters() {
    for e in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("finding a free port: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn chown_nobody(path: &Path) -> Result<(), String> {
    std::os::unix::fs::chown(path, Some(65534), Some(65534)).map_err(|e| format!("chown {}: {e}", path.display()))
}
