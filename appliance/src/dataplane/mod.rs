//! The only module that speaks to the kernel: IPVS over generic netlink (`ipvs`), and (as the
//! data-plane issue lands) VIP addresses, announcements and nftables. Wire types never leave
//! this module.

pub mod ipvs;
