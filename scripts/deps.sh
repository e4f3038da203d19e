#!/usr/bin/env bash
# Installs the Debian packages moongate's build and tests need.
#   scripts/deps.sh          build + unit/integration test dependencies
#   scripts/deps.sh --test   also the tools of the full test run (sanitizers,
#                            benchmarks, cluster tests)
# Idempotent: does nothing (not even apt-get update) when all are installed.
set -euo pipefail

pkgs=(cmake pkg-config gcc make luajit libluajit-5.1-dev libuv1-dev node-llhttp
      lua-cjson lua-cjson-dev libmbedtls-dev libcurl4-openssl-dev libpcre2-dev
      lua-busted lua-socket lua-posix curl)

test=0
for arg in "$@"; do
  case "$arg" in
    --test) test=1; pkgs+=(redis-server wrk nginx clang libclang-rt-14-dev valgrind) ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "deps.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

# The SDK specs run the official npm clients on node: Debian's nodejs and npm
# unless a node is already on the PATH.
if ((test)) && ! { command -v node && command -v npm; } > /dev/null; then
  pkgs+=(nodejs npm)
fi

# spec/sdk/node_modules from the committed lock file, when missing or older.
install_sdks() {
  local sdk root
  root=$(cd "$(dirname "$0")/.." && pwd)
  sdk="$root/spec/sdk"
  if [[ ! -d "$sdk/node_modules" || "$sdk/package-lock.json" -nt "$sdk/node_modules" ]]; then
    echo "deps: npm ci in spec/sdk"
    npm ci --prefix "$sdk" --no-audit --no-fund
    touch "$sdk/node_modules"
  fi
}

# examples/kubernetes/validate/node_modules (the Kubernetes schema validator of
# examples/check.sh) from its committed lock file, when missing or older.
install_k8s_validator() {
  local dir
  dir="$(cd "$(dirname "$0")/.." && pwd)/examples/kubernetes/validate"
  if [[ ! -d "$dir/node_modules" || "$dir/package-lock.json" -nt "$dir/node_modules" ]]; then
    echo "deps: npm ci in examples/kubernetes/validate"
    npm ci --prefix "$dir" --no-audit --no-fund
    touch "$dir/node_modules"
  fi
}

missing=()
for p in "${pkgs[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  echo "deps: all ${#pkgs[@]} packages installed"
  if ((test)); then install_sdks; install_k8s_validator; fi
  exit 0
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); fi

echo "deps: installing ${missing[*]}"
"${sudo[@]}" apt-get update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
if ((test)); then install_sdks; install_k8s_validator; fi
