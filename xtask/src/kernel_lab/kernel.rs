//! The guest kernel: resolving the current Debian cloud kernel package, downloading it once into
//! the cache with `apt-get download`, unpacking it with `dpkg -x` and indexing its modules with
//! `depmod`. It never installs anything on the host.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::tools::Tools;
use crate::error::{Context, Result, bail};
use crate::process;

/// The Debian meta package whose dependency names the current cloud kernel.
pub const META_PACKAGE: &str = "linux-image-cloud-amd64";

/// Written last, so a half-unpacked kernel is never mistaken for a cached one.
const COMPLETE_STAMP: &str = ".edgelb-complete";

/// An unpacked kernel ready to boot.
#[derive(Debug)]
pub struct Kernel {
    pub package: String,
    /// `uname -r` of the guest, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` inside the unpacked package, with `modules.dep`.
    pub modules_dir: PathBuf,
    /// Whether this run downloaded the package (false when it came from the cache).
    pub downloaded: bool,
}

/// Picks the versioned kernel package out of `apt-cache depends linux-image-cloud-amd64`.
pub fn parse_depends(output: &str, meta: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let line = line.trim().trim_start_matches('|');
        let name = line.strip_prefix("Depends:")?.trim();
        let versioned = name.starts_with("linux-image-") && name != meta && !name.starts_with('<');
        versioned.then(|| name.to_owned())
    })
}

/// Returns the cached kernel, downloading and unpacking it first if this is its first use.
pub fn prepare(tools: &Tools, cache: &Path) -> Result<Kernel> {
    let depends = process::stdout(Command::new(&tools.apt_cache).args(["depends", META_PACKAGE]))
        .context("resolving the guest kernel (run `apt-get update` if the package is unknown)")?;
    let Some(package) = parse_depends(&depends, META_PACKAGE) else {
        bail!("`apt-cache depends {META_PACKAGE}` names no linux-image package:\n{depends}");
    };
    let dir = cache.join(&package);
    let root = dir.join("root");
    let mut downloaded = false;
    if !root.join(COMPLETE_STAMP).exists() {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let deb = match find_deb(&dir, &package)? {
            Some(deb) => deb,
            None => {
                println!("kernel-lab: downloading {package} (apt-get download)");
                process::run(
                    Command::new(&tools.apt_get)
                        .args(["download", &package])
                        .current_dir(&dir),
                )?;
                downloaded = true;
                match find_deb(&dir, &package)? {
                    Some(deb) => deb,
                    None => bail!("apt-get download {package} left no .deb in {}", dir.display()),
                }
            }
        };
        unpack(tools, &deb, &root)?;
    }
    let modules_root = root.join("lib/modules");
    let release = only_subdir(&modules_root)?;
    let modules_dir = modules_root.join(&release);
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!("{} has no {}", package, vmlinuz.display());
    }
    Ok(Kernel {
        package,
        release,
        vmlinuz,
        modules_dir,
        downloaded,
    })
}

fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    let entries = fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let path = entry.with_context(|| format!("listing {}", dir.display()))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// `dpkg -x` into a scratch folder, index the modules, then rename into place.
fn unpack(tools: &Tools, deb: &Path, root: &Path) -> Result<()> {
    let scratch = root.with_extension("partial");
    if scratch.exists() {
        fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    }
    if root.exists() {
        fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    }
    process::run(Command::new(&tools.dpkg).arg("-x").arg(deb).arg(&scratch))?;
    // Newer Debian kernels ship modules under usr/lib only; depmod -b looks in lib/modules.
    let lib = scratch.join("lib");
    if !lib.exists() && scratch.join("usr/lib/modules").is_dir() {
        std::os::unix::fs::symlink("usr/lib", &lib).with_context(|| format!("linking {}", lib.display()))?;
    }
    let release = only_subdir(&scratch.join("lib/modules"))?;
    process::run(Command::new(&tools.depmod).arg("-b").arg(&scratch).arg(&release))?;
    fs::rename(&scratch, root).with_context(|| format!("renaming {} to {}", scratch.display(), root.display()))?;
    fs::write(root.join(COMPLETE_STAMP), b"").with_context(|| format!("stamping {}", root.display()))?;
    Ok(())
}

/// The single kernel release under `lib/modules`.
fn only_subdir(dir: &Path) -> Result<String> {
    let entries = fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if entry.path().is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("expected one kernel release in {}, found {names:?}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_names_the_versioned_image() {
        let output = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_depends(output, META_PACKAGE).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
    }

    #[test]
    fn depends_skips_virtual_and_unrelated_packages() {
        let output = "linux-image-cloud-amd64
  PreDepends: dpkg
 |Depends: <linux-image-virtual>
  Depends: linux-image-6.12.9-cloud-amd64
  Recommends: firmware
";
        assert_eq!(
            parse_depends(output, META_PACKAGE).as_deref(),
            Some("linux-image-6.12.9-cloud-amd64")
        );
        assert_eq!(parse_depends("linux-image-cloud-amd64\n", META_PACKAGE), None);
    }
}
