#!/usr/bin/env bash
# Issue #6: signing with a PKCS#11 token key through `keyward serve`
# (POST /v1/device/sign, the token logged in once at unlock) against the
# same ECDSA P-256 signature made in process straight through `cryptoki`
# (backends/examples/cryptoki_sign.rs), on SoftHSM2.
#
#   bash scripts/bench-pkcs11-daemon.sh           # 5 s per run
#   BENCH_SECONDS=10 bash scripts/bench-pkcs11-daemon.sh
#
# Makes a throw-away SoftHSM token and keystore in a temporary directory,
# enrolls the token (ecdh mode), starts the daemon, unlocks it with the
# token PIN (`keyward unlock --with pkcs11`), runs daemon_bench
# --device-sign at 1 and 16 clients, stops the daemon, then runs
# cryptoki_sign on the same key for as long. Prints a markdown table. The
# PIN is a throw-away test value passed in the environment, never argv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/lib.sh

RUN_SECONDS=${BENCH_SECONDS:-5}
MODULE=/usr/lib/softhsm/libsofthsm2.so
step() { printf '\n==> %s\n' "$*" >&2; }
die() { echo "error: $*" >&2; exit 1; }
[ -e "$MODULE" ] || die "SoftHSM2 is missing: apt-get install softhsm2"
use_rustup_cargo
unset KEYWARD_STORE KEYWARD_SOCKET KEYWARD_PASSPHRASE KEYWARD_RECOVERY_KEY KEYWARD_PIN RUST_LOG

step "cargo build --release (keyward, daemon_bench, cryptoki_sign)"
cargo build --release -p keyward --bin keyward --example daemon_bench
cargo build --release -p keyward-backends --example cryptoki_sign
target_dir=${CARGO_TARGET_DIR:-target}
KEYWARD=$target_dir/release/keyward
BENCH=$target_dir/release/examples/daemon_bench
CRYPTOKI=$target_dir/release/examples/cryptoki_sign

tmp=$(mktemp -d)
daemon_pid=
trap 'stop_daemon; rm -rf "$tmp"' EXIT

mkdir -p "$tmp/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' \
  "$tmp/tokens" >"$tmp/softhsm2.conf"
export SOFTHSM2_CONF=$tmp/softhsm2.conf
pin=123456
softhsm2-util --init-token --free --label kwbench --so-pin 12345678 --pin "$pin" >/dev/null
store=$tmp/keystore.db
socket=$tmp/run/keyward.sock
kw() { env HOME="$tmp" XDG_DATA_HOME="$tmp/xdg" XDG_RUNTIME_DIR="$tmp/xdg-run" \
  KEYWARD_SOCKET="$socket" "$@"; }

step "keystore, token enrolled (ecdh)"
kw "$KEYWARD" --store "$store" init --recovery-key-out "$tmp/recovery.key" >/dev/null
KEYWARD_RECOVERY_KEY=$(cat "$tmp/recovery.key") KEYWARD_PIN=$pin \
  kw "$KEYWARD" --store "$store" enroll pkcs11 --mode ecdh \
  --uri "pkcs11:token=kwbench?module-path=$MODULE" >/dev/null
protector=2

step "keyward serve; keyward unlock --with pkcs11"
kw "$KEYWARD" --store "$store" serve --socket "$socket" 2>"$tmp/serve.log" &
daemon_pid=$!
await_socket "$socket" "$daemon_pid" "$tmp/serve.log"
KEYWARD_PIN=$pin kw "$KEYWARD" --store "$store" unlock --with pkcs11 >/dev/null

rows=()
for clients in 1 16; do
  step "daemon_bench --device-sign $protector --clients $clients"
  out=$("$BENCH" --socket "$socket" --device-sign "$protector" --size 64 \
    --clients "$clients" --seconds "$RUN_SECONDS")
  printf '%s\n' "$out" >&2
  rows+=("$(head -n 1 <<<"$out")")
done
stop_daemon

step "cryptoki_sign (in process, one session)"
inproc=$(KEYWARD_PIN=$pin "$CRYPTOKI" "$MODULE" kwbench "keyward pkcs11" "$RUN_SECONDS")
printf '%s\n' "$inproc" >&2

field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$2"; }
echo
echo "### ECDSA P-256 signatures on SoftHSM2 ($(nproc) cores, ${RUN_SECONDS} s per run)"
echo
echo "| path | clients | signatures/s | p50 µs | p99 µs |"
echo "|---|---:|---:|---:|---:|"
for row in "${rows[@]}"; do
  printf '| keyward serve, POST /v1/device/sign | %s | %s | %s | %s |\n' \
    "$(field clients "$row")" "$(field req_per_s "$row")" "$(field p50_us "$row")" \
    "$(field p99_us "$row")"
done
printf '| in-process cryptoki (C_Sign, one session) | 1 | %s | %s | %s |\n' \
  "$(field per_s "$inproc")" "$(field p50_us "$inproc")" "$(field p99_us "$inproc")"
d1=$(field req_per_s "${rows[0]}")
ip=$(field per_s "$inproc")
echo
echo "The daemon with 1 client reaches $(awk -v d="$d1" -v i="$ip" \
  'BEGIN { printf "%.2f", (i > 0 ? d / i : 0) }')x of in-process cryptoki signing."
