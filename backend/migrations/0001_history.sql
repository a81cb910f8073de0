-- Match history. Rows are written from the Redis outbox by upserts that commute,
-- so events applied in any order, or twice, converge on the same row.

CREATE TABLE matches (
    session_id        UUID PRIMARY KEY,
    status            TEXT NOT NULL CHECK (status IN ('allocating', 'matched', 'ended')),
    players           TEXT[] NOT NULL,
    server_name       TEXT,
    backend_instance  TEXT,
    requested_seconds INTEGER,
    created_at        TIMESTAMPTZ NOT NULL,
    ready_at          TIMESTAMPTZ,
    started_at        TIMESTAMPTZ,
    ended_at          TIMESTAMPTZ,
    end_reason        TEXT,
    -- Invariant 6: an ended row says when and why; an open one says neither.
    CONSTRAINT ended_rows_are_complete
        CHECK ((status = 'ended') = (ended_at IS NOT NULL AND end_reason IS NOT NULL))
);

CREATE INDEX matches_open ON matches (created_at) WHERE status <> 'ended';

CREATE TABLE match_players (
    session_id UUID NOT NULL REFERENCES matches (session_id) ON DELETE CASCADE,
    player_id  TEXT NOT NULL,
    joined_at  TIMESTAMPTZ,
    left_at    TIMESTAMPTZ,
    PRIMARY KEY (session_id, player_id)
);

CREATE INDEX match_players_by_player ON match_players (player_id);

CREATE FUNCTION mp_status_rank(status TEXT) RETURNS INTEGER
    LANGUAGE SQL IMMUTABLE
    RETURN CASE status WHEN 'ended' THEN 3 WHEN 'matched' THEN 2 ELSE 1 END;
