-- Take or keep a queue's forming lease for `ms`.
-- KEYS: 1 lease
-- ARGV: 1 instance, 2 ms
-- Reply: 1 held by this instance now, 0 held by another
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
