-- A warm server's poll for its session: says it is waiting, and takes the session offered to
-- it, if any (marking it taken: the offer has landed).
-- KEYS: 1 the warm server's hash
-- ARGV: 1 now (ms), 2 ms to keep the hash
-- Reply: the session (JSON), or false
redis.call('HSET', KEYS[1], 'polled', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local session = redis.call('HGET', KEYS[1], 'session')
if session then
  redis.call('HSETNX', KEYS[1], 'taken', ARGV[1])
end
return session
