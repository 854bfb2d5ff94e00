//! One boot of the guest: the qemu command line, streaming the serial console to a log file and
//! stdout, the time limit, and turning the scenario's result marker into an outcome. A run
//! without a marker is a failure, never a skip.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result};
use crate::process;

/// Printed by `/init` on a line of its own: `EDGELB-LAB-RESULT name=<scenario> status=PASS|FAIL`.
pub const RESULT_MARKER: &str = "EDGELB-LAB-RESULT";
/// Printed by `/init` and `lab_bench` when `--bench` is on: `EDGELB-LAB-BENCH name=.. uptime=..`.
pub const BENCH_MARKER: &str = "EDGELB-LAB-BENCH";

/// Time the guest needs to boot and load modules, kept out of the scenario's own limit so the
/// guest reports its own timeout (with a marker) before the host kills it.
const BOOT_ALLOWANCE: Duration = Duration::from_secs(30);

/// One guest boot.
#[derive(Debug)]
pub struct Boot<'a> {
    pub qemu: &'a Path,
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub scenario: &'a str,
    pub timeout: Duration,
    pub bench: bool,
    pub log: &'a Path,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    /// The guest stopped without a marker for this scenario; the reason says what was seen.
    NoMarker(String),
    TimedOut,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        *self == Self::Pass
    }
}

/// The result of one boot.
#[derive(Debug)]
pub struct Run {
    pub outcome: Outcome,
    pub wall: Duration,
    pub bench: Vec<String>,
}

/// A parsed result marker.
#[derive(Debug, PartialEq, Eq)]
pub struct Marker {
    pub name: String,
    pub pass: bool,
}

/// Parses a result marker line. It must start the line (after `\r` and blanks) so that a shell
/// trace or a log quoting the marker is not taken for the result.
pub fn parse_marker(line: &str) -> Option<Marker> {
    let rest = line.trim().strip_prefix(RESULT_MARKER)?.strip_prefix(' ')?;
    let mut name = None;
    let mut pass = None;
    for field in rest.split_whitespace() {
        match field.split_once('=') {
            Some(("name", value)) => name = Some(value.to_owned()),
            Some(("status", "PASS")) => pass = Some(true),
            Some(("status", "FAIL")) => pass = Some(false),
            _ => {}
        }
    }
    Some(Marker {
        name: name?,
        pass: pass?,
    })
}

/// The outcome of a boot from everything the serial console printed. A marker is the truth even
/// if qemu then failed to power off in time: the scenario did finish.
pub fn outcome(console: &str, scenario: &str, timed_out: bool) -> Outcome {
    let marker = console.lines().filter_map(parse_marker).next_back();
    match marker {
        Some(m) if m.name == scenario => {
            if m.pass {
                Outcome::Pass
            } else {
                Outcome::Fail
            }
        }
        Some(m) => Outcome::NoMarker(format!("the marker names scenario `{}`", m.name)),
        None if timed_out => Outcome::TimedOut,
        None if console.contains("Kernel panic") => {
            Outcome::NoMarker("the guest kernel panicked (see the log)".to_owned())
        }
        None => Outcome::NoMarker("the guest stopped without printing a result".to_owned()),
    }
}

/// The kernel command line: console on the first serial port, and the lab's own words, which
/// `/init` reads from `/proc/cmdline`.
pub fn kernel_cmdline(scenario: &str, timeout: Duration, bench: bool) -> String {
    let inner = timeout.saturating_sub(BOOT_ALLOWANCE).max(Duration::from_secs(10));
    let mut line = format!(
        "console=ttyS0 quiet panic=-1 edgelb.scenario={scenario} edgelb.timeout={}",
        inner.as_secs()
    );
    if bench {
        line.push_str(" edgelb.bench=1");
    }
    line
}

/// `qemu-system-x86_64` with TCG (KVM fails on these machines with "emulation failure"),
/// the serial console on stdio (`-nographic`; stdin must be /dev/null, see [`run`]) and no
/// display, exiting instead of rebooting.
pub fn command(qemu: &Path, vmlinuz: &Path, initrd: &Path, append: &str) -> Command {
    let mut cmd = Command::new(qemu);
    cmd.args(["-accel", "tcg", "-m", "1024", "-smp", "2", "-nographic", "-no-reboot"])
        // No network card: the guest's network lives in its namespaces, and the NIC's iPXE
        // option ROM costs boot time.
        .args(["-nic", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", append]);
    cmd
}

/// Boots the guest for one scenario and waits for it to power off or run out of time.
pub fn run(boot: &Boot<'_>) -> Result<Run> {
    let append = kernel_cmdline(boot.scenario, boot.timeout, boot.bench);
    let mut cmd = command(boot.qemu, boot.vmlinuz, boot.initrd, &append);
    // No stdin: CI has none, and -nographic must not wait on a terminal.
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let log = File::create(boot.log).with_context(|| format!("creating {}", boot.log.display()))?;
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::msg(format!("cannot start `{}`: {e}", process::describe(&cmd))))?;
    let console = stream(child.stdout.take(), log.try_clone().context("opening the log")?, false);
    let errors = stream(child.stderr.take(), log, true);
    let timed_out = wait(&mut child, boot.timeout)?;
    let wall = started.elapsed();
    let console = join(console)?;
    let errors = join(errors)?;

    let mut outcome = outcome(&console, boot.scenario, timed_out);
    if let Outcome::NoMarker(reason) = &outcome
        && !errors.trim().is_empty()
    {
        outcome = Outcome::NoMarker(format!("{reason}; qemu said: {}", errors.trim()));
    }
    let bench = console
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(BENCH_MARKER))
        .map(str::to_owned)
        .collect();
    Ok(Run { outcome, wall, bench })
}

/// Waits for qemu to exit; kills it (only this child, by handle) at the deadline.
fn wait(child: &mut Child, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().context("waiting for qemu")?.is_some() {
            return Ok(false);
        }
        if Instant::now() >= deadline {
            // Killing an already exited child is harmless; the wait reaps it either way.
            let _ = child.kill();
            child.wait().context("reaping qemu")?;
            return Ok(true);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

type Reader = thread::JoinHandle<io::Result<String>>;

/// Copies a qemu pipe to the log (raw) and to our stdout or stderr (cleaned) as it arrives,
/// returning all of it.
fn stream(pipe: Option<impl Read + Send + 'static>, mut log: File, to_stderr: bool) -> Option<Reader> {
    let mut pipe = pipe?;
    Some(thread::spawn(move || {
        let mut all = Vec::new();
        let mut clean = TerminalFilter::default();
        let mut buf = [0u8; 8192];
        loop {
            let n = pipe.read(&mut buf)?;
            if n == 0 {
                break;
            }
            let chunk = &buf[..n];
            log.write_all(chunk)?;
            // A closed terminal (`| head`) must not stop the draining, or qemu would block on a
            // full pipe until the timeout: echo errors are ignored, log errors are not.
            let text = clean.filter(chunk);
            let _ = if to_stderr {
                io::stderr().write_all(&text)
            } else {
                let mut out = io::stdout().lock();
                out.write_all(&text).and_then(|()| out.flush())
            };
            all.extend_from_slice(chunk);
        }
        Ok(String::from_utf8_lossy(&all).into_owned())
    }))
}

/// Drops `\r` and terminal escape sequences from console output. The firmware sends `ESC c`
/// (reset) and `ESC [?7l` (no line wrap), which would leave a developer's terminal without line
/// wrapping after the run. Keeps state across chunks, since a sequence can be split.
#[derive(Debug, Default)]
struct TerminalFilter {
    state: Escape,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Escape {
    #[default]
    Text,
    /// After ESC.
    Start,
    /// Inside `ESC [ ...`, until a final byte in `@..=~`.
    Csi,
}

impl TerminalFilter {
    fn filter(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len());
        for &byte in chunk {
            self.state = match (self.state, byte) {
                (Escape::Text, 0x1b) => Escape::Start,
                (Escape::Text, b'\r') => Escape::Text,
                (Escape::Text, _) => {
                    out.push(byte);
                    Escape::Text
                }
                (Escape::Start, b'[') => Escape::Csi,
                (Escape::Start, _) => Escape::Text,
                (Escape::Csi, 0x40..=0x7e) => Escape::Text,
                (Escape::Csi, _) => Escape::Csi,
            };
        }
        out
    }
}

fn join(reader: Option<Reader>) -> Result<String> {
    match reader {
        None => Ok(String::new()),
        Some(handle) => match handle.join() {
            Ok(text) => text.context("reading qemu's output"),
            Err(_) => Err(Error::msg("the thread reading qemu's output panicked")),
        },
    }
}

/// Where a scenario's console log goes.
pub fn log_path(dir: &Path, scenario: &str) -> PathBuf {
    dir.join(format!("{scenario}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_parses_name_and_status() {
        let marker = parse_marker("EDGELB-LAB-RESULT name=ipvs-smoke status=PASS\r");
        assert_eq!(
            marker,
            Some(Marker {
                name: "ipvs-smoke".into(),
                pass: true
            })
        );
        let marker = parse_marker("  EDGELB-LAB-RESULT status=FAIL name=x");
        assert_eq!(
            marker,
            Some(Marker {
                name: "x".into(),
                pass: false
            })
        );
    }

    #[test]
    fn marker_must_start_the_line_and_be_complete() {
        assert_eq!(parse_marker("+ echo 'EDGELB-LAB-RESULT name=x status=PASS'"), None);
        assert_eq!(parse_marker("EDGELB-LAB-RESULT name=x status=MAYBE"), None);
        assert_eq!(parse_marker("EDGELB-LAB-RESULT name=x"), None);
        assert_eq!(parse_marker("EDGELB-LAB-RESULTS name=x status=PASS"), None);
    }

    #[test]
    fn outcome_takes_the_last_marker_for_the_scenario() {
        let console = "boot\nEDGELB-LAB-RESULT name=a status=FAIL\nEDGELB-LAB-RESULT name=a status=PASS\n";
        assert_eq!(outcome(console, "a", false), Outcome::Pass);
        let console = "EDGELB-LAB-RESULT name=a status=FAIL\r\n";
        assert_eq!(outcome(console, "a", false), Outcome::Fail);
    }

    #[test]
    fn no_marker_is_a_failure_never_a_pass() {
        assert_eq!(outcome("booting...\n", "a", true), Outcome::TimedOut);
        let panicked = outcome("Kernel panic - not syncing", "a", false);
        assert!(matches!(panicked, Outcome::NoMarker(r) if r.contains("panicked")));
        assert!(matches!(
            outcome("EDGELB-LAB-RESULT name=b status=PASS", "a", false),
            Outcome::NoMarker(_)
        ));
        assert!(!outcome("", "a", false).passed());
    }

    #[test]
    fn terminal_filter_drops_escapes_even_when_split() {
        let mut filter = TerminalFilter::default();
        let mut out = filter.filter(b"\x1bc\x1b[?7l\x1b[2JSeaBIOS\r\nBoot\x1b[");
        out.extend(filter.filter(b"0mEDGELB\r\n"));
        assert_eq!(String::from_utf8_lossy(&out), "SeaBIOS\nBootEDGELB\n");
    }

    #[test]
    fn cmdline_leaves_the_guest_time_to_report_its_own_timeout() {
        let line = kernel_cmdline("ipvs-smoke", Duration::from_secs(300), true);
        assert_eq!(
            line,
            "console=ttyS0 quiet panic=-1 edgelb.scenario=ipvs-smoke edgelb.timeout=270 edgelb.bench=1"
        );
        assert!(kernel_cmdline("a", Duration::from_secs(5), false).ends_with("edgelb.timeout=10"));
    }
}
