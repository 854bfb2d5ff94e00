//! Command-line parsing for `cargo xtask`: turns arguments into a validated [`Task`], and nothing
//! else (no file system, no processes), so every rule here is unit-tested.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Result, bail};

pub const USAGE: &str = "\
usage: cargo xtask <task> [options]

tasks:
  kernel-lab    boot a Debian cloud kernel in qemu (TCG) and run IPVS scenarios against it

kernel-lab options:
  --scenario NAME      scenario from lab/scenarios/NAME.sh; repeat or comma-separate for several
                       (default: every scenario, except run-binary unless --run is given)
  --ship PATH[:DEST]   copy a host file into the VM at DEST (default /usr/local/bin/NAME),
                       with the shared libraries ldd names for it; repeatable
  --run PROGRAM        program for the run-binary scenario (a name on the VM's PATH or a path)
  --arg ARG            one argument for --run; repeatable, passed verbatim
  --env KEY=VALUE      exported to every scenario in the VM; repeatable
  --module NAME        load one more kernel module (and its dependencies); repeatable
  --timeout SECS       limit per VM boot, from start to power-off (default 300)
  --keep               keep the initramfs tree and image, print the qemu command line
  --bench              print time per phase and the scenarios' lab_bench marks
  --list               list the scenarios and exit
  -h, --help           this text
";

/// What `cargo xtask` was asked to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Task {
    Help,
    KernelLab(LabOptions),
}

/// Options of `cargo xtask kernel-lab`.
#[derive(Debug, PartialEq, Eq)]
pub struct LabOptions {
    pub scenarios: Vec<String>,
    pub ships: Vec<Ship>,
    /// Program and arguments for the run-binary scenario; empty when `--run` was not given.
    pub run: Vec<String>,
    pub env: Vec<(String, String)>,
    pub modules: Vec<String>,
    pub timeout: Duration,
    pub keep: bool,
    pub bench: bool,
    pub list: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            scenarios: Vec::new(),
            ships: Vec::new(),
            run: Vec::new(),
            env: Vec::new(),
            modules: Vec::new(),
            timeout: Duration::from_secs(300),
            keep: false,
            bench: false,
            list: false,
        }
    }
}

/// A host file to copy into the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ship {
    pub source: PathBuf,
    /// Absolute path inside the VM.
    pub dest: String,
}

pub fn parse(args: &[String]) -> Result<Task> {
    let Some((task, rest)) = args.split_first() else {
        return Ok(Task::Help);
    };
    match task.as_str() {
        "-h" | "--help" | "help" => Ok(Task::Help),
        "kernel-lab" => parse_lab(rest),
        other => bail!("unknown task `{other}`\n\n{USAGE}"),
    }
}

fn parse_lab(args: &[String]) -> Result<Task> {
    let mut opts = LabOptions::default();
    let mut program: Option<String> = None;
    let mut program_args = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = |flag: &str| -> Result<String> {
            match inline.clone().or_else(|| args.next().cloned()) {
                Some(value) => Ok(value),
                None => bail!("{flag} needs a value\n\n{USAGE}"),
            }
        };
        match flag {
            "-h" | "--help" => return Ok(Task::Help),
            "--scenario" => {
                for name in value(flag)?.split(',').filter(|n| !n.is_empty()) {
                    opts.scenarios.push(scenario_name(name)?);
                }
            }
            "--ship" => opts.ships.push(parse_ship(&value(flag)?)?),
            "--run" => program = Some(value(flag)?),
            "--arg" => program_args.push(value(flag)?),
            "--env" => opts.env.push(parse_env(&value(flag)?)?),
            "--module" => opts.modules.push(value(flag)?.replace('-', "_")),
            "--timeout" => {
                let raw = value(flag)?;
                match raw.parse::<u64>() {
                    Ok(secs) if secs > 0 => opts.timeout = Duration::from_secs(secs),
                    _ => bail!("--timeout wants a positive number of seconds, not `{raw}`"),
                }
            }
            "--keep" => opts.keep = true,
            "--bench" => opts.bench = true,
            "--list" => opts.list = true,
            other => bail!("unknown kernel-lab option `{other}`\n\n{USAGE}"),
        }
    }
    match program {
        Some(program) => {
            opts.run.push(program);
            opts.run.extend(program_args);
        }
        None if !program_args.is_empty() => {
            bail!("--arg is an argument for --run, which is missing")
        }
        None => {}
    }
    Ok(Task::KernelLab(opts))
}

/// Scenario names become file names and kernel command-line words: keep them plain.
fn scenario_name(name: &str) -> Result<String> {
    let name = name.strip_suffix(".sh").unwrap_or(name);
    let plain = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if name.is_empty() || !plain {
        bail!("scenario names are letters, digits, `-` and `_`; got `{name}`");
    }
    Ok(name.to_owned())
}

/// `PATH[:DEST]`; DEST defaults to `/usr/local/bin/<file name>`, which is on the VM's PATH.
pub fn parse_ship(raw: &str) -> Result<Ship> {
    let (source, dest) = match raw.split_once(':') {
        Some((source, dest)) => (source, Some(dest)),
        None => (raw, None),
    };
    if source.is_empty() {
        bail!("--ship `{raw}`: the host path is empty");
    }
    let source = PathBuf::from(source);
    let dest = match dest {
        Some(dest) => dest.to_owned(),
        None => match source.file_name() {
            Some(name) => format!("/usr/local/bin/{}", name.to_string_lossy()),
            None => bail!("--ship `{raw}`: cannot tell the file name, give :DEST"),
        },
    };
    if !dest.starts_with('/') || dest.split('/').any(|part| part == "..") || dest.ends_with('/') {
        bail!("--ship `{raw}`: DEST must be an absolute file path inside the VM without `..`");
    }
    Ok(Ship { source, dest })
}

fn parse_env(raw: &str) -> Result<(String, String)> {
    let Some((key, value)) = raw.split_once('=') else {
        bail!("--env wants KEY=VALUE, got `{raw}`");
    };
    let mut chars = key.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        bail!("--env `{raw}`: `{key}` is not a shell variable name");
    }
    Ok((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab(args: &[&str]) -> Result<LabOptions> {
        let mut all = vec!["kernel-lab".to_owned()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        match parse(&all)? {
            Task::KernelLab(opts) => Ok(opts),
            Task::Help => bail!("parsed as help"),
        }
    }

    #[test]
    fn no_arguments_means_help() {
        assert_eq!(parse(&[]).ok(), Some(Task::Help));
    }

    #[test]
    fn scenarios_repeat_and_split_on_commas() {
        let opts = lab(&["--scenario", "a,b", "--scenario=c.sh"]).ok();
        assert_eq!(
            opts.map(|o| o.scenarios),
            Some(vec!["a".into(), "b".into(), "c".into()])
        );
    }

    #[test]
    fn scenario_names_cannot_be_paths() {
        assert!(lab(&["--scenario", "../etc/passwd"]).is_err());
    }

    #[test]
    fn ship_defaults_to_usr_local_bin() {
        let ship = parse_ship("target/release/edgelb").ok();
        assert_eq!(ship.map(|s| s.dest), Some("/usr/local/bin/edgelb".to_owned()));
        let ship = parse_ship("a/b:/opt/x").ok();
        assert_eq!(ship.map(|s| (s.source, s.dest)), Some(("a/b".into(), "/opt/x".into())));
    }

    #[test]
    fn ship_destination_must_be_absolute_and_inside() {
        assert!(parse_ship("a:relative").is_err());
        assert!(parse_ship("a:/x/../../etc").is_err());
        assert!(parse_ship(":/x").is_err());
    }

    #[test]
    fn run_collects_its_arguments_in_order() {
        let opts = lab(&["--arg", "-v", "--run", "ipvs_smoke", "--arg=--count=3"]).ok();
        assert_eq!(
            opts.map(|o| o.run),
            Some(vec!["ipvs_smoke".into(), "-v".into(), "--count=3".into()])
        );
        assert!(lab(&["--arg", "x"]).is_err());
    }

    #[test]
    fn env_needs_a_shell_name() {
        let opts = lab(&["--env", "RUST_LOG=debug=x"]).ok();
        assert_eq!(opts.map(|o| o.env), Some(vec![("RUST_LOG".into(), "debug=x".into())]));
        assert!(lab(&["--env", "1X=y"]).is_err());
        assert!(lab(&["--env", "novalue"]).is_err());
    }

    #[test]
    fn flags_and_timeout() {
        let opts = lab(&["--keep", "--bench", "--timeout", "60", "--module", "nft-tproxy"]).ok();
        let opts = opts.map(|o| (o.keep, o.bench, o.timeout.as_secs(), o.modules));
        assert_eq!(opts, Some((true, true, 60, vec!["nft_tproxy".into()])));
        assert!(lab(&["--timeout", "0"]).is_err());
        assert!(lab(&["--timeout"]).is_err());
        assert!(lab(&["--frobnicate"]).is_err());
    }
}
