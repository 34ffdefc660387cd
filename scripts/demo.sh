#!/usr/bin/env bash
# keyward demo: builds keyward and walks through its main jobs in a
# throw-away directory, printing each command. Meant for a fresh Debian 12
# machine, as root (it installs the build packages with apt). Needs a Rust
# toolchain >= 1.85 (rustup). Exits non-zero as soon as anything fails,
# including a failure that the demo expected to see and did not.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. "$ROOT/scripts/lib.sh"

say() { printf '\n\033[1m## %s\033[0m\n' "$*"; }
# Prints a command, then runs it.
run() { printf '$ %s\n' "$*" >&2; "$@"; }
# Runs a command that must fail with exit code $1 (see docs/CLI.md).
expect_fail() {
  local want=$1 got=0
  shift
  printf '$ %s   # must fail with exit code %s\n' "$*" "$want" >&2
  "$@" || got=$?
  if [ "$got" -ne "$want" ]; then
    echo "demo: expected exit code $want, got $got" >&2
    exit 1
  fi
}

say "Installing build packages"
bash scripts/install-deps.sh build

require_cargo "demo: cargo not found; install a Rust toolchain >= 1.85 (rustup) first"

say "Building keyward and the PIV card simulator (release)"
# One build, so that the crates both use are compiled once.
run cargo build --release -p keyward -p keyward-hw-mocks --bin keyward --bin keyward-piv-sim
KEYWARD="$ROOT/target/release/keyward"
PIV_SIM="$ROOT/target/release/keyward-piv-sim"

WORK="$(mktemp -d)"
SWTPM_PID=""
DAEMON_PID=""
PIV_SIM_PID=""
PCSCD_PID=""
# On any exit: stop the daemon and the simulators the hardware part
# started (pcscd last, then its lock is released), then delete everything.
cleanup() {
  if [ -n "$DAEMON_PID" ]; then stop_pid "$DAEMON_PID"; fi
  if [ -n "$SWTPM_PID" ]; then stop_pid "$SWTPM_PID"; fi
  if [ -n "$PIV_SIM_PID" ]; then stop_pid "$PIV_SIM_PID"; fi
  if [ -n "$PCSCD_PID" ]; then stop_pid "$PCSCD_PID"; fi
  exec 9>&-
  rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"
# Everything below uses a keystore in the temporary directory, never the
# user's own, and no secret from the caller's environment.
unset KEYWARD_PASSPHRASE KEYWARD_RECOVERY_KEY KEYWARD_PIN KEYWARD_PUK KEYWARD_TPM_TCTI KEYWARD_PKCS11_MODULE
export KEYWARD_STORE="$WORK/keystore.db"
kw() { run "$KEYWARD" "$@"; }
# sign_and_verify ID PIN NAME: exports the public key of device protector
# ID to NAME.pem, signs message.txt with it (PIN) into message.NAME.sig, and
# has openssl verify the signature.
sign_and_verify() {
  local id=$1 pin=$2 name=$3
  kw export-public --protector "$id" | tee "$name.pem"
  KEYWARD_PIN="$pin" kw sign --protector "$id" -i message.txt -o "message.$name.sig"
  run openssl dgst -sha256 -verify "$name.pem" -signature "message.$name.sig" message.txt
}
echo "working in $WORK (KEYWARD_STORE=$KEYWARD_STORE)"

say "1. Create a keystore; its first protector is a recovery key"
kw init --recovery-key-out "$WORK/recovery.key"
ls -l "$WORK/recovery.key"

say "2. Enroll a passphrase (given in KEYWARD_PASSPHRASE; unlocked by the recovery key)"
export KEYWARD_PASSPHRASE="demo passphrase: use a real one"
kw enroll passphrase --recovery-key-file "$WORK/recovery.key"
kw protectors list
kw status

say "3. Create keys: one to encrypt, one to sign"
kw key create notes --class private --rotation-period 90d
kw key create messages --purpose sign --class general
kw key list

say "4. Encrypt and decrypt through stdin/stdout"
echo "dentist on tuesday at 10" | kw encrypt --key notes --context calendar > note.kw
ls -l note.kw
kw decrypt --context calendar < note.kw

say "5. Encrypt and decrypt files (output appears only when complete)"
head -c 5000000 /dev/urandom > photo.bin
kw encrypt --key notes -i photo.bin -o photo.kw
kw decrypt -i photo.kw -o photo.out
run cmp photo.bin photo.out
echo "files match"

say "6. A wrong context or a modified byte is refused"
expect_fail 5 "$KEYWARD" decrypt --context contacts -i note.kw
cp photo.kw photo.bad
printf 'X' | dd of=photo.bad bs=1 seek=1000 conv=notrunc status=none
expect_fail 5 "$KEYWARD" decrypt -i photo.bad -o photo.bad.out
test ! -e photo.bad.out
echo "no partial output was written"

say "7. Rotate the key: new data uses version 2, old data still decrypts"
kw key rotate notes
kw decrypt --context calendar --json < note.kw
echo "second note" | kw encrypt --key notes > note2.kw

say "8. Retire version 1: old data is refused until the minimum is lowered"
kw key retire notes --min-version 2
expect_fail 6 "$KEYWARD" decrypt --context calendar -i note.kw
kw decrypt -i note2.kw
kw key retire notes --min-version 1
kw decrypt --context calendar -i note.kw

say "9. Sign and verify a message; a replay is refused"
echo "meeting moved to 3pm" > message.txt
kw sign --key messages --audience calendar -i message.txt -o message.sig
kw verify --signature message.sig --audience calendar -i message.txt
# The same signature a second time is a replay, refused; kept on file, it
# is checked as archived (signature and audience only).
expect_fail 5 "$KEYWARD" verify --signature message.sig --audience calendar -i message.txt
kw verify --signature message.sig --audience calendar -i message.txt --archived
echo "meeting moved to 4pm" > forged.txt
expect_fail 5 "$KEYWARD" verify --signature message.sig --audience calendar -i forged.txt

say "10. Export the public key as PEM; openssl reads it"
kw export-public messages | tee messages.pem
run openssl pkey -pubin -in messages.pem -noout -text

say "11. Rotate the master key: every key is re-wrapped, data still decrypts"
kw master rotate
kw decrypt -i note2.kw

say "12. Audit log"
kw audit show
kw audit verify

# ---------------------------------------------------------------------------
# Hardware protectors, on simulated devices: a TPM 2.0 (swtpm), a PKCS#11
# token (SoftHSM2) and a YubiKey (keyward's PIV card simulator behind pcscd
# and vpcd). All are started here, in $WORK, and stopped on exit.

say "13. Hardware: install and start the simulators (swtpm, SoftHSM2)"
bash "$ROOT/scripts/install-deps.sh" test
HW="$WORK/hw"
mkdir -p "$HW/tpm" "$HW/tokens"
if ! start_swtpm "$HW/tpm"; then
  echo "demo: could not start swtpm" >&2
  exit 1
fi
export KEYWARD_TPM_TCTI="swtpm:host=127.0.0.1,port=$SWTPM_PORT"
# tpm2-tss (a C library) prints its own warnings unless told not to.
export TSS2_LOG=all+none
echo "swtpm (pid $SWTPM_PID) at KEYWARD_TPM_TCTI=$KEYWARD_TPM_TCTI"

cat > "$HW/softhsm2.conf" <<EOF
directories.tokendir = $HW/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
export SOFTHSM2_CONF="$HW/softhsm2.conf"
export KEYWARD_PKCS11_MODULE=/usr/lib/softhsm/libsofthsm2.so
run softhsm2-util --init-token --free --label demo-token --so-pin 12345678 --pin 123456

# The PINs come from KEYWARD_PIN here; on a terminal keyward would ask,
# naming the device and the tries left. The passphrase of step 2 leaves the
# environment: at equal rank it would win over a PIN.
unset KEYWARD_PASSPHRASE
TPM_PIN="4711 demo tpm pin"
TOKEN_PIN=123456
# Prints and runs an enroll command, and prints the new protector's id on
# stdout.
enrolled_id() {
  local out
  out="$(run "$KEYWARD" "$@")"
  printf '%s\n' "$out" >&2
  printf '%s\n' "$out" | sed -n 's/^enrolled protector \([0-9]*\):.*/\1/p'
}

say "14. Enroll the TPM: a new PIN, bound to PCR 16 (unlocked by the recovery key)"
TPM_ID="$(KEYWARD_PIN="$TPM_PIN" enrolled_id enroll tpm --pcrs 16 \
  --recovery-key-file "$WORK/recovery.key")"
kw protectors list

say "15. Each keyward process starts locked: unlock with the TPM PIN and decrypt"
KEYWARD_PIN="$TPM_PIN" kw --with tpm decrypt -i note2.kw
echo "one wrong PIN is one error (exit 3), with the tries left; keyward never retries it"
KEYWARD_PIN="wrong pin" expect_fail 3 "$KEYWARD" --with tpm decrypt -i note2.kw
KEYWARD_PIN="$TPM_PIN" kw --protector "$TPM_ID" decrypt -i note2.kw

say "16. The TPM signs; openssl verifies with the exported public key"
sign_and_verify "$TPM_ID" "$TPM_PIN" tpm

say "17. A \"firmware update\" changes PCR 16: the TPM refuses, the recovery key re-binds"
run tpm2_pcrextend -T "$KEYWARD_TPM_TCTI" \
  16:sha256=0000000000000000000000000000000000000000000000000000000000000001
KEYWARD_PIN="$TPM_PIN" expect_fail 3 "$KEYWARD" --with tpm decrypt -i note2.kw
TPM_ID="$(KEYWARD_PIN="$TPM_PIN" enrolled_id enroll tpm --replace --pcrs 16 \
  --recovery-key-file "$WORK/recovery.key")"
KEYWARD_PIN="$TPM_PIN" kw --protector "$TPM_ID" decrypt -i note2.kw

say "18. Enroll the PKCS#11 token twice: ecdh mode (P-256) and aes-gcm mode (AES-256)"
ECDH_ID="$(KEYWARD_PIN="$TOKEN_PIN" enrolled_id enroll pkcs11 \
  --uri 'pkcs11:token=demo-token' --mode ecdh --label desk \
  --recovery-key-file "$WORK/recovery.key")"
AES_ID="$(KEYWARD_PIN="$TOKEN_PIN" enrolled_id enroll pkcs11 \
  --uri 'pkcs11:token=demo-token' --mode aes-gcm --label vault \
  --recovery-key-file "$WORK/recovery.key")"
kw protectors list
echo "the keys on the token, as pkcs11-tool lists them:"
run pkcs11-tool --module "$KEYWARD_PKCS11_MODULE" --token-label demo-token \
  --login --pin "$TOKEN_PIN" --list-objects | grep 'label:'

say "19. Unlock with each token protector and decrypt"
KEYWARD_PIN="$TOKEN_PIN" kw --protector "$ECDH_ID" decrypt -i note2.kw
KEYWARD_PIN="$TOKEN_PIN" kw --protector "$AES_ID" decrypt -i note2.kw
KEYWARD_PIN=000000 expect_fail 3 "$KEYWARD" --protector "$ECDH_ID" decrypt -i note2.kw
echo "a PIN alone is ambiguous with three hardware protectors: keyward asks which (exit 2)"
KEYWARD_PIN="$TOKEN_PIN" expect_fail 2 "$KEYWARD" decrypt -i note2.kw

say "20. The token signs (ECDSA P-256); openssl verifies"
kw export-public --protector "$ECDH_ID" > token.pem
KEYWARD_PIN="$TOKEN_PIN" kw sign --protector "$ECDH_ID" -i message.txt -o message.token.sig
run openssl dgst -sha256 -verify token.pem -signature message.token.sig message.txt

say "21. Master-key rotation re-wraps for every protector; each still unlocks"
# The aes-gcm protector wraps on the token, so the rotation unlocks with it.
KEYWARD_PIN="$TOKEN_PIN" kw --protector "$AES_ID" master rotate
KEYWARD_PIN="$TPM_PIN" kw --protector "$TPM_ID" decrypt -i note2.kw
KEYWARD_PIN="$TOKEN_PIN" kw --protector "$ECDH_ID" decrypt -i note2.kw
KEYWARD_PIN="$TOKEN_PIN" kw --protector "$AES_ID" decrypt -i note2.kw
kw audit verify

say "22. YubiKey: pcscd with the vpcd driver, and a simulated YubiKey 5 in its reader"
# pcscd's socket (/run/pcscd/pcscd.comm) and vpcd's TCP ports 35963-35964
# are machine-wide: only one such pcscd may run. keyward's PIV tests take an
# exclusive flock on /tmp/keyward-pcscd.lock first (hw-mocks/src/piv/pcscd.rs);
# so do we, on fd 9, until our pcscd has stopped. fd 9 is closed for the
# background children, so the lock lives exactly as long as this script
# holds it.
exec 9>/tmp/keyward-pcscd.lock
if ! flock -n 9; then
  echo "waiting for /tmp/keyward-pcscd.lock (keyward's PIV tests are using pcscd)"
  flock 9
fi
mkdir -p "$HW/vpcd-conf"
printf '%s\n' 'FRIENDLYNAME "Virtual PCD"' 'DEVICENAME /dev/null:0x8C7B' \
  'LIBPATH /usr/lib/pcsc/drivers/serial/libifdvpcd.so' 'CHANNELID 0x8C7B' \
  > "$HW/vpcd-conf/vpcd"
printf '$ %s\n' "pcscd --foreground --config $HW/vpcd-conf &" >&2
pcscd --foreground --config "$HW/vpcd-conf" </dev/null >"$HW/pcscd.log" 2>&1 9>&- &
PCSCD_PID=$!
for _ in $(seq 100); do
  [ -S /run/pcscd/pcscd.comm ] && break
  if ! kill -0 "$PCSCD_PID" 2>/dev/null; then
    echo "demo: pcscd exited (is another pcscd running? stop it first):" >&2
    cat "$HW/pcscd.log" >&2
    exit 1
  fi
  sleep 0.1
done
YK_SERIAL=12345678
printf '$ %s\n' "keyward-piv-sim --serial $YK_SERIAL &" >&2
"$PIV_SIM" --serial "$YK_SERIAL" </dev/null 2>"$HW/piv-sim.log" 9>&- &
PIV_SIM_PID=$!
# pcscd polls its readers every ~400 ms: the card is usable after 0.3-0.6 s.
for _ in $(seq 100); do
  yubico-piv-tool -r "Virtual PCD" -a status >/dev/null 2>&1 && break
  sleep 0.1
done
echo "yubico-piv-tool sees a factory-fresh YubiKey 5:"
run yubico-piv-tool -r "Virtual PCD" -a status | grep -E "^(Version|Serial Number|PIN tries)"
YK_PIN=24681357
YK_PUK=86427531

say "23. Set the YubiKey up: new PIN and PUK, and a random management key stored PIN-protected on the card"
# The new PIN and PUK come from KEYWARD_PIN and KEYWARD_PUK here; on a
# terminal keyward asks for each twice. A second run changes nothing.
KEYWARD_PIN="$YK_PIN" KEYWARD_PUK="$YK_PUK" kw yubikey setup --serial "$YK_SERIAL"
KEYWARD_PIN="$YK_PIN" kw yubikey setup --serial "$YK_SERIAL" --json

say "24. Enroll the YubiKey: a P-256 key in a retired slot, PIN once and touch always (unlocked by the recovery key)"
YK_ID="$(KEYWARD_PIN="$YK_PIN" enrolled_id enroll yubikey --serial "$YK_SERIAL" \
  --recovery-key-file "$WORK/recovery.key")"
kw protectors list

say "25. Unlock with the YubiKey (PIN, then touch) and decrypt; a wrong PIN costs one try"
KEYWARD_PIN="$YK_PIN" kw --with yubikey decrypt -i note2.kw
KEYWARD_PIN=11223344 expect_fail 3 "$KEYWARD" --with yubikey decrypt -i note2.kw
echo "the right PIN restores the tries:"
KEYWARD_PIN="$YK_PIN" kw --protector "$YK_ID" decrypt -i note2.kw

say "26. The YubiKey signs (ECDSA P-256); openssl verifies"
sign_and_verify "$YK_ID" "$YK_PIN" yubikey
echo "and refuses the signature over another message:"
expect_fail 1 openssl dgst -sha256 -verify yubikey.pem -signature message.yubikey.sig forged.txt

say "27. The daemon: unlock once with the TPM, then no PIN per operation"
export KEYWARD_SOCKET="$WORK/run/keyward.sock"
printf '$ %s\n' "keyward serve --socket $KEYWARD_SOCKET &" >&2
"$KEYWARD" serve --socket "$KEYWARD_SOCKET" 2>"$WORK/serve.log" &
DAEMON_PID=$!
for _ in $(seq 100); do [ -S "$KEYWARD_SOCKET" ] && break; sleep 0.1; done
cat "$WORK/serve.log"
KEYWARD_PIN="$TPM_PIN" kw --protector "$TPM_ID" unlock --idle-timeout 10m
kw status
echo "no PIN from here on: the daemon decrypts"
kw decrypt -i note2.kw

say "28. The assistant's store: a client token that may only use one data key"
kw key create assistant-store --class sensitive
kw client add assistant --allow datakey --keys assistant-store --token-out "$WORK/assistant.token"
kw client list
run cargo build --release --manifest-path "$ROOT/examples/assistant-store/Cargo.toml" \
  --target-dir "$ROOT/target"
ASSISTANT="$ROOT/target/release/assistant-store"
export KEYWARD_CLIENT_TOKEN_FILE="$WORK/assistant.token"
run "$ASSISTANT" --db "$WORK/assistant.db" init --key assistant-store
printf '$ %s\n' "printf 'blood pressure 118/76' | assistant-store --db assistant.db put health/bp" >&2
printf 'blood pressure 118/76' | "$ASSISTANT" --db "$WORK/assistant.db" put health/bp
run "$ASSISTANT" --db "$WORK/assistant.db" get health/bp
echo
echo "the database file holds no plaintext:"
if grep -q "118/76" "$WORK/assistant.db"; then echo "demo: plaintext found in the database" >&2; exit 1; fi
echo "(grep found nothing)"
kw lock
echo "locked: the assistant cannot open its store (exit 3)"
expect_fail 3 "$ASSISTANT" --db "$WORK/assistant.db" get health/bp
KEYWARD_PIN="$TPM_PIN" kw --protector "$TPM_ID" unlock
run "$ASSISTANT" --db "$WORK/assistant.db" get health/bp
echo
kw client revoke --all
echo "revoked: the token no longer works (exit 3)"
expect_fail 3 "$ASSISTANT" --db "$WORK/assistant.db" get health/bp
echo "the newest audit records (unlock, datakey, lock, revocation):"
kw audit show | tail -n 8
unset KEYWARD_CLIENT_TOKEN_FILE
run kill -TERM "$DAEMON_PID"
wait "$DAEMON_PID" 2>/dev/null || true
DAEMON_PID=""
unset KEYWARD_SOCKET

say "29. Stop the simulators: keyward says what is missing, the recovery key still works"
stop_pid "$SWTPM_PID"
SWTPM_PID=""
KEYWARD_PIN="$TPM_PIN" expect_fail 7 "$KEYWARD" --with tpm decrypt -i note2.kw
rm -rf "$HW/tokens"/*
KEYWARD_PIN="$TOKEN_PIN" expect_fail 7 "$KEYWARD" --protector "$ECDH_ID" decrypt -i note2.kw
echo "the YubiKey is pulled (its simulator stops); pcscd notices within a second:"
stop_pid "$PIV_SIM_PID"
PIV_SIM_PID=""
sleep 1.5
KEYWARD_PIN="$YK_PIN" expect_fail 7 "$KEYWARD" --with yubikey decrypt -i note2.kw
stop_pid "$PCSCD_PID"
PCSCD_PID=""
exec 9>&-
kw --recovery-key-file "$WORK/recovery.key" decrypt -i note2.kw

say "Demo finished: every step behaved as expected"
