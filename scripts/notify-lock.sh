#!/usr/bin/env bash
# What PostgreSQL's commit-time NOTIFY lock costs the orders trigger (docs/limits.md).
#
# Starts a private PostgreSQL, loads sql/ into three databases and compares, with pgbench,
# single-row autocommit INSERTs and UPDATEs into orders (one pgbench run mixes both 50/50 and
# reports each) for
#   A   the trigger as shipped (outbox row + pg_notify), a LISTEN session connected
#   A0  the same, no session listening (at 64 clients only, to keep the run short)
#   B   the trigger's outbox insert kept, the pg_notify call removed
#   C   no realtime trigger (orders' own BEFORE UPDATE updated_at trigger stays)
# at each client count, with synchronous_commit on and off, REPS times, interleaved (every
# repetition runs every point once, variants next to each other), then a stalled-listener
# test of the notification queue. Prints a table (median [min-max] over the repetitions),
# stops the server and removes its data directory.
# The LISTEN session is `psql -c 'LISTEN orders_channel' -c 'SELECT pg_sleep(1000)'`: it is
# registered and never reads, so the queue grows behind it; a new one is started for each A
# run and terminated after it (pg_notification_queue_usage() is recorded first).
#
# Environment (defaults in brackets): DURATION seconds per run [10], REPS [3],
# CLIENTS ["1 4 16 64"], PORT [25632], BASE dir [/tmp/limits-pg], RESULTS dir
# [/tmp/limits-results] (kept: raw pgbench output, results.tsv, table.txt),
# MODE [matrix], or mitigations: instead of the matrix and the queue test, the disk's
# fdatasync rate (pg_test_fsync) and, at 64/16 clients, ten rows per transaction,
# commit_delay/commit_siblings and a concurrent long transaction (about 6 minutes; give it
# its own RESULTS, the run empties RESULTS of an earlier run's files),
# BUDGET seconds for the whole run [880]: a matrix run that would end after it is skipped
# and counted in the summary. The full default matrix takes about 14 minutes.
# Run as root, the server runs as the postgres user (runuser); psql and pgbench on PATH.
#   bash scripts/notify-lock.sh
#   MODE=mitigations RESULTS=/tmp/limits-results-mitigations bash scripts/notify-lock.sh
set -euo pipefail

ROOT=${ROOT:-$(cd "$(dirname "$0")/.." && pwd)} # the checkout whose sql/ is loaded
# shellcheck disable=SC2012 # the Debian layout: /usr/lib/postgresql/<major>/bin, newest last
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin | tail -1)}
BASE=${BASE:-/tmp/limits-pg}
PORT=${PORT:-25632}
DURATION=${DURATION:-10}
REPS=${REPS:-3}
CLIENTS=${CLIENTS:-"1 4 16 64"}
RESULTS=${RESULTS:-/tmp/limits-results}
BUDGET=${BUDGET:-880}
SEED_ROWS=10000
MODE=${MODE:-matrix}
case $MODE in matrix | mitigations) ;; *) echo "MODE: matrix or mitigations" >&2 && exit 2 ;; esac
START=$SECONDS
DATA=$BASE/data
export PGHOST=$BASE PGPORT=$PORT PGUSER=postgres

# initdb and postgres refuse to run as root: run the server as the postgres user then.
as_pg() { if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
q() { psql -X -q -A -t -v ON_ERROR_STOP=1 "$@"; } # DB SQL...
stop_listener() {
    q -d postgres -c "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                      WHERE application_name = 'limits-listener'" >/dev/null 2>&1 || true
    if [[ -n "${LISTENER:-}" ]]; then wait "$LISTENER" 2>/dev/null || true; fi
    LISTENER=""
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "${BENCH:-}" ]]; then kill "$BENCH" 2>/dev/null || true; fi
    if [[ -n "${LONGTX:-}" ]]; then kill "$LONGTX" 2>/dev/null || true; fi
    stop_listener
    if [[ -f $DATA/postmaster.pid ]]; then as_pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null || true; fi
    rm -rf "$BASE"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if (: <"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || [[ -e $BASE ]]; then
    echo "port $PORT busy or $BASE exists: another run?" >&2
    trap - EXIT
    exit 1
fi
mkdir -p "$BASE" "$RESULTS"
rm -f "$RESULTS"/*.out* "$RESULTS"/*.txt "$RESULTS"/results.tsv
[[ $EUID -eq 0 ]] && chown postgres "$BASE"

# --- server and schema -------------------------------------------------------------------
as_pg "$PGBIN/initdb" -D "$DATA" -A trust -U postgres >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$BASE/server.log" -o "-p $PORT -k $BASE" -w start >/dev/null
PGVERSION=$(q -d postgres -c 'SHOW server_version')

for db in va vb vc; do
    q -d postgres -c "CREATE DATABASE $db"
    for f in "$ROOT"/sql/*.sql; do PGOPTIONS="-c client_min_messages=warning" q -d "$db" -f "$f"; done
done
# B: the shipped realtime_notify() (sql/0003_notify.sql) without its IF ... pg_notify ... END IF:
# the shipped file itself, re-applied with that block cut out, so the two never drift apart.
sed '/IF octet_length(change) < 7900 THEN/,/END IF;/d' "$ROOT/sql/0003_notify.sql" |
    PGOPTIONS="-c client_min_messages=warning" q -d vb -f -
q -d vc -c 'DROP TRIGGER orders_realtime_notify ON orders'
for db in va vb vc; do
    q -d "$db" -c "INSERT INTO orders (customer_name, product_name, amount)
                   SELECT 'customer-' || g, 'product-' || g, g % 1000 FROM generate_series(1, $SEED_ROWS) g"
    q -d "$db" -c 'VACUUM ANALYZE'
done
# Check the variants are what they claim.
[[ $(q -d va -c "SELECT prosrc ~ 'pg_notify' FROM pg_proc WHERE proname = 'realtime_notify'") == t ]]
[[ $(q -d vb -c "SELECT prosrc ~ 'pg_notify' FROM pg_proc WHERE proname = 'realtime_notify'") == f ]]
[[ $(q -d vc -c "SELECT count(*) FROM pg_trigger WHERE tgname = 'orders_realtime_notify'") == 0 ]]

cat >"$BASE/insert.sql" <<'EOF'
\set c random(1, 1000)
INSERT INTO orders (customer_name, product_name, amount) VALUES ('customer-' || :c, 'product-' || :c, :c);
EOF
cat >"$BASE/update.sql" <<EOF
\set id random(1, $SEED_ROWS)
\set s random(1, 4)
UPDATE orders SET status = 'status-' || :s, amount = amount + 1 WHERE id = :id;
EOF
# MODE=mitigations: ten rows per transaction (ten trigger firings, ten NOTIFYs, one commit).
cat >"$BASE/insert10.sql" <<'EOF'
\set c random(1, 1000)
INSERT INTO orders (customer_name, product_name, amount) SELECT 'customer-' || :c, 'product-' || :c, :c FROM generate_series(1, 10);
EOF
cat >"$BASE/update10.sql" <<EOF
\set id random(1, $((SEED_ROWS - 9)))
\set s random(1, 4)
UPDATE orders SET status = 'status-' || :s, amount = amount + 1 WHERE id BETWEEN :id AND :id + 9;
EOF

start_listener() { # DB: a session that LISTENs and never reads
    PGAPPNAME=limits-listener psql -X -q -d "$1" -c 'LISTEN orders_channel' -c 'SELECT pg_sleep(1000)' \
        >/dev/null 2>&1 &
    LISTENER=$!
    local _
    for _ in $(seq 100); do
        [[ $(q -d postgres -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'limits-listener'
                               AND query LIKE 'SELECT pg_sleep%' AND state = 'active'") == 1 ]] && return 0
        sleep 0.05
    done
    echo "listener did not start" >&2
    return 1
}
cpu_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat; } # busy idle(+iowait)
# pgbench DB CLIENTS SYNC OUTFILE (EXTRA_OPTS: more server settings; INS, UPD: the scripts
# [insert, update]); samples the pgbench backends' wait events 5 times meanwhile
# and writes "busy% waits" to OUTFILE.stat (machine CPU busy %; waits: mean backends per
# sample in each wait event, CPU = active and not waiting).
bench() {
    local db=$1 c=$2 sync=$3 out=$4 b0 i0 b1 i1
    read -r b0 i0 < <(cpu_ticks)
    PGOPTIONS="-c synchronous_commit=$sync ${EXTRA_OPTS:-}" timeout $((DURATION + 60)) \
        pgbench -n -M prepared -T "$DURATION" -c "$c" -j 2 \
        -f "$BASE/${INS:-insert}.sql@1" -f "$BASE/${UPD:-update}.sql@1" "$db" >"$out" 2>&1 &
    BENCH=$!
    : >"$out.waits"
    sleep "$(awk -v d="$DURATION" 'BEGIN { print d * 0.2 }')"
    for _ in 1 2 3 4 5; do
        q -d postgres -F ':' -c "SELECT coalesce(wait_event_type || '.' || wait_event, 'CPU'), count(*)
                                 FROM pg_stat_activity WHERE application_name = 'pgbench' AND state = 'active'
                                 GROUP BY 1" >>"$out.waits" || true
        sleep "$(awk -v d="$DURATION" 'BEGIN { print d * 0.12 }')"
    done
    wait "$BENCH"
    BENCH=""
    read -r b1 i1 < <(cpu_ticks)
    {
        awk -v b=$((b1 - b0)) -v i=$((i1 - i0)) 'BEGIN { printf "%.0f ", 100 * b / (b + i) }'
        awk -F: '{ n[$1] += $2 } END { s = ""; for (k in n) s = s sprintf("%s=%.1f,", k, n[k] / 5); print (s == "" ? "-" : s) }' "$out.waits"
    } >"$out.stat"
}
# tps lat ins_tps ins_lat upd_tps upd_lat from a pgbench output
parse() {
    awk '/^latency average/ { lat = $4 } /^tps =/ { tps = $3 }
         /^SQL script 1/ { s = 1 } /^SQL script 2/ { s = 2 }
         /^ - .* transactions \(/ { t[s] = $NF; sub(/\)/, "", t[s]) }
         /^ - latency average/ { l[s] = $5 }
         END { print tps, lat, t[1], l[1], t[2], l[2] }' "$1"
}

TSV=$RESULTS/results.tsv
printf 'rep\tsync\tclients\tvariant\ttps\tlat_ms\tins_tps\tins_lat_ms\tupd_tps\tupd_lat_ms\tload1\tcpu_busy_pct\twaits\tqueue_usage\n' >"$TSV"
skipped=0
record() { # REP SYNC CLIENTS VARIANT OUTFILE QUEUE_USAGE LOAD
    local busy waits tps lat it il ut ul
    read -r busy waits <"$5.stat"
    read -r tps lat it il ut ul < <(parse "$5")
    printf '%s\t%s\t%s\t%s\t%.0f\t%s\t%.0f\t%s\t%.0f\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" \
        "$tps" "$lat" "$it" "$il" "$ut" "$ul" "$7" "$busy" "$waits" "$6" | tee -a "$TSV"
}

if [[ $MODE == matrix ]]; then
# --- stalled listener and the notification queue -------------------------------------------
QT=$RESULTS/queue.txt
{
    echo "# notification queue behind a LISTEN session that never reads (database va, 16 clients, synchronous_commit=off, ${DURATION}s)"
    start_listener va
    echo "usage with listener, before: $(q -d va -c 'SELECT pg_notification_queue_usage()')"
    PGOPTIONS="-c synchronous_commit=off" pgbench -n -M prepared -T "$DURATION" -c 16 -j 2 \
        -f "$BASE/insert.sql@1" -f "$BASE/update.sql@1" va >"$RESULTS/queue-pgbench.out" 2>&1
    n=$(awk '/^number of transactions actually processed/ { print $NF }' "$RESULTS/queue-pgbench.out")
    u=$(q -d va -c 'SELECT pg_notification_queue_usage()')
    echo "notifications sent: $n; usage after: $u"
    awk -v u="$u" -v n="$n" -v d="$DURATION" 'BEGIN { b = u * 8 * 1024 ^ 3;
        printf "= %.0f MB queued, %.0f bytes per notification; at this rate 8 GB fills in %.0f s (%.1f h)\n",
               b / 1e6, b / n, d / u, d / u / 3600 }'
    sleep 2
    echo "usage 2 s later, listener still connected, no traffic: $(q -d va -c 'SELECT pg_notification_queue_usage()')"
    stop_listener
    echo "usage right after the listener is terminated: $(q -d va -c 'SELECT pg_notification_queue_usage()')"
    q -d va -c "SELECT pg_notify('orders_channel', 'x')" >/dev/null
    echo "usage after one more NOTIFY: $(q -d va -c 'SELECT pg_notification_queue_usage()')"
    PGOPTIONS="-c synchronous_commit=off" pgbench -n -M prepared -T 2 -c 4 -j 2 -f "$BASE/insert.sql" va >/dev/null 2>&1
    echo "usage after 2 s more notify traffic (no listener): $(q -d va -c 'SELECT pg_notification_queue_usage()')"
} | tee "$QT"

# --- the matrix ---------------------------------------------------------------------------
for rep in $(seq "$REPS"); do
    for sync in on off; do
        echo "== rep $rep synchronous_commit=$sync: $(date -u +%H:%M:%S) UTC, uptime:$(uptime)" | tee -a "$RESULTS/uptime.txt"
        for c in $CLIENTS; do
            variants="A B C"
            [[ $c == 64 ]] && variants="A A0 B C"
            for v in $variants; do
                if ((SECONDS - START + DURATION + 5 > BUDGET)); then
                    skipped=$((skipped + 1))
                    continue
                fi
                case $v in A | A0) db=va ;; B) db=vb ;; C) db=vc ;; esac
                load=$(cut -d' ' -f1 /proc/loadavg)
                [[ $v == A ]] && start_listener va
                out=$RESULTS/$v-$sync-c$c-r$rep.out
                bench "$db" "$c" "$sync" "$out"
                usage=-
                if [[ $v == A ]]; then
                    usage=$(q -d va -c 'SELECT round(pg_notification_queue_usage()::numeric, 6)')
                    stop_listener
                fi
                record "$rep" "$sync" "$c" "$v" "$out" "$usage" "$load"
            done
        done
    done
done
else
# --- MODE=mitigations: batching, commit_delay, a long transaction ----------------------------
# LABEL:DB:CLIENTS:SYNC. A0 = shipped trigger, no listener; -b10 ten rows per transaction;
# -cd commit_delay=1000 commit_siblings=5; -ltx a concurrent transaction that inserted an
# order (its NOTIFY pending) and stays open through the run.
# The disk's own rate of WAL flushes (PostgreSQL's wal_sync_method is fdatasync here): one
# durable commit at a time can go no faster.
echo "wal_sync_method: $(q -d postgres -c 'SHOW wal_sync_method')" | tee "$RESULTS/fsync.txt"
fsync_rate() { # the one-8kB-write figures of pg_test_fsync (2 s per method)
    "$PGBIN/pg_test_fsync" -s 2 -f "$BASE/fsync.test" >"$BASE/fsync.out"
    echo "$1 ($(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1 /proc/loadavg)):"
    awk '/one 8kB write/ { f = 1 } /two 8kB writes/ { f = 0 } f && /^[ \t]+(open_datasync|fdatasync) /' "$BASE/fsync.out"
}
fsync_rate before | tee -a "$RESULTS/fsync.txt"
POINTS="A0:va:64:on A0-b10:va:64:on A0-cd:va:64:on B:vb:64:on B-cd:vb:64:on
        A0:va:64:off A0-b10:va:64:off A0:va:16:off A0-ltx:va:16:off"
for rep in $(seq "$REPS"); do
    echo "== rep $rep: $(date -u +%H:%M:%S) UTC, uptime:$(uptime)" | tee -a "$RESULTS/uptime.txt"
    for point in $POINTS; do
        IFS=: read -r v db c sync <<<"$point"
        if ((SECONDS - START + DURATION + 5 > BUDGET)); then
            skipped=$((skipped + 1))
            continue
        fi
        load=$(cut -d' ' -f1 /proc/loadavg)
        INS=insert UPD=update EXTRA_OPTS=""
        case $v in
            *-b10) INS=insert10 UPD=update10 ;;
            *-cd) EXTRA_OPTS="-c commit_delay=1000 -c commit_siblings=5" ;;
            *-ltx)
                PGAPPNAME=limits-longtx psql -X -q -d va -c BEGIN \
                    -c "INSERT INTO orders (customer_name, product_name) VALUES ('long', 'transaction')" \
                    -c "SELECT pg_sleep($DURATION + 2)" -c COMMIT >/dev/null &
                LONGTX=$!
                sleep 0.5
                ;;
        esac
        out=$RESULTS/m-$v-$sync-c$c-r$rep.out
        bench "$db" "$c" "$sync" "$out"
        if [[ $v == *-ltx ]]; then wait "$LONGTX" && LONGTX=""; fi
        record "$rep" "$sync" "$c" "$v" "$out" - "$load"
    done
done
fsync_rate after | tee -a "$RESULTS/fsync.txt"
fi

# --- table --------------------------------------------------------------------------------
{
    echo "PostgreSQL $PGVERSION, $(nproc) CPUs, $(date -u '+%Y-%m-%d %H:%M') UTC, ${DURATION}s per run, $REPS repetitions; median [min-max]"
    echo "tps: committed transactions/s (half INSERT, half UPDATE); lat: mean latency ms; object-lock: mean pgbench backends waiting on Lock.object (the NOTIFY lock) per sample"
    tail -n +2 "$TSV" | awk -F'\t' '{ print $2 "|" $3 "|" $4 }' | sort -u -t'|' -k1,1r -k2,2n -k3,3 >"$BASE/keys"
    awk -F'\t' 'NR > 1 { k = $2 "|" $3 "|" $4; n[k]++
                   tps[k, n[k]] = $5; lat[k, n[k]] = $6; il[k, n[k]] = $8; ul[k, n[k]] = $10; ld[k, n[k]] = $11; cpu[k, n[k]] = $12
                   w = 0; if (match($13, /Lock\.object=[0-9.]+/)) w = substr($13, RSTART + 12, RLENGTH - 12); ob[k, n[k]] = w }
        function med(a, k, m,   i, j, t, v) { for (i = 1; i <= m; i++) v[i] = a[k, i] + 0
            for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
            lo = v[1]; hi = v[m]; return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2 }
        END { printf "%-4s %7s %-6s %-20s %-26s %7s %7s %11s %5s %s\n", "sync", "clients", "var", "tps", "lat ms", "ins ms", "upd ms", "object-lock", "cpu%", "load1"
              while ((getline k < KEYS) > 0) { split(k, p, "|"); m = n[k]
                  t = med(tps, k, m); tr = sprintf("%.0f [%.0f-%.0f]", t, lo, hi)
                  l = med(lat, k, m); lr = sprintf("%.3f [%.3f-%.3f]", l, lo, hi)
                  i = med(il, k, m); u = med(ul, k, m); o = med(ob, k, m); c = med(cpu, k, m)
                  med(ld, k, m); ldr = sprintf("%.1f-%.1f", lo, hi)
                  printf "%-4s %7s %-6s %-20s %-26s %7.3f %7.3f %11.1f %5.0f %s\n", p[1], p[2], p[3], tr, lr, i, u, o, c, ldr } }' \
        KEYS="$BASE/keys" "$TSV"
    ((skipped == 0)) || echo "($skipped runs skipped: BUDGET=${BUDGET}s reached)"
    echo
    if [[ $MODE == matrix ]]; then cat "$QT"; else cat "$RESULTS/fsync.txt"; fi
    echo "total run time: $((SECONDS - START)) s"
} | tee "$RESULTS/table.txt"
