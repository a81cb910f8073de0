-- A consistent snapshot of one player's standing.
-- KEYS: 1 waiting, 2 default queue, 3 default joined, 4 player_session, 5 sessions
-- ARGV: 1 player
-- Reply: {kind='queued', queue, ticket, joined_ms} | {kind='timed_out', queue, at_ms}
--      | {kind='session', session_id, record} | {kind='unknown'}
local p = ARGV[1]
local waiting = redis.call('HGET', KEYS[1], p)
if waiting then
  local queue, ticket, joined = parse_waiting(waiting)
  return reply({kind = 'queued', queue = queue, ticket = ticket, joined_ms = joined})
end
if redis.call('ZSCORE', KEYS[2], p) then
  -- Queued by a backend from before waiting entries.
  return reply({kind = 'queued', queue = 'default', ticket = p,
    joined_ms = tonumber(redis.call('HGET', KEYS[3], p))})
end
local sid = redis.call('HGET', KEYS[4], p)
if sid then
  local queue, at = string.match(sid, '^timed_out|(.-)|(.*)$')
  if queue then
    return reply({kind = 'timed_out', queue = queue, at_ms = tonumber(at)})
  end
  local raw = redis.call('HGET', KEYS[5], sid)
  if raw then
    return json_with({kind = 'session', session_id = sid}, 'record', raw)
  end
end
return reply({kind = 'unknown'})
