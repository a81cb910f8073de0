-- End a session once; later calls only add a first result report. With requeue=1 (a server
-- that never became ready) its players go back to the head of the queue, in their order,
-- keeping their original join times.
-- KEYS: 1 s:<sid>, 2 live, 3 outbox, 4 queue, 5 joined
-- ARGV: 1 sid, 2 reason, 3 now_ms, 4 key prefix ("<P>:"), 5 events channel, 6 requeue (0|1),
--       7 report JSON or '', 8 seconds to keep ended records
-- Returns 'unknown' | 'already' | 'ended' | 'requeued'
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return 'unknown'
end
local plist = redis.call('HGET', KEYS[1], 'players')
if state == 'ended' then
  if ARGV[7] ~= '' and redis.call('HSETNX', KEYS[1], 'reported', '1') == 1 then
    redis.call('XADD', KEYS[3], '*', 'kind', 'report', 'sid', ARGV[1], 'players', plist, 'at', ARGV[3],
      'report', ARGV[7])
  end
  return 'already'
end
local keep = tonumber(ARGV[8])
redis.call('HSET', KEYS[1], 'state', 'ended', 'end_reason', ARGV[2], 'ended_ms', ARGV[3])
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], 'reported', '1')
end
redis.call('EXPIRE', KEYS[1], keep)
redis.call('ZREM', KEYS[2], ARGV[1])
local players = {}
for p in string.gmatch(plist, '[^,]+') do
  players[#players + 1] = p
end
local result = 'ended'
if ARGV[6] == '1' then
  local joined = {}
  for j in string.gmatch(redis.call('HGET', KEYS[1], 'joined') or '', '[^,]+') do
    joined[#joined + 1] = j
  end
  local head = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  local min = 0
  if head[2] then
    min = tonumber(head[2])
  end
  for i, p in ipairs(players) do
    local key = ARGV[4] .. 'ps:' .. p
    if redis.call('GET', key) == ARGV[1] then
      redis.call('ZADD', KEYS[4], min - #players - 1 + i, p)
      redis.call('HSET', KEYS[5], p, joined[i] or ARGV[3])
      redis.call('DEL', key)
    end
  end
  redis.call('PUBLISH', ARGV[5], 'queued ' .. ARGV[1] .. ' ' .. plist)
  result = 'requeued'
else
  for _, p in ipairs(players) do
    local key = ARGV[4] .. 'ps:' .. p
    if redis.call('GET', key) == ARGV[1] then
      redis.call('EXPIRE', key, keep)
    end
  end
  redis.call('PUBLISH', ARGV[5], 'ended ' .. ARGV[1] .. ' ' .. plist)
end
redis.call('XADD', KEYS[3], '*', 'kind', 'ended', 'sid', ARGV[1], 'players', plist, 'at', ARGV[3],
  'reason', ARGV[2], 'report', ARGV[7])
return result
