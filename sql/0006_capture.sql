-- How the trigger wakes the publisher: 'notify' (pg_notify, the default) or 'logical' (a
-- transactional logical decoding message, read by the publisher from a replication slot).
-- The active publisher sets it at start from PUBLISHER_CAPTURE, so switching modes takes only a
-- restart of the publisher with the new setting. Either way the outbox row is the change and
-- the wake-up carries only its id (docs/design.md, "Capture through logical replication").
--
-- Why: NOTIFY takes a database-wide lock at commit, so every writing transaction that notifies
-- commits one at a time. A logical message is one more WAL record of the transaction itself.

CREATE TABLE IF NOT EXISTS realtime_capture (
    -- One row: the key can only be true.
    singleton BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    mode      TEXT    NOT NULL DEFAULT 'notify' CHECK (mode IN ('notify', 'logical')),
    set_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

INSERT INTO realtime_capture (singleton) VALUES (true) ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION realtime_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    channel  text := coalesce(TG_ARGV[0], 'orders_channel');
    event_id bigint := nextval('realtime_events_id_seq');
    change   text;
BEGIN
    change := json_build_object(
        'id',        event_id,
        'table',     TG_TABLE_NAME,
        'operation', TG_OP,
        'order',     CASE WHEN TG_OP = 'DELETE' THEN row_to_json(OLD) ELSE row_to_json(NEW) END,
        'old',       CASE WHEN TG_OP = 'UPDATE' THEN row_to_json(OLD) END,
        'ts',        clock_timestamp()
    )::text;

    INSERT INTO realtime_events (id, channel, table_name, operation, payload)
    VALUES (event_id, channel, TG_TABLE_NAME, TG_OP, change::json);

    IF (SELECT mode FROM realtime_capture) = 'logical' THEN
        -- Decoded at commit, in commit order, by the publisher's slot; the prefix is the
        -- channel, the content the outbox id.
        PERFORM pg_logical_emit_message(true, channel, event_id::text);
    -- NOTIFY payloads must stay under 8000 bytes; the reference is always small.
    ELSIF octet_length(change) < 7900 THEN
        PERFORM pg_notify(channel, change);
    ELSE
        PERFORM pg_notify(channel, json_build_object(
            'id', event_id, 'table', TG_TABLE_NAME, 'operation', TG_OP, 'ref', true)::text);
    END IF;
    RETURN NULL;
END
$$;
