-- Per-row published marks on the outbox. The publisher appends every unpublished event to the
-- Redis replay log, then sets published_at; after any disconnect, restart or failover it
-- simply continues with what is still unmarked. Unlike an "id > last seen" cursor this cannot
-- skip an event whose transaction took its id early and committed late: that row is invisible
-- until it commits, and unmarked when it becomes visible. (docs/design.md, "Durable catch-up".)

ALTER TABLE realtime_events ADD COLUMN IF NOT EXISTS published_at TIMESTAMPTZ;

-- Rows written before this migration were relayed by the NOTIFY-only publisher.
UPDATE realtime_events SET published_at = created_at WHERE published_at IS NULL;

-- The catch-up scan reads only unpublished rows, in id order.
CREATE INDEX IF NOT EXISTS realtime_events_unpublished_idx ON realtime_events (id) WHERE published_at IS NULL;
-- Pruning reads published rows by age.
CREATE INDEX IF NOT EXISTS realtime_events_published_at_idx ON realtime_events (published_at) WHERE published_at IS NOT NULL;
DROP INDEX IF EXISTS realtime_events_created_at_idx;
