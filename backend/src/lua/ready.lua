-- Record that a session's server is ready: allocating -> matched.
-- KEYS: 1 s:<sid>, 2 outbox
-- ARGV: 1 sid, 2 server name, 3 server address, 4 now_ms, 5 events channel
-- Returns 1, or 0 when the session is no longer allocating (ended meanwhile).
if redis.call('HGET', KEYS[1], 'state') ~= 'allocating' then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'matched', 'server', ARGV[2], 'addr', ARGV[3], 'ready_ms', ARGV[4])
local plist = redis.call('HGET', KEYS[1], 'players')
redis.call('XADD', KEYS[2], '*', 'kind', 'ready', 'sid', ARGV[1], 'players', plist, 'server', ARGV[2], 'at', ARGV[4])
redis.call('PUBLISH', ARGV[5], 'matched ' .. ARGV[1] .. ' ' .. plist)
return 1
