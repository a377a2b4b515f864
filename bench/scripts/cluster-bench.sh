#!/usr/bin/env bash
# 3-member ferrite vs 3-member etcd 3.4 on this machine, both with etcd's default
# --heartbeat-interval=100 --election-timeout=1000:
#   (a) put throughput and latency with 100 clients (ferrite-bench side-by-side, preset
#       put-100-clients: 10 connections, 256-byte values, 10k keys), server CPU per op;
#   (b) leader failover: kill -9 of the leader to the first acknowledged write through a
#       survivor, TRIALS trials per server on fresh clusters, alternating (ferrite-bench failover).
#
#   bench/scripts/cluster-bench.sh                       # ROUNDS=2 DURATION=10 TRIALS=10
#   ROUNDS=3 DURATION=10 TRIALS=15 bench/scripts/cluster-bench.sh
#
# Bounded: each part runs under `timeout` (PART_LIMIT seconds, default 600), every client call
# in ferrite-bench has its own timeout, and every server started is stopped by pid (by
# ferrite-bench, and by this script's trap from the pid file). Prints Markdown tables.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}
TRIALS=${TRIALS:-10}
PART_LIMIT=${PART_LIMIT:-600}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
FERRITE=${FERRITE:-$TARGET_DIR/release/ferrite}
ETCD=${ETCD:-$(command -v etcd || echo /usr/bin/etcd)}
BENCH=$TARGET_DIR/release/ferrite-bench

if [ "${NO_BUILD:-0}" != 1 ]; then
  cargo build --release -p ferrite-bench --bin ferrite-bench -p ferrite --bin ferrite
fi

WORK=$(mktemp -d /tmp/ferrite-cluster-bench.XXXXXX)
PIDFILE="$WORK/pids"
BENCH_PID=""
cleanup() {
  if [ -n "$BENCH_PID" ] && kill -0 "$BENCH_PID" 2>/dev/null; then
    kill -TERM "$BENCH_PID" 2>/dev/null || true
    sleep 2
    kill -KILL "$BENCH_PID" 2>/dev/null || true
  fi
  if [ -f "$PIDFILE" ]; then
    while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done <"$PIDFILE"
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

part() {
  timeout --signal=TERM --kill-after=15 "$PART_LIMIT" "$BENCH" "$@" &
  BENCH_PID=$!
  local rc=0
  wait "$BENCH_PID" || rc=$?
  BENCH_PID=""
  [ "$rc" = 124 ] && echo "!! time limit ${PART_LIMIT}s reached, stopped"
  return 0
}

echo "== machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $("$ETCD" --version | head -1)"
echo "== (a) put, 100 clients, 3 members"
part side-by-side --etcd "$ETCD" --ferrite "$FERRITE" --nodes 3 --rounds "$ROUNDS" \
  --duration "$DURATION" --only put-100-clients --work-dir "$WORK" --pidfile "$PIDFILE"
echo "== (b) leader failover, 3 members, $TRIALS trials each"
part failover --etcd "$ETCD" --ferrite "$FERRITE" --nodes 3 --trials "$TRIALS" \
  --work-dir "$WORK" --pidfile "$PIDFILE"
echo "== load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
