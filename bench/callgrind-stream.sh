#!/usr/bin/env bash
# Instructions per streamed event: moongate under valgrind's callgrind relaying an OpenAI stream
# (bench/stream_latency.lua plays provider and client: an event every 20 ms) to an OpenAI client,
# counting only while 300 events go through (--instr-atstart=no, callgrind_control -i on|off),
# after 100 to warm up. The per-event figure README's performance section quotes for streams.
#
#   bench/callgrind-stream.sh          MOONGATE_BIN, MOONGATE_HOME as for the gateway
#
# Prints "events=N instructions=I per_event=I/N" (the one request's own work is in it, spread over
# its events). Never run in CI.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
MOONGATE=${MOONGATE_BIN:-$ROOT/build/moongate}
for t in valgrind callgrind_control callgrind_annotate curl luajit; do
    command -v $t >/dev/null || { echo "callgrind-stream.sh: $t not found" >&2; exit 1; }
done
[[ -x $MOONGATE ]] || { echo "callgrind-stream.sh: no $MOONGATE (build first)" >&2; exit 1; }

TMP=$(mktemp -d /tmp/moongate-cgs.XXXXXX)
MG_PID=
cleanup() {
    [[ -n $MG_PID ]] && { kill "$MG_PID" 2>/dev/null || true; wait "$MG_PID" 2>/dev/null || true; }
    rm -rf "$TMP"
}
trap cleanup EXIT

port() { luajit -e 'local s=require("socket").bind("127.0.0.1",0); local _, p = s:getsockname(); print(p); s:close()'; }
LP=$(port); GW=$(port); ADMIN=$(port)
cat > "$TMP/gw.lua" <<CFG
listen = { "127.0.0.1:$GW" }
admin = { listen = "127.0.0.1:$ADMIN" }
workers = 1
access_log = false
data_dir = "$TMP/data"
providers = { p = { type = "openai", base_url = "http://127.0.0.1:$LP/v1", api_key = "k" } }
backends = { main = { provider = "p" } }
routes = { { match = { path_prefix = "/v1" }, backend = "main" } }
CFG
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/cg.out" \
    "$MOONGATE" -c "$TMP/gw.lua" > "$TMP/gw.log" 2>&1 &
MG_PID=$!
for _ in $(seq 240); do   # valgrind starts slowly
    curl -sf "http://127.0.0.1:$ADMIN/ready" > /dev/null && break
    kill -0 "$MG_PID" 2>/dev/null || break
    sleep 0.5
done
curl -sf "http://127.0.0.1:$ADMIN/ready" > /dev/null || { tail -n 20 "$TMP/gw.log" >&2; exit 1; }
luajit "$BENCH_DIR/stream_latency.lua" "$LP" "$GW" 100 > /dev/null   # warm-up (the JIT)
callgrind_control -i on "$MG_PID" > /dev/null 2>&1
luajit "$BENCH_DIR/stream_latency.lua" "$LP" "$GW" 300 > /dev/null
callgrind_control -i off "$MG_PID" > /dev/null 2>&1
callgrind_control -d "$MG_PID" > /dev/null 2>&1
kill "$MG_PID"; wait "$MG_PID" 2>/dev/null || true; MG_PID=
F=$(ls -S "$TMP"/cg.out* | head -1)
I=$(callgrind_annotate "$F" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
# stream_latency.lua sends 5 events past the ones it times
echo "events=305 instructions=$I per_event=$(( I / 305 ))"
