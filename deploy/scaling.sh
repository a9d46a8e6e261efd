#!/usr/bin/env bash
# How a sweep's wall time grows: with seeds, jobs, cluster size and workload
# size, and what merging 100 shard reports costs. Prints markdown rows of
# `wall seconds` per configuration; docs/sweeps.md holds one run's output.
# Usage: deploy/scaling.sh [OUT_DIR]   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
unset RUSTFLAGS
out=${1:-$(mktemp -d)}
mkdir -p "$out"
cargo build --release --locked -p ringfence-sim >/dev/null 2>&1
sim=target/release/ringfence-sim

# One sweep: prints "| label | seeds | ops | failures | wall s | cpu s | seeds/s |".
# CPU seconds (user + system) are what a shared machine does not distort.
row() {
  local label=$1; shift
  local report="$out/row.json" times="$out/row.time"
  /usr/bin/time -o "$times" -f "%e %U %S" \
    "$sim" sweep --no-progress --out "$report" "$@" >/dev/null || true
  python3 - "$label" "$times" "$report" <<'PY'
import json, sys
label, times, path = sys.argv[1:]
wall, user, system = (float(x) for x in open(times).read().split()[-3:])
report = json.load(open(path))
seeds = sum(s["seeds"] for s in report["summaries"])
fails = sum(len(s["failures"]) for s in report["summaries"])
ops = sum(s["ops"] for s in report["summaries"])
print(f"| {label} | {seeds} | {ops} | {fails} | {wall:.2f} | {user + system:.2f} | {seeds / wall:.1f} |", flush=True)
PY
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
echo
echo "| sweep | seeds | ops | failures | wall s | cpu s | seeds/s |"
echo "|---|---|---|---|---|---|---|"
for n in 250 500 1000 2000; do row "log, seeds 0..$n, -j 2" -s log --seeds "0..$n" -j 2; done
for j in 1 2; do row "log, seeds 0..1000, -j $j" -s log --seeds 0..1000 -j "$j"; done
for servers in 3 5 7; do row "log --servers $servers, seeds 0..500" -s log --servers "$servers" --seeds 0..500 -j 2; done
row "log-5, seeds 0..500" -s log-5 --seeds 0..500 -j 2
for ops in 15 30 60 120; do row "log --ops $ops, seeds 0..500" -s log --ops "$ops" --seeds 0..500 -j 2; done
for clients in 1 2 4 8; do row "log --clients $clients, seeds 0..500" -s log --clients "$clients" --seeds 0..500 -j 2; done

# 100 shard reports of one sweep, then the merge alone.
shards="$out/shards"
rm -rf "$shards"; mkdir -p "$shards"
start=$(date +%s.%N)
for i in $(seq 1 100); do
  "$sim" sweep -s counter --seeds 0..100000 --shard "$i/100" -j 2 --no-progress \
    --out "$shards/shard-$i.json" >/dev/null || true
done
end=$(date +%s.%N)
echo
echo "100 shards of \`sweep -s counter --seeds 0..100000\` run one after another: $(python3 -c "print(f'{$end - $start:.1f}')") s;" \
  "reports $(du -sh "$shards" | cut -f1)"
for _ in 1 2 3; do
  start=$(date +%s.%N)
  "$sim" merge "$shards" --out "$out/merged.json" >"$out/merged.txt" || true
  end=$(date +%s.%N)
  echo "merge of the 100 reports: $(python3 -c "print(f'{$end - $start:.2f}')") s"
done
head -3 "$out/merged.txt"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
