#!/usr/bin/env bash
# Installs the Debian 12 packages keyward needs, skipping apt entirely when
# they are all present. Used by scripts/demo.sh and scripts/test.sh.
#
#   bash scripts/install-deps.sh build   # what building and the demo need
#   bash scripts/install-deps.sh test    # plus the simulators and test tools
set -euo pipefail

# Build deps (docs/HARDWARE.md), and openssl to check exported public keys;
# libssl-dev for examples/assistant-store (SQLCipher uses libcrypto).
BUILD=(build-essential pkg-config libtss2-dev libpcsclite-dev openssl libssl-dev)
# Run/test deps (docs/HARDWARE.md): software HSM, TPM and smart-card stack;
# `age` (the benchmarks' baseline) and GNU `time` (memory checks in tests).
TEST=(softhsm2 opensc swtpm swtpm-tools tpm2-tools pcscd vsmartcard-vpcd
      yubico-piv-tool yubikey-manager age time)

case "${1:-}" in
  build) packages=("${BUILD[@]}") ;;
  test) packages=("${BUILD[@]}" "${TEST[@]}") ;;
  *) echo "usage: $0 build|test" >&2; exit 2 ;;
esac

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "all ${#packages[@]} system packages are installed"
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo -n)
  else
    echo "error: packages missing (${missing[*]}) and not running as root" >&2
    exit 1
  fi
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# On a shared machine another apt may hold the lock: wait for it.
"${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update </dev/null
"${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends \
  "${missing[@]}" </dev/null
