-- Versions: which version of its server profile a session ran, when the profile lists
-- versions. Written by the `ready` event; NULL for every other session.

ALTER TABLE matches ADD COLUMN version TEXT;
