-- Enqueue a player, idempotently, in one atomic step; a player in a live session gets that
-- session's record instead, so the join is answered in this one round trip.
-- KEYS: 1 queue, 2 joined, 3 seq, 4 player_session, 5 sessions
-- ARGV: 1 player, 2 now_ms
-- Reply: {kind='queued', new, depth} | {kind='session', session_id, record}
local sid = redis.call('HGET', KEYS[4], ARGV[1])
if sid then
  local record, raw = load_record(KEYS[5], sid)
  if record and record.state ~= 'ended' then
    return json_with({kind = 'session', session_id = sid}, 'record', raw)
  end
end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return reply({kind = 'queued', new = false, depth = redis.call('ZCARD', KEYS[1])})
end
if sid then
  -- The last session is over: this is a new join.
  redis.call('HDEL', KEYS[4], ARGV[1])
end
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[1], seq, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return reply({kind = 'queued', new = true, depth = redis.call('ZCARD', KEYS[1])})
