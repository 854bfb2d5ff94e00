//! Configuration: command-line flags (each with an `EDGELB_*` environment fallback) over an
//! optional TOML file over embedded defaults. Parse, then validate collecting every problem,
//! then build the typed [`Config`] the rest of the appliance uses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use edgelb_api::{Role, UserRole};
use serde::Deserialize;

use crate::forwarding::NatMode;

pub const DEFAULT_DATA_DIR: &str = "edgelb-data";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:8443";

#[derive(Debug, Parser)]
#[command(
    name = "edgelb",
    version,
    about = "edgelb: an edge load balancer appliance for Kubernetes LoadBalancer Services"
)]
pub struct Cli {
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "EDGELB_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the appliance: REST API over HTTPS, store, background work.
    Serve(ServeArgs),
    /// Validate the configuration, report every problem, and exit (non-zero if any).
    CheckConfig(ServeArgs),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage IP pools (through the REST API).
    #[command(subcommand)]
    Pool(PoolCommand),
    /// List allocations (through the REST API).
    #[command(subcommand)]
    Alloc(AllocCommand),
    /// The data plane: remove what edgelb programmed into the kernel.
    #[command(subcommand)]
    Dataplane(DataplaneCommand),
    /// Manage console users.
    #[command(subcommand)]
    User(UserCommand),
    /// The store as a whole: copy it between SQLite and PostgreSQL.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Write a consistent copy of the database, while the appliance runs.
    Backup {
        /// Where to write the copy (must not exist).
        file: PathBuf,
        #[command(flatten)]
        data: DataDirArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy a whole store into an empty one (SQLite to PostgreSQL, PostgreSQL to SQLite, or
    /// either to its own kind), verify that every row arrived, and only then commit. The source
    /// is read at one moment and may be in use; a target that holds anything is refused.
    Copy {
        /// The store to read: `sqlite:/var/lib/edgelb/edgelb.db` or `postgres://user@host/db`
        /// (a password in the URL is never shown; PGPASSWORD is read as well).
        #[arg(long)]
        from: String,
        /// The store to write: a new SQLite file, or a PostgreSQL database holding no edgelb rows.
        #[arg(long)]
        to: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct DataDirArg {
    /// Directory holding the database and the TLS certificate.
    #[arg(long, env = "EDGELB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Whether the appliance forwards traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneMode {
    /// IPVS forwarding in this host's kernel.
    Ipvs,
    /// Control plane only: pools, allocations and the API; nothing is forwarded.
    None,
}

impl DataplaneMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DataplaneMode::Ipvs => "ipvs",
            DataplaneMode::None => "none",
        }
    }

    /// The mode tried when none is configured: `ipvs` for a process holding CAP_NET_ADMIN (an
    /// appliance: root, or the systemd unit's capability), `none` otherwise (a developer's
    /// unprivileged `cargo run -- serve`, which could not program the kernel anyway). A defaulted
    /// `ipvs` that cannot run (no IPVS in the kernel) falls back to `none` at start, loudly.
    pub fn default_for(has_cap_net_admin: bool) -> DataplaneMode {
        if has_cap_net_admin {
            DataplaneMode::Ipvs
        } else {
            DataplaneMode::None
        }
    }
}

/// How replies from the nodes reach the client: the `nat` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Nat {
    /// Source NAT to the appliance's address: works whatever the nodes' routes are; the Service
    /// sees the appliance's address, not the client's.
    #[default]
    Full,
    /// No source NAT: the Service sees the client's address; replies come back only where the
    /// appliance is the nodes' route back to the clients (their gateway).
    Plain,
}

impl Nat {
    pub fn as_str(self) -> &'static str {
        match self {
            Nat::Full => "full",
            Nat::Plain => "plain",
        }
    }

    /// The data plane's name for it.
    pub fn mode(self) -> NatMode {
        match self {
            Nat::Full => NatMode::FullNat,
            Nat::Plain => NatMode::PlainNat,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum DataplaneCommand {
    /// Remove what edgelb owns from the kernel: its IPVS services for VIPs inside its pools (with
    /// their real servers) and its VIP addresses. Anything else is left alone. Stop the appliance
    /// first, or it puts everything back on its next pass.
    Flush {
        #[command(flatten)]
        data: DataDirArg,
        /// The VIP interface, to release the VIP addresses on it too.
        #[arg(long, env = "EDGELB_INTERFACE")]
        interface: Option<String>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub data: DataDirArg,
    /// Address and port to serve HTTPS on.
    #[arg(long, env = "EDGELB_LISTEN")]
    pub listen: Option<String>,
    /// PEM certificate (chain) to serve; without it a self-signed one is made in the data dir.
    #[arg(long, env = "EDGELB_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "EDGELB_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    #[arg(long, env = "EDGELB_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "EDGELB_SHUTDOWN_GRACE_SECONDS")]
    pub shutdown_grace_seconds: Option<u64>,
    /// Seconds a client connection may take for its TLS handshake, to send a request's headers,
    /// or sit idle between requests before it is closed (1 to 600; default 30).
    #[arg(long, env = "EDGELB_CLIENT_TIMEOUT_SECONDS")]
    pub client_timeout_seconds: Option<u64>,
    /// Client connections served at once; more are closed at once, with a warning in the log.
    /// Default: the file-descriptor limit less 64 (kept for the database and the data plane),
    /// at most 10,000.
    #[arg(long, env = "EDGELB_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Data plane: `ipvs` forwards VIP traffic with IPVS and refuses to start without the ip_vs
    /// module or CAP_NET_ADMIN; `none` runs the control plane only. Unset: `ipvs` when it can run
    /// here (CAP_NET_ADMIN and a kernel with IPVS), else `none` with a loud warning in the log,
    /// /readyz and /api/v1/info — so `edgelb serve` starts on any developer machine, while a
    /// production appliance says `ipvs` (as deploy/appliance does) and then forwards or fails to
    /// start, never silently not.
    #[arg(long, env = "EDGELB_DATAPLANE", value_enum)]
    pub dataplane: Option<DataplaneMode>,
    /// Interface that carries the VIPs.
    #[arg(long, env = "EDGELB_INTERFACE")]
    pub interface: Option<String>,
    /// Seconds between full data-plane resyncs that repair drift (default 30). Store changes are
    /// applied at once regardless.
    #[arg(long, env = "EDGELB_RESYNC_SECONDS")]
    pub resync_seconds: Option<u64>,
    /// How replies find the client: `full` (default) source-NATs forwarded traffic to the
    /// appliance's address, which works with any node routing but hides the client's address;
    /// `plain` keeps the client's address and needs the appliance to be the nodes' route back
    /// to the clients (see docs/operations.md).
    #[arg(long, env = "EDGELB_NAT", value_enum)]
    pub nat: Option<Nat>,
    /// Gratuitous ARP / unsolicited neighbour advertisement rounds sent when a VIP is claimed
    /// (default 3; 0 sends none, for sites that route the VIPs instead).
    #[arg(long, env = "EDGELB_ANNOUNCE_COUNT")]
    pub announce_count: Option<u32>,
    /// Milliseconds between two announcement rounds (default 200).
    #[arg(long, env = "EDGELB_ANNOUNCE_INTERVAL_MS")]
    pub announce_interval_ms: Option<u64>,
    #[command(flatten)]
    pub health: HealthArgs,
}

/// Health checks of the nodes behind the VIPs (defaults; see docs/operations.md).
#[derive(Debug, Clone, Default, Args)]
pub struct HealthArgs {
    /// Seconds between two probes of one target (default 2; fractions allowed, e.g. 0.5).
    #[arg(long, env = "EDGELB_HEALTH_INTERVAL_SECONDS")]
    pub health_interval_seconds: Option<f64>,
    /// Seconds a probe may take before it counts as failed (default 1; less than the interval).
    #[arg(long, env = "EDGELB_HEALTH_TIMEOUT_SECONDS")]
    pub health_timeout_seconds: Option<f64>,
    /// Consecutive successes that make an unhealthy target healthy again (default 2).
    #[arg(long, env = "EDGELB_HEALTH_RISE")]
    pub health_rise: Option<u32>,
    /// Consecutive failures that make a healthy target unhealthy (default 3).
    #[arg(long, env = "EDGELB_HEALTH_FALL")]
    pub health_fall: Option<u32>,
    /// Spread each probe interval at random by up to this percentage either way, so targets
    /// probed at one interval do not fire together (default 10; 0 to 50).
    #[arg(long, env = "EDGELB_HEALTH_JITTER_PERCENT")]
    pub health_jitter_percent: Option<u32>,
    /// Probes in flight at most, across every target (default 256; 1 to 65536).
    #[arg(long, env = "EDGELB_HEALTH_CONCURRENCY")]
    pub health_concurrency: Option<u32>,
    /// Seconds a drained real server (weight 0: unhealthy, or its node NotReady, unschedulable
    /// or excluded) stays in IPVS so open connections finish, before it is removed (default 300).
    #[arg(long, env = "EDGELB_DRAIN_TIMEOUT_SECONDS")]
    pub drain_timeout_seconds: Option<u64>,
    /// When every real server of a virtual service is unhealthy: `fail-open` keeps them all
    /// (default: probes may be what is broken), `fail-closed` drains them all.
    #[arg(long, env = "EDGELB_HEALTH_ALL_DOWN", value_enum)]
    pub health_all_down: Option<AllDown>,
    /// Also probe each node address with kube-proxy's node-level `GET /healthz` on this port
    /// (kube-proxy's default is 10256); while it fails, every real server on that node is
    /// drained. Off unless set: only for clusters that run kube-proxy and let the appliance reach
    /// the port.
    #[arg(long, env = "EDGELB_HEALTH_NODE_PORT")]
    pub health_node_port: Option<u16>,
}

/// What to do when every real server of a virtual service is unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllDown {
    /// Keep them all at full weight.
    #[default]
    FailOpen,
    /// Drain them all (weight 0, removed after the drain timeout).
    FailClosed,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token directly in the data directory (works with the appliance stopped or
    /// running); prints the secret alone on the last line.
    Create {
        #[command(flatten)]
        data: DataDirArg,
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The cluster an agent token serves.
        #[arg(long)]
        cluster: Option<String>,
    },
    /// List tokens.
    List(ClientArgs),
    /// Revoke a token by id.
    Revoke {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// List console users (through the REST API).
    List(ClientArgs),
    /// Create a console user (through the REST API). Without --password-file a random password
    /// is made and printed alone on the last line.
    Create {
        name: String,
        /// admin, operator or viewer.
        #[arg(long, value_parser = parse_user_role)]
        role: UserRole,
        /// A file holding the password (`-` reads standard input); never give a password on the
        /// command line, where every user of the host can read it.
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a console user's role and/or password (through the REST API). A new password ends
    /// the user's sessions; a new role applies to them at once.
    Set {
        name: String,
        #[arg(long, value_parser = parse_user_role)]
        role: Option<UserRole>,
        /// A file holding the new password (`-` reads standard input).
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a console user and end their sessions (through the REST API).
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Give a console user a new random password, directly in the data directory (works with the
    /// appliance stopped or running) and end the user's sessions; prints the password alone on
    /// the last line.
    ResetPassword {
        /// The user, e.g. admin.
        name: String,
        #[command(flatten)]
        data: DataDirArg,
    },
}

/// A pool's forwarding method as `pool set` takes it: a method, or back to the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolForwarding {
    Default,
    Method(edgelb_api::Forwarding),
}

fn parse_pool_forwarding(s: &str) -> Result<PoolForwarding, String> {
    match s {
        "default" => Ok(PoolForwarding::Default),
        m => m
            .parse()
            .map(PoolForwarding::Method)
            .map_err(|e: String| format!("{e}, or default")),
    }
}

fn parse_user_role(s: &str) -> Result<UserRole, String> {
    match Role::parse(s).and_then(UserRole::of) {
        Some(role) => Ok(role),
        None => Err(format!(
            "'{s}' is not a console role: use admin, operator or viewer (agents use tokens)"
        )),
    }
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("'{s}' is not a role: use admin, operator, viewer or agent"))
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// List pools with their usage.
    List(ClientArgs),
    /// Show one pool.
    Show {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create a pool.
    Create {
        name: String,
        /// CIDR or start-end range; repeat for several.
        #[arg(long = "range", required = true)]
        ranges: Vec<String>,
        /// Only for Services that name this pool.
        #[arg(long)]
        no_auto_assign: bool,
        #[arg(long)]
        avoid_buggy_ips: bool,
        #[arg(long, default_value_t = 0)]
        priority: i32,
        #[arg(long = "cluster")]
        clusters: Vec<String>,
        #[arg(long = "namespace")]
        namespaces: Vec<String>,
        #[arg(long, default_value = "wlc")]
        scheduler: String,
        #[arg(long, default_value_t = 600)]
        hold_seconds: u64,
        /// How its Services' traffic reaches the nodes: fullnat, nat, direct or tunnel (default:
        /// the appliance's `--nat`).
        #[arg(long)]
        forwarding: Option<edgelb_api::Forwarding>,
        /// Warn when this percentage of any family's addresses is in use.
        #[arg(long, default_value_t = edgelb_api::DEFAULT_CAPACITY_WARNING_PERCENT)]
        capacity_warning_percent: u8,
        /// Critical when this percentage is in use (more than the warning; 100 is exhausted).
        #[arg(long, default_value_t = edgelb_api::DEFAULT_CAPACITY_CRITICAL_PERCENT)]
        capacity_critical_percent: u8,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a pool: only the settings given (the REST API's PATCH). Ranges given replace the
    /// pool's whole list; one that would leave out an address in use is refused.
    Set {
        name: String,
        /// CIDR or start-end range; repeat for several. Replaces the pool's ranges.
        #[arg(long = "range")]
        ranges: Vec<String>,
        #[arg(long)]
        priority: Option<i32>,
        #[arg(long)]
        scheduler: Option<String>,
        #[arg(long)]
        hold_seconds: Option<u64>,
        /// fullnat, nat, direct or tunnel; `default` for the appliance's `--nat`.
        #[arg(long, value_parser = parse_pool_forwarding)]
        forwarding: Option<PoolForwarding>,
        #[arg(long)]
        capacity_warning_percent: Option<u8>,
        #[arg(long)]
        capacity_critical_percent: Option<u8>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a pool (refused while it holds addresses).
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum AllocCommand {
    /// List allocated and held addresses.
    List {
        #[arg(long)]
        pool: Option<String>,
        #[arg(long)]
        cluster: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// How the CLI reaches a running appliance.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The appliance's URL.
    #[arg(long, env = "EDGELB_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Bearer token. An option on the command line wins over the environment: `--token`, then
    /// `--token-file`, then EDGELB_TOKEN, then EDGELB_TOKEN_FILE.
    #[arg(long)]
    pub token: Option<String>,
    /// File holding the bearer token (see --token for which source wins).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the appliance; defaults to the data dir's self-signed one.
    #[arg(long, env = "EDGELB_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Data directory whose self-signed certificate to trust when no --ca-cert is given.
    #[arg(long, env = "EDGELB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The optional TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub shutdown_grace_seconds: Option<u64>,
    pub client_timeout_seconds: Option<u64>,
    pub max_connections: Option<usize>,
    pub dataplane: Option<DataplaneMode>,
    pub interface: Option<String>,
    pub resync_seconds: Option<u64>,
    /// `full` or `plain`; a string so a wrong value gets a message that says what each means.
    pub nat: Option<String>,
    pub announce_count: Option<u32>,
    pub announce_interval_ms: Option<u64>,
    pub health_interval_seconds: Option<f64>,
    pub health_timeout_seconds: Option<f64>,
    pub health_rise: Option<u32>,
    pub health_fall: Option<u32>,
    pub health_jitter_percent: Option<u32>,
    pub health_concurrency: Option<u32>,
    pub drain_timeout_seconds: Option<u64>,
    pub health_all_down: Option<AllDown>,
    pub health_node_port: Option<u16>,
}

/// Where the TLS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Made on first start and kept in the data directory.
    SelfSigned,
}

/// The validated configuration of `serve`.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub tls: TlsSource,
    pub log_format: LogFormat,
    pub shutdown_grace: Duration,
    pub connections: ConnectionLimits,
    pub dataplane: DataplaneConfig,
    pub health: HealthConfig,
}

/// What one client may hold of the appliance: a connection that stalls is closed, and the
/// connections served at once stay below the file-descriptor limit, so a flood of idle or
/// trickling clients cannot stop the API and `/healthz` from answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// For the TLS handshake, each request's headers, and the wait between requests.
    pub client_timeout: Duration,
    pub max_connections: usize,
}

/// File descriptors kept back from client connections: the database, the data plane's sockets,
/// the health checks' probes (which have their own concurrency cap) and the log.
const RESERVED_FDS: u64 = 64;
const MAX_CONNECTIONS: usize = 10_000;

impl ConnectionLimits {
    /// The most connections this process can hold beside what it needs itself.
    #[allow(unsafe_code)] // getrlimit has no safe wrapper among our dependencies.
    pub fn fd_bound() -> usize {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        let soft = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } {
            0 => lim.rlim_cur,
            _ => 1024,
        };
        usize::try_from(soft.saturating_sub(RESERVED_FDS))
            .unwrap_or(MAX_CONNECTIONS)
            .clamp(1, MAX_CONNECTIONS)
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            client_timeout: Duration::from_secs(30),
            max_connections: ConnectionLimits::fd_bound(),
        }
    }
}

/// Health-check defaults and what unhealthy means for forwarding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Each probe interval is spread at random by up to this percentage either way.
    pub jitter_percent: u8,
    /// Probes in flight at most.
    pub concurrency: usize,
    /// How long a drained real server stays (weight 0) before it is removed.
    pub drain_timeout: Duration,
    pub all_down: AllDown,
    /// kube-proxy's node-level health port, probed with `GET /healthz` on each node address
    /// used as a real server; `None` (the default) probes no node-level endpoint.
    pub node_port: Option<u16>,
}

impl Default for HealthConfig {
    fn default() -> HealthConfig {
        HealthConfig {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            jitter_percent: crate::health::DEFAULT_JITTER_PERCENT,
            concurrency: DEFAULT_PROBE_CONCURRENCY,
            drain_timeout: Duration::from_secs(DEFAULT_DRAIN_TIMEOUT_SECONDS),
            all_down: AllDown::FailOpen,
            node_port: None,
        }
    }
}

/// Seconds a drained real server stays before removal.
pub const DEFAULT_DRAIN_TIMEOUT_SECONDS: u64 = 300;

/// Probes in flight at most, by default: enough for 10,000 targets at a 2 s interval with
/// probes that take up to 50 ms, without opening thousands of sockets at once.
pub const DEFAULT_PROBE_CONCURRENCY: usize = 256;

/// The data plane's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    pub mode: DataplaneMode,
    /// Whether the mode came from the default rather than a flag, variable or file.
    pub defaulted: bool,
    pub interface: Option<String>,
    pub resync: Duration,
    pub nat: Nat,
    /// Gratuitous ARP / NA rounds when a VIP is claimed, and the time between them.
    pub announce_count: u32,
    pub announce_interval: Duration,
}

impl DataplaneConfig {
    /// Control plane only, as chosen explicitly (for tests and tools).
    pub fn none() -> DataplaneConfig {
        DataplaneConfig {
            mode: DataplaneMode::None,
            defaulted: false,
            interface: None,
            resync: Duration::from_secs(DEFAULT_RESYNC_SECONDS),
            nat: Nat::Full,
            announce_count: DEFAULT_ANNOUNCE_COUNT,
            announce_interval: Duration::from_millis(DEFAULT_ANNOUNCE_INTERVAL_MS),
        }
    }
}

/// Seconds between full data-plane resyncs.
pub const DEFAULT_RESYNC_SECONDS: u64 = 30;

/// Announcement rounds when a VIP is claimed: one can be lost, three rarely are all.
pub const DEFAULT_ANNOUNCE_COUNT: u32 = 3;
/// Milliseconds between announcement rounds.
pub const DEFAULT_ANNOUNCE_INTERVAL_MS: u64 = 200;

/// Whether this process holds CAP_NET_ADMIN in its effective set (bit 12 of `CapEff`).
pub fn has_cap_net_admin() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 12) != 0)
}

/// Every problem found, one per line.
#[derive(Debug, thiserror::Error)]
#[error("the configuration has {} problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

/// Reads the TOML file, if one is named.
pub fn read_file(path: Option<&Path>) -> Result<FileConfig, ConfigErrors> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![format!("config file {}: {e}", path.display())]))?;
    toml::from_str(&text).map_err(|e| ConfigErrors(vec![format!("config file {}: {}", path.display(), e.message())]))
}

/// The data directory from a flag, the file, or the default.
pub fn data_dir(flag: &DataDirArg, file: &FileConfig) -> PathBuf {
    flag.data_dir
        .clone()
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// Validates flags over the file, collecting every problem, and builds the configuration.
pub fn build(args: &ServeArgs, file: &FileConfig) -> Result<Config, ConfigErrors> {
    let mut problems = Vec::new();
    let data_dir = data_dir(&args.data, file);
    check_data_dir(&data_dir, &mut problems);

    let listen_text = args
        .listen
        .clone()
        .or_else(|| file.listen.clone())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let listen = match listen_text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(format!(
                "listen: '{listen_text}' is not an address and port (write e.g. 0.0.0.0:8443 or [::]:8443)"
            ));
            None
        }
    };

    let cert = args.tls_cert.clone().or_else(|| file.tls_cert.clone());
    let key = args.tls_key.clone().or_else(|| file.tls_key.clone());
    let tls = match (cert, key) {
        (None, None) => Some(TlsSource::SelfSigned),
        (Some(cert), Some(key)) => {
            let before = problems.len();
            check_pem(&cert, "tls_cert", "CERTIFICATE", &mut problems);
            check_pem(&key, "tls_key", "PRIVATE KEY", &mut problems);
            (problems.len() == before).then_some(TlsSource::Files { cert, key })
        }
        (Some(_), None) => {
            problems
                .push("tls_cert is set but tls_key is not: give both, or neither for a self-signed certificate".into());
            None
        }
        (None, Some(_)) => {
            problems
                .push("tls_key is set but tls_cert is not: give both, or neither for a self-signed certificate".into());
            None
        }
    };

    let grace = args
        .shutdown_grace_seconds
        .or(file.shutdown_grace_seconds)
        .unwrap_or(30);
    if grace > 600 {
        problems.push(format!(
            "shutdown_grace_seconds: {grace} is more than the maximum of 600"
        ));
    }
    let client_timeout = args
        .client_timeout_seconds
        .or(file.client_timeout_seconds)
        .unwrap_or(30);
    if !(1..=600).contains(&client_timeout) {
        problems.push(format!("client_timeout_seconds: {client_timeout} is not from 1 to 600"));
    }
    let fd_bound = ConnectionLimits::fd_bound();
    let max_connections = args.max_connections.or(file.max_connections).unwrap_or(fd_bound);
    if max_connections == 0 || max_connections > fd_bound {
        problems.push(format!(
            "max_connections: {max_connections} is not from 1 to {fd_bound} (the file-descriptor limit less \
             {RESERVED_FDS}, at most {MAX_CONNECTIONS}): lower it, or raise the limit (ulimit -n, LimitNOFILE=)"
        ));
    }
    let log_format = args.log_format.or(file.log_format).unwrap_or(LogFormat::Text);

    let chosen = args.dataplane.or(file.dataplane);
    let resync = args
        .resync_seconds
        .or(file.resync_seconds)
        .unwrap_or(DEFAULT_RESYNC_SECONDS);
    if !(1..=3600).contains(&resync) {
        problems.push(format!("resync_seconds: {resync} must be from 1 to 3600"));
    }
    let interface = args.interface.clone().or_else(|| file.interface.clone());
    if let Some(i) = &interface
        && (i.is_empty() || i.len() > 15 || i.contains('/') || i.chars().any(char::is_whitespace))
    {
        problems.push(format!(
            "interface: '{i}' is not an interface name (1 to 15 characters)"
        ));
    }
    let nat = match (args.nat, &file.nat) {
        (Some(n), _) => n,
        (None, None) => Nat::default(),
        (None, Some(text)) => Nat::from_str(text, false).unwrap_or_else(|_| {
            problems.push(format!(
                "nat: '{text}' is not a NAT mode: use \"full\" (source NAT to the appliance's address, works \
                 whatever the nodes' routes) or \"plain\" (the client's address reaches the Service; the \
                 appliance must be the nodes' route back to the clients)"
            ));
            Nat::default()
        }),
    };
    let announce_count = args
        .announce_count
        .or(file.announce_count)
        .unwrap_or(DEFAULT_ANNOUNCE_COUNT);
    if announce_count > 50 {
        problems.push(format!(
            "announce_count: {announce_count} must be from 0 to 50 rounds (0 sends no gratuitous ARP / NA)"
        ));
    }
    let announce_interval_ms = args
        .announce_interval_ms
        .or(file.announce_interval_ms)
        .unwrap_or(DEFAULT_ANNOUNCE_INTERVAL_MS);
    if !(10..=10_000).contains(&announce_interval_ms) {
        problems.push(format!(
            "announce_interval_ms: {announce_interval_ms} must be from 10 to 10000 milliseconds"
        ));
    }
    let dataplane = DataplaneConfig {
        mode: chosen.unwrap_or_else(|| DataplaneMode::default_for(has_cap_net_admin())),
        defaulted: chosen.is_none(),
        interface,
        resync: Duration::from_secs(resync),
        nat,
        announce_count,
        announce_interval: Duration::from_millis(announce_interval_ms),
    };

    let health = build_health(&args.health, file, &mut problems);

    match (problems.is_empty(), listen, tls) {
        (true, Some(listen), Some(tls)) => Ok(Config {
            data_dir,
            listen,
            tls,
            log_format,
            shutdown_grace: Duration::from_secs(grace),
            connections: ConnectionLimits {
                client_timeout: Duration::from_secs(client_timeout),
                max_connections,
            },
            dataplane,
            health,
        }),
        _ => Err(ConfigErrors(problems)),
    }
}

fn build_health(args: &HealthArgs, file: &FileConfig, problems: &mut Vec<String>) -> HealthConfig {
    let d = HealthConfig::default();
    let seconds = |field: &str, v: Option<f64>, default: Duration, problems: &mut Vec<String>| match v {
        None => default,
        Some(s) if s.is_finite() && (0.05..=3600.0).contains(&s) => Duration::from_secs_f64(s),
        Some(s) => {
            problems.push(format!("{field}: {s} must be from 0.05 to 3600 seconds"));
            default
        }
    };
    let interval = seconds(
        "health_interval_seconds",
        args.health_interval_seconds.or(file.health_interval_seconds),
        d.interval,
        problems,
    );
    let timeout_given = args.health_timeout_seconds.or(file.health_timeout_seconds);
    // An unset timeout follows a short interval down, so `--health-interval-seconds 0.5` alone
    // is valid.
    let timeout = seconds(
        "health_timeout_seconds",
        timeout_given,
        d.timeout.min(interval),
        problems,
    );
    if timeout_given.is_some() && timeout > interval {
        problems.push(format!(
            "health_timeout_seconds: {} is longer than the interval of {} seconds",
            timeout.as_secs_f64(),
            interval.as_secs_f64()
        ));
    }
    let mut count = |field: &str, v: Option<u32>, default: u32| match v {
        None => default,
        Some(n) if (1..=100).contains(&n) => n,
        Some(n) => {
            problems.push(format!("{field}: {n} must be from 1 to 100"));
            default
        }
    };
    let rise = count("health_rise", args.health_rise.or(file.health_rise), d.rise);
    let fall = count("health_fall", args.health_fall.or(file.health_fall), d.fall);
    let jitter_percent = match args.health_jitter_percent.or(file.health_jitter_percent) {
        None => d.jitter_percent,
        Some(j) if j <= edgelb_api::MAX_JITTER_PERCENT => j as u8,
        Some(j) => {
            problems.push(format!(
                "health_jitter_percent: {j} must be from 0 to {} (percent of the interval, either way)",
                edgelb_api::MAX_JITTER_PERCENT
            ));
            d.jitter_percent
        }
    };
    let concurrency = match args.health_concurrency.or(file.health_concurrency) {
        None => d.concurrency,
        Some(n) if (1..=65_536).contains(&n) => n as usize,
        Some(n) => {
            problems.push(format!(
                "health_concurrency: {n} must be from 1 to 65536 probes in flight"
            ));
            d.concurrency
        }
    };
    let drain = args
        .drain_timeout_seconds
        .or(file.drain_timeout_seconds)
        .unwrap_or(DEFAULT_DRAIN_TIMEOUT_SECONDS);
    if drain > 86_400 {
        problems.push(format!(
            "drain_timeout_seconds: {drain} is more than the maximum of 86400"
        ));
    }
    let node_port = args.health_node_port.or(file.health_node_port);
    if node_port == Some(0) {
        problems.push(
            "health_node_port: 0 is not a port: use kube-proxy's health port (10256 unless its \
             --healthz-bind-address says otherwise), or leave it unset to probe no node-level endpoint"
                .to_owned(),
        );
    }
    HealthConfig {
        interval,
        timeout,
        rise,
        fall,
        jitter_percent,
        concurrency,
        drain_timeout: Duration::from_secs(drain),
        all_down: args.health_all_down.or(file.health_all_down).unwrap_or_default(),
        node_port: node_port.filter(|p| *p != 0),
    }
}

fn check_data_dir(dir: &Path, problems: &mut Vec<String>) {
    if dir.exists() {
        if !dir.is_dir() {
            problems.push(format!("data_dir: {} exists and is not a directory", dir.display()));
        } else if std::fs::metadata(dir).is_ok_and(|m| m.permissions().readonly()) {
            problems.push(format!("data_dir: {} is read-only", dir.display()));
        }
        return;
    }
    // It will be created: its nearest existing ancestor must be a directory.
    let mut parent = dir.parent();
    while let Some(p) = parent {
        if p.as_os_str().is_empty() || p.exists() {
            if !p.as_os_str().is_empty() && !p.is_dir() {
                problems.push(format!(
                    "data_dir: cannot create {}: {} is not a directory",
                    dir.display(),
                    p.display()
                ));
            }
            return;
        }
        parent = p.parent();
    }
}

fn check_pem(path: &Path, field: &str, label: &str, problems: &mut Vec<String>) {
    match std::fs::read_to_string(path) {
        Ok(text)
            if text.contains(&format!("-----BEGIN {label}-----"))
                || (label == "PRIVATE KEY" && text.contains(" PRIVATE KEY-----")) => {}
        Ok(_) => problems.push(format!("{field}: {} holds no PEM {label}", path.display())),
        Err(e) => problems.push(format!("{field}: cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs {
            data: DataDirArg { data_dir: None },
            listen: None,
            tls_cert: None,
            tls_key: None,
            log_format: None,
            shutdown_grace_seconds: None,
            client_timeout_seconds: None,
            max_connections: None,
            dataplane: None,
            interface: None,
            resync_seconds: None,
            nat: None,
            announce_count: None,
            announce_interval_ms: None,
            health: HealthArgs::default(),
        }
    }

    #[test]
    fn health_settings_come_from_flags_over_the_file_and_are_validated() {
        let c = build(&args(), &FileConfig::default()).expect("defaults are valid");
        assert_eq!(c.health, HealthConfig::default());
        let file: FileConfig = toml::from_str(
            "health_interval_seconds = 0.5\nhealth_fall = 2\ndrain_timeout_seconds = 10\n\
             health_all_down = \"fail-closed\"",
        )
        .expect("toml");
        let c = build(&args(), &file).expect("valid");
        assert_eq!(c.health.interval, Duration::from_millis(500));
        assert_eq!(
            c.health.timeout,
            Duration::from_millis(500),
            "an unset timeout follows the interval"
        );
        assert_eq!(c.health.fall, 2);
        assert_eq!(c.health.rise, 2);
        assert_eq!(c.health.drain_timeout, Duration::from_secs(10));
        assert_eq!(c.health.all_down, AllDown::FailClosed);
        let mut a = args();
        a.health.health_all_down = Some(AllDown::FailOpen);
        a.health.health_timeout_seconds = Some(2.0);
        a.health.health_rise = Some(0);
        a.health.drain_timeout_seconds = Some(100_000);
        let err = build(&a, &file).expect_err("invalid");
        assert_eq!(err.0.len(), 3, "{err}");
        assert!(err.to_string().contains("longer than the interval"), "{err}");
        assert!(err.to_string().contains("health_rise"), "{err}");
        assert!(err.to_string().contains("drain_timeout_seconds"), "{err}");
    }

    #[test]
    fn the_shipped_example_configuration_is_valid_and_says_what_it_means() {
        let file: FileConfig =
            toml::from_str(include_str!("../../deploy/appliance/edgelb.toml")).expect("the example parses");
        let c = build(&args(), &file).expect("the example is valid");
        assert_eq!(c.dataplane.mode, DataplaneMode::Ipvs, "production forwards or fails");
        assert_eq!(c.health.jitter_percent, 10);
        assert_eq!(c.health.concurrency, 256);
        assert_eq!(c.health.fall, 3);
    }

    #[test]
    fn announcements_are_configurable_and_validated() {
        let c = build(&args(), &FileConfig::default()).expect("defaults are valid");
        assert_eq!(
            (c.dataplane.announce_count, c.dataplane.announce_interval),
            (3, Duration::from_millis(200))
        );
        let file: FileConfig = toml::from_str("announce_count = 0\nannounce_interval_ms = 50").expect("toml");
        let c = build(&args(), &file).expect("valid");
        assert_eq!(
            (c.dataplane.announce_count, c.dataplane.announce_interval),
            (0, Duration::from_millis(50))
        );
        let mut a = args();
        a.announce_count = Some(5);
        assert_eq!(
            build(&a, &file).expect("valid").dataplane.announce_count,
            5,
            "the flag wins"
        );
        a.announce_count = Some(51);
        a.announce_interval_ms = Some(5);
        let err = build(&a, &file).expect_err("invalid");
        assert_eq!(err.0.len(), 2, "every problem at once: {err}");
        assert!(
            err.to_string().contains("announce_count: 51 must be from 0 to 50"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("announce_interval_ms: 5 must be from 10 to 10000"),
            "{err}"
        );
    }

    #[test]
    fn probe_jitter_and_concurrency_come_from_flags_over_the_file_and_are_validated() {
        let c = build(&args(), &FileConfig::default()).expect("defaults are valid");
        assert_eq!((c.health.jitter_percent, c.health.concurrency), (10, 256));
        let file: FileConfig = toml::from_str("health_jitter_percent = 0\nhealth_concurrency = 32").expect("toml");
        let c = build(&args(), &file).expect("valid");
        assert_eq!((c.health.jitter_percent, c.health.concurrency), (0, 32));
        let mut a = args();
        a.health.health_jitter_percent = Some(50);
        let c = build(&a, &file).expect("valid");
        assert_eq!(c.health.jitter_percent, 50, "the flag wins over the file");
        a.health.health_jitter_percent = Some(51);
        a.health.health_concurrency = Some(0);
        let err = build(&a, &file).expect_err("invalid");
        assert_eq!(err.0.len(), 2, "every problem at once: {err}");
        assert!(
            err.to_string()
                .contains("health_jitter_percent: 51 must be from 0 to 50"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("health_concurrency: 0 must be from 1 to 65536"),
            "{err}"
        );
    }

    #[test]
    fn the_node_level_health_port_is_off_unless_set_and_zero_is_refused() {
        let c = build(&args(), &FileConfig::default()).expect("valid");
        assert_eq!(c.health.node_port, None, "off by default");
        let file: FileConfig = toml::from_str("health_node_port = 10256").expect("toml");
        assert_eq!(build(&args(), &file).expect("valid").health.node_port, Some(10256));
        let mut a = args();
        a.health.health_node_port = Some(10249);
        assert_eq!(
            build(&a, &file).expect("valid").health.node_port,
            Some(10249),
            "the flag wins over the file"
        );
        let file: FileConfig = toml::from_str(
            "health_node_port = 0
health_rise = 0",
        )
        .expect("toml");
        let err = build(&args(), &file).expect_err("port 0");
        assert_eq!(err.0.len(), 2, "every problem at once: {err}");
        assert!(err.to_string().contains("health_node_port: 0 is not a port"), "{err}");
        assert!(
            toml::from_str::<FileConfig>("health_node_port = 70000").is_err(),
            "not a u16"
        );
    }

    #[test]
    fn defaults_build_a_self_signed_config() {
        let c = build(&args(), &FileConfig::default()).expect("defaults are valid");
        assert_eq!(c.listen, DEFAULT_LISTEN.parse::<SocketAddr>().expect("addr"));
        assert_eq!(c.tls, TlsSource::SelfSigned);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file_not_dir = dir.path().join("f");
        std::fs::write(&file_not_dir, "x").expect("write");
        let mut a = args();
        a.data.data_dir = Some(file_not_dir.clone());
        a.listen = Some("nonsense".into());
        a.tls_cert = Some(dir.path().join("missing.pem"));
        a.shutdown_grace_seconds = Some(601);
        a.client_timeout_seconds = Some(0);
        a.max_connections = Some(ConnectionLimits::fd_bound() + 1);
        let err = build(&a, &FileConfig::default()).expect_err("invalid");
        let text = err.to_string();
        assert_eq!(err.0.len(), 6, "{text}");
        assert!(
            text.contains("client_timeout_seconds: 0 is not from 1 to 600"),
            "{text}"
        );
        assert!(text.contains("raise the limit (ulimit -n"), "{text}");
        assert!(text.contains("data_dir"), "{text}");
        assert!(text.contains("'nonsense' is not an address"), "{text}");
        assert!(text.contains("tls_cert is set but tls_key is not"), "{text}");
        assert!(text.contains("shutdown_grace_seconds"), "{text}");
    }

    #[test]
    fn flags_override_the_file() {
        let file: FileConfig = toml::from_str("listen = \"127.0.0.1:9000\"\nshutdown_grace_seconds = 5").expect("toml");
        let mut a = args();
        let c = build(&a, &file).expect("valid");
        assert_eq!(c.listen.port(), 9000);
        a.listen = Some("127.0.0.1:9100".into());
        let c = build(&a, &file).expect("valid");
        assert_eq!(c.listen.port(), 9100);
        assert_eq!(c.shutdown_grace, Duration::from_secs(5));
    }

    #[test]
    fn dataplane_defaults_to_ipvs_only_with_cap_net_admin() {
        assert_eq!(DataplaneMode::default_for(true), DataplaneMode::Ipvs);
        assert_eq!(DataplaneMode::default_for(false), DataplaneMode::None);
        let c = build(&args(), &FileConfig::default()).expect("valid");
        assert!(c.dataplane.defaulted);
        assert_eq!(c.dataplane.mode, DataplaneMode::default_for(has_cap_net_admin()));
    }

    #[test]
    fn dataplane_settings_come_from_flags_over_the_file() {
        let file: FileConfig =
            toml::from_str("dataplane = \"none\"\ninterface = \"eth1\"\nresync_seconds = 5").expect("toml");
        let c = build(&args(), &file).expect("valid");
        assert_eq!(c.dataplane.mode, DataplaneMode::None);
        assert!(!c.dataplane.defaulted);
        assert_eq!(c.dataplane.interface.as_deref(), Some("eth1"));
        assert_eq!(c.dataplane.resync, Duration::from_secs(5));
        let mut a = args();
        a.dataplane = Some(DataplaneMode::Ipvs);
        a.resync_seconds = Some(0);
        let err = build(&a, &file).expect_err("resync 0");
        assert!(err.to_string().contains("resync_seconds"), "{err}");
    }

    #[test]
    fn nat_defaults_to_full_and_comes_from_the_flag_over_the_file() {
        let c = build(&args(), &FileConfig::default()).expect("valid");
        assert_eq!(c.dataplane.nat, Nat::Full);
        assert_eq!(c.dataplane.nat.mode(), NatMode::FullNat);
        let file: FileConfig = toml::from_str("nat = \"plain\"").expect("toml");
        let c = build(&args(), &file).expect("valid");
        assert_eq!(c.dataplane.nat, Nat::Plain);
        assert_eq!(c.dataplane.nat.mode(), NatMode::PlainNat);
        let mut a = args();
        a.nat = Some(Nat::Full);
        assert_eq!(build(&a, &file).expect("valid").dataplane.nat, Nat::Full);
    }

    #[test]
    fn a_wrong_nat_says_what_each_mode_means() {
        let file: FileConfig = toml::from_str("nat = \"masquerade\"\nresync_seconds = 0").expect("toml");
        let err = build(&args(), &file).expect_err("invalid");
        assert_eq!(err.0.len(), 2, "every problem at once: {err}");
        let text = err.to_string();
        assert!(text.contains("nat: 'masquerade' is not a NAT mode"), "{text}");
        assert!(text.contains("\"full\"") && text.contains("\"plain\""), "{text}");
        assert!(text.contains("route back"), "{text}");
    }

    #[test]
    fn the_nat_flag_takes_full_or_plain_and_refuses_others() {
        let cli = Cli::try_parse_from(["edgelb", "serve", "--nat", "plain"]).expect("parses");
        let Command::Serve(a) = cli.command else {
            panic!("not serve");
        };
        assert_eq!(a.nat, Some(Nat::Plain));
        let err = Cli::try_parse_from(["edgelb", "check-config", "--nat", "snat"]).expect_err("invalid");
        assert!(err.to_string().contains("[possible values: full, plain]"), "{err}");
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("edgelb.toml");
        std::fs::write(&p, "listn = \"x\"\n").expect("write");
        let err = read_file(Some(&p)).expect_err("typo");
        assert!(err.to_string().contains("unknown field `listn`"), "{err}");
    }

    #[test]
    fn pem_files_are_checked_for_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        std::fs::write(&cert, "not a cert").expect("write");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").expect("write");
        let mut a = args();
        a.tls_cert = Some(cert);
        a.tls_key = Some(key);
        let err = build(&a, &FileConfig::default()).expect_err("bad cert");
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(err.0[0].contains("holds no PEM CERTIFICATE"), "{err}");
    }
}
