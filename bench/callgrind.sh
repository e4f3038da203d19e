#!/usr/bin/env bash
# Instructions per request: moongate under valgrind's callgrind, in front of bench/'s fake provider
# (nginx), counting only while wrk runs (--instr-atstart=no, callgrind_control -i on|off), so start-up
# and warm-up are left out. The one figure this VM gives that does not drift with the host's load;
# README's performance section quotes it. See bench/README.md.
#
#   bench/callgrind.sh [TEMPLATE]      default bench/moongate-plugins.lua.in
#   CG_DURATION=15 CG_CONNECTIONS=4    knobs; MOONGATE_BIN, MOONGATE_HOME as for the gateway
#   CG_RUNS=5                          five processes in turn, each line and their median
#   CG_TARGET=nginx bench/callgrind.sh the same count for nginx proxy_pass (bench/nginx-proxy.conf.in,
#                                      one process: master_process off), the bar to compare with
#
# Prints "requests=N instructions=I per_request=I/N" and keeps the callgrind file (for
# callgrind_annotate) in bench/results/callgrind-<UTC timestamp>.out. Never run in CI.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# CG_RUNS=N: N separate gateway processes, one after another, and their median. The JIT picks
# its traces afresh in each process, and one process's count can differ from the next by ~5%.
if (( ${CG_RUNS:-1} > 1 )); then
    vals=()
    for _ in $(seq "$CG_RUNS"); do
        line=$(CG_RUNS=1 "$BENCH_DIR/callgrind.sh" "$@" | tail -n 1)
        echo "$line"
        vals+=("$(sed -n 's/.*per_request=\([0-9]*\).*/\1/p' <<< "$line")")
    done
    echo "median per_request=$(printf '%s\n' "${vals[@]}" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}') over $CG_RUNS runs"
    exit 0
fi
ROOT=$(cd "$BENCH_DIR/.." && pwd)
TEMPLATE=${1:-$BENCH_DIR/moongate-plugins.lua.in}
DURATION=${CG_DURATION:-15}
CONNECTIONS=${CG_CONNECTIONS:-4}
MOONGATE=${MOONGATE_BIN:-$ROOT/build/moongate}
for t in valgrind callgrind_control callgrind_annotate nginx wrk curl taskset luajit; do
    command -v $t >/dev/null || { echo "callgrind.sh: $t not found" >&2; exit 1; }
done
[[ -x $MOONGATE ]] || { echo "callgrind.sh: no $MOONGATE (build first)" >&2; exit 1; }

TMP=$(mktemp -d /tmp/moongate-cg.XXXXXX)
chmod 755 "$TMP"
mkdir -p "$TMP/upstream-tmp" "$TMP/moongate-data" "$BENCH_DIR/results"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [[ -f $TMP/upstream.pid ]] && kill "$(cat "$TMP/upstream.pid")" 2>/dev/null || true
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

port() { luajit -e 'local s=require("socket").bind("127.0.0.1",0); local _, p = s:getsockname(); print(p); s:close()'; }
UP_PORT=$(port); MG_PORT=$(port); MG_ADMIN_PORT=$(port)
fill() {
    sed -e "s|@TMP@|$TMP|g" -e "s|@UP_PORT@|$UP_PORT|g" -e "s|@MG_PORT@|$MG_PORT|g" \
        -e "s|@MG_ADMIN_PORT@|$MG_ADMIN_PORT|g" "$1" > "$2"
}
fill "$BENCH_DIR/nginx-upstream.conf.in" "$TMP/upstream.conf"
fill "$TEMPLATE" "$TMP/moongate.lua"
sed -e "s|@TMP@|$TMP|g" -e "s|@UP_PORT@|$UP_PORT|g" -e "s|@PROXY_PORT@|$MG_PORT|g" \
    "$BENCH_DIR/nginx-proxy.conf.in" > "$TMP/proxy.conf"
mkdir -p "$TMP/proxy-tmp"

taskset -c 1 nginx -p "$TMP" -c "$TMP/upstream.conf" -e "$TMP/upstream-error.log"
if [[ ${CG_TARGET:-moongate} == nginx ]]; then
    TEMPLATE=$BENCH_DIR/nginx-proxy.conf.in
    taskset -c 0 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/cg.out" \
        nginx -p "$TMP" -c "$TMP/proxy.conf" -e "$TMP/proxy-error.log" \
        -g 'daemon off; master_process off;' > "$TMP/moongate.log" 2>&1 &
else
    taskset -c 0 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/cg.out" \
        "$MOONGATE" -c "$TMP/moongate.lua" > "$TMP/moongate.log" 2>&1 &
fi
MG_PID=$!
PIDS+=("$MG_PID")

URL=http://127.0.0.1:$MG_PORT
BODY=$(sed -n '/wrk.body = \[\[/,/\]\]/p' "$BENCH_DIR/chat.lua" | sed -e 's/^wrk.body = \[\[//' -e 's/\]\]$//')
ok=
for _ in $(seq 240); do   # valgrind starts slowly
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' \
        -H 'authorization: Bearer sk-bench-client-0123456789abcdef' -d "$BODY" "$URL/v1/chat/completions" || true)
    if [[ $code == 200 ]]; then ok=1; break; fi
    kill -0 "$MG_PID" 2>/dev/null || break
    sleep 0.5
done
[[ -n $ok ]] || { tail -n 20 "$TMP/moongate.log" >&2; echo "callgrind.sh: the gateway never answered 200" >&2; exit 1; }

taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d5s -s "$BENCH_DIR/chat.lua" "$URL" > /dev/null   # warm-up (the JIT)
callgrind_control -i on "$MG_PID" > /dev/null
taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -s "$BENCH_DIR/chat.lua" "$URL" > "$TMP/wrk.txt"
callgrind_control -i off "$MG_PID" > /dev/null
callgrind_control -d "$MG_PID" > /dev/null
N=$(awk '/requests in/ {print $1}' "$TMP/wrk.txt")
grep -q "Non-2xx" "$TMP/wrk.txt" && { cat "$TMP/wrk.txt" >&2; echo "callgrind.sh: some answers were not 2xx" >&2; exit 1; }
kill "$MG_PID"; wait "$MG_PID" 2>/dev/null || true
F=$(ls -S "$TMP"/cg.out* | head -1)
I=$(callgrind_annotate "$F" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
KEEP=$BENCH_DIR/results/callgrind-$(date -u +%Y%m%dT%H%M%SZ).out
cp "$F" "$KEEP"
echo "requests=$N instructions=$I per_request=$(( I / N ))  ($(basename "$TEMPLATE"); $KEEP)"
