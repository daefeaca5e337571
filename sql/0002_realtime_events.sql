-- The event table (outbox): every change the notify trigger sees is also recorded here, in
-- the same transaction, so it survives what NOTIFY does not (a publisher that is down, a
-- payload over NOTIFY's 8000-byte limit). `xid` is the writing transaction, which lets a
-- catch-up read tell a committed-late event from a missing one (see docs/design.md).

CREATE SEQUENCE IF NOT EXISTS realtime_events_id_seq AS BIGINT;

CREATE TABLE IF NOT EXISTS realtime_events (
    id         BIGINT      PRIMARY KEY DEFAULT nextval('realtime_events_id_seq'),
    xid        XID8        NOT NULL DEFAULT pg_current_xact_id(),
    channel    TEXT        NOT NULL,
    table_name TEXT        NOT NULL,
    operation  TEXT        NOT NULL CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE')),
    -- The full change, exactly the JSON a NOTIFY would carry.
    payload    JSON        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

ALTER SEQUENCE realtime_events_id_seq OWNED BY realtime_events.id;

CREATE INDEX IF NOT EXISTS realtime_events_created_at_idx ON realtime_events (created_at);
