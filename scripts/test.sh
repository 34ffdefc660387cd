#!/usr/bin/env bash
# The whole keyward test suite, as CI runs it (`bash .ci/run` calls this).
#
# 1. Installs the Debian 12 packages the build and the tests need (apt is
#    skipped when they are all installed). Needs root, or sudo, for that.
# 2. cargo fmt --check, clippy with -D warnings, cargo deny (licences,
#    banned crates, sources: deny.toml), the doctests, then every test
#    (nextest when installed, else cargo test).
#
# Idempotent; reads nothing from stdin; stops at the first failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/lib.sh

step() { printf '\n==> %s\n' "$*"; }

step "system packages"
bash scripts/install-deps.sh test

require_cargo "error: cargo not found; install a Rust toolchain >= 1.85 (rustup)"
cargo --version

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# Licences, banned and duplicate crates, and sources, as deny.toml decides
# them. Not advisories: their database is fetched from GitHub, which our
# build machines cannot reach (deny.toml says how each advisory that
# touches us was decided). cargo-deny is built from source when missing:
# 0.20.2 (needs rustc >= 1.88) took 3 min 45 s on our 2-core machines.
# No two top-level modules of one crate import each other (a circle makes
# a newcomer read both to change either): scripts/module-cycles.py.
step "no import circle between the modules of a crate"
python3 scripts/module-cycles.py

step "cargo deny check licenses bans sources"
if ! cargo deny --version >/dev/null 2>&1; then
  cargo install --locked cargo-deny --version 0.20.2
fi
cargo deny --locked check licenses bans sources

# nextest does not run doctests.
step "cargo test --doc --workspace"
cargo test --doc --workspace

# The end-to-end tests run target/debug/keyward, which `cargo test` does
# not rebuild for another package's tests: build it first.
step "cargo build --workspace --bins"
cargo build --workspace --bins

# The assistant-store example has a workspace of its own (it links SQLCipher,
# which cannot share a libsqlite3-sys with keyward-kms: root Cargo.toml), so
# the workspace's fmt and clippy above do not see it: it gets its own. Built
# into the same target directory, where tests/daemon_assistant_store finds
# target/debug/assistant-store; and its unit tests.
step "assistant-store (examples/assistant-store)"
cargo fmt --manifest-path examples/assistant-store/Cargo.toml -- --check
cargo clippy --manifest-path examples/assistant-store/Cargo.toml --target-dir "${CARGO_TARGET_DIR:-target}" --all-targets -- -D warnings
cargo build --manifest-path examples/assistant-store/Cargo.toml --target-dir "${CARGO_TARGET_DIR:-target}"
cargo test --manifest-path examples/assistant-store/Cargo.toml --target-dir "${CARGO_TARGET_DIR:-target}"

# The PIV simulator's pcscd gets its cards through vpcd on TCP 35963-35964
# (fixed by the driver). Any TCP client of the suite (swtpm, the daemon's
# tests) may be given one of those as its ephemeral port and leave it in
# TIME_WAIT for a minute, and then no virtual card can attach: keep the
# kernel from handing them out (until reboot; root only).
if [ -w /proc/sys/net/ipv4/ip_local_reserved_ports ]; then
  step "reserve the vpcd ports 35963-35964"
  reserved=$(cat /proc/sys/net/ipv4/ip_local_reserved_ports)
  case ",$reserved," in
    *,35963-35964,*) ;;
    *) echo "${reserved:+$reserved,}35963-35964" >/proc/sys/net/ipv4/ip_local_reserved_ports ;;
  esac
  cat /proc/sys/net/ipv4/ip_local_reserved_ports
fi

if cargo nextest --version >/dev/null 2>&1; then
  step "cargo nextest run --workspace"
  cargo nextest run --workspace --no-fail-fast
else
  step "cargo test --workspace (cargo-nextest is not installed)"
  cargo test --workspace --no-fail-fast
fi
