#!/usr/bin/env bash
# Installs what moongate needs (Debian 12), builds it, and runs it:
#   scripts/run.sh                       the default config/gateway.lua
#   scripts/run.sh -c my/gateway.lua     any other config
# With no OPENAI_API_KEY in the environment the default config answers from
# the built-in mock provider, so this works offline.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/deps.sh"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
cmake --build "$root/build" -j"$(nproc)"
cd "$root"
if [[ $# -eq 0 ]]; then set -- -c config/gateway.lua; fi
exec "$root/build/moongate" "$@"
