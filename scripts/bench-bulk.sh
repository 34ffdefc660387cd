#!/usr/bin/env bash
# Bulk throughput of `keyward encrypt` / `keyward decrypt` on a 1 GiB file,
# against `age` (Debian package) and raw in-process AES-256-GCM (ring), in
# one run on this machine. Prints a Markdown table for docs/BENCHMARKS.md.
#
#   bash scripts/bench-bulk.sh            # installs age, hyperfine, time if missing
#   BENCH_DIR=/some/dir bash scripts/bench-bulk.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for tool in age hyperfine /usr/bin/time; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$(basename "$tool")")
done
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --release -q -p keyward
cargo build --release -q -p keyward-kms --example gcm_baseline
bin=$PWD/target/release/keyward
dir=${BENCH_DIR:-$(mktemp -d)}
trap '[[ -z ${BENCH_DIR:-} ]] && rm -rf "$dir"' EXIT
cd "$dir"

head -c 1G /dev/urandom > input.bin
export KEYWARD_STORE=$dir/keystore.db
"$bin" init --recovery-key-out recovery.txt >/dev/null
export KEYWARD_RECOVERY_KEY
KEYWARD_RECOVERY_KEY=$(cat recovery.txt)
"$bin" key create bulk >/dev/null
age-keygen -o age.key 2>/dev/null
recipient=$(age-keygen -y age.key)

runs=${RUNS:-5}
hyperfine -N --warmup 1 --runs "$runs" --export-json hf.json \
  -n "keyward encrypt" "$bin encrypt --key bulk -i input.bin -o out.kw" \
  -n "age encrypt" "age -r $recipient -o out.age input.bin" >/dev/null
"$bin" encrypt --key bulk -i input.bin -o out.kw
age -r "$recipient" -o out.age input.bin
hyperfine -N --warmup 1 --runs "$runs" --export-json hf-dec.json \
  -n "keyward decrypt" "$bin decrypt -i out.kw -o plain.kw" \
  -n "age decrypt" "age -d -i age.key -o plain.age out.age" >/dev/null
cmp input.bin plain.kw
cmp input.bin plain.age

rss() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -n1; }
rss_enc=$(rss "$bin" encrypt --key bulk -i input.bin -o out2.kw)
rss_dec=$(rss "$bin" decrypt -i out.kw -o plain2.kw)
raw=$(cd - >/dev/null && ./target/release/examples/gcm_baseline)

python3 - "$runs" "$rss_enc" "$rss_dec" "$raw" <<'PY'
import json, sys
runs, rss_enc, rss_dec, raw = sys.argv[1:]
gib = 1 << 30
rows = {}
for f in ("hf.json", "hf-dec.json"):
    for r in json.load(open(f))["results"]:
        rows[r["command"]] = r
def gbs(name): return gib / rows[name]["median"] / 1e9
raw_gbs = float(raw.split(":")[1].split()[0])
print(f"| operation (1 GiB file, median of {runs}) | keyward | age | keyward / age | keyward / raw GCM (1 core) |")
print("|---|---|---|---|---|")
for op in ("encrypt", "decrypt"):
    k, a = gbs(f"keyward {op}"), gbs(f"age {op}")
    print(f"| {op} | {k:.2f} GB/s ({rows[f'keyward {op}']['median']:.3f} s) | {a:.2f} GB/s ({rows[f'age {op}']['median']:.3f} s) | {k/a:.2f}x | {k/raw_gbs:.2f} |")
print()
print(f"raw in-process AES-256-GCM (ring, 1 core): {raw_gbs:.2f} GB/s")
print(f"peak RSS: keyward encrypt {int(rss_enc)//1024} MiB, decrypt {int(rss_dec)//1024} MiB")
PY
