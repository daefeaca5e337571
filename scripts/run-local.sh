#!/usr/bin/env bash
# Run the whole pipeline on this machine until Ctrl-C: private PostgreSQL and Redis, the
# publisher, two ws-server replicas and the HTTP API. `bash scripts/run-local.sh --help` for the options.
set -euo pipefail

usage() {
    cat <<EOF
usage: bash scripts/run-local.sh [--no-build] [--reset] [--help]

Builds the release binaries, starts a private PostgreSQL (port \$PG_PORT) and Redis
(port \$REDIS_PORT), the publisher (health on \$HEALTH_PORT), two ws-server replicas
(ports 8080 and 8081) and the HTTP API (port \$API_PORT), waits until all are ready, prints how to try it, and runs until
Ctrl-C, SIGTERM or any of them exits; then it stops everything it started.

  --no-build   use the binaries already in the cargo target dir
  --reset      delete the private database first (a fresh initdb)

Environment (defaults in brackets):
  RUN_DIR        data dir, sockets and logs [/tmp/orders-realtime-\$(id -u)]; under /tmp
                 because as root PostgreSQL runs as 'postgres', which can't enter /root
  PG_PORT        private PostgreSQL port [55432]
  REDIS_PORT     private Redis port [56379]
  DATABASE_URL   use this database instead of starting a private one
  REDIS_URL      use this Redis instead of starting a private one
  HEALTH_PORT    publisher health/metrics port [9100]
  WS_PORTS       ws-server replica ports [8080 8081]
  API_PORT       orders-api port [3000]
  READY_TIMEOUT  seconds to wait for each service to become ready [60]
Every other variable (RUST_LOG, LOG_FORMAT, WS_*, PUBLISHER_*, API_*; see .env.example) passes
through to the binaries, which also read ./.env; the URLs and ports above override it.
Exit status: 0 after Ctrl-C/SIGTERM, 1 if a service failed to start or died.
EOF
}

BUILD=1 RESET=0
for arg in "$@"; do
    case "$arg" in
        --no-build) BUILD=0 ;;
        --reset) RESET=1 ;;
        -h | --help) usage && exit 0 ;;
        *) echo "run-local: unknown argument: $arg (try --help)" >&2 && exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN_DIR=${RUN_DIR:-/tmp/orders-realtime-$(id -u)}
PG_PORT=${PG_PORT:-55432} REDIS_PORT=${REDIS_PORT:-56379} HEALTH_PORT=${HEALTH_PORT:-9100} API_PORT=${API_PORT:-3000}
read -r -a WS_PORTS <<<"${WS_PORTS:-8080 8081}"
READY_TIMEOUT=${READY_TIMEOUT:-60} STOP_TIMEOUT=15
export PATH="$HOME/.cargo/bin:$PATH"
cd "$ROOT"

log() { printf 'run-local: %s\n' "$*" >&2; }
die() { log "error: $*" && exit 1; }

# --- processes we own: name -> pid, log file and stop signal; ORDER is start order ----------
declare -A PID_OF=() LOG_OF=() SIG_OF=()
ORDER=()

# start NAME SIGNAL LOG CMD...: run CMD in its own session, so the terminal's Ctrl-C reaches
# only this script, which then stops the services before the stores they depend on.
start() {
    local name=$1 sig=$2 logfile=$3
    shift 3
    setsid "$@" >"$logfile" 2>&1 &
    PID_OF[$name]=$! LOG_OF[$name]=$logfile SIG_OF[$name]=$sig
    ORDER+=("$name")
}

# stop_group NAME...: signal them all, then wait for each until a shared deadline, then KILL.
stop_group() {
    local name pid deadline=$((SECONDS + STOP_TIMEOUT))
    for name; do
        pid=${PID_OF[$name]:-}
        if [[ -n "$pid" ]]; then kill "-${SIG_OF[$name]}" "$pid" 2>/dev/null || true; fi
    done
    for name; do
        pid=${PID_OF[$name]:-}
        [[ -n "$pid" ]] || continue
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name did not stop within ${STOP_TIMEOUT}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
        unset "PID_OF[$name]"
    done
}

cleanup() {
    local status=$? apps=() stores=() name
    trap '' INT TERM
    trap - EXIT
    if ((${#ORDER[@]})); then
        for name in "${ORDER[@]}"; do
            case "$name" in postgres | redis) stores+=("$name") ;; *) apps+=("$name") ;; esac
        done
        log "stopping ${ORDER[*]}"
        # Services first, so they drain and close their clients while the stores are still up.
        if ((${#apps[@]})); then stop_group "${apps[@]}"; fi
        if ((${#stores[@]})); then stop_group "${stores[@]}"; fi
        log "stopped everything; logs and data kept in $RUN_DIR"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

# --- readiness checks, in plain bash: curl and redis-cli may be missing ----------------------
# shellcheck source=scripts/ready.sh
source "$ROOT/scripts/ready.sh"
pg_ok() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; }

# wait_for NAME CHECK...: poll CHECK until it passes; fail if NAME exits or READY_TIMEOUT passes.
wait_for() {
    local name=$1 deadline=$((SECONDS + READY_TIMEOUT))
    shift
    until "$@"; do
        if ! kill -0 "${PID_OF[$name]}" 2>/dev/null; then
            tail -n 20 "${LOG_OF[$name]}" >&2 || true
            die "$name exited during startup (log above: ${LOG_OF[$name]})"
        fi
        ((SECONDS < deadline)) || die "$name not ready after ${READY_TIMEOUT}s (see ${LOG_OF[$name]})"
        sleep 0.2
    done
    log "$name is ready"
}

# --- prerequisites and build -----------------------------------------------------------------
# shellcheck source=scripts/install-deps.sh
source "$ROOT/scripts/install-deps.sh"
ensure_deps
PG_BIN=$(pg_bin_dir)
if ((BUILD)); then
    log "building: cargo build --release --bins"
    cargo build --release --bins
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
BIN=${TARGET_DIR:-$ROOT/target}/release
for b in publisher ws-server orders-api cli-client; do
    [[ -x "$BIN/$b" ]] || die "$BIN/$b is missing: build it (drop --no-build)"
done

busy=()
[[ -n "${DATABASE_URL:-}" ]] || ! port_busy "$PG_PORT" || busy+=("$PG_PORT (PG_PORT)")
[[ -n "${REDIS_URL:-}" ]] || ! port_busy "$REDIS_PORT" || busy+=("$REDIS_PORT (REDIS_PORT)")
for port in "$HEALTH_PORT" "$API_PORT" "${WS_PORTS[@]}"; do ! port_busy "$port" || busy+=("$port"); done
((${#busy[@]} == 0)) || die "ports in use: ${busy[*]}; is a previous run still going? stop it or pick other ports"

mkdir -p "$RUN_DIR"
chmod 755 "$RUN_DIR"

# --- private PostgreSQL --------------------------------------------------------------------
if [[ -z "${DATABASE_URL:-}" ]]; then
    pgdata=$RUN_DIR/pg socket_dir=$RUN_DIR/pg-socket as_pg=()
    if ((RESET)); then log "deleting $pgdata (--reset)" && rm -rf "$pgdata"; fi
    mkdir -p "$pgdata" "$socket_dir"
    if ((EUID == 0)); then
        # PostgreSQL refuses to run as root; setpriv execs (no extra process), so the pid we
        # hold is the postmaster's own.
        id postgres >/dev/null 2>&1 || die "no 'postgres' user: install the postgresql package"
        chown postgres: "$pgdata" "$socket_dir"
        as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups)
    fi
    chmod 700 "$pgdata"
    "${as_pg[@]}" test -w "$pgdata" -a -w "$socket_dir" ||
        die "the postgres user cannot write $pgdata: set RUN_DIR to a path it can reach (e.g. under /tmp)"
    if [[ ! -f "$pgdata/PG_VERSION" ]]; then
        log "initialising PostgreSQL in $pgdata"
        (cd "$RUN_DIR" && "${as_pg[@]}" "$PG_BIN/initdb" -D "$pgdata" -U postgres -A trust -E UTF8 --no-locale -N) \
            >"$RUN_DIR/initdb.log" 2>&1 || die "initdb failed: see $RUN_DIR/initdb.log"
    fi
    start postgres INT "$RUN_DIR/postgres.log" "${as_pg[@]}" "$PG_BIN/postgres" -D "$pgdata" \
        -c port="$PG_PORT" -c listen_addresses=127.0.0.1 -c unix_socket_directories="$socket_dir" \
        -c wal_level=logical # PUBLISHER_CAPTURE=logical works on it too
    wait_for postgres pg_ok
    DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres
fi

# --- private Redis (no persistence: the replay log is only as durable as the run) ----------
if [[ -z "${REDIS_URL:-}" ]]; then
    start redis TERM "$RUN_DIR/redis.log" "${REDIS_SERVER_BIN:-redis-server}" --port "$REDIS_PORT" \
        --bind 127.0.0.1 --save "" --appendonly no --dir "$RUN_DIR"
    wait_for redis redis_ok "$REDIS_PORT"
    REDIS_URL=redis://127.0.0.1:$REDIS_PORT
fi
export DATABASE_URL REDIS_URL

# --- the services --------------------------------------------------------------------------
start publisher TERM "$RUN_DIR/publisher.log" env HEALTH_PORT="$HEALTH_PORT" "$BIN/publisher"
for port in "${WS_PORTS[@]}"; do
    start "ws-server-$port" TERM "$RUN_DIR/ws-server-$port.log" env PORT="$port" "$BIN/ws-server"
done
wait_for publisher http_ok "$HEALTH_PORT" /readyz
for port in "${WS_PORTS[@]}"; do wait_for "ws-server-$port" http_ok "$port" /readyz; done
# After the publisher is ready: its migrations create the orders table the API needs (the API
# never migrates; it would only report 503 until then).
start orders-api TERM "$RUN_DIR/orders-api.log" env API_PORT="$API_PORT" "$BIN/orders-api"
wait_for orders-api http_ok "$API_PORT" /readyz

cli=${BIN#"$ROOT"/} ws_urls="" health_urls=""
for port in "${WS_PORTS[@]}"; do
    ws_urls+=" ws://localhost:$port/ws" health_urls+="  http://localhost:$port/readyz"
done
# The dashboard fails over between every replica of this run.
servers=$(IFS=,; for port in "${WS_PORTS[@]}"; do printf '%s\n' "ws://localhost:$port/ws"; done | paste -sd,)
cat <<EOF

The pipeline is running (logs and data in $RUN_DIR).
  Dashboard  http://localhost:${WS_PORTS[0]}/?servers=$servers
  WebSocket ${ws_urls}
  Health     http://localhost:$HEALTH_PORT/readyz (publisher)${health_urls}
  HTTP API   http://localhost:$API_PORT/orders  http://localhost:$API_PORT/openapi.json
             (each also serves /healthz and /metrics)
  Database   $DATABASE_URL
  Redis      $REDIS_URL

Try it from another terminal (in $ROOT):
  $cli/cli-client watch --url ws://localhost:${WS_PORTS[0]}/ws
  $cli/cli-client table --url ws://localhost:${WS_PORTS[0]}/ws
  DATABASE_URL="$DATABASE_URL" REDIS_URL="$REDIS_URL" $cli/cli-client check --url ws://localhost:${WS_PORTS[0]}/ws --publisher-url http://localhost:$HEALTH_PORT
  psql "$DATABASE_URL" -c "INSERT INTO orders (customer_name, product_name, status) VALUES ('John Doe', 'Premium Widget', 'pending');"
  curl -i -X POST http://localhost:$API_PORT/orders -H 'Content-Type: application/json' -d '{"customer_name": "John Doe", "product_name": "Premium Widget", "amount": 100}'

Press Ctrl-C to stop everything.
EOF

# Run until a signal (the trap exits) or until any child exits by itself.
pids=()
for name in "${ORDER[@]}"; do pids+=("${PID_OF[$name]}"); done
status=0
wait -n -p exited "${pids[@]}" || status=$?
for name in "${ORDER[@]}"; do
    if [[ "${PID_OF[$name]}" == "${exited:-}" ]]; then
        unset "PID_OF[$name]"
        tail -n 20 "${LOG_OF[$name]}" >&2 || true
        die "$name exited with status $status (log above: ${LOG_OF[$name]})"
    fi
done
die "a service exited (status $status)"
