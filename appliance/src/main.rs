//! `edgelb`: parses flags, loads configuration, and runs the command. Everything else lives
//! in the library.

use std::process::ExitCode;

use clap::Parser;
use edgelb::config::{self, Cli, Command, LogFormat};
use edgelb::store::copy::Location;
use edgelb::{cli, server, tls};

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EDGELB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A log line that cannot be written (the journal restarted, a closed pipe) is dropped:
    // tracing's own report of the failure goes to the same broken stream with `eprintln!`,
    // whose panic would end the appliance.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// One malloc arena instead of one per thread and core: the reconciler's large, short-lived
/// maps are built on whichever worker thread runs a pass, and each arena would keep its own
/// high-water mark of them (docs/benchmarks.md: 347 MB against 264 MB with one arena at 10,000
/// Services, before the state was made compact; 88 MB against about 100 MB with two arenas
/// after). And a fixed mmap threshold: a full pass's large, short-lived buffers (the
/// plan, kernel dumps, nft's listing) get their own mappings, returned whole when freed, instead
/// of glibc raising the threshold after the first such free and carving them from the heap,
/// where the long-lived state allocated around them keeps the pages resident. Must run before
/// the runtime starts its threads.
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes plain integers; called once, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let file = config::read_file(cli.config.as_deref())?;
    match cli.command {
        Command::Serve(args) => {
            let cfg = config::build(&args, &file)?;
            init_logging(cfg.log_format);
            server::run(cfg, shutdown_signal()).await?;
        }
        Command::CheckConfig(args) => {
            let cfg = config::build(&args, &file)?;
            println!(
                "configuration is valid: data_dir={} listen={} tls={}",
                cfg.data_dir.display(),
                cfg.listen,
                match cfg.tls {
                    config::TlsSource::SelfSigned => "self-signed".to_owned(),
                    config::TlsSource::Files { cert, .. } => cert.display().to_string(),
                }
            );
        }
        Command::Token(cmd) => {
            let dir = config::data_dir(&config::DataDirArg { data_dir: None }, &file);
            cli::token(cmd, &dir).await?;
        }
        Command::Dataplane(config::DataplaneCommand::Flush { data, interface }) => {
            init_logging(LogFormat::Text);
            let dir = config::data_dir(&data, &file);
            let interface = interface.or(file.interface.clone());
            let removed = cli::dataplane_flush(&dir, interface).await?;
            println!("removed {removed} entries edgelb owned (IPVS services, VIP addresses, its nftables table)");
        }
        Command::Pool(cmd) => cli::pool(cmd).await?,
        Command::Alloc(cmd) => cli::alloc(cmd).await?,
        Command::User(cmd) => {
            let dir = config::data_dir(&config::DataDirArg { data_dir: None }, &file);
            cli::user(cmd, &dir).await?;
        }
        Command::Store(config::StoreCommand::Copy { from, to }) => {
            let (from, to) = (Location::parse(&from)?, Location::parse(&to)?);
            let report = edgelb::store::copy::copy(&from, &to).await?;
            for (table, rows) in &report.tables {
                println!("{table:<18} {rows:>9} rows");
            }
            println!(
                "copied {} into {} and verified every row",
                from.describe(),
                to.describe()
            );
        }
        Command::Backup { file: dest, data } => {
            let dir = config::data_dir(&data, &file);
            cli::backup(&dir, &dest).await?;
            println!("backup written to {}", dest.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    tls::install_crypto_provider();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("edgelb: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgelb: {e:#}");
            ExitCode::FAILURE
        }
    }
}
