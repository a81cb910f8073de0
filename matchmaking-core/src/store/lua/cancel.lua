-- Leave the queue in one atomic step: the player's whole ticket (its party with it) leaves.
-- KEYS: 1 waiting, 2 queue, 3 joined, 4 tickets, 5 player_session, 6 sessions
-- ARGV: 1 player, 2 the queue the caller found the player in (its keys are KEYS 2-4)
-- Reply: {kind='cancelled', players} | {kind='in_session'} | {kind='not_queued'} | {kind='moved', queue}
local p, qname = ARGV[1], ARGV[2]
local ticket = p
local waiting = redis.call('HGET', KEYS[1], p)
if waiting then
  local queue, t = parse_waiting(waiting)
  if queue ~= qname then
    return reply({kind = 'moved', queue = queue})
  end
  ticket = t
end
if redis.call('ZREM', KEYS[2], ticket) == 1 then
  redis.call('HDEL', KEYS[3], ticket)
  local players = {ticket}
  local raw = redis.call('HGET', KEYS[4], ticket)
  if raw then
    players = cjson.decode(raw).players
    redis.call('HDEL', KEYS[4], ticket)
  end
  for _, member in ipairs(players) do
    redis.call('HDEL', KEYS[1], member)
  end
  return reply({kind = 'cancelled', players = players})
end
if waiting then
  -- An entry without its ticket (never written so by these scripts): drop it.
  redis.call('HDEL', KEYS[1], p)
end
local sid = redis.call('HGET', KEYS[5], p)
if sid then
  local record = load_record(KEYS[6], sid)
  if record and record.state ~= 'ended' then
    return reply({kind = 'in_session'})
  end
end
return reply({kind = 'not_queued'})
