#!/usr/bin/env bash
# One-shot unlock + decrypt through hardware, against the devices' own
# tools doing a single operation in a fresh process (docs/DESIGN.md, performance
# targets): `keyward decrypt` of a small ciphertext in a new process (open
# the keystore, unlock with the TPM or token PIN, decrypt, write the audit
# records) against
#   (a) one `tpm2_unseal` of a PIN-protected sealed object on the same swtpm;
#   (b) one `pkcs11-tool --sign` (ECDSA P-256) on the same SoftHSM2 token.
# Both timed with `hyperfine -N` (no shell) in one run; prints Markdown for
# docs/BENCHMARKS.md. Starts and stops its own swtpm and SoftHSM token in a
# temporary directory. Uses the release build.
#
#   bash scripts/bench-hw.sh              # installs hyperfine and the simulators if missing
#   RUNS=200 bash scripts/bench-hw.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/lib.sh

bash scripts/install-deps.sh test >/dev/null
if ! command -v hyperfine >/dev/null 2>&1; then
  apt-get -o DPkg::Lock::Timeout=600 update -qq </dev/null
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    hyperfine </dev/null >/dev/null
fi

cargo build --release -q -p keyward
bin=$ROOT/target/release/keyward
module=/usr/lib/softhsm/libsofthsm2.so
runs=${RUNS:-100}

dir=$(mktemp -d)
SWTPM_PID=""
cleanup() {
  if [[ -n $SWTPM_PID ]]; then stop_pid "$SWTPM_PID"; fi
  rm -rf "$dir"
}
trap cleanup EXIT
cd "$dir"

# --- a swtpm on a free port pair (the control port is port + 1) ----------
mkdir tpm
start_swtpm "$dir/tpm" || { echo "bench-hw: could not start swtpm" >&2; exit 1; }
tcti="swtpm:host=127.0.0.1,port=$SWTPM_PORT"
export KEYWARD_TPM_TCTI=$tcti TSS2_LOG=all+none

# --- a SoftHSM token -------------------------------------------------------
mkdir tokens
cat > softhsm2.conf <<EOF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
export SOFTHSM2_CONF=$dir/softhsm2.conf KEYWARD_PKCS11_MODULE=$module
token_pin=123456
softhsm2-util --init-token --free --label bench --so-pin 12345678 --pin "$token_pin" >/dev/null

# --- the keystore: recovery key, TPM, and the token in both modes ---------
tpm_pin=246810
export KEYWARD_STORE=$dir/keystore.db
"$bin" init --recovery-key-out recovery.txt >/dev/null 2>&1
rk=$(cat recovery.txt)
enroll() { KEYWARD_RECOVERY_KEY=$rk "$bin" enroll "$@" | sed -n 's/^enrolled protector \([0-9]*\):.*/\1/p'; }
tpm_id=$(KEYWARD_PIN=$tpm_pin enroll tpm)
ecdh_id=$(KEYWARD_PIN=$token_pin enroll pkcs11 --uri 'pkcs11:token=bench' --mode ecdh --label ecdh)
aes_id=$(KEYWARD_PIN=$token_pin enroll pkcs11 --uri 'pkcs11:token=bench' --mode aes-gcm --label aes)
KEYWARD_RECOVERY_KEY=$rk "$bin" key create small >/dev/null
head -c 64 /dev/urandom > small.bin
KEYWARD_RECOVERY_KEY=$rk "$bin" encrypt --key small -i small.bin -o small.kw
for check in "$tpm_pin $tpm_id" "$token_pin $ecdh_id" "$token_pin $aes_id"; do
  set -- $check
  KEYWARD_PIN=$1 "$bin" --protector "$2" decrypt -i small.kw -o check.bin
  cmp small.bin check.bin
done

# --- the native tools' objects ---------------------------------------------
# (a) a sealed 32-byte secret with the same kind of PIN (auth value), under
# the same SRK template, made persistent so that one tpm2_unseal process is
# the whole operation (docs/HARDWARE.md's baseline).
handle=0x81010001
# swtpm has no resource manager and 3 object slots, and tpm2-tools leave
# what they load in the TPM: flush after every step.
t() { "$@" -T "$tcti" >/dev/null; tpm2_flushcontext -t -T "$tcti"; }
t tpm2_createprimary -C o -g sha256 -G ecc -c primary.ctx
head -c 32 /dev/urandom > sealed.bin
t tpm2_create -C primary.ctx -u seal.pub -r seal.priv -p "$tpm_pin" -i sealed.bin
t tpm2_load -C primary.ctx -u seal.pub -r seal.priv -c seal.ctx
t tpm2_evictcontrol -C o -c seal.ctx "$handle"
tpm2_unseal -c "$handle" -p "$tpm_pin" -T "$tcti" -o unsealed.bin
cmp sealed.bin unsealed.bin
# (b) a P-256 key pair on the token and a SHA-256 digest to sign.
p11() { pkcs11-tool --module "$module" --token-label bench --login --pin "$token_pin" "$@"; }
p11 --keypairgen --key-type EC:prime256v1 --id b1 --label native >/dev/null 2>&1
openssl dgst -sha256 -binary small.bin > digest.bin
p11 --sign --mechanism ECDSA --id b1 -i digest.bin -o native.sig >/dev/null 2>&1
[[ $(stat -c %s native.sig) -eq 64 ]]

# --- measure ---------------------------------------------------------------
hf() { hyperfine -N --warmup 5 --runs "$runs" --style none "$@" >/dev/null; }
KEYWARD_PIN=$tpm_pin hf --export-json tpm.json \
  -n "keyward decrypt (TPM)" "$bin --protector $tpm_id decrypt -i small.kw -o /dev/null" \
  -n "tpm2_unseal" "tpm2_unseal -c $handle -p $tpm_pin -T $tcti -o /dev/null"
KEYWARD_PIN=$token_pin hf --export-json p11.json \
  -n "keyward decrypt (PKCS#11 ecdh)" "$bin --protector $ecdh_id decrypt -i small.kw -o /dev/null" \
  -n "keyward decrypt (PKCS#11 aes-gcm)" "$bin --protector $aes_id decrypt -i small.kw -o /dev/null" \
  -n "pkcs11-tool --sign" "pkcs11-tool --module $module --token-label bench --login --pin $token_pin --sign --mechanism ECDSA --id b1 -i digest.bin -o /dev/null"
# Where keyward's time goes: process start, opening the keystore, and the
# same decrypt unlocked by the recovery key (no device; the audit records
# and their fsyncs are the same).
KEYWARD_RECOVERY_KEY=$rk hf --export-json base.json \
  -n "keyward --version" "$bin --version" \
  -n "keyward status" "$bin status" \
  -n "keyward decrypt (recovery key)" "$bin --with recovery decrypt -i small.kw -o /dev/null"

python3 - "$runs" <<'PY'
import json, sys
runs = sys.argv[1]
rows = {}
for f in ("tpm.json", "p11.json", "base.json"):
    for r in json.load(open(f))["results"]:
        rows[r["command"]] = r
ms = lambda name: rows[name]["median"] * 1e3
def cell(name):
    r = rows[name]
    return f"{r['median']*1e3:.2f} ms (σ {r['stddev']*1e3:.2f})"
print(f"| one-shot in a fresh process (median of {runs}, hyperfine -N) | keyward | native tool | keyward / native |")
print("|---|---|---|---|")
for label, ours, theirs in (
    ("TPM (swtpm): `keyward decrypt` with the TPM PIN vs one `tpm2_unseal` with its PIN",
     "keyward decrypt (TPM)", "tpm2_unseal"),
    ("PKCS#11 (SoftHSM2, ecdh mode): `keyward decrypt` with the token PIN vs one `pkcs11-tool --sign`",
     "keyward decrypt (PKCS#11 ecdh)", "pkcs11-tool --sign"),
    ("PKCS#11 (SoftHSM2, aes-gcm mode): the same",
     "keyward decrypt (PKCS#11 aes-gcm)", "pkcs11-tool --sign"),
):
    print(f"| {label} | {cell(ours)} | {cell(theirs)} | {ms(ours)/ms(theirs):.2f}x |")
print()
print(f"Baselines in the same run: `keyward --version` (process start) {cell('keyward --version')}; "
      f"`keyward status` (open the keystore, no unlock) {cell('keyward status')}; "
      f"`keyward decrypt` unlocked by the recovery key (no device, same keystore and audit work) "
      f"{cell('keyward decrypt (recovery key)')}.")
PY
