-- Form as many sessions as the queue allows (at most #sids), each in join order, atomically.
-- A full session takes the SESSION_SIZE oldest players. A partial one takes everyone queued,
-- only when at least MIN_PARTIAL are queued and the oldest has waited FLUSH_WAIT.
-- KEYS: 1 queue, 2 joined, 3 live (zset sid -> created_ms), 4 outbox (stream)
-- ARGV: 1 size, 2 min_partial, 3 flush_wait_ms, 4 now_ms, 5 key prefix ("<P>:"),
--       6 instance, 7 events channel, 8.. pre-generated session ids
-- Returns a flat list: sid, players (comma-joined), joined_ms (comma-joined), ...
local size = tonumber(ARGV[1])
local min_partial = tonumber(ARGV[2])
local flush_wait = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local prefix = ARGV[5]
local out = {}
for i = 8, #ARGV do
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
  local joined = {}
  for j = 1, #players do
    joined[j] = joined_raw[j] or tostring(now)
  end
  local sid = ARGV[i]
  local plist = table.concat(players, ',')
  local jlist = table.concat(joined, ',')
  redis.call('HSET', prefix .. 's:' .. sid, 'state', 'allocating', 'players', plist, 'joined', jlist,
    'created_ms', now, 'instance', ARGV[6])
  redis.call('ZADD', KEYS[3], now, sid)
  for _, p in ipairs(players) do
    redis.call('SET', prefix .. 'ps:' .. p, sid)
  end
  redis.call('XADD', KEYS[4], '*', 'kind', 'formed', 'sid', sid, 'players', plist, 'at', now, 'instance', ARGV[6])
  redis.call('PUBLISH', ARGV[7], 'allocating ' .. sid .. ' ' .. plist)
  out[#out + 1] = sid
  out[#out + 1] = plist
  out[#out + 1] = jlist
end
return out
