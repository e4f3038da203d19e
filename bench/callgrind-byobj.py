#!/usr/bin/env python3
"""Self cost (instructions) per ELF object of a callgrind output file.

    bench/callgrind-byobj.py bench/results/callgrind-<stamp>.out [requests]

With the number of requests the run counted (bench/callgrind.sh prints it),
each object's share is also given per request. This is how README's
"where a request's instructions go" split was made: LuaJIT's library, its
compiled traces (no object: JIT code lives in anonymous mappings), moongate's
own C, libc, libuv and the rest. Never run in CI.
"""
import re
import sys


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    path = sys.argv[1]
    requests = float(sys.argv[2]) if len(sys.argv) > 2 else None
    names = {}            # "(id)" -> object name (callgrind compresses repeated names)
    cost = {}
    ob = "?"
    after_calls = False   # the line after calls= is the call's inclusive cost, not self cost
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("ob=") or line.startswith("cob="):
                # ob= and cob= share one table of compressed names: either may define one
                m = re.match(r"c?ob=(\(\d+\))?\s*(.*)", line.rstrip("\n"))
                ident, name = m.group(1), m.group(2)
                if ident and name:
                    names[ident] = name
                if line.startswith("ob="):
                    ob = name or names.get(ident, ident or "?")
                continue
            if line.startswith("calls="):
                after_calls = True
                continue
            c = line[:1]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                if len(parts) >= 2 and not after_calls:
                    try:
                        cost[ob] = cost.get(ob, 0) + int(parts[1])
                    except ValueError:
                        pass
                after_calls = False
    total = sum(cost.values()) or 1
    print("%-60s %14s %6s%s" % ("object", "instructions", "share", "  per request" if requests else ""))
    for name, n in sorted(cost.items(), key=lambda kv: -kv[1]):
        if n * 1000 < total:
            continue
        extra = "  %10.0f" % (n / requests) if requests else ""
        print("%-60s %14d %5.1f%%%s" % (name[-60:], n, 100.0 * n / total, extra))
    print("%-60s %14d" % ("total", total))


if __name__ == "__main__":
    main()
