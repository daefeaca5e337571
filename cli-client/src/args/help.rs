//! The help text a newcomer reads first: what the tool does, examples, exit codes and the
//! environment, per command. Kept apart from the flags' definitions so both stay readable.

pub(super) const ABOUT: &str = "Watch changes to the `orders` table live in your terminal, or check the pipeline";

pub(super) const LONG_ABOUT: &str = "\
Watch changes to the `orders` table live in your terminal, or check the pipeline.

Every INSERT, UPDATE and DELETE on the PostgreSQL table `orders` travels through the publisher \
and Redis to the ws-server, which pushes it to WebSocket clients. This client connects to a \
ws-server and prints one line per change as it commits: INSERT in green, UPDATE in amber with \
what changed, DELETE in red. With --json it prints the events as JSON lines for scripts instead.

Data goes to stdout; connection status (connected, disconnected, reconnecting, resumed) goes to \
stderr. When the connection drops it reconnects by itself, waiting a little longer after each \
failure, to the next --url if several are given, and resumes after the last change it printed: \
the server replays what was missed, and nothing is printed twice. On exit it prints the last \
position; `--since` that position carries on from there later. If nothing shows up, run `cli-client check`: it tests each part of the pipeline and says how to \
fix the one that is down.";

pub(super) const AFTER_HELP: &str = "\
Examples:
  cli-client                                  watch every change on ws://localhost:8080/ws
  cli-client --url ws://orders.internal:8080/ws --max-retries 5
  cli-client --json | jq -c 'select(.operation == \"DELETE\") | .order'
  cli-client --url ws://ws1:8080/ws,ws://ws2:8080/ws   try the replicas in turn on reconnect
  cli-client --snapshot                       the current orders first, then every change
  cli-client --since k3xq9a:1042              every change after that position, then live
  cli-client watch --filter status=eq.pending --select id,status,amount
  cli-client table --url wss://orders.example.com/ws --token \"$ORDERS_TOKEN\"
  cli-client check                            is PostgreSQL, the trigger, Redis and ws-server up?

Exit codes:
  0  ok; watch: stopped with Ctrl-C or SIGTERM
  1  check: at least one check failed (or another runtime error)
  2  usage error: unknown flag or bad value; the server refused --filter, --select,
     --table, --consumer or --token (HTTP 400/401/403 or an error frame); the server's TLS
     certificate was refused; `table` without a terminal
  3  watch: gave up after --max-retries reconnect attempts in a row failed
  4  watch --on-reset exit: the server cannot resume from the position (it is older than
     the history the server keeps, or the history was lost)

Environment:
  DATABASE_URL, REDIS_URL  used by `check` (also read from a .env file)
  ORDERS_TOKEN             the JWT for --token
  SSL_CERT_FILE            CA certificates (PEM) to trust instead of the system store
  NO_COLOR                 set to anything to turn colour off
  RUST_LOG                 diagnostics on stderr, e.g. RUST_LOG=cli_client=debug";

pub(super) const WATCH_AFTER_HELP: &str = "\
Resuming: after a disconnect the client asks the next server for every change after the last \
one it printed, so nothing is missed or printed twice. On exit it prints (on stderr)
  last position: k3xq9a:1042 (resume with --since k3xq9a:1042)
When the server no longer has that position (older than its history, or Redis lost its data) \
it says so; --on-reset decides: snapshot (default) prints the current orders and continues \
after them, live continues from now, exit stops with exit code 4.

Examples:
  cli-client watch
  cli-client watch --url ws://localhost:8081/ws --no-color
  cli-client watch --url ws://ws1:8080/ws --url ws://ws2:8080/ws
  cli-client watch --snapshot                 SNAPSHOT lines for the current orders, then changes
  cli-client watch --json --since k3xq9a:1042 --on-reset exit
  cli-client watch --json --max-retries 0     exit 3 as soon as the connection fails or drops

Exit codes: 0 stopped with Ctrl-C / SIGTERM; 2 usage error; 3 gave up (--max-retries); \
4 cannot resume (--on-reset exit).";

pub(super) const CHECK_AFTER_HELP: &str = "\
Checks, in order: PostgreSQL reachable (a failure says which: connection refused, unknown host, role \
missing, database missing, password refused, not allowed by pg_hba.conf); table `orders` exists; a \
trigger on `orders` that calls pg_notify (these two are skipped when PostgreSQL is down); Redis answers \
PING; the publisher's /readyz; its outbox backlog (committed changes not yet published: fails when the \
oldest is older than --max-backlog-age); for every --url, the replica's /readyz and a WebSocket \
handshake. Each failure comes with its fix. Each check times out after 5 seconds. Exit code 0 when all \
pass, 1 otherwise.

Examples:
  cli-client check
  cli-client check --url ws://ws1:8080/ws,ws://ws2:8080/ws --publisher-url http://publisher:9100
  cli-client check --json | jq -r '.checks[] | select(.status == \"fail\") | .fix'
  DATABASE_URL=postgres://app:secret@db:5432/app cli-client check --url ws://ws:8080/ws";

pub(super) const TABLE_AFTER_HELP: &str = "\
Shows the current orders (a snapshot), then keeps them up to date: changed cells are \
highlighted for a moment, deleted rows disappear. The bottom line shows the connection, the \
replica, the position, events per second and the lag from commit to screen.

Keys: q quit · / edit the filter (Enter applies it with a fresh snapshot, Esc cancels) · s next \
sort column · ↑ ↓ PgUp PgDn Home End scroll · p pause (events queue up; p again applies them) · \
? help

Needs a terminal; for scripts use `cli-client watch --json`.

Examples:
  cli-client table
  cli-client table --filter status=eq.pending --select id,customer_name,status,amount
  cli-client table --url wss://orders.example.com/ws --ca-file ca.pem --token \"$ORDERS_TOKEN\"";
