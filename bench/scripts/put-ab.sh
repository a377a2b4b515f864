#!/usr/bin/env bash
# A/B of two ferrite builds on put: alternating A, B per round, a fresh data dir per run, 1 s
# warm-up then DURATION s measured with `ferrite-bench run --workload put --no-prepare`; prints
# ops/s, p50, p99, server CPU per put, and WAL syncs from /metrics (puts per fdatasync).
#
#   A=/path/ferrite-old B=/path/ferrite-new CLIENTS="100 1" ROUNDS=2 bench/scripts/put-ab.sh
#
# Ports PORT_BASE+1/+2 (default 26021/26022). Each run is bounded by `timeout 60`; every server
# started is stopped by pid.
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET_DIR=${CARGO_TARGET_DIR:-$(pwd)/target}
BENCH=${BENCH:-$TARGET_DIR/release/ferrite-bench}
A=${A:?A=<ferrite binary>} B=${B:?B=<ferrite binary>}
CLIENTS=${CLIENTS:-100} ROUNDS=${ROUNDS:-2} DURATION=${DURATION:-6} PORT_BASE=${PORT_BASE:-26020}
C=127.0.0.1:$((PORT_BASE + 1)) P=127.0.0.1:$((PORT_BASE + 2))
WORK=$(mktemp -d /tmp/ferrite-ab.XXXXXX) PID=""
trap '[ -n "$PID" ] && kill -KILL $PID 2>/dev/null; rm -rf "$WORK"' EXIT INT TERM
metrics() { curl -s "http://$C/metrics" | grep -E "^etcd_disk_wal_fsync_duration_seconds_(count|sum) " | sort; }
run() { # binary clients label
  rm -rf "$WORK/d"
  "$1" --name=n0 --data-dir="$WORK/d" --listen-client-urls=http://$C --advertise-client-urls=http://$C \
    --listen-peer-urls=http://$P --initial-advertise-peer-urls=http://$P --initial-cluster=n0=http://$P \
    --log-level=warn >"$WORK/log" 2>&1 &
  PID=$!; sleep 1.5
  local conns=$(( $2 < 10 ? $2 : 10 ))
  timeout 60 "$BENCH" run --workload put --endpoints $C --clients "$2" --connections $conns --duration 1 --progress 0 >/dev/null 2>&1 || true
  metrics >"$WORK/m0"
  local out; out=$(timeout 60 "$BENCH" run --workload put --endpoints $C --clients "$2" --connections $conns \
    --duration "$DURATION" --no-prepare --server-pid $PID --progress 0 2>&1 || true)
  metrics >"$WORK/m1"
  local line cpu syncs ssum ok
  line=$(echo "$out" | grep "^put" || true); cpu=$(echo "$out" | grep -o "[0-9.]* us per put" || true)
  syncs=$(paste "$WORK/m0" "$WORK/m1" | awk '/_count/ {print $4-$2}')
  ssum=$(paste "$WORK/m0" "$WORK/m1" | awk '/_sum/ {printf "%.2f", $4-$2}')
  ok=$(echo "$line" | awk '{print $2}')
  echo "$3 clients=$2 | $(echo "$line" | awk '{print $4" ops/s p50 "$5" p99 "$7}') | $cpu | syncs $syncs (sum ${ssum}s) | puts/sync $(echo "scale=1; ${ok:-0}/${syncs:-1}" | bc)"
  kill $PID; wait $PID 2>/dev/null || true; PID=""
}
for r in $(seq 1 "$ROUNDS"); do for c in $CLIENTS; do run "$A" "$c" A; run "$B" "$c" B; done; done
