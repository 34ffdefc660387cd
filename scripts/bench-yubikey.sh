#!/usr/bin/env bash
# One-shot unlock + decrypt through a YubiKey (the PIV simulator behind a
# private pcscd + vpcd), against yubico-piv-tool doing a single ECDH in a
# fresh process: `keyward decrypt` of a small ciphertext in a new process
# (open the keystore, find the card by serial, check the slot key, VERIFY,
# ECDH, decrypt, write the audit records) against one
# `yubico-piv-tool -a verify-pin -a test-decipher` on the same slot. Both
# timed with `hyperfine -N`; prints Markdown for docs/BENCHMARKS.md.
# Takes the machine-wide pcscd lock (/tmp/keyward-pcscd.lock) like the tests.
#
#   bash scripts/bench-yubikey.sh                  # release build
#   PROFILE=debug RUNS=30 bash scripts/bench-yubikey.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
profile=${PROFILE:-release}
runs=${RUNS:-100}
if [[ $profile == release ]]; then
  cargo build --release -q -p keyward -p keyward-hw-mocks --bin keyward --bin keyward-piv-sim
else
  cargo build -q -p keyward -p keyward-hw-mocks --bin keyward --bin keyward-piv-sim
fi
bin=$ROOT/target/$profile/keyward
sim=$ROOT/target/$profile/keyward-piv-sim

exec 9>/tmp/keyward-pcscd.lock
flock 9
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; sleep 0.3; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
cd "$dir"
mkdir conf
printf 'FRIENDLYNAME "Virtual PCD"\nDEVICENAME /dev/null:0x8C7B\nLIBPATH /usr/lib/pcsc/drivers/serial/libifdvpcd.so\nCHANNELID 0x8C7B\n' > conf/vpcd
"$sim" --serial 12345678 --state "$dir/card.json" >sim.log 2>&1 &
pids+=($!)
pcscd --foreground --config "$dir/conf" >pcscd.log 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  yubico-piv-tool -r "Virtual PCD" -a status >/dev/null 2>&1 && break
  sleep 0.1
done

pin=24681357
export KEYWARD_STORE=$dir/ks.db HOME=$dir
"$bin" init --recovery-key-out rk >/dev/null
KEYWARD_PIN=$pin KEYWARD_PUK=86427531 "$bin" yubikey setup >/dev/null
KEYWARD_PIN=$pin KEYWARD_RECOVERY_KEY=$(cat rk) "$bin" enroll yubikey --serial 12345678 >/dev/null
KEYWARD_PIN=$pin "$bin" key create notes >/dev/null
head -c 1024 /dev/urandom > small.bin
KEYWARD_PIN=$pin "$bin" encrypt --key notes -i small.bin -o small.kw
yubico-piv-tool -r "Virtual PCD" -a read-certificate -s 82 -o cert.pem
yubico-piv-tool -r "Virtual PCD" -a verify-pin -P $pin -a test-decipher -s 82 -i cert.pem 2>&1 |
  grep -q "Successfully performed ECDH"

KEYWARD_PIN=$pin hyperfine -N --warmup 5 --runs "$runs" --style none --export-json yk.json \
  -n "keyward decrypt (YubiKey)" "$bin --with yubikey decrypt -i small.kw -o /dev/null" \
  -n "yubico-piv-tool test-decipher" \
  "yubico-piv-tool -r Virtual -a verify-pin -P $pin -a test-decipher -s 82 -i cert.pem" >/dev/null

python3 - "$runs" "$profile" <<'PY'
import json, sys
runs, profile = sys.argv[1], sys.argv[2]
rows = {r["command"]: r for r in json.load(open("yk.json"))["results"]}
ms = lambda n: rows[n]["median"] * 1e3
cell = lambda n: f"{rows[n]['median']*1e3:.2f} ms (σ {rows[n]['stddev']*1e3:.2f})"
ours, theirs = "keyward decrypt (YubiKey)", "yubico-piv-tool test-decipher"
print(f"| one-shot in a fresh process (median of {runs}, hyperfine -N, {profile} build) | keyward | native tool | keyward / native |")
print("|---|---|---|---|")
print(f"| YubiKey (PIV simulator via pcscd + vpcd): `keyward decrypt` with the PIN vs one "
      f"`yubico-piv-tool -a verify-pin -a test-decipher` | {cell(ours)} | {cell(theirs)} | "
      f"{ms(ours)/ms(theirs):.2f}x |")
PY
