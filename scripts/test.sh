#!/usr/bin/env bash
# The whole test suite. Installs what it needs (Debian's etcd 3.4 for etcdctl and
# differential tests, protoc for the etcd-client crate's build script), then runs
# formatting, lints and every test. Bounded: each step has a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v curl >/dev/null 2>&1 || need+=(curl)  # TLS and gateway tests
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --release -- -D warnings

echo "== cargo build --release (the ferrite binary used by integration tests)"
cargo build --release --workspace --bins

echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
timeout 2400 cargo test --workspace --release --no-fail-fast -- --test-threads=2 2>&1 | tee "$log"

echo "== loom models"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom timeout 900 cargo test -p loom-tests --release 2>&1 | tee -a "$log"

# One closing line over every test binary above (pipefail already failed the script on a failure).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
