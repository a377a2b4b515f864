#!/usr/bin/env bash
# Memory and restart, side by side with Debian's etcd 3.4 (issue 5's last targets): for each
# server, one fresh member; load KEYS keys of VALUE_SIZE bytes with 64 concurrent clients
# (`ferrite-bench`'s prepare phase); then RSS (VmRSS, VmHWM), data-dir size; then stop it
# (SIGTERM, or SIGKILL with KILL=1) and restart on the same data dir, timing from exec to the
# first served request (a serializable Range of one loaded key answered with its value).
#
#   bench/scripts/restart-rss.sh                        # KEYS=1000000 VALUE_SIZE=256
#   KEYS=200000 bench/scripts/restart-rss.sh            # quicker
#   SERVERS=ferrite KEYS=100000 KILL=1 bench/scripts/restart-rss.sh
#
# Ports PORT_BASE+1 and +2 (default 25501-25502; set PORT_BASE when others use those). Bounded:
# the whole script is stopped after TIME_LIMIT seconds (default 3600; loading 1M keys takes
# ~3-10 min per server on a 2-core machine), a restart that serves nothing within 600 s is
# reported as "never"; every server started is stopped by pid (also on timeout or Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
KEYS=${KEYS:-1000000}
VALUE_SIZE=${VALUE_SIZE:-256}
SERVERS=${SERVERS:-etcd,ferrite}
KILL=${KILL:-0}
TIME_LIMIT=${TIME_LIMIT:-3600}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
FERRITE=${FERRITE:-$TARGET_DIR/release/ferrite}
BENCH=${BENCH:-$TARGET_DIR/release/ferrite-bench}
ETCD=${ETCD:-$(command -v etcd)}
ETCDCTL=${ETCDCTL:-$(command -v etcdctl)}
[ -x "$BENCH" ] || cargo build --release -p ferrite-bench --bin ferrite-bench
[ -x "$FERRITE" ] || cargo build --release -p ferrite --bin ferrite

WORK=$(mktemp -d /tmp/ferrite-rss.XXXXXX)
PID=""
cleanup() {
  if [ -n "$PID" ]; then kill -KILL "$PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
# The watchdog's output goes nowhere, so a pipe reading this script's output sees EOF at its end.
( exec >/dev/null 2>&1 </dev/null; sleep "$TIME_LIMIT"; kill -TERM $$ ) &
WATCHDOG=$!

PORT_BASE=${PORT_BASE:-25500}
CLIENT=127.0.0.1:$((PORT_BASE + 1))
PEER=127.0.0.1:$((PORT_BASE + 2))
start() { # binary data-dir log
  "$1" --name=n0 --data-dir="$2" --listen-client-urls=http://$CLIENT \
    --advertise-client-urls=http://$CLIENT --listen-peer-urls=http://$PEER \
    --initial-advertise-peer-urls=http://$PEER --initial-cluster=n0=http://$PEER \
    --initial-cluster-state=new --logger=zap --log-level=warn \
    --quota-backend-bytes=$((8 * 1024 * 1024 * 1024)) >>"$3" 2>&1 &
  PID=$!
}
# A loaded key (ferrite-bench writes /bench/kv/<n>): read back until served.
first_served() { # -> prints seconds since $1 (ns) when a Range returns a value
  local t0=$1 deadline=$(( $(date +%s) + 600 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    if ETCDCTL_API=3 "$ETCDCTL" --endpoints=$CLIENT --command-timeout=2s \
         get --prefix --limit=1 --consistency=s --print-value-only /bench/kv/ 2>/dev/null | grep -q .; then
      echo "scale=3; ($(date +%s%N) - $t0) / 1000000000" | bc
      return 0
    fi
    sleep 0.02
  done
  echo "never"
}
rss_kib() { awk -v f="$2" '$1 == f":" {print $2}' "/proc/$1/status"; }

printf '| server | keys | load s | keys/s | RSS MiB | of it anon MiB | of it file-mapped MiB | peak RSS MiB | data MiB | restart to first read s | RSS after restart MiB |\n'
printf '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'
for s in ${SERVERS//,/ }; do
  case $s in etcd) BIN=$ETCD ;; ferrite) BIN=$FERRITE ;; *) echo "unknown server $s"; exit 2 ;; esac
  D=$WORK/$s; LOG=$WORK/$s.log
  start "$BIN" "$D" "$LOG"
  until ETCDCTL_API=3 "$ETCDCTL" --endpoints=$CLIENT --command-timeout=2s endpoint status >/dev/null 2>&1; do
    kill -0 $PID || { echo "!! $s exited"; tail -5 "$LOG"; exit 1; }
    sleep 0.1
  done
  L0=$(date +%s%N)
  # range-serializable's prepare writes every key of the key space once (64 writers); --total 1
  # then measures a single read.
  "$BENCH" run --workload range-serializable --endpoints $CLIENT --clients 1 --connections 8 \
    --key-space "$KEYS" --value-size "$VALUE_SIZE" --total 1 --duration 5 >"$WORK/$s.bench" 2>&1 \
    || { echo "!! $s: load failed"; tail -5 "$WORK/$s.bench"; exit 1; }
  L1=$(date +%s%N)
  LOAD_S=$(echo "scale=1; ($L1 - $L0) / 1000000000" | bc)
  RATE=$(echo "$KEYS * 1000000000 / ($L1 - $L0)" | bc)
  sleep 2
  RSS=$(( $(rss_kib $PID VmRSS) / 1024 )); HWM=$(( $(rss_kib $PID VmHWM) / 1024 ))
  # Anonymous memory (heap) vs file-backed pages mapped into the process (the store's mmap,
  # the binary): `KEEP_SMAPS=dir` keeps /proc/PID/smaps for a closer look.
  ANON=$(( $(rss_kib $PID RssAnon) / 1024 )); FILE=$(( $(rss_kib $PID RssFile) / 1024 ))
  if [ -n "${KEEP_SMAPS:-}" ]; then cp "/proc/$PID/smaps" "$KEEP_SMAPS/$s.smaps"; fi
  DATA=$(( $(du -sk "$D" | cut -f1) / 1024 ))
  if [ "$KILL" = 1 ]; then kill -KILL $PID; else kill -TERM $PID; fi
  wait $PID 2>/dev/null || true
  start "$BIN" "$D" "$LOG"
  T0=$(date +%s%N)
  RESTART=$(first_served "$T0")
  sleep 1
  RSS2=$(( $(rss_kib $PID VmRSS) / 1024 ))
  kill -TERM $PID; wait $PID 2>/dev/null || true; PID=""
  printf '| %s | %d | %s | %s | %d | %d | %d | %d | %d | %s | %d |\n' "$s" "$KEYS" "$LOAD_S" "$RATE" "$RSS" "$ANON" "$FILE" "$HWM" "$DATA" "$RESTART" "$RSS2"
done
kill $WATCHDOG 2>/dev/null || true
echo
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $("$ETCD" --version | head -1); stop: $([ "$KILL" = 1 ] && echo SIGKILL || echo SIGTERM)"
