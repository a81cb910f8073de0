-- Offer a session to a warm server of a profile (one that takes its session through the SDK):
-- only to one that is polling for a session now, and only one session ever.
-- KEYS: 1 the warm server's hash
-- ARGV: 1 the session (JSON), 2 ms to keep the hash
-- Reply: 1 offered, 0 not (not polling, or given a session already)
if redis.call('HEXISTS', KEYS[1], 'polled') == 0 then
  return 0
end
if redis.call('HSETNX', KEYS[1], 'session', ARGV[1]) == 0 then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
