#!/usr/bin/env bash
# Streams: moongate's memory with 1,000 open streams, and how long a streamed
# event takes to get through it (bench/stream_latency.lua). Not part of CI.
#   bench/streams.sh            (build/moongate; MOONGATE_BIN=... for another)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MOONGATE=${MOONGATE_BIN:-$ROOT/build/moongate}
N=${BENCH_STREAMS:-1000}
TMP=$(mktemp -d /tmp/moongate-streams.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
ulimit -n $(( N * 4 + 1024 ))
port() { luajit -e 'local s=require("socket").bind("127.0.0.1",0); local _, p = s:getsockname(); print(p); s:close()'; }
UP=$(port); GW=$(port); ADMIN=$(port); LP=$(port); LG=$(port)
rss() { awk '/^VmRSS/ {printf "%.1f MB", $2/1024}' /proc/"$1"/status; }

# 1. N streams held open by the fake provider (x-fake-hold), through one worker
luajit "$ROOT/spec/support/fake_upstream.lua" "$UP" > "$TMP/up.log" 2>&1 & PIDS+=($!)
cat > "$TMP/gw.lua" <<CFG
listen = { "127.0.0.1:$GW" }
admin = { listen = "127.0.0.1:$ADMIN" }
workers = 1
access_log = false
data_dir = "$TMP/data"
limits = { idle_timeout = "300s" }
providers = { p = { type = "openai", base_url = "http://127.0.0.1:$UP/v1", api_key = "k" },
              q = { type = "openai", base_url = "http://127.0.0.1:$LP/v1", api_key = "k" } }
backends = { held = { provider = "p" }, latency = { provider = "q" } }
routes = { { match = { path_prefix = "/v1", headers = { ["x-bench"] = "latency" } }, backend = "latency" },
           { match = { path_prefix = "/v1" }, backend = "held" } }
CFG
"$MOONGATE" -c "$TMP/gw.lua" > "$TMP/gw.log" 2>&1 & MG=$!; PIDS+=($MG)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADMIN/ready" > /dev/null && break; sleep 0.1; done
kill -0 $MG 2>/dev/null || { cat "$TMP/gw.log"; exit 1; }
echo "idle: $(rss $MG)"
cat > "$TMP/hold.lua" <<'LUA'
local socket = require("socket")
local port, n = tonumber(arg[1]), tonumber(arg[2])
local body = '{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'
local conns = {}
for i = 1, n do
  local c = assert(socket.connect("127.0.0.1", port))
  c:send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-fake-hold: h\r\nContent-Type: application/json\r\n"
    .. "Content-Length: " .. #body .. "\r\n\r\n" .. body)
  conns[i] = c
end
local ok = 0
for i = 1, n do conns[i]:settimeout(30); local l = conns[i]:receive("*l"); if l and l:find(" 200 ") then ok = ok + 1 end end
io.write(ok, " streams open\n"); io.flush()
socket.sleep(600)
LUA
luajit "$TMP/hold.lua" "$GW" "$N" & HOLD=$!; PIDS+=($HOLD)
for _ in $(seq 600); do
  open=$(curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^moongate_inflight / {print $2}')
  [[ ${open%.*} -ge $N ]] && break; sleep 0.1
done
echo "$N open streams: $(rss $MG)"
kill $HOLD

# 2. event latency, direct, through nginx (a plain relay: proxy_buffering off) and through the
#    gateway (same machine, one clock). nginx pays the same extra hop, so moongate minus nginx
#    is what moongate's own handling of an event adds.
luajit "$ROOT/bench/stream_latency.lua" "$LP" "" 500
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%d", s}'; }   # ns on CPU, all threads
NGINX=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
if [[ -x $NGINX ]]; then
    NG=$(port)
    mkdir -p "$TMP/nginx"
    cat > "$TMP/nginx.conf" <<NGX
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    server {
        listen 127.0.0.1:$NG;
        location / {
            proxy_pass http://127.0.0.1:$LP;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
NGX
    "$NGINX" -c "$TMP/nginx.conf" -p "$TMP/nginx" -g 'daemon off;' 2> "$TMP/nginx/stderr" & NGM=$!; PIDS+=($NGM)
    for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$NG) 2>/dev/null && break; sleep 0.1; done
    NGW=$(pgrep -P "$NGM" | head -n1)
    n0=$(cpu_ns "$NGW")
    luajit "$ROOT/bench/stream_latency.lua" "$LP" "$NG" 500 | sed 's/through moongate/through nginx/'
    n1=$(cpu_ns "$NGW")
    echo "nginx CPU per event: $(( (n1 - n0) / 505 / 1000 )) us (its worker's CPU time over the run / events)"
fi
cat > "$TMP/through.lua" <<'LUA'
-- the gateway route for this run needs the x-bench header: patch the client's request line
local root, lp, gw = arg[1], arg[2], arg[3]
local src = io.open(root .. "/bench/stream_latency.lua"):read("*a")
src = src:gsub('Host: x\\r\\n', 'Host: x\\r\\nx-bench: latency\\r\\n')
arg = { [0] = "stream_latency.lua", lp, gw, "500" }
assert(loadstring(src))()
LUA
i0=$(cpu_ns $MG); sleep 5; i1=$(cpu_ns $MG)          # what the idle gateway spends (timers), per second
t0=$(cpu_ns $MG); s0=$(date +%s%N)
luajit "$TMP/through.lua" "$ROOT" "$LP" "$GW"
t1=$(cpu_ns $MG); s1=$(date +%s%N)
idle=$(( (i1 - i0) * (s1 - s0) / 5000000000 ))
echo "moongate CPU per event: $(( (t1 - t0 - idle) / 505 / 1000 )) us (CPU time over the run, less the idle gateway's, / events)"
