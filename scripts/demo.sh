#!/usr/bin/env bash
# keyward demo: builds keyward and walks through its main jobs in a
# throw-away directory, printing each command. Meant for a fresh Debian 12
# machine, as root (it installs the build packages with apt). Needs a Rust
# toolchain >= 1.85 (rustup). Exits non-zero as soon as anything fails,
# including a failure that the demo expected to see and did not.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

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

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "demo: cargo not found; install a Rust toolchain >= 1.85 (rustup) first" >&2
  exit 1
fi

say "Building keyward (release)"
run cargo build --release -p keyward
KEYWARD="$ROOT/target/release/keyward"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
# Everything below uses a keystore in the temporary directory, never the
# user's own, and no secret from the caller's environment.
unset KEYWARD_PASSPHRASE KEYWARD_RECOVERY_KEY
export KEYWARD_STORE="$WORK/keystore.db"
kw() { run "$KEYWARD" "$@"; }
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

say "9. Sign and verify a message"
echo "meeting moved to 3pm" > message.txt
kw sign --key messages --audience calendar -i message.txt -o message.sig
kw verify --signature message.sig --audience calendar -i message.txt
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

say "Demo finished: every step behaved as expected"
