-- Leave the queue in one atomic step.
-- KEYS: 1 queue, 2 joined, 3 player_session, 4 sessions
-- ARGV: 1 player
-- Reply: {kind='cancelled' | 'in_session' | 'not_queued'}
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return reply({kind = 'cancelled'})
end
local sid = redis.call('HGET', KEYS[3], ARGV[1])
if sid then
  local record = load_record(KEYS[4], sid)
  if record and record.state ~= 'ended' then
    return reply({kind = 'in_session'})
  end
end
return reply({kind = 'not_queued'})
