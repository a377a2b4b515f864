#!/usr/bin/env bash
# Side-by-side: the same workloads against Debian's etcd 3.4 and ferrite on this machine,
# alternating etcd/ferrite per round with a fresh cluster for every run, 1 and 3 members.
# Prints medians and the ferrite/etcd ratio per workload (plus RSS and data-dir size) and appends
# them, with a machine description, to docs/benchmarks.md.
#
#   bench/scripts/side-by-side.sh                 # defaults: 1 and 3 nodes, 2 rounds, 5 s per run
#   ROUNDS=3 DURATION=10 NODES=1 ONLY=put-100-clients,txn-cas-100 bench/scripts/side-by-side.sh
#   APPEND=0 ...                                  # print only, do not touch docs/benchmarks.md
#   CLIENT=etcd-client LEAN_THREADS=2 PORTS=29000-29499 ...   # load generator client, server ports
#
# Bounded: the whole run is killed after TIME_LIMIT seconds (default 1800). Every server it starts
# is stopped by pid: by ferrite-bench itself, and by this script's trap from the pid file.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

NODES=${NODES:-1,3}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-5}
ONLY=${ONLY:-}
APPEND=${APPEND:-1}
TIME_LIMIT=${TIME_LIMIT:-1800}
CLIENT=${CLIENT:-}
LEAN_THREADS=${LEAN_THREADS:-}
PORTS=${PORTS:-}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
FERRITE=${FERRITE:-$TARGET_DIR/release/ferrite}

if ! command -v etcd >/dev/null 2>&1; then
  echo "== installing Debian's etcd-server (etcd 3.4)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server >/dev/null
fi
ETCD=${ETCD:-$(command -v etcd)}

echo "== building ferrite-bench and ferrite (release)"
cargo build --release -p ferrite-bench --bins   # ferrite-bench and the grpc-echo baseline
if ! cargo build --release -p ferrite --bin ferrite; then
  echo "!! ferrite does not build: comparing against etcd only"
fi

WORK=$(mktemp -d /tmp/ferrite-sbs.XXXXXX)
PIDFILE="$WORK/pids"
BENCH_PID=""
cleanup() {
  if [ -n "$BENCH_PID" ] && kill -0 "$BENCH_PID" 2>/dev/null; then
    kill -TERM "$BENCH_PID" 2>/dev/null || true
    sleep 2
    kill -KILL "$BENCH_PID" 2>/dev/null || true
  fi
  if [ -f "$PIDFILE" ]; then
    while read -r pid; do
      kill -KILL "$pid" 2>/dev/null || true
    done <"$PIDFILE"
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

args=(side-by-side --etcd "$ETCD" --nodes "$NODES" --rounds "$ROUNDS" --duration "$DURATION"
      --work-dir "$WORK" --pidfile "$PIDFILE" --json "$WORK/results.json")
[ -x "$FERRITE" ] && args+=(--ferrite "$FERRITE") || echo "!! no ferrite binary at $FERRITE: etcd only"
[ -n "$ONLY" ] && args+=(--only "$ONLY")
[ -n "$CLIENT" ] && args+=(--client "$CLIENT")
[ -n "$LEAN_THREADS" ] && args+=(--lean-threads "$LEAN_THREADS")
[ -n "$PORTS" ] && args+=(--ports "$PORTS")
[ "$APPEND" = 1 ] && args+=(--append-to "$ROOT/docs/benchmarks.md")

timeout --signal=TERM --kill-after=15 "$TIME_LIMIT" "$TARGET_DIR/release/ferrite-bench" "${args[@]}" &
BENCH_PID=$!
rc=0
wait "$BENCH_PID" || rc=$?
[ "$rc" = 124 ] && echo "!! time limit ${TIME_LIMIT}s reached, stopped"
mkdir -p "$TARGET_DIR/bench"
cp "$WORK/results.json" "$TARGET_DIR/bench/side-by-side-latest.json" 2>/dev/null && \
  echo "== per-run JSON: $TARGET_DIR/bench/side-by-side-latest.json"
exit $rc
