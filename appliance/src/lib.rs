//! The edgelb appliance: IP pools and allocations in SQLite, a REST API over TLS, and the CLI.
//! `main.rs` only parses flags and calls into here, so tests drive the same code.
//!
//! Dependencies point one way: `server` -> `http`, `reconcile` -> `store` -> `ipam`, and
//! `reconcile` -> `dataplane` (the only module that speaks to the kernel).

pub mod cli;
pub mod config;
pub mod dataplane;
pub mod forwarding;
pub mod health;
pub mod history;
pub mod http;
pub mod ipam;
pub mod reconcile;
pub mod server;
pub mod store;
pub mod tls;

/// An error and its sources on one line (`a: b: c`), for logs and API messages.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
