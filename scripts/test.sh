#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what the tests need, then runs
# formatting, lints, every Rust test (unit, store, HTTPS integration, crash), the API contract
# (schemathesis, from PyPI, against the OpenAPI document) and the kernel lab (IPVS in a real
# kernel under qemu). Any missing tool fails the run; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# A one-shot build gains nothing from incremental compilation and its caches cost gigabytes of
# disk; the dev profile (Cargo.toml) also leaves debug info out of dependencies, for the same
# reason: a clean build of everything below needs about 4 GB.
export CARGO_INCREMENTAL=0
step "disk space before building"
df -h . || true

# Debian packages: qemu and friends for the kernel lab; chromium and its driver for the console
# tests; prometheus for its promtool (the /metrics format and the alerting rules in deploy/);
# postgresql for the PostgreSQL store's tests (edgelb-pgtest starts its own server from its binaries).
PACKAGES=(qemu-system-x86 busybox-static cpio kmod ipvsadm iproute2 nftables curl jq socat util-linux chromium chromium-driver python3-venv prometheus postgresql)
step "installing Debian packages: ${PACKAGES[*]}"
if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (workspace)"
cargo test --workspace --locked

if [ "${EDGELB_TEST_FREE_DISK:-0}" = 1 ]; then
    # Set by .ci/run: nothing below needs the debug build but the tiny xtask, rebuilt in seconds.
    step "freeing the debug build's disk space (EDGELB_TEST_FREE_DISK=1)"
    rm -rf target/debug
    df -h . || true
fi

step "kernel lab: every scenario in a real kernel with IPVS (edgelb, curl, jq, socat, setpriv shipped in)"
cargo build --release --locked -p edgelb --bin edgelb --example bench_dataplane --example bench_appliance
mkdir -p target/lab-ship
strip -o target/lab-ship/edgelb target/release/edgelb
strip -o target/lab-ship/bench_dataplane target/release/examples/bench_dataplane
strip -o target/lab-ship/bench_appliance target/release/examples/bench_appliance
cargo xtask kernel-lab --ship target/lab-ship/edgelb --ship target/lab-ship/bench_dataplane \
    --ship target/lab-ship/bench_appliance --ship /usr/bin/curl --ship /usr/bin/jq --ship /usr/bin/socat \
    --ship /usr/bin/setpriv --ship deploy/grafana/edgelb-dashboard.json:/lab/grafana-dashboard.json

step "API contract: schemathesis against a real appliance (scripts/api-contract.sh)"
scripts/api-contract.sh target/release/edgelb

step "kernel lab: the IPVS netlink client against the real kernel"
cargo build --release --locked -p edgelb --example ipvs_smoke
cargo xtask kernel-lab --ship target/release/examples/ipvs_smoke --run ipvs_smoke \
    --env LAB_RUN_EXPECT=IPVS-SMOKE-OK

step "disk space after building"
df -h . || true
du -sh target 2>/dev/null || true

step "all tests passed"
