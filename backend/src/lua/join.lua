-- Enqueue a player, idempotently, in one atomic step.
-- KEYS: 1 queue (zset), 2 joined (hash player -> ms), 3 seq (counter), 4 ps:<player>
-- ARGV: 1 player, 2 now_ms, 3 session key prefix ("<P>:s:")
-- Returns {'session', sid, state} | {'queued', joined_ms, depth} | {'new', joined_ms, depth}
local sid = redis.call('GET', KEYS[4])
if sid then
  local state = redis.call('HGET', ARGV[3] .. sid, 'state')
  if state and state ~= 'ended' then
    return {'session', sid, state}
  end
end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local joined = redis.call('HGET', KEYS[2], ARGV[1]) or ARGV[2]
  return {'queued', joined, tostring(redis.call('ZCARD', KEYS[1]))}
end
if sid then
  -- The last session is over: this is a new join.
  redis.call('DEL', KEYS[4])
end
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[1], seq, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return {'new', ARGV[2], tostring(redis.call('ZCARD', KEYS[1]))}
