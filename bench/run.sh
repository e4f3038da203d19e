#!/usr/bin/env bash
# moongate benchmark: wrk against (1) a fake provider directly, (2) nginx plain proxy_pass in front of it,
# (3) moongate in front of it — interleaved, BENCH_RUNS times, medians reported. See bench/README.md.
#
# Never run in CI. Talks only to 127.0.0.1. Cleans up everything it started (trap EXIT).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)

# ---- knobs ------------------------------------------------------------------------------------------
DURATION=${BENCH_DURATION:-10}          # seconds per wrk run
CONNECTIONS=${BENCH_CONNECTIONS:-50}    # wrk -c
THREADS=${BENCH_THREADS:-1}             # wrk -t
RUNS=${BENCH_RUNS:-3}                   # interleaved repetitions; medians are reported
WARMUP=${BENCH_WARMUP:-3}               # seconds of warm-up per target before the measured runs
RATE=${BENCH_RATE:-}                    # requests/s over all connections (paced); empty: as fast as it goes
MOONGATE=${MOONGATE_BIN:-$ROOT/build/moongate}
NGINX=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
WRK=${WRK_BIN:-$(command -v wrk || echo wrk)}
MG_TEMPLATE=${BENCH_MOONGATE_TEMPLATE:-$BENCH_DIR/moongate.lua.in}
RESULTS_BASE=${BENCH_RESULTS:-$BENCH_DIR/results}
SCRIPT=$BENCH_DIR/chat.lua
WRK_SCRIPT=$SCRIPT
if [[ -n $RATE ]]; then
    [[ $RATE =~ ^[0-9]+$ ]] && (( RATE > 0 )) || { echo "bench: BENCH_RATE must be a whole number > 0" >&2; exit 1; }
    WRK_SCRIPT=$BENCH_DIR/chat-paced.lua
    # each connection waits this long before each request: about RATE requests/s in all
    export BENCH_DELAY_MS=$(( CONNECTIONS * 1000 / RATE ))
fi

NCPU=$(nproc)
PROXY_CPU=${BENCH_PROXY_CPU:-0}         # the proxy under test (nginx proxy, moongate)
UP_CPU=${BENCH_UPSTREAM_CPU:-1}         # the fake provider
if [[ -z ${BENCH_WRK_CPUS:-} ]]; then   # wrk: its own cores when there are any, else shares with the fake
    if (( NCPU >= 3 )); then WRK_CPUS="2-$((NCPU - 1))"; else WRK_CPUS=1; fi
else
    WRK_CPUS=$BENCH_WRK_CPUS
fi

die() { echo "bench: $*" >&2; exit 1; }
note() { echo "bench: $*" >&2; }

for v in DURATION CONNECTIONS THREADS RUNS WARMUP; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
(( RUNS >= 1 && DURATION >= 1 && CONNECTIONS >= THREADS && THREADS >= 1 )) || die "bad knobs"
(( NCPU >= 2 )) || die "needs at least 2 CPUs (proxy on one, fake provider + wrk on the other)"
[[ -x $MOONGATE ]] || die "no moongate binary at $MOONGATE; build it first:
  cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build build -j2   (or set MOONGATE_BIN)"
[[ -x $NGINX ]] || die "nginx not found (apt-get install nginx-light or nginx; set NGINX_BIN)"
command -v "$WRK" >/dev/null || die "wrk not found (apt-get install wrk; set WRK_BIN)"
for t in taskset curl ss timeout getconf; do command -v $t >/dev/null || die "$t not found"; done
[[ -f $MG_TEMPLATE ]] || die "no moongate config template $MG_TEMPLATE"

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
CLK_TCK=$(getconf CLK_TCK)

# ---- scratch and results ----------------------------------------------------------------------------
TMP=$(mktemp -d /tmp/moongate-bench.XXXXXX)
chmod 755 "$TMP"                        # nginx workers may run as nobody
mkdir -p "$TMP/upstream-tmp" "$TMP/proxy-tmp" "$TMP/moongate-data"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$RESULTS_BASE/$STAMP
mkdir -p "$OUT"

PIDS=()            # every process we started, in start order
WRK_PID=           # the running wrk (its `timeout` wrapper), if any
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $WRK_PID ]]; then kill -TERM "$WRK_PID" 2>/dev/null || true; wait "$WRK_PID" 2>/dev/null || true; fi
    local pid i all=()
    for pid in "${PIDS[@]}"; do all+=($(tree "$pid")); done   # nginx workers outlive a KILLed master
    for (( i=${#PIDS[@]}-1; i>=0; i-- )); do kill -TERM "${PIDS[i]}" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
    for pid in "${all[@]}"; do   # still alive and still ours (not a reused pid)?
        case $(cat /proc/"$pid"/comm 2>/dev/null) in nginx|moongate) kill -KILL "$pid" 2>/dev/null || true ;; esac
    done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    # keep the logs next to the results, then drop the scratch dir
    for f in upstream-error.log proxy-error.log moongate.log moongate.lua; do
        [[ -s $TMP/$f ]] && cp "$TMP/$f" "$OUT/" 2>/dev/null || true
    done
    rm -rf "$TMP"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- helpers ----------------------------------------------------------------------------------------
USED_PORTS=" "
free_port() {
    local p listening
    listening=$(ss -Htan 2>/dev/null | awk '{print $4}' | sed 's/.*://' | sort -u | tr '\n' ' ')
    for _ in $(seq 200); do
        p=$(( 20000 + RANDOM % 30000 ))
        [[ " $listening " == *" $p "* || $USED_PORTS == *" $p "* ]] && continue
        USED_PORTS+="$p "
        echo "$p"; return 0
    done
    die "no free port found"
}

fill() {  # fill TEMPLATE > OUT with the @NAME@ placeholders
    sed -e "s|@TMP@|$TMP|g" -e "s|@UP_PORT@|$UP_PORT|g" -e "s|@PROXY_PORT@|$PROXY_PORT|g" \
        -e "s|@MG_PORT@|$MG_PORT|g" -e "s|@MG_ADMIN_PORT@|$MG_ADMIN_PORT|g" "$1" > "$2"
}

wait_listen() {  # PORT PID NAME LOG
    local i
    for i in $(seq 100); do
        kill -0 "$2" 2>/dev/null || { tail -n 30 "$4" >&2 2>/dev/null; die "$3 exited during start-up"; }
        [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]] && return 0
        sleep 0.1
    done
    tail -n 30 "$4" >&2 2>/dev/null
    die "$3 did not listen on 127.0.0.1:$1 within 10s"
}

tree() {  # PID and all its descendants
    local p=$1 c
    echo "$p"
    for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do tree "$c"; done
}

cpu_ticks() {  # utime+stime (all threads) of PID and its descendants, in clock ticks
    local sum=0 p f
    for p in $(tree "$1"); do
        f=$(cat /proc/"$p"/stat 2>/dev/null) || continue
        f=${f##*) }                         # drop "pid (comm) " — comm may hold spaces
        local a; read -r -a a <<<"$f"
        sum=$(( sum + a[11] + a[12] ))      # fields 14 and 15 of stat(5)
    done
    echo "$sum"
}

status_kb() {  # FIELD PID: sum of FIELD (VmHWM, VmRSS) in kB over PID and its descendants
    local sum=0 p v
    for p in $(tree "$2"); do
        v=$(awk -v k="$1:" '$1 == k {print $2}' /proc/"$p"/status 2>/dev/null)
        sum=$(( sum + ${v:-0} ))
    done
    echo "$sum"
}

cpu_busy_snapshot() {  # "busy total" jiffies of each CPU in the list (comma/range list)
    local list=$1 c
    for c in $(cpu_list "$list"); do
        awk -v n="cpu$c" '$1 == n {t=0; for (i=2;i<=9 && i<=NF;i++) t+=$i; print $2+$3+$4+$7+$8+$9, t}' /proc/stat
    done | awk '{b+=$1; t+=$2} END {print b, t}'
}
cpu_list() {  # "2-4,7" -> "2 3 4 7"
    local part out=()
    IFS=, read -r -a parts <<<"$1"
    for part in "${parts[@]}"; do
        if [[ $part == *-* ]]; then out+=($(seq "${part%-*}" "${part#*-}")); else out+=("$part"); fi
    done
    echo "${out[@]}"
}

to_us() {  # wrk latency "1.23ms" -> microseconds
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") m = 1; else if (u == "ms") m = 1000; else if (u == "s") m = 1000000;
        else if (u == "m") m = 60000000; else if (u == "h") m = 3600000000; else m = -1
        if (m < 0) print "nan"; else printf "%.0f", n * m }'
}

median() {  # numbers on stdin -> median
    sort -g | awk '{a[NR] = $1} END { if (NR == 0) { print "nan"; exit }
        if (NR % 2) print a[(NR + 1) / 2]; else printf "%.6g\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

BODY=$(sed -n 's/^wrk\.body = \[\[\(.*\)\]\]$/\1/p' "$SCRIPT")
[[ -n $BODY ]] || die "could not extract the request body from $SCRIPT"

sanity() {  # NAME PORT: one request with curl, must be 200 with a chat.completion body
    local code
    code=$(curl -sS --max-time 5 -o "$TMP/sanity-$1.json" -w '%{http_code}' \
        -H 'Content-Type: application/json' -H 'Authorization: Bearer sk-bench-client-0123456789abcdef' \
        --data-binary "$BODY" "http://127.0.0.1:$2/v1/chat/completions") || code=000
    if [[ $code != 200 ]] || ! grep -q '"chat.completion"' "$TMP/sanity-$1.json"; then
        note "$1: sanity request answered HTTP $code:"
        head -c 2000 "$TMP/sanity-$1.json" >&2 2>/dev/null; echo >&2
        die "$1 does not answer a plain chat completion; not benchmarking it"
    fi
}

# ---- start the fleet --------------------------------------------------------------------------------
UP_PORT=$(free_port); PROXY_PORT=$(free_port); MG_PORT=$(free_port); MG_ADMIN_PORT=$(free_port)
fill "$BENCH_DIR/nginx-upstream.conf.in" "$TMP/upstream.conf"
fill "$BENCH_DIR/nginx-proxy.conf.in" "$TMP/proxy.conf"
fill "$MG_TEMPLATE" "$TMP/moongate.lua"

taskset -c "$UP_CPU" "$NGINX" -p "$TMP/" -e "$TMP/upstream-error.log" -c "$TMP/upstream.conf" \
    -g 'daemon off;' >"$TMP/upstream.out" 2>&1 &
UP_PID=$!; PIDS+=("$UP_PID")
taskset -c "$PROXY_CPU" "$NGINX" -p "$TMP/" -e "$TMP/proxy-error.log" -c "$TMP/proxy.conf" \
    -g 'daemon off;' >"$TMP/proxy.out" 2>&1 &
NGX_PID=$!; PIDS+=("$NGX_PID")
wait_listen "$UP_PORT" "$UP_PID" "fake provider (nginx)" "$TMP/upstream-error.log"
wait_listen "$PROXY_PORT" "$NGX_PID" "nginx proxy" "$TMP/proxy-error.log"

taskset -c "$PROXY_CPU" "$MOONGATE" -c "$TMP/moongate.lua" >"$TMP/moongate.log" 2>&1 &
MG_PID=$!; PIDS+=("$MG_PID")
wait_listen "$MG_PORT" "$MG_PID" "moongate" "$TMP/moongate.log"
sleep 0.5
MG_IDLE_RSS_KB=$(status_kb VmRSS "$MG_PID")

sanity direct "$UP_PORT"
sanity nginx-proxy "$PROXY_PORT"
sanity moongate "$MG_PORT"

TARGETS=(direct nginx-proxy moongate)
declare -A PORT=([direct]=$UP_PORT [nginx-proxy]=$PROXY_PORT [moongate]=$MG_PORT)
declare -A PID=([direct]=$UP_PID [nginx-proxy]=$NGX_PID [moongate]=$MG_PID)

# ---- record the setup -------------------------------------------------------------------------------
{
    echo "date_utc: $STAMP"
    echo "host: $(uname -srm); $NCPU CPUs: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$( [[ -n $(git -C "$ROOT" status --porcelain 2>/dev/null) ]] && echo ' (dirty tree)')"
    echo "moongate: $MOONGATE ($("$MOONGATE" version 2>/dev/null | head -n 1 || echo '?'))"
    echo "nginx: $("$NGINX" -v 2>&1)"
    echo "wrk: $("$WRK" -v 2>&1 | head -n 1 | awk '{print $1, $2}')"
    echo "load: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency -s bench/$(basename "$WRK_SCRIPT")${RATE:+ (paced: ${BENCH_DELAY_MS} ms before each request on each connection, ~$RATE req/s)}; runs: $RUNS; warm-up: ${WARMUP}s"
    echo "request: POST /v1/chat/completions, ${#BODY}-byte body; response: $(stat -c %s "$TMP/sanity-direct.json") bytes"
    echo "pinning: proxy under test on CPU $PROXY_CPU, fake provider on CPU $UP_CPU, wrk on CPU $WRK_CPUS"
    [[ $WRK_CPUS == "$UP_CPU" ]] && echo "note: $NCPU-CPU machine: wrk and the fake provider share CPU $UP_CPU, so the load generator may cap throughput (see gen-core busy%)"
    echo "moongate config: $MG_TEMPLATE"
    echo "loadavg before: $(cut -d' ' -f1-3 /proc/loadavg)"
    awk -v n="$NCPU" '$1 > 0.3 * n {print "note: the machine is not idle (load average " $1 "): other work competes for the CPUs and skews the figures"}' /proc/loadavg
} | tee "$OUT/env.txt" >&2

# ---- run --------------------------------------------------------------------------------------------
run_wrk() {  # TARGET DURATION OUTFILE
    local port=${PORT[$1]}
    # in the background + wait, so a signal to this script is handled at once, not after wrk ends
    timeout -k 5 $(( $2 + 30 )) taskset -c "$WRK_CPUS" "$WRK" -t"$THREADS" -c"$CONNECTIONS" -d"$2"s \
        --timeout 5s --latency -s "$WRK_SCRIPT" "http://127.0.0.1:$port/v1/chat/completions" >"$3" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || note "wrk against $1 exited with status $? (see $3)"
    WRK_PID=
}

note "warming up (${WARMUP}s per target)"
if (( WARMUP > 0 )); then
    for t in "${TARGETS[@]}"; do run_wrk "$t" "$WARMUP" "$OUT/warmup-$t.txt"; done
fi

CSV=$OUT/runs.csv
echo "run,target,requests,duration,rps,p50_us,p99_us,non2xx,sock_errors,proxy_cpu_us_per_req,proxy_core_busy_pct,gen_core_busy_pct,peak_rss_kb" > "$CSV"

for (( r=1; r<=RUNS; r++ )); do
    for t in "${TARGETS[@]}"; do
        note "run $r/$RUNS: $t (${DURATION}s)"
        f=$OUT/wrk-$t-$r.txt
        c0=$(cpu_ticks "${PID[$t]}"); read -r pb0 pt0 < <(cpu_busy_snapshot "$PROXY_CPU")
        read -r gb0 gt0 < <(cpu_busy_snapshot "$WRK_CPUS")
        run_wrk "$t" "$DURATION" "$f"
        c1=$(cpu_ticks "${PID[$t]}"); read -r pb1 pt1 < <(cpu_busy_snapshot "$PROXY_CPU")
        read -r gb1 gt1 < <(cpu_busy_snapshot "$WRK_CPUS")
        kill -0 "${PID[$t]}" 2>/dev/null || { cat "$f" >&2; die "$t died during run $r"; }

        reqs=$(awk '/ requests in / {print $1; exit}' "$f")
        secs=$(awk '/ requests in / {s = $4; sub(/,$/, "", s); print s; exit}' "$f")
        rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
        p50=$(to_us "$(awk '$1 == "50%" {print $2; exit}' "$f")")
        p99=$(to_us "$(awk '$1 == "99%" {print $2; exit}' "$f")")
        non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$f"); non2xx=${non2xx:-0}
        sockerr=$(awk '/Socket errors:/ {gsub(/,/, ""); print $4 + $6 + $8 + $10}' "$f"); sockerr=${sockerr:-0}
        [[ -n $reqs && -n $rps ]] || { cat "$f" >&2; die "could not parse wrk output $f"; }
        (( non2xx + sockerr > 0 )) && note "$t run $r: $non2xx non-2xx responses, $sockerr socket errors (see $f)"
        if [[ $t == direct ]]; then
            cpu_us=nan; hwm=nan
        else
            cpu_us=$(awk -v d=$(( c1 - c0 )) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN {printf "%.2f", n ? d / hz * 1e6 / n : 0}')
            hwm=$(status_kb VmHWM "${PID[$t]}")
        fi
        pbusy=$(awk -v b=$(( pb1 - pb0 )) -v t=$(( pt1 - pt0 )) 'BEGIN {printf "%.0f", t ? 100 * b / t : 0}')
        gbusy=$(awk -v b=$(( gb1 - gb0 )) -v t=$(( gt1 - gt0 )) 'BEGIN {printf "%.0f", t ? 100 * b / t : 0}')
        echo "$r,$t,$reqs,$secs,$rps,$p50,$p99,$non2xx,$sockerr,$cpu_us,$pbusy,$gbusy,$hwm" >> "$CSV"
    done
done
MG_FINAL_RSS_KB=$(status_kb VmRSS "$MG_PID")

# ---- summarise --------------------------------------------------------------------------------------
col() {  # TARGET COLUMN-NAME -> median over runs
    awk -F, -v t="$1" -v c="$2" 'NR == 1 {for (i = 1; i <= NF; i++) if ($i == c) k = i; next}
        $2 == t && $k != "nan" {print $k}' "$CSV" | median
}
sumcol() {
    awk -F, -v t="$1" -v c="$2" 'NR == 1 {for (i = 1; i <= NF; i++) if ($i == c) k = i; next}
        $2 == t {s += $k} END {print s + 0}' "$CSV"
}
declare -A RPS P50 P99 CPU PBUSY GBUSY HWM ERR
for t in "${TARGETS[@]}"; do
    RPS[$t]=$(col "$t" rps); P50[$t]=$(col "$t" p50_us); P99[$t]=$(col "$t" p99_us)
    CPU[$t]=$(col "$t" proxy_cpu_us_per_req); PBUSY[$t]=$(col "$t" proxy_core_busy_pct)
    GBUSY[$t]=$(col "$t" gen_core_busy_pct); HWM[$t]=$(col "$t" peak_rss_kb)
    ERR[$t]="$(sumcol "$t" non2xx)/$(sumcol "$t" sock_errors)"
done
fmt_ms() { awk -v u="$1" 'BEGIN { if (u == "nan" || u == "") print "-"; else printf "%.3f ms", u / 1000 }'; }
fmt_mb() { awk -v k="$1" 'BEGIN { if (k == "nan" || k == "") print "-"; else printf "%.1f MB", k / 1024 }'; }
fmt_n()  { awk -v v="$1" -v f="$2" 'BEGIN { if (v == "nan" || v == "") print "-"; else printf f, v }'; }
ratio()  { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b == 0) print "-"; else printf "%.2f", a / b }'; }
added()  { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan") print "-"; else printf "%+.0f us", a - b }'; }

{
    echo
    echo "moongate benchmark — medians of $RUNS interleaved runs, wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, POST /v1/chat/completions"
    echo
    printf '%-12s %10s %11s %11s %15s %12s %11s %9s %10s %12s\n' \
        target "req/s" p50 p99 "p99 vs direct" "CPU us/req" "proxy core" "gen core" "peak RSS" "non2xx/sock"
    for t in "${TARGETS[@]}"; do
        if [[ $t == direct ]]; then add="-"; else add=$(added "${P99[$t]}" "${P99[direct]}"); fi
        printf '%-12s %10s %11s %11s %15s %12s %11s %9s %10s %12s\n' "$t" \
            "$(fmt_n "${RPS[$t]}" '%.0f')" "$(fmt_ms "${P50[$t]}")" "$(fmt_ms "${P99[$t]}")" "$add" \
            "$(fmt_n "${CPU[$t]}" '%.1f')" "$(fmt_n "${PBUSY[$t]}" '%.0f%%')" "$(fmt_n "${GBUSY[$t]}" '%.0f%%')" \
            "$(fmt_mb "${HWM[$t]}")" "${ERR[$t]}"
    done
    echo
    echo "moongate / nginx throughput:      $(ratio "${RPS[moongate]}" "${RPS[nginx-proxy]}")   (target >= 0.90)"
    echo "moongate / nginx CPU per request: $(ratio "${CPU[moongate]}" "${CPU[nginx-proxy]}")   (target <= 1.10)"
    echo "added p99 vs direct:              nginx $(added "${P99[nginx-proxy]}" "${P99[direct]}"), moongate $(added "${P99[moongate]}" "${P99[direct]}")   (target < 1000 us)"
    echo "moongate RSS:                     idle $(fmt_mb "$MG_IDLE_RSS_KB") after start (target < 16 MB), peak $(fmt_mb "${HWM[moongate]}"), $(fmt_mb "$MG_FINAL_RSS_KB") at end"
    echo
    echo "proxy core = busy% of CPU $PROXY_CPU (the proxy under test; ~100% means the proxy is the bottleneck);"
    echo "gen core = busy% of CPU $WRK_CPUS (wrk$( [[ $WRK_CPUS == "$UP_CPU" ]] && echo " + fake provider")); near 100% means the load generator caps req/s."
    echo "CPU us/req = utime+stime of the proxy's processes during the run / requests (resolution 1/$CLK_TCK s)."
    echo "non2xx/sock = non-2xx responses / socket errors summed over all runs (should be 0/0)."
    echo "raw wrk outputs, per-run CSV and logs: $OUT"
} | tee "$OUT/summary.txt"

bad=0
for t in "${TARGETS[@]}"; do [[ ${ERR[$t]} == "0/0" ]] || bad=1; done
(( bad == 0 )) || note "WARNING: some runs saw non-2xx responses or socket errors; see $CSV and the wrk outputs"
