-- Form as many sessions as a plain queue allows (at most one per session id given), each in
-- join order, atomically. A full session takes the SESSION_SIZE oldest players. A partial one
-- takes everyone queued, only when at least MIN_PARTIAL are queued and the oldest has waited
-- FLUSH_WAIT.
-- KEYS: 1 queue, 2 joined, 3 live, 4 outbox, 5 player_session, 6 sessions, 7 waiting
-- ARGV: 1 size, 2 min_partial, 3 flush_wait_ms, 4 now_ms, 5 instance, 6 events channel,
--       7 queue name, 8 the region its sessions go to ('' without regions), 9.. pre-generated session ids
-- Reply: [{session_id, players, joined_ms}, ...]
local size = tonumber(ARGV[1])
local min_partial = tonumber(ARGV[2])
local flush_wait = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local formed = {}
local region = ARGV[8]
if region == '' then
  region = nil
end
for i = 9, #ARGV do
  local depth = redis.call('ZCARD', KEYS[1])
  local take = 0
  if depth >= size then
    take = size
  elseif depth >= min_partial then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
    local joined = tonumber(redis.call('HGET', KEYS[2], oldest) or now)
    if now - joined >= flush_wait then
      take = depth
    end
  end
  if take == 0 then
    break
  end
  local players = redis.call('ZRANGE', KEYS[1], 0, take - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, take - 1)
  local joined_raw = redis.call('HMGET', KEYS[2], unpack(players))
  redis.call('HDEL', KEYS[2], unpack(players))
  redis.call('HDEL', KEYS[7], unpack(players))
  local joined = {}
  local oldest = now
  for j = 1, #players do
    joined[j] = tonumber(joined_raw[j]) or now
    oldest = math.min(oldest, joined[j])
  end
  local sid = ARGV[i]
  save_record(KEYS[6], sid, {state = 'allocating', players = players, joined_ms = joined, created_ms = now,
    instance = ARGV[5], queue = ARGV[7], max_wait_ms = now - oldest, region = region})
  redis.call('ZADD', KEYS[3], now, sid)
  for _, p in ipairs(players) do
    redis.call('HSET', KEYS[5], p, sid)
  end
  emit(KEYS[4], ARGV[6], {kind = 'formed', session_id = sid, players = players, at_ms = now, instance = ARGV[5],
    queue = ARGV[7], max_wait_ms = now - oldest, region = region})
  formed[#formed + 1] = {session_id = sid, players = players, joined_ms = joined}
end
if #formed == 0 then
  return '[]'
end
return cjson.encode(formed)
