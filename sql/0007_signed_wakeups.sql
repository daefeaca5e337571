-- Signed wake-ups: the trigger signs each change it sends by NOTIFY, so the publisher can
-- append it straight from the notification instead of reading its outbox row first (one query
-- and one PostgreSQL round trip less per event). Anyone who may connect can `pg_notify` on the
-- channel, so an unsigned payload proves nothing; a signature made with a key that only roles
-- able to read this table know does. Read access to the key must go no further than write
-- access to realtime_events: whoever can insert an outbox row can publish an event anyway.
-- A writer that cannot read the key sends the unsigned change, which the publisher vouches for
-- by reading its row, as before (docs/design.md, "Signed wake-ups").
--
-- The signature is a nested keyed SHA-256 with two independent random keys,
-- sha256(outer || sha256(inner || change)): HMAC's construction (NMAC) with PostgreSQL's own
-- sha256(), so no extension is needed.

CREATE TABLE IF NOT EXISTS realtime_notify_key (
    -- One row: the key can only be true.
    singleton  BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    inner_key  BYTEA       NOT NULL CHECK (octet_length(inner_key) = 64),
    outer_key  BYTEA       NOT NULL CHECK (octet_length(outer_key) = 64),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

REVOKE ALL ON realtime_notify_key FROM PUBLIC;

-- 64 random bytes each from the server's strong random source (gen_random_uuid, core since
-- PostgreSQL 13; 4 × 122 random bits).
INSERT INTO realtime_notify_key (inner_key, outer_key)
SELECT decode(replace(gen_random_uuid()::text || gen_random_uuid()::text
                   || gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'),
       decode(replace(gen_random_uuid()::text || gen_random_uuid()::text
                   || gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex')
ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION realtime_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    channel  text := coalesce(TG_ARGV[0], 'orders_channel');
    event_id bigint := nextval('realtime_events_id_seq');
    change   text;
    signed   boolean := false;
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
    -- NOTIFY payloads must stay under 8000 bytes (the signature adds 77); the reference is
    -- always small.
    ELSIF octet_length(change) < 7900 THEN
        -- The change with a last field, "sig": the publisher takes it off again and checks it
        -- against the change as it was. One statement reads the key and sends (about 10 µs a
        -- row here, a fifth of the trigger's cost); a role that may not read the key sends the
        -- change unsigned.
        IF has_table_privilege('realtime_notify_key', 'SELECT') THEN
            PERFORM pg_notify(channel, left(change, -1) || ', "sig" : "'
                || encode(sha256(k.outer_key || sha256(k.inner_key || convert_to(change, 'UTF8'))), 'hex')
                || '"}')
            FROM realtime_notify_key k;
            signed := FOUND;
        END IF;
        IF NOT signed THEN
            PERFORM pg_notify(channel, change);
        END IF;
    ELSE
        PERFORM pg_notify(channel, json_build_object(
            'id', event_id, 'table', TG_TABLE_NAME, 'operation', TG_OP, 'ref', true)::text);
    END IF;
    RETURN NULL;
END
$$;
