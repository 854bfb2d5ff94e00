//! The guest's initramfs: a staging tree (busybox and its applets, iproute2's `ip`, `ipvsadm`,
//! `nft`, shipped files, every shared library `ldd` names for them, the kernel modules in load
//! order, `lab/`), archived by `cpio -H newc`. It only reads the host; it writes only under the
//! lab's own target folder.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::kernel::Kernel;
use super::tools::{self, Tools};
use crate::cli::Ship;
use crate::error::{Context, Error, Result, bail};
use crate::process;

/// Everything that goes into the image besides the fixed tool set.
#[derive(Debug)]
pub struct Contents<'a> {
    pub kernel: &'a Kernel,
    /// Module paths relative to `lib/modules/<release>`, dependencies first.
    pub modules: &'a [String],
    pub ships: &'a [Ship],
    /// The repository's `lab/` folder: `init.sh`, `lib.sh`, `scenarios/`.
    pub lab_dir: &'a Path,
    pub env: &'a [(String, String)],
    pub run: &'a [String],
}

/// What was built, for the summary line.
#[derive(Debug)]
pub struct Built {
    pub files: usize,
    pub bytes: u64,
}

/// The host files copied so far, by destination, so shared libraries are copied once and two
/// different sources for one destination are caught.
#[derive(Debug)]
struct Stage<'a> {
    root: &'a Path,
    ldd: &'a Path,
    placed: BTreeSet<String>,
}

pub fn build(tools: &Tools, contents: &Contents<'_>, staging: &Path, image: &Path) -> Result<Built> {
    if staging.exists() {
        fs::remove_dir_all(staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    let mut stage = Stage {
        root: staging,
        ldd: &tools.ldd,
        placed: BTreeSet::new(),
    };
    let dirs = "bin sbin usr/bin usr/sbin usr/local/bin usr/local/sbin lib lib64 etc proc sys dev \
                run tmp root srv var lab/scenarios";
    for dir in dirs.split_whitespace() {
        stage.mkdir(dir)?;
    }
    // iproute2 keeps network namespaces under /var/run/netns.
    stage.symlink("../run", "var/run")?;

    stage.ship(&tools.busybox, "/bin/busybox")?;
    stage.ship(&tools.ip, "/usr/sbin/ip")?;
    stage.ship(&tools.ipvsadm, "/usr/sbin/ipvsadm")?;
    stage.ship(&tools.nft, "/usr/sbin/nft")?;
    for ship in contents.ships {
        if !ship.source.is_file() {
            bail!("--ship {}: no such file (build it first?)", ship.source.display());
        }
        stage.ship(&ship.source, &ship.dest)?;
    }
    // Applets last, so a shipped program wins over the busybox applet of the same name.
    let applets = process::stdout(Command::new(&tools.busybox).arg("--list-full"))?;
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        if fs::symlink_metadata(staging.join(applet)).is_err() {
            stage.symlink("/bin/busybox", applet)?;
        }
    }

    stage_modules(&mut stage, tools, contents)?;
    stage_lab(&mut stage, contents)?;
    archive(tools, staging, image)
}

impl Stage<'_> {
    fn mkdir(&self, rel: &str) -> Result<()> {
        let dir = self.root.join(rel);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))
    }

    fn symlink(&self, target: &str, rel: &str) -> Result<()> {
        let link = self.root.join(rel);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::os::unix::fs::symlink(target, &link).with_context(|| format!("linking {}", link.display()))
    }

    /// Copies `source` to `dest` (absolute, inside the guest), following symlinks.
    fn copy(&mut self, source: &Path, dest: &str) -> Result<()> {
        if !self.placed.insert(dest.to_owned()) {
            return Ok(());
        }
        let target = self.root.join(dest.trim_start_matches('/'));
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::copy(source, &target).with_context(|| format!("copying {} to {}", source.display(), target.display()))?;
        Ok(())
    }

    /// Copies a program and every shared library (and the loader) `ldd` names for it.
    fn ship(&mut self, source: &Path, dest: &str) -> Result<()> {
        if self.placed.contains(dest) {
            bail!("two files are shipped to {dest}; the second is {}", source.display());
        }
        self.copy(source, dest)?;
        for lib in libraries(self.ldd, source)? {
            let dest = lib.to_string_lossy().into_owned();
            self.copy(&lib, &dest)?;
        }
        Ok(())
    }

    fn write(&mut self, dest: &str, text: &str) -> Result<()> {
        let target = self.root.join(dest.trim_start_matches('/'));
        fs::write(&target, text).with_context(|| format!("writing {}", target.display()))?;
        self.placed.insert(dest.to_owned());
        Ok(())
    }
}

/// Shared libraries of `binary` as the host's `ldd` resolves them; none for a static file.
fn libraries(ldd: &Path, binary: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new(ldd)
        .arg(binary)
        .output()
        .map_err(|e| Error::msg(format!("cannot run {}: {e}", ldd.display())))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if tools::is_static(&stdout) || tools::is_static(&stderr) {
        return Ok(Vec::new());
    }
    if !output.status.success() {
        bail!("ldd {} failed: {}", binary.display(), stderr.trim());
    }
    parse_ldd(&stdout).with_context(|| format!("ldd {}", binary.display()))
}

/// Library paths from `ldd` output: `name => /path (0x..)` and the loader's `/path (0x..)`.
/// `linux-vdso` has no file; `=> not found` is an error, since the binary could not start.
pub fn parse_ldd(output: &str) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    let mut missing = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (name, resolved) = match line.split_once("=>") {
            Some((name, resolved)) => (name.trim(), resolved.trim()),
            None => (line, line),
        };
        if resolved.starts_with("not found") {
            missing.push(name.to_owned());
            continue;
        }
        let path = resolved.split(" (").next().unwrap_or(resolved).trim();
        if path.starts_with('/') {
            paths.push(PathBuf::from(path));
        }
    }
    if !missing.is_empty() {
        bail!("shared libraries not found on the host: {}", missing.join(", "));
    }
    Ok(paths)
}

/// The modules, the index `modprobe` reads, and the load order `/init` follows.
fn stage_modules(stage: &mut Stage<'_>, tools: &Tools, contents: &Contents<'_>) -> Result<()> {
    let release = &contents.kernel.release;
    let host = &contents.kernel.modules_dir;
    for module in contents.modules {
        if !module.ends_with(".ko") {
            bail!("{module}: compressed modules are not supported by the lab's insmod");
        }
        stage.copy(&host.join(module), &format!("/lib/modules/{release}/{module}"))?;
    }
    for index in ["modules.builtin", "modules.builtin.modinfo", "modules.order"] {
        let source = host.join(index);
        if source.exists() {
            stage.copy(&source, &format!("/lib/modules/{release}/{index}"))?;
        }
    }
    // An index of just the shipped modules, so `modprobe` in a scenario sees what is there.
    process::run(Command::new(&tools.depmod).arg("-b").arg(stage.root).arg(release))?;
    let mut order = contents.modules.join("\n");
    order.push('\n');
    stage.write("/lab/modules.load", &order)
}

/// `/init`, the scenario library and scenarios, and the files carrying options into the guest.
fn stage_lab(stage: &mut Stage<'_>, contents: &Contents<'_>) -> Result<()> {
    let lab = contents.lab_dir;
    stage.copy(&lab.join("init.sh"), "/init")?;
    // The kernel execs /init; do not depend on the checkout keeping the executable bit.
    let init = stage.root.join("init");
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", init.display()))?;
    stage.copy(&lab.join("lib.sh"), "/lab/lib.sh")?;
    for scenario in super::scenarios(lab)? {
        let file = format!("{scenario}.sh");
        stage.copy(&lab.join("scenarios").join(&file), &format!("/lab/scenarios/{file}"))?;
    }
    stage.write("/lab/env", &env_file(contents.env))?;
    let mut run = String::new();
    for arg in contents.run {
        if arg.contains('\n') {
            bail!("--run/--arg values cannot contain a newline: {arg:?}");
        }
        run.push_str(arg);
        run.push('\n');
    }
    stage.write("/lab/run.args", &run)
}

/// `export KEY='value'` lines for `/init` to source.
pub fn env_file(env: &[(String, String)]) -> String {
    env.iter()
        .map(|(key, value)| format!("export {key}={}\n", process::shell_quote(value)))
        .collect()
}

/// `cpio -o -H newc` over every path in the tree, parents before children, owned by root. The
/// list of paths goes through a file (NUL-separated), so no pipe can fill up while cpio talks.
fn archive(tools: &Tools, staging: &Path, image: &Path) -> Result<Built> {
    let mut entries = Vec::new();
    let mut bytes = 0;
    walk(staging, Path::new(""), &mut entries, &mut bytes)?;
    let mut list = Vec::new();
    for entry in &entries {
        list.extend_from_slice(entry.as_os_str().as_bytes());
        list.push(0);
    }
    let list_path = image.with_extension("list");
    fs::write(&list_path, &list).with_context(|| format!("writing {}", list_path.display()))?;
    let list = fs::File::open(&list_path).with_context(|| format!("opening {}", list_path.display()))?;
    let out = fs::File::create(image).with_context(|| format!("creating {}", image.display()))?;
    process::run(
        Command::new(&tools.cpio)
            .args(["-o", "-0", "-H", "newc", "-R", "0:0", "--quiet"])
            .current_dir(staging)
            .stdin(list)
            .stdout(out),
    )?;
    fs::remove_file(&list_path).with_context(|| format!("removing {}", list_path.display()))?;
    Ok(Built {
        files: entries.len(),
        bytes,
    })
}

fn walk(root: &Path, rel: &Path, entries: &mut Vec<PathBuf>, bytes: &mut u64) -> Result<()> {
    let dir = root.join(rel);
    let mut children: Vec<_> = fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    children.sort_by_key(fs::DirEntry::file_name);
    for child in children {
        let rel = rel.join(child.file_name());
        let meta = fs::symlink_metadata(child.path()).with_context(|| format!("reading {}", rel.display()))?;
        entries.push(rel.clone());
        if meta.is_dir() {
            walk(root, &rel, entries, bytes)?;
        } else {
            *bytes += meta.len();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LDD_IP: &str = "\
\tlinux-vdso.so.1 (0x00007fd892bfa000)
\tlibbpf.so.1 => /lib/x86_64-linux-gnu/libbpf.so.1 (0x00007fd892a9a000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fd892871000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007fd892bfc000)
";

    #[test]
    fn ldd_gives_libraries_and_the_loader_but_not_the_vdso() -> Result<()> {
        let paths = parse_ldd(LDD_IP)?;
        let expected: Vec<PathBuf> = [
            "/lib/x86_64-linux-gnu/libbpf.so.1",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(paths, expected);
        Ok(())
    }

    #[test]
    fn ldd_missing_library_is_an_error_naming_it() {
        let err = parse_ldd("\tlibfoo.so.1 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n");
        assert!(err.is_err_and(|e| e.to_string().contains("libfoo.so.1")));
    }

    #[test]
    fn env_file_quotes_values() {
        let env = [("A".to_owned(), "x y".to_owned()), ("B".to_owned(), "it's".to_owned())];
        assert_eq!(env_file(&env), "export A='x y'\nexport B='it'\\''s'\n");
    }
}
