#!/usr/bin/env bash
# Measure this project beside the Node.js reference pipeline, in the same run, on this machine:
# both systems run at once (their own database and Redis), and orders-bench runs each scenario
# against one then the other, interleaved (ABBA), REPEAT times; then `orders-bench compare`
# prints each figure's medians and the median ratio with its spread.
# `bash scripts/bench.sh --help` for the options.
set -euo pipefail

usage() {
    cat <<EOF
usage: bash scripts/bench.sh [--no-build] [SCENARIO [ORDERS-BENCH OPTIONS...]]

SCENARIO is latency (default), fanout, throughput or idle, measured on both systems; or
filtered or publisher, measured on ours only (the reference has neither). The options after it go to every
orders-bench run (e.g. \`fanout --clients 10000 --rate 10 --duration 20s\`). Starts a private
PostgreSQL (one server, a database for each system) and two Redis servers, our publisher and
two ws-server replicas (release builds), the Node reference's publisher and two replicas, then
runs the scenario REPEAT times against each, watching each system's two replicas, and stops
everything it started. Reports go to \$RUN_DIR/results.

Environment (defaults in brackets):
  RUN_DIR     data, logs and reports [/tmp/orders-bench-\$(id -u)]
  REPEAT      repetitions per system [3]
  NODE_PEER   the Node reference's source [../shared/peers/node-pipeline]; copied into
              \$RUN_DIR/node and \`npm ci\` run there once (never in the source)
  PG_PORT [25432]  REDIS_PORT [26479] (ours)  NODE_REDIS_PORT [26480]  (all below the
              ephemeral range: thousands of client sockets take ports there)
  WS_PORTS [18180 18181] (ours)  NODE_PORTS [18190 18191]  HEALTH_PORT [19100]
  PG_SYNCHRONOUS_COMMIT  PostgreSQL's synchronous_commit [on]
  CAPTURE     our publisher's PUBLISHER_CAPTURE: notify or logical (then PostgreSQL runs with
              wal_level=logical) [notify]
  WS_THREADS  our replicas' WS_THREADS [1: two replicas on two cores, one thread each,
              as Node runs; 0 for one per core]
  REDIS_CLUSTER  1: our Redis is a 3-master Redis Cluster on REDIS_PORT and the next two
              ports (the services find it from the first node's URL) [0: one server]
EOF
}

BUILD=1
if [[ "${1:-}" == --no-build ]]; then BUILD=0 && shift; fi
case "${1:-}" in -h | --help) usage && exit 0 ;; esac
SCENARIO=${1:-latency}
shift || true
case "$SCENARIO" in
    latency | fanout | throughput | idle) ONLY_OURS=0 ;;
    filtered | publisher) ONLY_OURS=1 ;; # the Node reference has no filters and no replay log
    *) echo "bench: unknown scenario $SCENARIO (try --help)" >&2 && exit 2 ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CAPTURE=${CAPTURE:-notify}
case "$CAPTURE" in notify) WAL_LEVEL=replica ;; logical) WAL_LEVEL=logical ;; *) echo "bench: CAPTURE is notify or logical" >&2 && exit 2 ;; esac
RUN_DIR=${RUN_DIR:-/tmp/orders-bench-$(id -u)}
REPEAT=${REPEAT:-3}
NODE_PEER=${NODE_PEER:-$ROOT/../shared/peers/node-pipeline}
PG_PORT=${PG_PORT:-25432} REDIS_PORT=${REDIS_PORT:-26479} NODE_REDIS_PORT=${NODE_REDIS_PORT:-26480}
HEALTH_PORT=${HEALTH_PORT:-19100}
read -r -a WS_PORTS <<<"${WS_PORTS:-18180 18181}"
read -r -a NODE_PORTS <<<"${NODE_PORTS:-18190 18191}"
export PATH="$HOME/.cargo/bin:$PATH"
cd "$ROOT"

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "error: $*" && exit 1; }

declare -A PID_OF=()
ORDER=()
start() { # NAME LOG CMD...: in its own session, so Ctrl-C reaches only this script
    local name=$1 logfile=$2
    shift 2
    setsid "$@" >"$logfile" 2>&1 &
    PID_OF[$name]=$!
    ORDER+=("$name")
}
cleanup() {
    local status=$? i
    trap '' INT TERM
    # Reverse start order: services before the stores they use. (A restarted replica is
    # listed twice; its second stop finds it gone.)
    for ((i = ${#ORDER[@]} - 1; i >= 0; i--)); do stop_one "${ORDER[$i]}"; done
    exit "$status"
}
stop_one() { # NAME: TERM (PostgreSQL: INT, a fast shutdown that does not wait for clients), then KILL after 10 s
    local pid=${PID_OF[$1]} sig=TERM
    [[ $1 != postgres ]] || sig=INT
    kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/ready.sh
source "$ROOT/scripts/ready.sh"
log_has() { grep -q "$2" "$1" 2>/dev/null; }
wait_for() { # NAME CHECK...: until CHECK passes; fail if NAME exits or 60 s pass
    local name=$1 deadline=$((SECONDS + 60))
    shift
    until "$@"; do
        kill -0 "${PID_OF[$name]}" 2>/dev/null || die "$name exited during startup (see $RUN_DIR/$name.log)"
        ((SECONDS < deadline)) || die "$name not ready after 60s (see $RUN_DIR/$name.log)"
        sleep 0.2
    done
}

# --- prerequisites, builds, the Node copy ------------------------------------------------
# shellcheck source=scripts/install-deps.sh
source "$ROOT/scripts/install-deps.sh"
ensure_deps
PG_BIN=$(pg_bin_dir)
command -v node >/dev/null && command -v npm >/dev/null || die "node and npm are needed for the reference (apt-get install nodejs npm)"
[[ -f "$NODE_PEER/ws-server.js" ]] || die "no Node reference at $NODE_PEER (set NODE_PEER)"
if ((BUILD)); then
    log "building: cargo build --release -p publisher -p ws-server -p orders-bench"
    cargo build --release -p publisher -p ws-server -p orders-bench
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
BIN=${TARGET_DIR:-$ROOT/target}/release
for b in publisher ws-server orders-bench; do [[ -x "$BIN/$b" ]] || die "$BIN/$b is missing: build it (drop --no-build)"; done
for port in "$PG_PORT" "$REDIS_PORT" "$NODE_REDIS_PORT" "$HEALTH_PORT" "${WS_PORTS[@]}" "${NODE_PORTS[@]}"; do
    ! port_busy "$port" || die "port $port is in use: is a previous run still going?"
done
mkdir -p "$RUN_DIR/results" && chmod 755 "$RUN_DIR"
if [[ ! -d "$RUN_DIR/node/node_modules" ]]; then
    log "copying the Node reference to $RUN_DIR/node and running npm ci there"
    rm -rf "$RUN_DIR/node" && mkdir -p "$RUN_DIR/node"
    cp "$NODE_PEER"/*.js "$NODE_PEER"/*.json "$NODE_PEER"/*.sql "$RUN_DIR/node/"
    (cd "$RUN_DIR/node" && npm ci --no-audit --no-fund >"$RUN_DIR/npm.log" 2>&1) || die "npm ci failed: see $RUN_DIR/npm.log"
fi

# --- PostgreSQL (fresh each run: no table left from an earlier one) and two Redis ----------
pgdata=$RUN_DIR/pg socket_dir=$RUN_DIR/pg-socket as_pg=()
rm -rf "$pgdata" && mkdir -p "$pgdata" "$socket_dir"
if ((EUID == 0)); then
    chown postgres: "$pgdata" "$socket_dir"
    as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups)
fi
chmod 700 "$pgdata"
(cd "$RUN_DIR" && "${as_pg[@]}" "$PG_BIN/initdb" -D "$pgdata" -U postgres -A trust -E UTF8 --no-locale -N) \
    >"$RUN_DIR/initdb.log" 2>&1 || die "initdb failed: see $RUN_DIR/initdb.log"
# Durable commits as a user would run them (PG_SYNCHRONOUS_COMMIT=off takes the disk's flush
# out of a throughput run); max_connections for the writers of both systems.
start postgres "$RUN_DIR/postgres.log" "${as_pg[@]}" "$PG_BIN/postgres" -D "$pgdata" -c port="$PG_PORT" \
    -c listen_addresses=127.0.0.1 -c unix_socket_directories="$socket_dir" -c max_connections=200 \
    -c synchronous_commit="${PG_SYNCHRONOUS_COMMIT:-on}" -c wal_level="$WAL_LEVEL"
wait_for postgres "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"
OURS_DB=postgres://postgres@127.0.0.1:$PG_PORT/postgres
NODE_DB=postgres://postgres@127.0.0.1:$PG_PORT/nodepeer
"$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres nodepeer
"$PG_BIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d nodepeer -f "$RUN_DIR/node/schema.sql" >/dev/null
REDIS_SERVERS=("redis:$REDIS_PORT" "node-redis:$NODE_REDIS_PORT")
if [[ "${REDIS_CLUSTER:-0}" == 1 ]]; then
    REDIS_SERVERS=("node-redis:$NODE_REDIS_PORT")
    cluster_nodes=()
    for port in "$REDIS_PORT" $((REDIS_PORT + 1)) $((REDIS_PORT + 2)); do
        mkdir -p "$RUN_DIR/redis-$port" && rm -f "$RUN_DIR/redis-$port/nodes.conf"
        start "redis-$port" "$RUN_DIR/redis-$port.log" redis-server --port "$port" --bind 127.0.0.1 --save "" \
            --appendonly no --cluster-enabled yes --cluster-config-file "$RUN_DIR/redis-$port/nodes.conf" \
            --dir "$RUN_DIR/redis-$port"
        wait_for "redis-$port" redis_ok "$port"
        cluster_nodes+=("127.0.0.1:$port")
    done
    redis-cli --cluster create "${cluster_nodes[@]}" --cluster-yes >"$RUN_DIR/redis-cluster.log" 2>&1 ||
        die "redis-cli --cluster create failed: see $RUN_DIR/redis-cluster.log"
    wait_for "redis-$REDIS_PORT" bash -c "redis-cli -p $REDIS_PORT cluster info | grep -q cluster_state:ok"
fi
for r in "${REDIS_SERVERS[@]}"; do
    start "${r%%:*}" "$RUN_DIR/${r%%:*}.log" redis-server --port "${r##*:}" --bind 127.0.0.1 --save "" --appendonly no
    wait_for "${r%%:*}" redis_ok "${r##*:}"
done

# --- the two systems ------------------------------------------------------------------------
# WS_MAX_CONNECTIONS above the default 10 000 so the replicas' own cap is not what a fan-out
# run measures (the process's 20 000-file limit still is).
export RUST_LOG=${RUST_LOG:-warn}
start publisher "$RUN_DIR/publisher.log" env PUBLISHER_CAPTURE="$CAPTURE" DATABASE_URL="$OURS_DB" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
    HEALTH_PORT="$HEALTH_PORT" "$BIN/publisher"
wait_for publisher http_ok "$HEALTH_PORT" /readyz
start_ours_replicas() { # (re)start our two replicas; sets OURS_URLS and OURS_WATCH
    local port
    OURS_URLS=() OURS_WATCH=()
    for port in "${WS_PORTS[@]}"; do
        if [[ -n "${PID_OF[ws-$port]:-}" ]]; then stop_one "ws-$port"; fi
        start "ws-$port" "$RUN_DIR/ws-$port.log" env REDIS_URL="redis://127.0.0.1:$REDIS_PORT" PORT="$port" \
            WS_MAX_CONNECTIONS=19000 WS_THREADS="${WS_THREADS:-1}" "$BIN/ws-server"
        wait_for "ws-$port" http_ok "$port" /readyz
        OURS_URLS+=(--url "ws://127.0.0.1:$port/ws") OURS_WATCH+=(--watch-pid "ws-$port=${PID_OF[ws-$port]}")
    done
}
start_ours_replicas
start node-publisher "$RUN_DIR/node-publisher.log" env DATABASE_URL="$NODE_DB" \
    REDIS_URL="redis://127.0.0.1:$NODE_REDIS_PORT" node "$RUN_DIR/node/publisher.js"
wait_for node-publisher log_has "$RUN_DIR/node-publisher.log" "listening on"
start_node_replicas() { # the same for the reference
    local port
    NODE_URLS=() NODE_WATCH=()
    for port in "${NODE_PORTS[@]}"; do
        if [[ -n "${PID_OF[node-ws-$port]:-}" ]]; then stop_one "node-ws-$port"; fi
        start "node-ws-$port" "$RUN_DIR/node-ws-$port.log" env REDIS_URL="redis://127.0.0.1:$NODE_REDIS_PORT" \
            PORT="$port" node "$RUN_DIR/node/ws-server.js"
        wait_for "node-ws-$port" http_ok "$port" /healthz
        NODE_URLS+=(--url "ws://127.0.0.1:$port/") NODE_WATCH+=(--watch-pid "node-ws-$port=${PID_OF[node-ws-$port]}")
    done
}
start_node_replicas
log "both systems are up; $SCENARIO × $REPEAT each, interleaved"

# --- the runs: ABBA order, so a drift in the machine's load falls on both sides alike ------
stamp=$(date -u +%Y%m%dT%H%M%SZ)
A=() B=()
run_one() { # SYSTEM REP
    local out="$RUN_DIR/results/$stamp-$SCENARIO-$1-$2.json"
    # Memory per connection is read on fresh replicas: a replica that held connections before
    # keeps their freed memory for reuse, and the next run's growth would look smaller.
    if [[ $SCENARIO == idle && $2 -gt 1 ]]; then
        if [[ $1 == ours ]]; then start_ours_replicas; else start_node_replicas; fi
    fi
    if [[ $SCENARIO == publisher ]]; then
        "$BIN/orders-bench" publisher --database-url "$OURS_DB" --redis-url "redis://127.0.0.1:$REDIS_PORT" \
            --label ours --json "$out" "${EXTRA[@]}"
    elif [[ $1 == ours ]]; then
        "$BIN/orders-bench" "$SCENARIO" --database-url "$OURS_DB" "${OURS_URLS[@]}" "${OURS_WATCH[@]}" \
            --label ours --json "$out" "${EXTRA[@]}"
        A+=("$out")
    else
        "$BIN/orders-bench" "$SCENARIO" --database-url "$NODE_DB" "${NODE_URLS[@]}" "${NODE_WATCH[@]}" \
            --label node --json "$out" "${EXTRA[@]}"
        B+=("$out")
    fi
}
EXTRA=("$@")
for ((rep = 1; rep <= REPEAT; rep++)); do
    if ((ONLY_OURS)); then order=(ours); elif ((rep % 2)); then order=(ours node); else order=(node ours); fi
    for sys in "${order[@]}"; do
        printf '[%s %d/%d] ' "$sys" "$rep" "$REPEAT" >&2
        run_one "$sys" "$rep"
    done
done
if ((ONLY_OURS)); then log "reports in $RUN_DIR/results ($stamp-*)" && exit 0; fi
"$BIN/orders-bench" compare --a "${A[@]}" --b "${B[@]}" | tee "$RUN_DIR/results/$stamp-$SCENARIO-compare.txt"
log "reports in $RUN_DIR/results ($stamp-*)"
