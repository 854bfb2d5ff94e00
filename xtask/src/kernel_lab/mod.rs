//! `cargo xtask kernel-lab`: IPVS tests in a qemu guest running a stock Debian cloud kernel, for
//! hosts whose own kernel has no IPVS (usage and how to write scenarios: `lab/README.md`). This
//! module orders the steps (tools, kernel, modules, initramfs, one boot per scenario) and reports;
//! each step lives in its own submodule. It writes only under `<target>/kernel-lab/`.

mod initramfs;
mod kernel;
mod modules;
mod tools;
mod vm;

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cli::LabOptions;
use crate::error::{Context, Result, bail};
use crate::process;
use modules::ModuleDb;
use tools::Tools;
use vm::Outcome;

/// The scenario that runs a shipped program; it needs `--run`.
const RUN_BINARY: &str = "run-binary";

/// Runs the lab; `Ok(false)` when a scenario failed, `Err` when the lab itself could not run.
pub fn run(opts: &LabOptions) -> Result<bool> {
    let root = repo_root();
    let lab_dir = root.join("lab");
    let available = scenarios(&lab_dir)?;
    if opts.list {
        for name in &available {
            println!("{name}");
        }
        return Ok(true);
    }
    let selected = select(&available, opts)?;
    let work = target_dir(&root).join("kernel-lab");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let _lock = lock(&work)?;
    let started = Instant::now();
    let mut timings = Vec::new();

    let tools = Tools::find()?;
    timings.push(Timing::since("host tools", started, ""));

    let step = Instant::now();
    let kernel = kernel::prepare(&tools, &work.join("kernel"))?;
    let source = if kernel.downloaded { "downloaded" } else { "cached" };
    timings.push(Timing::since(&format!("kernel ({source})"), step, &kernel.package));

    let step = Instant::now();
    let (load, built_in) = module_plan(&kernel, &opts.modules)?;
    let staging = work.join("initramfs");
    let image = work.join("initramfs.cpio");
    let contents = initramfs::Contents {
        kernel: &kernel,
        modules: &load,
        ships: &opts.ships,
        lab_dir: &lab_dir,
        env: &opts.env,
        run: &opts.run,
    };
    let built = initramfs::build(&tools, &contents, &staging, &image)?;
    let size = format!("{} files, {:.1} MiB", built.files, built.bytes as f64 / 1048576.0);
    timings.push(Timing::since("initramfs", step, &size));
    println!(
        "kernel-lab: kernel {} ({source}), initramfs {size}, {} modules to load, built in: {}",
        kernel.release,
        load.len(),
        built_in.join(" ")
    );

    let logs = work.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut results = Vec::new();
    for scenario in &selected {
        let log = vm::log_path(&logs, scenario);
        println!("kernel-lab: booting for scenario {scenario} (log: {})", log.display());
        let boot = vm::Boot {
            qemu: &tools.qemu,
            vmlinuz: &kernel.vmlinuz,
            initrd: &image,
            scenario,
            timeout: opts.timeout,
            bench: opts.bench,
            log: &log,
        };
        let run = vm::run(&boot)?;
        let what = format!("boot + {scenario}");
        timings.push(Timing {
            what,
            took: run.wall,
            note: status_word(&run.outcome),
        });
        results.push(ScenarioRun {
            scenario: scenario.clone(),
            run,
            log,
        });
    }
    let total = started.elapsed();

    if opts.keep {
        println!("kernel-lab: kept {} and {}", staging.display(), image.display());
        if let Some(first) = selected.first() {
            let append = vm::kernel_cmdline(first, opts.timeout, opts.bench);
            let cmd = vm::command(&tools.qemu, &kernel.vmlinuz, &image, &append);
            println!(
                "kernel-lab: boot it again with:\n  {} </dev/null",
                process::describe(&cmd)
            );
        }
    } else {
        remove(&staging)?;
        remove(&image)?;
    }
    if opts.bench {
        print_bench(&timings, &results, total);
    }
    Ok(report(&results, total))
}

/// How long one step took, for `--bench`.
#[derive(Debug)]
struct Timing {
    what: String,
    took: Duration,
    note: String,
}

impl Timing {
    fn since(what: &str, start: Instant, note: &str) -> Self {
        Self {
            what: what.to_owned(),
            took: start.elapsed(),
            note: note.to_owned(),
        }
    }
}

/// One scenario's boot and where its console log is.
#[derive(Debug)]
struct ScenarioRun {
    scenario: String,
    run: vm::Run,
    log: PathBuf,
}

/// Names of `lab/scenarios/*.sh`, sorted.
pub fn scenarios(lab_dir: &Path) -> Result<Vec<String>> {
    let dir = lab_dir.join("scenarios");
    let entries = fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if let Some(name) = file.strip_suffix(".sh") {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// The scenarios to boot: those asked for, else run-binary when `--run` is given, else all but
/// run-binary (which has nothing to run without `--run`).
fn select(available: &[String], opts: &LabOptions) -> Result<Vec<String>> {
    let selected: Vec<String> = if !opts.scenarios.is_empty() {
        opts.scenarios.clone()
    } else if !opts.run.is_empty() {
        vec![RUN_BINARY.to_owned()]
    } else {
        available.iter().filter(|n| *n != RUN_BINARY).cloned().collect()
    };
    for name in &selected {
        if !available.contains(name) {
            bail!(
                "no scenario `{name}` in lab/scenarios; there are: {}",
                available.join(", ")
            );
        }
        if name == RUN_BINARY && opts.run.is_empty() {
            bail!("scenario {RUN_BINARY} needs --run PROGRAM (and --ship to bring the program in)");
        }
    }
    if selected.is_empty() {
        bail!("no scenarios to run in lab/scenarios");
    }
    Ok(selected)
}

/// Load order of every wanted module that is not built in, and the names that are built in.
fn module_plan(kernel: &kernel::Kernel, extra: &[String]) -> Result<(Vec<String>, Vec<String>)> {
    let read = |name: &str| {
        let path = kernel.modules_dir.join(name);
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let db = ModuleDb::parse(&read("modules.dep")?)?;
    let builtin = modules::builtin_names(&read("modules.builtin")?);
    let (modular, built_in) = modules::wanted(&db, &builtin, extra)?;
    Ok((db.load_order(&modular)?, built_in))
}

/// One run at a time per target folder: runs share the staging tree, the image and the logs.
/// The lock is released when the returned file is dropped (or the process dies).
fn lock(work: &Path) -> Result<fs::File> {
    let path = work.join(".lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            println!("kernel-lab: waiting for another run using {}", work.display());
            file.lock().with_context(|| format!("locking {}", path.display()))?;
        }
        Err(fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    Ok(file)
}

fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `$CARGO_TARGET_DIR` when set (as cargo reads it), else `<repo>/target`.
fn target_dir(root: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => root.join("target"),
    }
}

fn remove(path: &Path) -> Result<()> {
    let result = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn status_word(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Pass => "PASS".to_owned(),
        Outcome::Fail => "FAIL".to_owned(),
        Outcome::NoMarker(reason) => format!("FAIL: {reason}"),
        Outcome::TimedOut => "FAIL: timed out, no result marker".to_owned(),
    }
}

/// Prints one line per scenario; true when all passed.
fn report(results: &[ScenarioRun], total: Duration) -> bool {
    println!("\nkernel-lab results ({:.1} s in all):", total.as_secs_f64());
    let mut all_passed = true;
    for result in results {
        all_passed &= result.run.outcome.passed();
        println!(
            "  {:<24} {:>6.1} s  {}  (log: {})",
            result.scenario,
            result.run.wall.as_secs_f64(),
            status_word(&result.run.outcome),
            result.log.display()
        );
    }
    all_passed
}

fn print_bench(timings: &[Timing], results: &[ScenarioRun], total: Duration) {
    println!("\nkernel-lab timings (wall):");
    for t in timings {
        println!("  {:<32} {:>7.2} s  {}", t.what, t.took.as_secs_f64(), t.note);
    }
    println!("  {:<32} {:>7.2} s", "total", total.as_secs_f64());
    for result in results.iter().filter(|r| !r.run.bench.is_empty()) {
        println!("  guest uptime marks, {}:", result.scenario);
        for line in &result.run.bench {
            println!("    {}", line.trim_start_matches(vm::BENCH_MARKER).trim());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn default_selection_is_every_scenario_but_run_binary() -> Result<()> {
        let available = names(&["ipvs-smoke", "run-binary", "zeta"]);
        let selected = select(&available, &LabOptions::default())?;
        assert_eq!(selected, names(&["ipvs-smoke", "zeta"]));
        Ok(())
    }

    #[test]
    fn run_alone_selects_run_binary_and_run_binary_needs_run() -> Result<()> {
        let available = names(&["ipvs-smoke", "run-binary"]);
        let opts = LabOptions {
            run: names(&["ipvs_smoke"]),
            ..LabOptions::default()
        };
        assert_eq!(select(&available, &opts)?, names(&["run-binary"]));
        let opts = LabOptions {
            scenarios: names(&["run-binary"]),
            ..LabOptions::default()
        };
        assert!(select(&available, &opts).is_err());
        Ok(())
    }

    #[test]
    fn unknown_scenario_lists_the_known_ones() {
        let opts = LabOptions {
            scenarios: names(&["nope"]),
            ..LabOptions::default()
        };
        let err = select(&names(&["ipvs-smoke"]), &opts).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("ipvs-smoke")));
    }
}
