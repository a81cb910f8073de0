-- Queues: which queue formed each session, its teams and region, and how good it was.
-- Written by the `formed` event; every column stays NULL for rows from before queues.

ALTER TABLE matches
    ADD COLUMN queue          TEXT,
    ADD COLUMN teams          JSONB,
    ADD COLUMN region         TEXT,
    ADD COLUMN skill_spread   DOUBLE PRECISION,
    ADD COLUMN team_skill_gap DOUBLE PRECISION,
    ADD COLUMN max_latency_ms DOUBLE PRECISION,
    ADD COLUMN max_wait_ms    BIGINT;

CREATE INDEX matches_by_queue ON matches (queue, created_at);
