#!/usr/bin/env bash
# What each way of capture costs PostgreSQL's writers (docs/limits.md, "Capture through logical
# replication"): pgbench, 16 clients, a custom script of single-row autocommit UPDATEs of orders,
# durable commits (fsync and synchronous_commit on), in three variants run interleaved REPS times:
#   none     no realtime trigger (orders' own BEFORE UPDATE updated_at trigger stays)
#   notify   the shipped trigger, the publisher running with PUBLISHER_CAPTURE=notify
#   logical  the shipped trigger, the publisher running with PUBLISHER_CAPTURE=logical
# One private PostgreSQL with wal_level=logical for all three (logical mode needs it; the other
# two pay its slightly larger WAL too, so the comparison is of the trigger alone), a private
# Redis, the release publisher. For notify and logical it also reads the publisher's
# publisher_append_latency_seconds histogram before and after the run: the mean (exact) and
# the p50 and p99 bucket bounds of the time from the trigger's clock_timestamp() to the Redis
# append, under that load. Prints a table (median [min-max] of the repetitions), stops
# everything, removes its data.
# CLIENTS_E2E=N (notify and logical runs): also a ws-server and `orders-bench latency` with N
# WebSocket clients at 100 ev/s of its own writes during the pgbench run: COMMIT returning → a
# client, under that load (its p50/p99 per run in the TSV and the table).
# In logical runs it also reads the CPU time of the walsender that decodes the slot (the cost
# logical decoding adds to PostgreSQL) and reports it per 1,000 commits.
# Environment (defaults in brackets): DURATION seconds per run [15], REPS [3], CLIENTS [16],
# RATE (pgbench -R: commits/s to aim at, the same for every variant, for latency at equal load)
# [unthrottled],
# PORT [25642], REDIS_PORT [26489], HEALTH_PORT [19110], BASE [/tmp/capture-bench],
# TARGET_DIR (where the release publisher is) [target]. Run as root (the server runs as the
# postgres user) or as a user that may run initdb; pgbench, psql and redis-server on PATH.
#   cargo build --release -p publisher && bash scripts/capture-bench.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck disable=SC2012 # the Debian layout: /usr/lib/postgresql/<major>/bin, newest last
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin | tail -1)}
BASE=${BASE:-/tmp/capture-bench}
PORT=${PORT:-25642}
REDIS_PORT=${REDIS_PORT:-26489}
HEALTH_PORT=${HEALTH_PORT:-19110}
DURATION=${DURATION:-15}
REPS=${REPS:-3}
CLIENTS=${CLIENTS:-16}
TARGET_DIR=${TARGET_DIR:-$ROOT/target}
PUBLISHER=$TARGET_DIR/release/publisher
WS_SERVER=$TARGET_DIR/release/ws-server
BENCH_BIN=$TARGET_DIR/release/orders-bench
WS_PORT=${WS_PORT:-18280}
CLIENTS_E2E=${CLIENTS_E2E:-0}
SEED_ROWS=10000
DATA=$BASE/data
export PGHOST=$BASE PGPORT=$PORT PGUSER=postgres PGDATABASE=postgres
[[ -x $PUBLISHER ]] || { echo "no $PUBLISHER: cargo build --release -p publisher" >&2 && exit 1; }
if ((CLIENTS_E2E > 0)); then
    [[ -x $WS_SERVER && -x $BENCH_BIN ]] || { echo "CLIENTS_E2E: cargo build --release -p ws-server -p orders-bench" >&2 && exit 1; }
fi

as_pg() { if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
q() { PGOPTIONS="-c client_min_messages=warning" psql -X -q -A -t -v ON_ERROR_STOP=1 "$@"; }
PUB_PID="" REDIS_PID="" WS_PID=""
stop_publisher() {
    if [[ -n $PUB_PID ]]; then kill "$PUB_PID" 2>/dev/null || true; wait "$PUB_PID" 2>/dev/null || true; fi
    PUB_PID=""
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_publisher
    if [[ -n $WS_PID ]]; then kill "$WS_PID" 2>/dev/null || true; fi
    if [[ -n $REDIS_PID ]]; then kill "$REDIS_PID" 2>/dev/null || true; fi
    if [[ -f $DATA/postmaster.pid ]]; then as_pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null || true; fi
    rm -rf "$BASE"
    exit "$rc"
}
if [[ -e $BASE ]]; then echo "$BASE exists: another run?" >&2 && exit 1; fi
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$BASE/results"
[[ $EUID -eq 0 ]] && chown postgres "$BASE"

as_pg "$PGBIN/initdb" -D "$DATA" -A trust -U postgres >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$BASE/server.log" -w start \
    -o "-p $PORT -k $BASE -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_connections=100" >/dev/null
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$BASE/redis.log" 2>&1 &
REDIS_PID=$!
for f in "$ROOT"/sql/*.sql; do PGOPTIONS="-c client_min_messages=warning" q -f "$f"; done
q -c "INSERT INTO orders (customer_name, product_name, amount)
      SELECT 'customer-' || g, 'product-' || g, g % 1000 FROM generate_series(1, $SEED_ROWS) g"
q -c 'VACUUM ANALYZE'
if ((CLIENTS_E2E > 0)); then
    env REDIS_URL="redis://127.0.0.1:$REDIS_PORT" PORT="$WS_PORT" WS_BIND_ADDR=127.0.0.1 LOG_FORMAT=text \
        "$WS_SERVER" >"$BASE/ws-server.log" 2>&1 &
    WS_PID=$!
fi
TRIGGER="CREATE TRIGGER orders_realtime_notify AFTER INSERT OR UPDATE OR DELETE ON orders
         FOR EACH ROW EXECUTE FUNCTION realtime_notify('orders_channel')"
cat >"$BASE/update.sql" <<EOF
\set id random(1, $SEED_ROWS)
\set s random(1, 4)
UPDATE orders SET status = 'status-' || :s, amount = amount + 1 WHERE id = :id;
EOF

start_publisher() { # CAPTURE
    env DATABASE_URL="postgres://postgres@127.0.0.1:$PORT/postgres" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
        PUBLISHER_CAPTURE="$1" HEALTH_PORT="$HEALTH_PORT" PUBLISHER_BIND_ADDR=127.0.0.1 LOG_FORMAT=text \
        "$PUBLISHER" >>"$BASE/publisher-$1.log" 2>&1 &
    PUB_PID=$!
    local _
    for _ in $(seq 200); do
        [[ $(q -c "SELECT mode FROM realtime_capture") == "$1" ]] &&
            curl -fsS "http://127.0.0.1:$HEALTH_PORT/readyz" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "publisher ($1) not ready: $BASE/publisher-$1.log" >&2
    return 1
}
histogram() { # the append latency histogram: "le count" lines, then "sum S" and "count N"
    curl -fsS "http://127.0.0.1:$HEALTH_PORT/metrics" | awk '
        /^publisher_append_latency_seconds_bucket/ { match($0, /le="[^"]*"/); print substr($0, RSTART + 4, RLENGTH - 5), $NF }
        /^publisher_append_latency_seconds_sum/ { print "sum", $NF }
        /^publisher_append_latency_seconds_count/ { print "count", $NF }'
}
# mean_ms p50_le_ms p99_le_ms from two histogram snapshots
latency() {
    awk 'FNR == NR { a[$1] = $2; next } { d[$1] = $2 - a[$1]; if ($1 != "sum" && $1 != "count") le[++n] = $1 }
         END { c = d["count"]; if (c <= 0) { print "- - -"; exit }
               p50 = p99 = "inf"
               for (i = 1; i <= n; i++) { if (p50 == "inf" && d[le[i]] >= c * 0.5) p50 = le[i] * 1000
                                          if (p99 == "inf" && d[le[i]] >= c * 0.99) p99 = le[i] * 1000 }
               printf "%.2f %s %s\n", d["sum"] / c * 1000, p50, p99 }' "$1" "$2"
}
TSV=$BASE/results/results.tsv
printf 'rep\tvariant\ttps\tlat_ms\tappend_mean_ms\tappend_p50_le_ms\tappend_p99_le_ms\tpublished\tload1\twalsender_cpu_s\tclient_p50_ms\tclient_p99_ms\tclient_lost_dup\n' >"$TSV"
cpu_seconds() { # PID: utime + stime of a process, in seconds
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}
for rep in $(seq "$REPS"); do
    for variant in none notify logical; do
        load=$(cut -d' ' -f1 /proc/loadavg)
        case $variant in
            none) q -c 'DROP TRIGGER IF EXISTS orders_realtime_notify ON orders' ;;
            *)
                q -c 'DROP TRIGGER IF EXISTS orders_realtime_notify ON orders' -c "$TRIGGER"
                start_publisher "$variant"
                histogram >"$BASE/h0"
                ;;
        esac
        out=$BASE/results/$variant-r$rep.out
        before=$(q -c 'SELECT count(*) FROM realtime_events')
        walsender="" cpu0=0
        if [[ $variant == logical ]]; then
            walsender=$(q -c "SELECT pid FROM pg_stat_replication WHERE application_name = 'publisher-capture'")
            cpu0=$(cpu_seconds "$walsender")
        fi
        e2e_pid=""
        if ((CLIENTS_E2E > 0)) && [[ $variant != none ]]; then
            "$BENCH_BIN" latency --database-url "postgres://postgres@127.0.0.1:$PORT/postgres" \
                --url "ws://127.0.0.1:$WS_PORT/ws" --clients "$CLIENTS_E2E" --rate 100 --writers 2 \
                --duration "$((DURATION - 2))s" --drain 20s --label "$variant" >"$out.e2e" 2>&1 &
            e2e_pid=$!
            sleep 1
        fi
        pgbench -n -M prepared -T "$DURATION" -c "$CLIENTS" -j 2 ${RATE:+-R "$RATE"} -f "$BASE/update.sql" >"$out" 2>&1
        client="- - -"
        if [[ -n $e2e_pid ]]; then
            wait "$e2e_pid" || true
            client=$(awk '/ms p50/ { for (i = 1; i <= NF; i++) { if ($i == "p50") p50 = $(i + 1); if ($i == "p99") p99 = $(i + 1)
                                       if ($i == "lost") lost = $(i + 1); if ($i == "dup") dup = $(i + 1) } }
                          END { if (p50 == "") print "- - -"; else print p50, p99, lost + dup }' "$out.e2e")
        fi
        tps=$(awk '/^tps =/ { print $3 }' "$out")
        lat=$(awk '/^latency average/ { print $4 }' "$out")
        stats="- - -" published=0 walcpu=-
        if [[ $variant != none ]]; then
            # Wait (bounded) for the publisher to drain what the run wrote.
            for _ in $(seq 600); do
                [[ $(q -c 'SELECT count(*) FROM realtime_events WHERE published_at IS NULL') == 0 ]] && break
                sleep 0.1
            done
            histogram >"$BASE/h1"
            walcpu=-
            [[ -n $walsender ]] && walcpu=$(awk -v a="$cpu0" -v b="$(cpu_seconds "$walsender")" 'BEGIN { printf "%.2f", b - a }')
            stats=$(latency "$BASE/h0" "$BASE/h1")
            published=$(($(q -c 'SELECT count(*) FROM realtime_events') - before))
            stop_publisher
        fi
        read -r mean p50 p99 <<<"$stats"
        read -r c50 c99 clost <<<"$client"
        printf '%s\t%s\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$variant" "$tps" "$lat" "$mean" "$p50" "$p99" \
            "$published" "$load" "$walcpu" "$c50" "$c99" "$clost" | tee -a "$TSV"
    done
done

{
    echo "PostgreSQL $(q -c 'SHOW server_version'), wal_level=logical, $(nproc) CPUs, $(date -u '+%Y-%m-%d %H:%M') UTC;" \
        "$CLIENTS clients, single-row UPDATEs, ${RATE:+at $RATE commits/s (pgbench -R), }${DURATION}s per run, $REPS repetitions; median [min-max]"
    printf '%-8s %-22s %-22s %-20s %s\n' variant "commits/s" "mean commit ms" "append mean ms" "append p50/p99 per run (bucket bounds, ms)"
    for variant in none notify logical; do
        line=$variant
        for col in 3 4 5; do
            line+=$'\t'$(awk -F'\t' -v v="$variant" -v c="$col" 'NR > 1 && $2 == v { print $c }' "$TSV" | sort -g |
                awk -v c="$col" '{ x[++n] = $1 } END { if (x[1] == "-") { print "-"; exit }
                    m = n % 2 ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2
                    printf(c == 3 ? "%.0f [%.0f-%.0f]" : "%.2f [%.2f-%.2f]", m, x[1], x[n]) }')
        done
        bounds=$(awk -F'\t' -v v="$variant" 'NR > 1 && $2 == v && $6 != "-" { printf "%s%s/%s", sep, $6, $7; sep = " " }' "$TSV")
        IFS=$'\t' read -r v tps lat mean <<<"$line"
        printf '%-8s %-22s %-22s %-20s %s\n' "$v" "$tps" "$lat" "$mean" "${bounds:--}"
    done
    if ((CLIENTS_E2E > 0)); then
        awk -F'\t' 'NR > 1 && $11 != "-" { c[$2] = c[$2] sprintf(" %s/%s", $11, $12); l[$2] += $13 }
                     END { for (v in c) printf "COMMIT -> client (%s, p50/p99 ms per run):%s; lost+dup %d\n", v, c[v], l[v] }' "$TSV"
    fi
    awk -F'\t' 'NR > 1 && $2 == "logical" && $10 != "-" { printf "%swalsender %.2f s CPU for %d commits (%.3f s per 1,000)", sep, $10, $8, $10 / $8 * 1000; sep = "; " }
                 END { print "" }' "$TSV"
} | tee "$BASE/results/table.txt"
cp -r "$BASE/results" "${RESULTS:-/tmp/capture-bench-results}"
