//! The table's content as data: the desired [`Ruleset`], its set elements, the text `nft -f`
//! loads (a pure function), and the [`TableState`] that rendered and read-back tables compare
//! as.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use edgelb_api::Protocol;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{FAMILY, IpPrefix, PortRules, Rule, Ruleset, SnatSource};

/// What the table holds, in a form that compares equal between what was rendered and what
/// `nft -j list table` reports: set elements as nft prints them, chains with their hook and the
/// ids of their rules. Rule ids carry a hash of the rule's text, so a rule edited, dropped or
/// added by hand shows as a difference without parsing nft's expression syntax.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableState {
    pub sets: BTreeMap<String, BTreeSet<String>>,
    pub chains: BTreeMap<String, ChainState>,
}

/// A base chain of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    /// `filter` or `nat`.
    pub kind: String,
    pub hook: String,
    pub priority: i64,
    pub policy: String,
    /// The rules' comments (`edgelb:<name>:<hash>`), in order.
    pub rules: Vec<String>,
}

struct SetDef {
    name: &'static str,
    /// The nft type expression.
    kind: &'static str,
    interval: bool,
}

const SETS: [SetDef; 6] = [
    SetDef {
        name: "fullnat_v4",
        kind: "ipv4_addr . inet_proto . inet_service",
        interval: false,
    },
    SetDef {
        name: "fullnat_v6",
        kind: "ipv6_addr . inet_proto . inet_service",
        interval: false,
    },
    SetDef {
        name: "restricted_v4",
        kind: "ipv4_addr . inet_proto . inet_service",
        interval: false,
    },
    SetDef {
        name: "restricted_v6",
        kind: "ipv6_addr . inet_proto . inet_service",
        interval: false,
    },
    SetDef {
        name: "allowed_v4",
        kind: "ipv4_addr . inet_proto . inet_service . ipv4_addr",
        interval: true,
    },
    SetDef {
        name: "allowed_v6",
        kind: "ipv6_addr . inet_proto . inet_service . ipv6_addr",
        interval: true,
    },
];

struct ChainDef {
    name: &'static str,
    kind: &'static str,
    hook: &'static str,
    priority: i64,
}

const FILTER_CHAIN: ChainDef = ChainDef {
    name: "filter_prerouting",
    kind: "filter",
    hook: "prerouting",
    // `raw`: after defragmentation (-400), before conntrack (-200).
    priority: -300,
};

const NAT_CHAIN: ChainDef = ChainDef {
    name: "nat_postrouting",
    kind: "nat",
    hook: "postrouting",
    // `srcnat`.
    priority: 100,
};

/// One rule: its chain, a short name for its comment, and its nft text.
pub(super) struct RuleDef {
    chain: &'static str,
    name: &'static str,
    text: String,
}

impl RuleDef {
    pub(super) fn id(&self) -> String {
        let digest = Sha256::digest(self.text.as_bytes());
        format!("edgelb:{}:{}", self.name, hex::encode(&digest[..4]))
    }
}

pub(super) fn rules(snat: &SnatSource) -> Vec<RuleDef> {
    let snat_v4 = match snat.v4 {
        Some(a) => format!("snat ip to {a}"),
        None => "masquerade".to_owned(),
    };
    let snat_v6 = match snat.v6 {
        Some(a) => format!("snat ip6 to {a}"),
        None => "masquerade".to_owned(),
    };
    vec![
        RuleDef {
            chain: FILTER_CHAIN.name,
            name: "source-ranges-v4",
            text: "ip daddr . meta l4proto . th dport @restricted_v4 \
                   ip daddr . meta l4proto . th dport . ip saddr != @allowed_v4 counter drop"
                .to_owned(),
        },
        RuleDef {
            chain: FILTER_CHAIN.name,
            name: "source-ranges-v6",
            text: "ip6 daddr . meta l4proto . th dport @restricted_v6 \
                   ip6 daddr . meta l4proto . th dport . ip6 saddr != @allowed_v6 counter drop"
                .to_owned(),
        },
        RuleDef {
            chain: NAT_CHAIN.name,
            name: "fullnat-v4",
            text: format!("ip daddr . meta l4proto . th dport @fullnat_v4 {snat_v4}"),
        },
        RuleDef {
            chain: NAT_CHAIN.name,
            name: "fullnat-v6",
            text: format!("ip6 daddr . meta l4proto . th dport @fullnat_v6 {snat_v6}"),
        },
    ]
}

/// The protocol as nft's `inet_proto` type names it.
fn proto_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// One element of one of the table's sets, as nft prints it: (`fullnat_v4`, `10.0.0.1 . tcp . 80`).
pub type Element = (&'static str, String);

/// The set element that expresses one rule.
pub fn element(rule: &Rule) -> Element {
    match *rule {
        Rule::FullNat { backend, protocol } => {
            let set = if backend.is_ipv4() { "fullnat_v4" } else { "fullnat_v6" };
            (
                set,
                format!("{} . {} . {}", backend.ip(), proto_name(protocol), backend.port()),
            )
        }
        Rule::Restricted { vip, protocol, port } => {
            let set = if vip.is_ipv4() {
                "restricted_v4"
            } else {
                "restricted_v6"
            };
            (set, format!("{vip} . {} . {port}", proto_name(protocol)))
        }
        Rule::Allowed {
            vip,
            protocol,
            port,
            prefix,
        } => {
            let set = if vip.is_ipv4() { "allowed_v4" } else { "allowed_v6" };
            (set, format!("{vip} . {} . {port} . {prefix}", proto_name(protocol)))
        }
    }
}

/// The rule a set element expresses, read back from its set's name and its text as nft prints it
/// ([`element`]'s inverse); `None` for an element of no rule (one added by hand, say).
pub fn rule_of(set: &str, text: &str) -> Option<Rule> {
    let parts: Vec<&str> = text.split(" . ").collect();
    let protocol = match *parts.get(1)? {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        _ => return None,
    };
    let addr: IpAddr = parts.first()?.parse().ok()?;
    let port: u16 = parts.get(2)?.parse().ok()?;
    let v4 = addr.is_ipv4();
    let rule = match (set, parts.len()) {
        ("fullnat_v4" | "fullnat_v6", 3) => Rule::full_nat(std::net::SocketAddr::new(addr, port), protocol),
        ("restricted_v4" | "restricted_v6", 3) => Rule::Restricted {
            vip: addr,
            protocol,
            port,
        },
        ("allowed_v4" | "allowed_v6", 4) => Rule::Allowed {
            vip: addr,
            protocol,
            port,
            prefix: parts[3].parse().ok()?,
        },
        _ => return None,
    };
    (set.ends_with("_v4") == v4).then_some(rule)
}

/// The elements of every set, as nft prints them (`10.0.0.1 . tcp . 80`).
fn elements(ruleset: &Ruleset) -> BTreeMap<&'static str, BTreeSet<String>> {
    let mut sets: BTreeMap<&'static str, BTreeSet<String>> = SETS.iter().map(|s| (s.name, BTreeSet::new())).collect();
    for (set, element) in ruleset.forwards.iter().flat_map(PortRules::rules).map(|r| element(&r)) {
        if let Some(elements) = sets.get_mut(set) {
            elements.insert(element);
        }
    }
    sets
}

/// Deletes and adds set elements in one `nft -f` transaction, deletions first: what one
/// Service's change needs, without rewriting the table. Deleting first lets an element be
/// replaced by one that overlaps it (a source range widened or narrowed): the kernel refuses an
/// interval element that overlaps a live one. Deleting an element that is not there fails the
/// transaction.
pub fn render_patch(table: &str, add: &[Rule], delete: &[Rule]) -> String {
    let mut out = String::new();
    for (verb, rules) in [("delete", delete), ("add", add)] {
        let mut by_set: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (set, e) in rules.iter().map(element) {
            by_set.entry(set).or_default().push(e);
        }
        for (set, es) in by_set {
            let _ = writeln!(out, "{verb} element {FAMILY} {table} {set} {{ {} }}", es.join(", "));
        }
    }
    out
}

/// Renders the complete table as one `nft -f` transaction that replaces whatever the table held
/// (`table` creates it if missing so that `delete` cannot fail, then it is defined anew). Packets
/// see the old table or the new one, never a mix; connections already NATed keep their mapping.
pub fn render(table: &str, ruleset: &Ruleset) -> String {
    let sets = elements(ruleset);
    let mut out = String::new();
    // `write!` to a String cannot fail.
    let _ = writeln!(out, "table {FAMILY} {table} {{}}");
    let _ = writeln!(out, "delete table {FAMILY} {table}");
    let _ = writeln!(out, "table {FAMILY} {table} {{");
    let _ = writeln!(out, "\tcomment \"managed by edgelb: changes by hand are overwritten\"");
    for def in &SETS {
        let _ = writeln!(out, "\tset {} {{", def.name);
        let _ = writeln!(out, "\t\ttype {}", def.kind);
        if def.interval {
            let _ = writeln!(out, "\t\tflags interval");
        }
        if let Some(elements) = sets.get(def.name).filter(|e| !e.is_empty()) {
            let _ = writeln!(out, "\t\telements = {{");
            for e in elements {
                let _ = writeln!(out, "\t\t\t{e},");
            }
            let _ = writeln!(out, "\t\t}}");
        }
        let _ = writeln!(out, "\t}}");
    }
    let rules = rules(&ruleset.snat);
    for chain in [&FILTER_CHAIN, &NAT_CHAIN] {
        let _ = writeln!(out, "\tchain {} {{", chain.name);
        let _ = writeln!(
            out,
            "\t\ttype {} hook {} priority {}; policy accept;",
            chain.kind, chain.hook, chain.priority
        );
        for rule in rules.iter().filter(|r| r.chain == chain.name) {
            let _ = writeln!(out, "\t\t{} comment \"{}\"", rule.text, rule.id());
        }
        let _ = writeln!(out, "\t}}");
    }
    let _ = writeln!(out, "}}");
    out
}

/// What `nft -j list table` reports once [`render`]'s output is applied.
pub fn expected_state(ruleset: &Ruleset) -> TableState {
    let sets = elements(ruleset)
        .into_iter()
        .map(|(name, elements)| (name.to_owned(), elements))
        .collect();
    let rules = rules(&ruleset.snat);
    let chains = [&FILTER_CHAIN, &NAT_CHAIN]
        .into_iter()
        .map(|c| {
            let state = ChainState {
                kind: c.kind.to_owned(),
                hook: c.hook.to_owned(),
                priority: c.priority,
                policy: "accept".to_owned(),
                rules: rules.iter().filter(|r| r.chain == c.name).map(RuleDef::id).collect(),
            };
            (c.name.to_owned(), state)
        })
        .collect();
    TableState { sets, chains }
}

/// Reads the output of `nft -j list table` into a [`TableState`].
pub fn parse_listing(json: &str) -> Result<TableState, String> {
    let doc: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("no `nftables` array")?;
    let mut state = TableState::default();
    for item in items {
        if let Some(set) = item.get("set") {
            let name = set.get("name").and_then(Value::as_str).ok_or("a set without a name")?;
            let mut elements = BTreeSet::new();
            for elem in set.get("elem").and_then(Value::as_array).into_iter().flatten() {
                elements.insert(element_text(elem)?);
            }
            state.sets.insert(name.to_owned(), elements);
        } else if let Some(chain) = item.get("chain") {
            let name = chain
                .get("name")
                .and_then(Value::as_str)
                .ok_or("a chain without a name")?;
            let text = |key: &str| chain.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
            let chain_state = ChainState {
                kind: text("type"),
                hook: text("hook"),
                priority: chain.get("prio").and_then(Value::as_i64).unwrap_or_default(),
                policy: text("policy"),
                rules: Vec::new(),
            };
            state.chains.insert(name.to_owned(), chain_state);
        } else if let Some(rule) = item.get("rule") {
            let chain = rule
                .get("chain")
                .and_then(Value::as_str)
                .ok_or("a rule without a chain")?;
            // A rule added by hand has no comment of ours: it must show as a difference.
            let id = rule.get("comment").and_then(Value::as_str).unwrap_or("(no comment)");
            if let Some(c) = state.chains.get_mut(chain) {
                c.rules.push(id.to_owned());
            }
        }
    }
    Ok(state)
}

/// One set element as nft prints it in text: `10.0.0.1 . tcp . 80 . 192.0.2.0/24`.
fn element_text(elem: &Value) -> Result<String, String> {
    // An element with a counter or comment is wrapped as {"elem": {"val": ...}}.
    if let Some(val) = elem.get("elem").and_then(|e| e.get("val")) {
        return element_text(val);
    }
    if let Some(parts) = elem.get("concat").and_then(Value::as_array) {
        let parts: Result<Vec<_>, _> = parts.iter().map(element_text).collect();
        return Ok(parts?.join(" . "));
    }
    if let Some(prefix) = elem.get("prefix") {
        let addr = prefix
            .get("addr")
            .and_then(Value::as_str)
            .ok_or("a prefix without addr")?;
        let len = prefix
            .get("len")
            .and_then(Value::as_u64)
            .ok_or("a prefix without len")?;
        let addr: IpAddr = addr.parse().map_err(|_| format!("bad prefix address {addr}"))?;
        let len = u8::try_from(len).map_err(|_| format!("bad prefix length {len}"))?;
        return IpPrefix::new(addr, len)
            .map(|p| p.to_string())
            .ok_or_else(|| format!("bad prefix {addr}/{len}"));
    }
    if let Some(range) = elem.get("range").and_then(Value::as_array) {
        let parts: Result<Vec<_>, _> = range.iter().map(element_text).collect();
        return Ok(parts?.join("-"));
    }
    match elem {
        // Addresses are normalised through IpAddr so both sides print them the same way.
        Value::String(s) => Ok(s.parse::<IpAddr>().map(|a| a.to_string()).unwrap_or_else(|_| s.clone())),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(format!("unexpected set element {other}")),
    }
}
