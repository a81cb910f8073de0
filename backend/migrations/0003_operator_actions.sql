-- The audit log: every operator action (who, what, when, on what, and what came of it).
-- Written before the action's answer is sent; never updated.

CREATE TABLE operator_actions (
    id      BIGSERIAL PRIMARY KEY,
    at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor   TEXT NOT NULL,
    via     TEXT NOT NULL CHECK (via IN ('console', 'api')),
    remote  TEXT,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    outcome TEXT NOT NULL
);

CREATE INDEX operator_actions_recent ON operator_actions (at DESC);
