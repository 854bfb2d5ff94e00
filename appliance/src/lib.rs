//! The edgelb appliance: IP pools and allocations in SQLite, a REST API over TLS, and the CLI.
//! `main.rs` only parses flags and calls into here, so tests drive the same code.
//!
//! Dependencies point one way: `server` -> `http` -> `store` -> `ipam`.

pub mod cli;
pub mod config;
pub mod dataplane;
pub mod health;
pub mod http;
pub mod ipam;
pub mod reconcile;
pub mod server;
pub mod store;
pub mod tls;
