#!/usr/bin/env bash
# CPU time of each server thread during one measured load: starts a fresh single-node ferrite,
# warms up 1 s, runs `ferrite-bench run` for DURATION s and prints the bench's summary (server
# and client CPU per operation) and each server thread's utime+stime over the measured run.
#
#   FERRITE=/path/ferrite CLIENTS=100 DURATION=6 WORKLOAD=put bench/scripts/thread-cpu.sh
#
# FERRITE may be a wrapper script that `exec`s the binary (the pid stays the same). Ports
# PORT_BASE+1/+2 (default 28101/28102); bounded by `timeout 60` per run; the server is stopped
# by pid.
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET_DIR=${CARGO_TARGET_DIR:-$(pwd)/target}
BENCH=${BENCH:-$TARGET_DIR/release/ferrite-bench}
FERRITE=${FERRITE:-$TARGET_DIR/release/ferrite}
CLIENTS=${CLIENTS:-100} DURATION=${DURATION:-6} WORKLOAD=${WORKLOAD:-put} PORT_BASE=${PORT_BASE:-28100}
. bench/scripts/lib.sh
start_single_node threads
conns=$(( CLIENTS < 10 ? CLIENTS : 10 ))
timeout 60 "$BENCH" run --workload "$WORKLOAD" --endpoints $C --clients "$CLIENTS" --connections $conns \
  --duration 1 --progress 0 >/dev/null 2>&1 || true
# tid:name ticks (utime + stime, in clock ticks)
snap() { for t in /proc/$PID/task/*; do
  echo "$(basename "$t"):$(tr ' ' _ <"$t/comm") $(awk '{print $14 + $15}' "$t/stat")"; done 2>/dev/null | sort; }
snap >"$WORK/s0"
timeout 60 "$BENCH" run --workload "$WORKLOAD" --endpoints $C --clients "$CLIENTS" --connections $conns \
  --duration "$DURATION" --no-prepare --server-pid $PID --progress 0 2>&1 | grep -E "cpu|^[a-z_-]+ +[0-9]" || true
snap >"$WORK/s1"
hz=$(getconf CLK_TCK)
join "$WORK/s0" "$WORK/s1" | awk -v hz="$hz" '{ ms = ($3 - $2) * 1000 / hz; if (ms > 0) printf "  %-28s %6d ms\n", $1, ms }'
stop_single_node
