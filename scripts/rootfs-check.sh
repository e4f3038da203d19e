#!/usr/bin/env bash
# rootfs-check.sh — the Dockerfile, run without Docker: each stage in a fresh debootstrap root.
# Not part of CI (it needs root, debootstrap and the Debian archive, and takes a few minutes);
# docs/deploy.md says what it verifies and what it cannot.
#
#   sudo scripts/rootfs-check.sh [--keep] [--workdir DIR] [--mirror URL] [--source DIR]
#
#   --source    the build context: the Dockerfile and the files it copies (default: this
#               checkout; e.g. a `git archive` of a commit, to check what was committed)
#   --keep      leave the roots (DIR/build, DIR/runtime) and logs for inspection
#   --workdir   where the roots go (default /var/tmp/moongate-rootfs; emptied first)
#   --mirror    the Debian mirror for debootstrap (default: the first URIs of this machine's
#               /etc/apt/sources.list.d/debian.sources, whose sources the roots also get)
#
# Steps, each printed; the first failure stops the run with a non-zero exit:
#  1. debootstrap --variant=minbase bookworm into DIR/build and DIR/runtime (the nearest thing
#     to debian:bookworm-slim that debootstrap makes).
#  2. The Dockerfile read instruction by instruction: RUN runs as /bin/sh -c in the stage's root
#     (chroot, in WORKDIR); COPY copies from the source tree, or with --from=build out of the
#     build root; ARG, FROM, WORKDIR, USER, HEALTHCHECK, ENTRYPOINT and CMD are honoured;
#     VOLUME, EXPOSE and STOPSIGNAL are checked below. An instruction it does not know stops it.
#  3. In the runtime root, inside a network namespace of its own (so 0.0.0.0:8080 and :9901 are
#     the namespace's, not this machine's): ldd finds every library; `moongate version`;
#     `moongate check` on the image's config and on one with a PCRE2 expression (loads
#     libpcre2-8 through the FFI); then ENTRYPOINT + CMD started as USER in WORKDIR, the
#     HEALTHCHECK command run as USER until it passes, GET /ready, a chat completion answered by
#     the mock provider on the EXPOSEd port, a file written to the VOLUME as USER, the process's
#     uid, SIGTERM (the STOPSIGNAL) and exit status 0.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$ROOT/scripts/rootfs-check.sh"
DOCKERFILE="$ROOT/Dockerfile"
WORK=/var/tmp/moongate-rootfs
MIRROR=""
KEEP=0
SUITE=bookworm

say() { printf '[rootfs-check] %s\n' "$*"; }
die() { printf '[rootfs-check] FAILED: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------------------------------
# Step 3, run by this script itself inside `unshare --net` (see run_checks below):
#   rootfs-check.sh --inside-netns RUNTIME_ROOT LOGDIR USER WORKDIR HEALTHCMD... -- ARGV...
# ------------------------------------------------------------------------------------------
if [[ "${1:-}" == "--inside-netns" ]]; then
  shift
  rt=$1 logdir=$2 user=$3 workdir=$4
  shift 4
  health=()
  while [[ $# -gt 0 && "$1" != "--" ]]; do health+=("$1"); shift; done
  shift
  argv=("$@")
  ENVS=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/var/lib/moongate)
  as_user() { chroot --userspec="$user" "$rt" "${ENVS[@]}" "$@"; }

  ip link set lo up

  say "ldd /usr/local/bin/moongate"
  chroot "$rt" ldd /usr/local/bin/moongate | tee "$logdir/ldd.txt"
  if grep -q "not found" "$logdir/ldd.txt"; then die "a shared library is missing"; fi

  say "moongate version"
  as_user /usr/local/bin/moongate version

  say "moongate check -c /etc/moongate/gateway.lua"
  out=$(as_user /usr/local/bin/moongate check -c /etc/moongate/gateway.lua) || die "check: $out"
  [[ "$out" == "ok" ]] || die "check said: $out"

  say "moongate check on a config with a PCRE2 expression (libpcre2-8 through the FFI)"
  cat > "$rt/tmp/pcre2.lua" <<'LUA'
providers = { mock = { type = "mock" } }
backends = { b = { provider = "mock" } }
routes = { { match = { when = "request.path.matches('^/v1/(chat|messages)')" }, backend = "b" } }
LUA
  chmod 0644 "$rt/tmp/pcre2.lua"
  out=$(as_user /usr/local/bin/moongate check -c /tmp/pcre2.lua) || die "check (PCRE2): $out"
  [[ "$out" == "ok" ]] || die "check (PCRE2) said: $out"
  cat > "$rt/tmp/pcre2-bad.lua" <<'LUA'
providers = { mock = { type = "mock" } }
backends = { b = { provider = "mock" } }
routes = { { match = { when = "request.path.matches('(')" }, backend = "b" } }
LUA
  chmod 0644 "$rt/tmp/pcre2-bad.lua"
  out=$(as_user /usr/local/bin/moongate check -c /tmp/pcre2-bad.lua || true)
  [[ "$out" == *"missing closing parenthesis"* ]] || die "PCRE2 did not compile the pattern: $out"

  say "start: ${argv[*]} (as $user, in $workdir)"
  chroot --userspec="$user" "$rt" "${ENVS[@]}" /bin/sh -c 'cd "$0" && exec "$@"' "$workdir" "${argv[@]}" \
    > "$logdir/moongate.log" 2>&1 &
  pid=$!
  stop() { kill -TERM "$pid" 2>/dev/null || true; }
  trap stop EXIT

  say "HEALTHCHECK: ${health[*]}"
  ok=0
  for _ in $(seq 1 100); do
    if timeout 3 chroot --userspec="$user" "$rt" "${ENVS[@]}" "${health[@]}" 2>/dev/null; then ok=1; break; fi
    kill -0 "$pid" 2>/dev/null || { cat "$logdir/moongate.log"; die "moongate exited before it was healthy"; }
    sleep 0.1
  done
  ((ok)) || { cat "$logdir/moongate.log"; die "the HEALTHCHECK did not pass within 10 s"; }

  say "GET /ready"
  as_user curl -fsS --max-time 5 http://127.0.0.1:9901/ready; echo
  say "GET /health"
  as_user curl -fsS --max-time 5 http://127.0.0.1:9901/health; echo

  say "POST /v1/chat/completions on :8080 (the mock provider: no OPENAI_API_KEY)"
  body=$(as_user curl -fsS --max-time 10 http://127.0.0.1:8080/v1/chat/completions \
    -H 'content-type: application/json' \
    -d '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}')
  echo "$body"
  [[ "$body" == *'"chat.completion"'* ]] || die "not a chat completion"

  say "GET /metrics counts it"
  as_user curl -fsS --max-time 5 http://127.0.0.1:9901/metrics | grep '^moongate_requests_total' \
    || die "no moongate_requests_total"

  say "the process runs as $user"
  uid=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")
  [[ "$uid" == "${user%%:*}" ]] || die "uid is $uid"

  say "the VOLUME (/var/lib/moongate) is writable by $user"
  as_user /bin/sh -c 'echo probe > /var/lib/moongate/.rootfs-check && rm /var/lib/moongate/.rootfs-check'

  say "SIGTERM: exits 0"
  trap - EXIT
  kill -TERM "$pid"
  rc=0
  for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; die "did not stop within 20 s of SIGTERM"; fi
  wait "$pid" || rc=$?
  tail -n 5 "$logdir/moongate.log"
  ((rc == 0)) || die "exit status $rc after SIGTERM"
  exit 0
fi

# ------------------------------------------------------------------------------------------
# arguments, prerequisites
# ------------------------------------------------------------------------------------------
while [[ $# -gt 0 ]]; do
  case "$1" in
    --keep) KEEP=1 ;;
    --workdir) WORK=$2; shift ;;
    --mirror) MIRROR=$2; shift ;;
    --source) ROOT=$(cd "$2" && pwd); DOCKERFILE="$ROOT/Dockerfile"; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
  shift
done

[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap, chroot, unshare)"
for tool in debootstrap chroot unshare ip; do
  command -v "$tool" > /dev/null || die "$tool is missing (apt-get install debootstrap iproute2)"
done
[[ -f "$DOCKERFILE" ]] || die "no Dockerfile at $DOCKERFILE"
say "build context: $ROOT"

HOST_SOURCES=/etc/apt/sources.list.d/debian.sources
if [[ -z "$MIRROR" && -f "$HOST_SOURCES" ]]; then
  MIRROR=$(awk '/^URIs:/ { print $2; exit }' "$HOST_SOURCES")
fi
[[ -n "$MIRROR" ]] || die "no Debian mirror: pass --mirror URL"

case "$WORK" in
  /|/usr|/usr/*|/etc|/etc/*|/bin|/sbin|/lib*|/boot|/home|/root|/proc*|/sys*|/dev*) die "refusing --workdir $WORK" ;;
esac
LOGDIR="$WORK/logs"

# ------------------------------------------------------------------------------------------
# roots
# ------------------------------------------------------------------------------------------
mounted=()
cleanup() {
  local m
  for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null || true; done
  if ((KEEP == 0)) && [[ -d "$WORK" ]]; then
    if findmnt -rn -o TARGET | grep -q "^$WORK/"; then
      say "something is still mounted under $WORK: not removing it"
    else
      rm -rf --one-file-system "$WORK"
    fi
  else
    say "kept $WORK (roots and logs)"
  fi
}
trap cleanup EXIT

make_root() {
  local dir=$1
  say "debootstrap --variant=minbase $SUITE $dir $MIRROR"
  debootstrap --variant=minbase "$SUITE" "$dir" "$MIRROR" > "$LOGDIR/debootstrap-$(basename "$dir").log" 2>&1 \
    || { tail -n 20 "$LOGDIR/debootstrap-$(basename "$dir").log"; die "debootstrap failed"; }
  # the image's sources: the suite, its updates and security (as this Debian 12 machine has them)
  if [[ -f "$HOST_SOURCES" ]]; then
    cp "$HOST_SOURCES" "$dir/etc/apt/sources.list.d/debian.sources"
    rm -f "$dir/etc/apt/sources.list"
  fi
  cp /etc/resolv.conf "$dir/etc/resolv.conf"
  mount -t proc proc "$dir/proc"
  mounted+=("$dir/proc")
}

if [[ -d "$WORK" ]]; then
  findmnt -rn -o TARGET | grep -q "^$WORK/" && die "something is mounted under $WORK"
  rm -rf --one-file-system "$WORK"
fi
mkdir -p "$LOGDIR"

# ------------------------------------------------------------------------------------------
# the Dockerfile, instruction by instruction
# ------------------------------------------------------------------------------------------
declare -A ARGS=()
declare -A STAGE_ROOT=()
stage="" root="" workdir="/" user="root"
HEALTH=() ENTRY=() CMDV=() VOLUMES="" EXPOSED="" STOPSIG="SIGTERM"

# A JSON array of plain strings (no escapes), as this Dockerfile writes them, into JSON_OUT.
json_array() {
  local s=$1
  JSON_OUT=()
  [[ "$s" =~ ^\[(.*)\]$ ]] || die "expected a JSON array: $s"
  s=${BASH_REMATCH[1]}
  while [[ "$s" =~ ^[[:space:]]*\"([^\"\\]*)\"[[:space:]]*,?(.*)$ ]]; do
    JSON_OUT+=("${BASH_REMATCH[1]}")
    s=${BASH_REMATCH[2]}
  done
  [[ -z "${s//[[:space:]]/}" ]] || die "cannot read this JSON array: $1"
}

expand_args() {
  local s=$1 k
  for k in "${!ARGS[@]}"; do s=${s//\$\{$k\}/${ARGS[$k]}}; s=${s//\$$k/${ARGS[$k]}}; done
  printf '%s' "$s"
}

do_copy() {
  local from="" srcs=() dst
  local words
  read -r -a words <<< "$1"
  if [[ "${words[0]}" == --from=* ]]; then from=${words[0]#--from=}; words=("${words[@]:1}"); fi
  dst=${words[-1]}
  srcs=("${words[@]:0:${#words[@]}-1}")
  [[ "$dst" == /* ]] || dst="${workdir%/}/$dst"
  local base="$ROOT"
  if [[ -n "$from" ]]; then
    base=${STAGE_ROOT[$from]:-}
    [[ -n "$base" ]] || die "COPY --from=$from: no such stage"
  fi
  local s
  for s in "${srcs[@]}"; do
    local src="$base/${s#/}"
    [[ -e "$src" ]] || die "COPY: $s not found"
    if [[ -d "$src" ]]; then
      mkdir -p "$root$dst"
      cp -R --preserve=mode,timestamps "$src/." "$root$dst/"
    elif [[ "$dst" == */ ]]; then
      mkdir -p "$root$dst"
      cp --preserve=mode,timestamps "$src" "$root$dst"
    else
      mkdir -p "$(dirname "$root$dst")"
      cp --preserve=mode,timestamps "$src" "$root$dst"
    fi
    chown -R 0:0 "$root$dst"
  done
}

n=0
buf=""
while IFS= read -r line || [[ -n "$line" ]]; do
  if [[ -z "$buf" ]]; then
    [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
  fi
  if [[ "$line" == *\\ ]]; then buf+="${line%\\} "; continue; fi
  buf+="$line"
  instr=${buf%%[[:space:]]*}
  rest=${buf#"$instr"}
  rest=${rest#"${rest%%[![:space:]]*}"}
  buf=""
  n=$((n + 1))
  case "${instr^^}" in
    ARG)
      name=${rest%%=*}
      ARGS[$name]=${rest#*=}
      ;;
    FROM)
      rest=$(expand_args "$rest")
      image=${rest%%[[:space:]]*}
      stage=${rest##*[[:space:]][Aa][Ss][[:space:]]}
      [[ "$image" == "debian:bookworm-slim" ]] || die "FROM $image: only debian:bookworm-slim is reproduced"
      root="$WORK/$stage"
      STAGE_ROOT[$stage]=$root
      workdir="/" user="root"
      say "== stage $stage (FROM $image)"
      make_root "$root"
      ;;
    RUN)
      say "RUN (in $stage, $workdir): ${rest:0:100}$([[ ${#rest} -gt 100 ]] && echo ...)"
      log="$LOGDIR/$stage-run-$n.log"
      if ! chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
             HOME=/root /bin/sh -c "cd '$workdir' && $rest" > "$log" 2>&1; then
        tail -n 30 "$log"
        die "RUN failed (log: $log)"
      fi
      tail -n 3 "$log" | sed 's/^/    /'
      ;;
    COPY)
      say "COPY $rest"
      do_copy "$rest"
      ;;
    WORKDIR)
      [[ "$rest" == /* ]] || rest="${workdir%/}/$rest"
      workdir=$rest
      mkdir -p "$root$workdir"
      ;;
    USER) user=$rest ;;
    VOLUME) VOLUMES=$rest ;;
    EXPOSE) EXPOSED=$rest ;;
    STOPSIGNAL) STOPSIG=$rest ;;
    HEALTHCHECK)
      [[ "$rest" == *CMD* ]] || die "HEALTHCHECK without CMD"
      json_array "${rest#*CMD }"
      HEALTH=("${JSON_OUT[@]}")
      ;;
    ENTRYPOINT) json_array "$rest"; ENTRY=("${JSON_OUT[@]}") ;;
    CMD) json_array "$rest"; CMDV=("${JSON_OUT[@]}") ;;
    *) die "line $n: $instr is not reproduced by this script" ;;
  esac
done < "$DOCKERFILE"

[[ "$stage" == "runtime" ]] || die "the last stage is \"$stage\", not runtime"
[[ ${#HEALTH[@]} -gt 0 ]] || die "no HEALTHCHECK"
[[ "$STOPSIG" == "SIGTERM" ]] || die "STOPSIGNAL $STOPSIG: this script sends SIGTERM"
[[ "$VOLUMES" == *"/var/lib/moongate"* ]] || die "VOLUME is $VOLUMES, not /var/lib/moongate"
[[ "$EXPOSED" == *8080* && "$EXPOSED" == *9901* ]] || die "EXPOSE is $EXPOSED"
[[ "$user" != "root" && "$user" != "0" && "$user" != 0:* ]] || die "the runtime stage runs as root"

say "== the runtime root: $(du -sh "$root" | cut -f1) (debootstrap minbase + the RUN steps)"
say "== step 3, in a private network namespace"
unshare --net -- "$SELF" --inside-netns "$root" "$LOGDIR" "$user" "$workdir" "${HEALTH[@]}" -- \
  "${ENTRY[@]}" "${CMDV[@]}"
say "all checks passed"
