//! Which kernel modules the guest loads, and in what order: the wanted set, the modules the
//! kernel has built in, and the dependency closure read from `modules.dep`. Pure: text in,
//! lists out.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Result, bail};

/// Modules every lab VM loads besides `ip_vs` and all `ip_vs_*` modules (every scheduler).
/// Names use `_`; built-in ones are skipped. Dependencies (nf_conntrack, nf_defrag_ipv4/6,
/// libcrc32c, nf_nat, stp, llc, ...) come from `modules.dep`.
pub const BASE: &[&str] = &[
    // Links between namespaces: veth pairs into bridges, a dummy for VIPs, macvlan.
    "veth",
    "bridge",
    "dummy",
    "macvlan",
    "af_packet",
    // nftables: the NAT chain with masquerade/snat for full NAT, conntrack matches, filtering
    // for loadBalancerSourceRanges; inet/ip/ip6 families are part of nf_tables itself.
    "nfnetlink",
    "nf_tables",
    "nf_nat",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "nft_ct",
    "nft_reject_inet",
    "nft_fib_inet",
    "nft_limit",
    "nft_numgen",
    "nft_hash",
    // Conntrack flushing over netlink, used when real servers go away.
    "nf_conntrack_netlink",
    // Nodes that take IPVS tunnel traffic (`forwarding: tunnel`): IPv4 and IPv6 in IP.
    "ipip",
    "ip6_tunnel",
];

/// `modules.dep`, indexed by module name.
#[derive(Debug, Default)]
pub struct ModuleDb {
    /// name -> (path relative to lib/modules/<release>, dependency names)
    modules: BTreeMap<String, (String, Vec<String>)>,
}

/// `kernel/net/netfilter/ipvs/ip_vs_rr.ko` -> `ip_vs_rr` (names use `_`, files may use `-`).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl ModuleDb {
    pub fn parse(modules_dep: &str) -> Result<Self> {
        let mut modules = BTreeMap::new();
        for (number, line) in modules_dep.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let Some((path, deps)) = line.split_once(':') else {
                bail!("modules.dep line {}: no `:` in `{line}`", number + 1);
            };
            let deps = deps.split_whitespace().map(module_name).collect();
            modules.insert(module_name(path), (path.trim().to_owned(), deps));
        }
        Ok(Self { modules })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.modules.keys().map(String::as_str)
    }

    pub fn path(&self, name: &str) -> Option<&str> {
        self.modules.get(name).map(|(path, _)| path.as_str())
    }

    /// Paths of `roots` and everything they need, each after its dependencies, each once.
    pub fn load_order(&self, roots: &[String]) -> Result<Vec<String>> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for root in roots {
            self.visit(root, &mut done, &mut Vec::new(), &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            bail!("modules.dep has a dependency cycle: {} -> {name}", stack.join(" -> "));
        }
        let Some((path, deps)) = self.modules.get(name) else {
            bail!("module {name} is not in modules.dep");
        };
        stack.push(name.to_owned());
        for dep in deps {
            self.visit(dep, done, stack, order)?;
        }
        stack.pop();
        done.insert(name.to_owned());
        order.push(path.clone());
        Ok(())
    }
}

/// Names listed in `modules.builtin` (compiled into the kernel image, nothing to load).
pub fn builtin_names(modules_builtin: &str) -> BTreeSet<String> {
    modules_builtin
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(module_name)
        .collect()
}

/// The modules the guest loads, split into (modular, built in). Fails on a name the kernel has
/// neither as a module nor built in: a scenario depending on it could never pass.
pub fn wanted(db: &ModuleDb, builtin: &BTreeSet<String>, extra: &[String]) -> Result<(Vec<String>, Vec<String>)> {
    let mut names: Vec<String> = vec!["ip_vs".to_owned()];
    names.extend(db.names().filter(|n| n.starts_with("ip_vs_")).map(str::to_owned));
    names.extend(BASE.iter().map(|n| (*n).to_owned()));
    names.extend(extra.iter().cloned());
    let mut modular = Vec::new();
    let mut built_in = Vec::new();
    let mut unknown = Vec::new();
    for name in names {
        if modular.contains(&name) || built_in.contains(&name) {
            continue;
        }
        if db.path(&name).is_some() {
            modular.push(name);
        } else if builtin.contains(&name) {
            built_in.push(name);
        } else {
            unknown.push(name);
        }
    }
    if !unknown.is_empty() {
        bail!(
            "the guest kernel has neither a module nor a built-in for: {}",
            unknown.join(", ")
        );
    }
    Ok((modular, built_in))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/net/netfilter/ipvs/ip_vs_rr.ko: kernel/net/netfilter/ipvs/ip_vs.ko kernel/net/netfilter/nf_conntrack.ko kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko
kernel/net/netfilter/ipvs/ip_vs.ko: kernel/net/netfilter/nf_conntrack.ko kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko
kernel/net/netfilter/nf_conntrack.ko: kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko
kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko:
kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko:
kernel/lib/libcrc32c.ko:
kernel/drivers/net/veth.ko:
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
";

    fn position(order: &[String], name: &str) -> usize {
        order.iter().position(|p| module_name(p) == name).unwrap_or(usize::MAX)
    }

    #[test]
    fn module_names_drop_directory_suffix_and_dashes() {
        assert_eq!(module_name("kernel/net/netfilter/ipvs/ip_vs_rr.ko"), "ip_vs_rr");
        assert_eq!(module_name("kernel/drivers/x/foo-bar.ko.xz"), "foo_bar");
    }

    #[test]
    fn every_module_loads_after_its_dependencies_and_once() -> Result<()> {
        let db = ModuleDb::parse(DEP)?;
        let order = db.load_order(&["ip_vs_rr".into(), "ip_vs".into(), "bridge".into()])?;
        assert_eq!(order.len(), 9);
        assert!(position(&order, "libcrc32c") < position(&order, "nf_conntrack"));
        assert!(position(&order, "nf_defrag_ipv4") < position(&order, "nf_conntrack"));
        assert!(position(&order, "nf_conntrack") < position(&order, "ip_vs"));
        assert!(position(&order, "ip_vs") < position(&order, "ip_vs_rr"));
        assert!(position(&order, "llc") < position(&order, "stp"));
        assert!(position(&order, "stp") < position(&order, "bridge"));
        Ok(())
    }

    #[test]
    fn unknown_module_is_an_error() -> Result<()> {
        let db = ModuleDb::parse(DEP)?;
        assert!(db.load_order(&["nope".into()]).is_err());
        Ok(())
    }

    #[test]
    fn wanted_separates_builtins_and_rejects_missing() -> Result<()> {
        let db = ModuleDb::parse(DEP)?;
        let builtin = builtin_names("kernel/net/packet/af_packet.ko\nkernel/net/x/dummy.ko\n");
        // The fixture lacks most of BASE: those are neither modular nor built in.
        assert!(wanted(&db, &builtin, &[]).is_err());
        let all: BTreeSet<String> = BASE.iter().map(|n| (*n).to_owned()).collect();
        let (modular, built_in) = wanted(&db, &all, &["veth".into()])?;
        assert_eq!(modular, vec!["ip_vs", "ip_vs_rr", "veth", "bridge"]);
        assert!(built_in.contains(&"nf_tables".to_owned()));
        Ok(())
    }
}
