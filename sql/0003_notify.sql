-- The notify trigger. `realtime_notify()` is table-agnostic: attach it to any table with
--   CREATE TRIGGER t AFTER INSERT OR UPDATE OR DELETE ON my_table
--       FOR EACH ROW EXECUTE FUNCTION realtime_notify('orders_channel');
-- (the argument is the NOTIFY channel, default 'orders_channel'). For each row change it
-- records the change in realtime_events and sends on the channel either the whole change,
--   {"id": 7, "table": "orders", "operation": "UPDATE", "order": {...}, "old": {...}, "ts": "..."}
-- or, when that would pass NOTIFY's 8000-byte payload limit, a reference the publisher
-- resolves from realtime_events:
--   {"id": 7, "table": "orders", "operation": "UPDATE", "ref": true}
-- The row is always under "order" (the old row for DELETE), as the original clients expect.
-- This also replaces a hand-made notify_order_changes() trigger from the original design.

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

    -- NOTIFY payloads must stay under 8000 bytes; the reference is always small.
    IF octet_length(change) < 7900 THEN
        PERFORM pg_notify(channel, change);
    ELSE
        PERFORM pg_notify(channel, json_build_object(
            'id', event_id, 'table', TG_TABLE_NAME, 'operation', TG_OP, 'ref', true)::text);
    END IF;
    RETURN NULL;
END
$$;

-- Remove hand-made notify triggers on orders (e.g. the original notify_order_changes()),
-- which would otherwise send a second, legacy-shaped notification for every change.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT tg.tgname
        FROM pg_trigger tg JOIN pg_proc p ON p.oid = tg.tgfoid
        WHERE tg.tgrelid = 'orders'::regclass
          AND NOT tg.tgisinternal
          AND p.proname <> 'realtime_notify'
          AND p.prosrc ILIKE '%pg_notify%'
    LOOP
        EXECUTE format('DROP TRIGGER %I ON orders', t.tgname);
    END LOOP;
END
$$;

DROP TRIGGER IF EXISTS orders_realtime_notify ON orders;
CREATE TRIGGER orders_realtime_notify
    AFTER INSERT OR UPDATE OR DELETE ON orders
    FOR EACH ROW EXECUTE FUNCTION realtime_notify('orders_channel');
