-- A consistent snapshot of one player's standing.
-- KEYS: 1 queue, 2 player_session, 3 sessions
-- ARGV: 1 player
-- Reply: {kind='queued'} | {kind='unknown'} | {kind='session', session_id, record}
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return reply({kind = 'queued'})
end
local sid = redis.call('HGET', KEYS[2], ARGV[1])
if sid then
  local raw = redis.call('HGET', KEYS[3], sid)
  if raw then
    return json_with({kind = 'session', session_id = sid}, 'record', raw)
  end
end
return reply({kind = 'unknown'})
