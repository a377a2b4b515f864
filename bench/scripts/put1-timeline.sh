#!/usr/bin/env bash
# Where a single client's put spends its time: a fresh single-node ferrite under put with one
# client (lean load generator), `perf sched record` for REC_SECONDS, then per thread of the server
# and the client: how often it ran per put and its time on a CPU per put (perf's run time, which
# includes time the vCPU spends outside the guest), and a stretch of the scheduler timeline
# (who woke whom, and each run's length) for reading one put's chain.
#
#   bench/scripts/put1-timeline.sh                 # REC_SECONDS=0.5, 40 timeline lines
#   FERRITE=/path/ferrite LINES=80 bench/scripts/put1-timeline.sh
#
# Needs perf (linux-perf) and root or perf_event_paranoid <= 1. Ports PORT_BASE+1/+2 (default
# 28151/28152); the load runs 4 s under `timeout`; the server is stopped by pid.
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET_DIR=${CARGO_TARGET_DIR:-$(pwd)/target}
BENCH=${BENCH:-$TARGET_DIR/release/ferrite-bench}
FERRITE=${FERRITE:-$TARGET_DIR/release/ferrite}
SECONDS_REC=${REC_SECONDS:-0.5} LINES=${LINES:-40} PORT_BASE=${PORT_BASE:-28150}
. bench/scripts/lib.sh
start_single_node put1
timeout 30 "$BENCH" run --workload put --endpoints $C --clients 1 --connections 1 --duration 4 \
  --progress 0 >"$WORK/bench" 2>&1 &
LOAD=$!
sleep 2
perf sched record -o "$WORK/sched.data" -- sleep "$SECONDS_REC" >/dev/null 2>&1
wait $LOAD || true
grep -E "^put|cpu" "$WORK/bench" || true
ops=$(awk '/^put/ {print $4}' "$WORK/bench")
puts=$(echo "${ops:-0} * $SECONDS_REC" | bc)
echo "== per thread, over ~$puts puts recorded ($SECONDS_REC s at ${ops:-?} puts/s)"
# This server's threads (by pid), the load generator's, and the block layer's kworkers.
perf sched timehist -i "$WORK/sched.data" 2>/dev/null | awk -v puts="$puts" -v pid="$PID" '
  NR > 3 && ($3 ~ ("/" pid "]") || $3 ~ /^lean|^kworker\/.*H/) {
    n = $3; sub(/\[.*/, "", n); run[n] += $NF; cnt[n]++ }
  END { for (k in run) printf "  %-18s runs/put %5.2f  on-cpu us/put %7.1f  us/run %6.1f\n",
        k, cnt[k] / puts, run[k] * 1e6 / 1000 / puts, run[k] * 1000 / cnt[k] }'
echo "== timeline (time, cpu, task, wait ms, sched delay ms, run ms | wake-ups)"
perf sched timehist -i "$WORK/sched.data" -w 2>/dev/null |
  awk -v pid="$PID" '$3 ~ ("/" pid "]") || $3 ~ /^lean|^kworker\/.*H/ || /awakened: (ferrite|wal-io|lean)/' |
  sed -n "200,$((200 + LINES))p" | cut -c1-130
stop_single_node
