-- Where each published event sits in the Redis replay log: the history (epoch) and position
-- the publisher appended it at, recorded with its published mark. When Redis loses its data the
-- publisher starts a new history that re-offers the newest recorded events of the old one, in
-- their old order, and says which old positions the new ones stand for: a replica or a client
-- at an old position then continues in the new history without a gap, a repeat or a reset
-- (docs/design.md, "When Redis loses its data").

ALTER TABLE realtime_events ADD COLUMN IF NOT EXISTS log_epoch TEXT;
ALTER TABLE realtime_events ADD COLUMN IF NOT EXISTS log_pos BIGINT;

-- The re-offer reads the newest positions of one history.
CREATE INDEX IF NOT EXISTS realtime_events_log_pos_idx ON realtime_events (log_epoch, log_pos)
    WHERE log_pos IS NOT NULL;
