//! The edgelb in-cluster agent (issue 4 builds it out).

fn main() {
    println!("edgelb-agent {}", env!("CARGO_PKG_VERSION"));
}
