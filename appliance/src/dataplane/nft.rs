//! The appliance's own nftables table (`table inet edgelb`): source NAT of the traffic IPVS
//! forwards to nodes (full NAT) and the `loadBalancerSourceRanges` filter in front of IPVS.
//!
//! It renders the whole table from a desired [`Ruleset`] (a pure function; each [`Rule`] of it is
//! one set element, see [`element`]), applies it in one atomic `nft -f -` transaction, reads it
//! back with `nft -j list table` to compare, and deletes it on an explicit flush. It must never
//! touch another table: every command it sends names its own table, and it never lists or
//! flushes the whole ruleset.
//!
//! The table has a fixed shape whatever the number of services; only set elements grow, so
//! 10,000 VIPs are a few sets, not 10,000 rules:
//!
//! - `fullnat_v4` / `fullnat_v6` (`addr . proto . port`): the node addresses and NodePorts of
//!   full-NAT services. Chain `nat_postrouting` masquerades (or SNATs to a fixed address) packets
//!   to them. It matches by destination because IPVS translates addresses itself: conntrack never
//!   marks its flows as DNAT, so `ct status dnat` would not match (KERNEL-LAB.md).
//! - `restricted_v4` / `restricted_v6` (`vip . proto . port`): the VIP ports that have source
//!   ranges, and `allowed_v4` / `allowed_v6` (`vip . proto . port . source prefix`): who may reach
//!   them. Chain `filter_prerouting` drops the others at priority `raw`: after defragmentation,
//!   before conntrack (a dropped packet creates no connection entry) and long before IPVS, which
//!   takes packets at LOCAL_IN.

use std::io;

mod ruleset;
mod table;
#[cfg(test)]
mod tests;

pub use crate::forwarding::{IpPrefix, NatMode, PortRules, Rule, Ruleset, SnatSource};
pub use ruleset::{
    ChainState, Element, TableState, element, expected_state, parse_listing, render, render_patch, rule_of,
};
pub use table::NftTable;

/// The table the appliance owns unless configured otherwise.
pub const DEFAULT_TABLE: &str = "edgelb";

/// The nftables family of the table: one table serves IPv4 and IPv6.
const FAMILY: &str = "inet";

/// Why an nftables operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NftError {
    #[error("the `nft` program was not found: install the Debian package `nftables`")]
    NotInstalled,

    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },

    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },

    #[error("cannot read the output of `{command}`: {reason}")]
    Parse { command: String, reason: String },

    #[error("{0}")]
    Invalid(String),
}
