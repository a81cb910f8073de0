-- Leave the queue in one atomic step.
-- KEYS: 1 queue, 2 joined, 3 ps:<player>
-- ARGV: 1 player, 2 session key prefix
-- Returns 'cancelled' | 'in_session' | 'not_queued'
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 'cancelled'
end
local sid = redis.call('GET', KEYS[3])
if sid then
  local state = redis.call('HGET', ARGV[2] .. sid, 'state')
  if state and state ~= 'ended' then
    return 'in_session'
  end
end
return 'not_queued'
