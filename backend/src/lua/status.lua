-- A consistent snapshot of one player's standing.
-- KEYS: 1 queue, 2 joined, 3 ps:<player>
-- ARGV: 1 player, 2 session key prefix
-- Returns {'queued', joined_ms} | {'unknown'} |
--         {'session', sid, state, players, addr, end_reason}
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return {'queued', redis.call('HGET', KEYS[2], ARGV[1]) or ''}
end
local sid = redis.call('GET', KEYS[3])
if not sid then
  return {'unknown'}
end
local s = redis.call('HMGET', ARGV[2] .. sid, 'state', 'players', 'addr', 'end_reason')
if not s[1] then
  return {'unknown'}
end
return {'session', sid, s[1], s[2] or '', s[3] or '', s[4] or ''}
