# Shell shared by the scripts in scripts/: sourced (`. scripts/lib.sh`),
# never run on its own. Defines functions only; sets nothing on load.

# Puts rustup's cargo on PATH when no cargo is there already.
use_rustup_cargo() {
  if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
}

# require_cargo MESSAGE: as use_rustup_cargo, then prints MESSAGE and
# exits 1 when there is still no cargo.
require_cargo() {
  use_rustup_cargo
  if ! command -v cargo >/dev/null 2>&1; then
    echo "$1" >&2
    exit 1
  fi
}

# stop_pid PID [TENTHS]: stops a process this script started: SIGTERM, then
# SIGKILL when it still runs after TENTHS tenths of a second (default 30),
# then reaps it.
stop_pid() {
  local pid=$1 tenths=${2:-30}
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq "$tenths"); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# stop_daemon: stops the `keyward serve` whose pid is in $daemon_pid, if
# any (a bounded wait for a clean exit, SIGKILL after 10 s), and clears it.
stop_daemon() {
  if [ -n "${daemon_pid:-}" ]; then stop_pid "$daemon_pid" 100; fi
  daemon_pid=
}

# listening PORT: whether something accepts TCP connections on PORT.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_swtpm DIR: starts a swtpm (TPM 2.0 simulator) in the background with
# its state in DIR, on a free port pair (the control port is port + 1).
# Sets SWTPM_PID and SWTPM_PORT; returns 1 when no try of 20 started one.
start_swtpm() {
  local dir=$1
  SWTPM_PID=""
  for _ in $(seq 20); do
    SWTPM_PORT=$((20000 + RANDOM % 30000))
    if listening "$SWTPM_PORT" || listening $((SWTPM_PORT + 1)); then continue; fi
    swtpm socket --tpm2 --server "type=tcp,port=$SWTPM_PORT,bindaddr=127.0.0.1" \
      --ctrl "type=tcp,port=$((SWTPM_PORT + 1)),bindaddr=127.0.0.1" \
      --tpmstate "dir=$dir" --flags not-need-init,startup-clear &
    SWTPM_PID=$!
    for _ in $(seq 200); do
      if listening "$SWTPM_PORT" || ! kill -0 "$SWTPM_PID" 2>/dev/null; then break; fi
      sleep 0.01
    done
    if kill -0 "$SWTPM_PID" 2>/dev/null && listening "$SWTPM_PORT"; then return 0; fi
    SWTPM_PID=""
  done
  return 1
}

# await_socket SOCKET PID LOG: waits up to 30 s for `keyward serve` (PID,
# its stderr in LOG) to create SOCKET; exits 1 with the log when the daemon
# exits first or never creates it.
await_socket() {
  local socket=$1 pid=$2 log=$3
  for _ in $(seq 300); do
    [ -S "$socket" ] && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "error: keyward serve exited: $(cat "$log")" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "error: keyward serve did not create $socket in 30 s: $(cat "$log")" >&2
  exit 1
}
