# Shared by the single-node bench scripts (sourced, not run). Needs FERRITE and PORT_BASE set.
#
# start_single_node NAME: a temporary work dir in $WORK (removed on exit), a fresh one-member
# ferrite on 127.0.0.1:PORT_BASE+1 (client, also $C) and +2 (peer, $P) with its data dir and log
# in $WORK; its pid in $PID (killed on exit, or stopped by the caller with stop_single_node).
start_single_node() {
  C=127.0.0.1:$((PORT_BASE + 1)) P=127.0.0.1:$((PORT_BASE + 2))
  WORK=$(mktemp -d "/tmp/ferrite-$1.XXXXXX") PID=""
  trap '[ -n "$PID" ] && kill -KILL $PID 2>/dev/null; rm -rf "$WORK"' EXIT INT TERM
  "$FERRITE" --name=n0 --data-dir="$WORK/d" --listen-client-urls=http://$C --advertise-client-urls=http://$C \
    --listen-peer-urls=http://$P --initial-advertise-peer-urls=http://$P --initial-cluster=n0=http://$P \
    --log-level=warn >"$WORK/log" 2>&1 &
  PID=$!
  sleep 1.5
}

stop_single_node() {
  kill $PID
  wait $PID 2>/dev/null || true
  PID=""
}
