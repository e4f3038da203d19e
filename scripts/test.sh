#!/usr/bin/env bash
# The one command that builds moongate and runs every test:
#
#   deps            scripts/deps.sh --test
#   build           cmake build/ (RelWithDebInfo)
#   ctest           the C unit tests
#   unit            busted --run=unit        (Lua modules, the harness)
#   integration     busted --run=integration against build/moongate
#   examples        examples/check.sh: moongate check on every example config, the
#                   Kubernetes manifests against their schemas
#   build-asan      cmake build-asan/ with -DMOONGATE_SANITIZE=ON
#   integration-asan  the integration specs again against build-asan/moongate
#   integration-valgrind  the integration specs again under valgrind memcheck
#   fuzz            the libFuzzer targets of spec/fuzz, built with clang into build-fuzz/,
#                   each run MOONGATE_FUZZ_SECONDS (10) over its seeds: one test each
#
# Every stage's output is shown with a [stage] prefix. The last line is
# exactly "N passed, N failed" (summed over the stages); the exit status is
# non-zero when anything failed. A stage that crashed or could not run at all
# counts as one failure, never as zero tests.
#
# MOONGATE_STAGES="unit,integration" runs only the stages listed (the others
# are reported as skipped; a skipped build counts as done when its binary
# exists).
set -uo pipefail   # no -e: a failing stage is counted, then the next one runs

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

JOBS=${JOBS:-2}
LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/moongate-test.XXXXXX")
trap 'rm -rf "$LOGDIR"' EXIT

TOTAL_PASSED=0
TOTAL_FAILED=0
SUMMARY=()

say() { printf '%s\n' "$*"; }

selected() {
  [[ -z "${MOONGATE_STAGES:-}" ]] && return 0
  [[ ",${MOONGATE_STAGES}," == *",$1,"* ]]
}

# record STAGE PASSED FAILED [NOTE]
record() {
  TOTAL_PASSED=$((TOTAL_PASSED + $2))
  TOTAL_FAILED=$((TOTAL_FAILED + $3))
  local line
  line=$(printf '%-17s %4d passed, %4d failed' "$1" "$2" "$3")
  [[ -n "${4:-}" ]] && line+="  ($4)"
  SUMMARY+=("$line")
  say "[$1] => $2 passed, $3 failed${4:+ ($4)}"
}

# run STAGE CMD...: runs CMD with its output shown prefixed and kept in
# $LOGDIR/STAGE.log; returns CMD's exit status.
run() {
  local stage=$1; shift
  say "[$stage] \$ $*"
  "$@" > >(tee "$LOGDIR/$stage.log" | sed -u "s/^/[$stage] /") 2>&1
  local rc=$?
  wait   # let the prefixing finish before the next line is printed
  return $rc
}

# A build-like stage: one "test", passed or failed.
step() {
  local stage=$1; shift
  local rc=0
  run "$stage" "$@" || rc=$?
  if ((rc == 0)); then
    record "$stage" 1 0
    return 0
  fi
  record "$stage" 0 1 "exit $rc"
  return 1
}

# ctest_stage STAGE BUILD_DIR
ctest_stage() {
  local stage=$1 dir=$2 rc=0
  run "$stage" ctest --test-dir "$dir" --output-on-failure || rc=$?
  local log="$LOGDIR/$stage.log" line failed total
  line=$(grep -Eo '[0-9]+ tests? failed out of [0-9]+' "$log" | tail -n1 || true)
  if [[ -n "$line" ]]; then
    failed=$(awk '{print $1}' <<<"$line")
    total=$(awk '{print $NF}' <<<"$line")
    if ((rc != 0 && failed == 0)); then
      record "$stage" "$total" 1 "ctest exit $rc"
    else
      record "$stage" $((total - failed)) "$failed"
    fi
  elif ((rc == 0)) && grep -q 'No tests were found' "$log"; then
    record "$stage" 0 0 "no tests found"
  else
    record "$stage" 0 1 "ctest crashed or did not report (exit $rc)"
  fi
}

# busted's TAP handler itself crashes on an error outside a test (a spec
# file that does not load: its trace has no line), which would lose every
# other result. This wrapper fills in the missing fields first.
cat > "$LOGDIR/tap.lua" <<'LUA'
return function(options)
  local busted = require "busted"
  local tap = require("busted.outputHandlers.TAP")(options)
  local subscribe = tap.subscribe
  tap.subscribe = function(self, opts)
    subscribe(self, opts)
    busted.subscribe({ "error" }, function(element)
      if type(element.trace) ~= "table" then element.trace = {} end
      element.trace.short_src = element.trace.short_src or element.name or "?"
      element.trace.currentline = element.trace.currentline or 0
      return nil, true
    end, { priority = 1 })
  end
  return tap
end
LUA

# busted_stage STAGE TASK [ENV=VALUE...]
# busted runs straight under luajit (--ignore-lua skips .busted's re-exec,
# which would mangle arguments with spaces) with TAP output,
# which is counted: "ok" passed, "not ok" failed, "ok ... # SKIP" pending.
busted_stage() {
  local stage=$1 task=$2 rc=0; shift 2
  local busted_bin
  busted_bin=$(command -v busted || true)
  if [[ -z "$busted_bin" ]]; then
    record "$stage" 0 1 "busted not installed"
    return
  fi
  run "$stage" env "$@" luajit "$busted_bin" --ignore-lua --run="$task" -o "$LOGDIR/tap.lua" || rc=$?
  local log="$LOGDIR/$stage.log" ok notok skip plan failed note=""
  ok=$(grep -cE '^ok [0-9]+ ' "$log" || true)
  skip=$(grep -cE '^ok [0-9]+ - # SKIP' "$log" || true)
  notok=$(grep -cE '^not ok [0-9]+ ' "$log" || true)
  plan=$(grep -Eo '^1\.\.[0-9]+$' "$log" | tail -n1 | cut -c4- || true)
  ok=$((ok - skip))
  failed=$notok
  if [[ -z "$plan" ]]; then
    failed=$((failed + 1)); note="busted crashed: no TAP plan (exit $rc)"
  elif ((plan != ok + skip + notok)); then
    failed=$((failed + 1)); note="TAP plan $plan but $((ok + skip + notok)) results"
  elif ((rc != 0 && notok == 0)); then
    failed=$((failed + 1)); note="busted exit $rc with no failed test"
  fi
  ((skip > 0)) && note="${note:+$note; }$skip pending"
  ((plan == 0 && rc == 0)) && note="${note:+$note; }no specs found"
  record "$stage" "$ok" "$failed" "$note"
}

not_run() { record "$1" 0 1 "not run: $2"; }
skipped() { SUMMARY+=("$(printf '%-17s skipped' "$1")"); say "[$1] skipped (MOONGATE_STAGES)"; }

# --- deps -------------------------------------------------------------------
if selected deps; then step deps "$ROOT/scripts/deps.sh" --test || true; else skipped deps; fi

# --- build ------------------------------------------------------------------
build_ok=0
if selected build; then
  if step build bash -c "cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build build -j$JOBS"; then
    build_ok=1
  fi
else
  skipped build
  [[ -x build/moongate ]] && build_ok=1
fi

# --- ctest ------------------------------------------------------------------
if selected ctest; then
  if ((build_ok)); then ctest_stage ctest build; else not_run ctest "build failed"; fi
else
  skipped ctest
fi

# --- busted unit ------------------------------------------------------------
if selected unit; then busted_stage unit unit; else skipped unit; fi

# --- busted integration -----------------------------------------------------
if selected integration; then
  if ((build_ok)); then
    busted_stage integration integration MOONGATE_BIN=build/moongate
  else
    not_run integration "no build/moongate"
  fi
else
  skipped integration
fi

# --- examples ---------------------------------------------------------------
# examples/check.sh prints one "ok - " / "not ok - " / "pending - " line per check and ends
# with "N passed, N failed"; a check pending on a feature this build lacks counts as neither.
if selected examples; then
  if ((build_ok)); then
    ex_rc=0
    run examples "$ROOT/examples/check.sh" build/moongate || ex_rc=$?
    ex_line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$LOGDIR/examples.log" | tail -n1 || true)
    ex_pending=$(grep -cE '^pending - ' "$LOGDIR/examples.log" || true)
    ex_note=""
    ((ex_pending > 0)) && ex_note="$ex_pending pending"
    if [[ -z "$ex_line" ]]; then
      record examples 0 1 "examples/check.sh crashed (exit $ex_rc)"
    else
      ex_failed=$(awk '{print $3}' <<<"$ex_line")
      if ((ex_rc != 0 && ex_failed == 0)); then ex_failed=1; ex_note="${ex_note:+$ex_note; }exit $ex_rc"; fi
      record examples "$(awk '{print $1}' <<<"$ex_line")" "$ex_failed" "$ex_note"
    fi
  else
    not_run examples "no build/moongate"
  fi
else
  skipped examples
fi

# --- sanitizers -------------------------------------------------------------
asan_ok=0
if selected build-asan; then
  if step build-asan bash -c "cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOONGATE_SANITIZE=ON && cmake --build build-asan -j$JOBS"; then
    asan_ok=1
  fi
else
  skipped build-asan
  [[ -x build-asan/moongate ]] && asan_ok=1
fi

if selected integration-asan; then
  if ((asan_ok)); then
    # The gateway is a separate process, so busted itself needs no
    # LD_PRELOAD. If an ASan-built shared library is ever loaded into
    # luajit, add LD_PRELOAD="$(gcc -print-file-name=libasan.so)".
    busted_stage integration-asan integration \
      MOONGATE_BIN=build-asan/moongate \
      ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
      UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  else
    not_run integration-asan "no build-asan/moongate"
  fi
else
  skipped integration-asan
fi

# --- valgrind ---------------------------------------------------------------
# memcheck sees what ASan cannot: writes by uninstrumented libraries (libuv,
# libcurl) into memory we freed. Errors or definite leaks make the gateway
# exit 99, which every spec's "stops with exit code 0" check turns into a
# failure. Reports: $TMPDIR/moongate-valgrind.* (non-empty ones only).
if selected integration-valgrind; then
  if ((build_ok)) && command -v valgrind > /dev/null; then
    busted_stage integration-valgrind integration \
      MOONGATE_BIN=spec/support/valgrind-moongate
  else
    not_run integration-valgrind "no build/moongate or no valgrind"
  fi
else
  skipped integration-valgrind
fi

# --- fuzz -------------------------------------------------------------------
# Each target runs over a scratch copy of its corpus (the seeds in spec/fuzz/<name>/
# are only read) and passes when libFuzzer ends without a crash, leak, timeout or
# sanitizer report. Crashing inputs are kept in build-fuzz/artifacts/.
if selected fuzz; then
  if ! command -v clang > /dev/null; then
    not_run fuzz "no clang (scripts/deps.sh --test installs it)"
  elif run fuzz bash -c "cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOONGATE_FUZZ=ON -DMOONGATE_TESTS=OFF && cmake --build build-fuzz -j$JOBS --target fuzz"; then
    fz_secs=${MOONGATE_FUZZ_SECONDS:-10}
    fz_pass=0 fz_fail=0 fz_note=""
    mkdir -p build-fuzz/artifacts
    for fz_src in spec/fuzz/fuzz_*.c; do
      fz_name=$(basename "$fz_src" .c)
      fz_seeds="spec/fuzz/${fz_name#fuzz_}"
      fz_dir="$LOGDIR/corpus-$fz_name"
      mkdir -p "$fz_dir"
      fz_rc=0
      "build-fuzz/$fz_name" -max_total_time="$fz_secs" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="build-fuzz/artifacts/$fz_name-" "$fz_dir" "$fz_seeds" \
        > "$LOGDIR/$fz_name.log" 2>&1 || fz_rc=$?
      if ((fz_rc == 0)); then
        fz_pass=$((fz_pass + 1))
        say "[fuzz] ok $fz_name: $(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$LOGDIR/$fz_name.log" | tail -n1)"
      else
        fz_fail=$((fz_fail + 1))
        fz_note="${fz_note:+$fz_note; }$fz_name exit $fz_rc"
        say "[fuzz] not ok $fz_name (exit $fz_rc):"
        tail -n 40 "$LOGDIR/$fz_name.log" | sed "s/^/[fuzz]   /"
      fi
    done
    record fuzz "$fz_pass" "$fz_fail" "$fz_note"
  else
    record fuzz 0 1 "build-fuzz failed"
  fi
else
  skipped fuzz
fi

# --- summary ----------------------------------------------------------------
say ""
say "== summary =="
for line in "${SUMMARY[@]}"; do say "$line"; done
say "$TOTAL_PASSED passed, $TOTAL_FAILED failed"
((TOTAL_FAILED == 0))
