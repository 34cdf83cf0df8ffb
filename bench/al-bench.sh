#!/usr/bin/env bash
# Activity log on / off (issue 4): bench/repl-bench.sh twice over the same five configurations, once in the
# listed order and once reversed, and the two runs pooled.
#
#   bash tools/install-deps.sh && make build && bash bench/al-bench.sh      (make bench-al)
#
# Environment: REPEATS runs per cell and order (default 5); RUNTIME, RAMP, WARMUP as in repl-bench.sh.
#
# Why two orders: repl-bench.sh starts every configuration once and keeps it for the whole run. Two identical
# pairs differ by about 10% for the whole run by their place in the list (CONFIGS="async-pair async-pair-twin":
# the second 1.10x the first at QD32). With the async pair listed before the one without the log, log on / off
# came out 0.82x-1.03x in seven runs on 2 cores; with the two swapped, 1.01x-1.20x in three. Rotating the measurement order inside a run did not remove
# that, so each configuration is measured once early and once late in the list, and the cells pool both runs.
# Reports: bench/results/al-bench-fwd.{md,tsv}, al-bench-rev.{md,tsv} (each run alone) and al-bench-latest.md.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
RESULTS_DIR="$REPO/bench/results"
FWD="async-pair async-pair-nolog sync-pair sync-pair-nolog async-pair-log64"
REV="async-pair-log64 sync-pair-nolog sync-pair async-pair-nolog async-pair"
# One transport (the unix socket) and no GC run: the comparison is log on / off, as before transports existed.
export SEQ=0 WIRE=0 GCRUN=0 TRANSPORTS=unix REPEATS="${REPEATS:-5}"

echo "al-bench: run 1 of 2, configurations in order: $FWD" >&2
CONFIGS="$FWD" OUT_NAME=al-bench-fwd bash bench/repl-bench.sh
echo "al-bench: run 2 of 2, configurations reversed: $REV" >&2
CONFIGS="$REV" OUT_NAME=al-bench-rev bash bench/repl-bench.sh

/usr/bin/python3 - "$RESULTS_DIR" "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')" <<'PY'
import csv, statistics, sys, time
results, rev = sys.argv[1:3]
runs = {}
for order in ("fwd", "rev"):
    with open(f"{results}/al-bench-{order}.tsv") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            try:
                iops = float(row["iops"])
            except (TypeError, ValueError):
                continue
            runs.setdefault((row["config"], row["job"], order), []).append(iops)

def med(c, j, orders=("fwd", "rev")):
    vals = [x for o in orders for x in runs.get((c, j, o), [])]
    return statistics.median(vals) if vals else None

jobs = ["4k-randwrite-qd1", "4k-randwrite-qd32"]
cfgs = ["async-pair", "async-pair-nolog", "sync-pair", "sync-pair-nolog", "async-pair-log64"]
names = {"async-pair": "async, log on", "async-pair-nolog": "async, log off", "sync-pair": "sync, log on",
         "sync-pair-nolog": "sync, log off", "async-pair-log64": "async, 64-extent log"}
fmt = lambda v: "n/a" if v is None else f"{v:,.0f}"
out = ["# Activity log on / off", "",
       f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; blockrepl {rev}",
       "- two runs of bench/repl-bench.sh (method in al-bench-fwd.md): configurations in the listed order, then reversed; "
       "IOPS are medians of each run's runs and of both pooled", "",
       "| job | configuration | IOPS, listed order | IOPS, reversed | IOPS, pooled |", "|---|---|---:|---:|---:|"]
for j in jobs:
    for c in cfgs:
        out.append(f"| {j} | {names[c]} | {fmt(med(c, j, ('fwd',)))} | {fmt(med(c, j, ('rev',)))} | {fmt(med(c, j))} |")
out += ["", "| ratio | job | listed order | reversed | pooled | target | |", "|---|---|---:|---:|---:|---:|---|"]
for on, off, label in (("async-pair", "async-pair-nolog", "async pair: log on / off"), ("sync-pair", "sync-pair-nolog", "sync pair: log on / off"),
                       ("async-pair-log64", "async-pair-nolog", "async pair: 64-extent log / log off")):
    for j in jobs:
        r = []
        for orders in (("fwd",), ("rev",), ("fwd", "rev")):
            a, b = med(on, j, orders), med(off, j, orders)
            r.append(None if a is None or b is None or b == 0 else a / b)
        cell = lambda v: "n/a" if v is None else f"{v:.2f}x"
        targeted = on != "async-pair-log64" and j == "4k-randwrite-qd32"
        verdict = "for information" if not targeted else ("n/a" if r[2] is None else ("met" if r[2] >= 0.9 else "MISSED"))
        out.append(f"| {label} | {j} | {cell(r[0])} | {cell(r[1])} | {cell(r[2])} | {'>= 0.9x' if targeted else '-'} | {verdict} |")
open(f"{results}/al-bench-latest.md", "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
echo "al-bench: report written to bench/results/al-bench-latest.md" >&2
