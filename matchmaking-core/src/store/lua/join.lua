-- Enqueue a ticket (a player, or a party led by its first player), idempotently, in one atomic
-- step. A leader in a live session gets that session's record instead, so the join is answered
-- in this one round trip. A party member already queued or playing refuses the whole party.
-- KEYS: 1 queue, 2 joined, 3 seq, 4 player_session, 5 sessions, 6 waiting, 7 tickets
-- ARGV: 1 queue name, 2 now_ms, 3 the ticket's document ('' in a plain queue),
--       4.. players, the leader first
-- Reply: {kind='queued', new, depth} | {kind='session', session_id, record} | {kind='busy', player, queue}
local qname, now, doc, leader = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

-- The live session `p` is in, if any: its id and raw record.
local function live_session(p)
  local sid = redis.call('HGET', KEYS[4], p)
  if sid then
    local record, raw = load_record(KEYS[5], sid)
    if record and record.state ~= 'ended' then
      return sid, raw
    end
  end
  return nil, nil
end

local sid, raw = live_session(leader)
if sid then
  return json_with({kind = 'session', session_id = sid}, 'record', raw)
end
local waiting = redis.call('HGET', KEYS[6], leader)
if waiting then
  local queue = parse_waiting(waiting)
  if queue == qname then
    return reply({kind = 'queued', new = false, depth = redis.call('ZCARD', KEYS[1])})
  end
  return reply({kind = 'busy', player = leader, queue = queue})
end
if redis.call('ZSCORE', KEYS[1], leader) then
  -- Queued by a backend from before waiting entries.
  return reply({kind = 'queued', new = false, depth = redis.call('ZCARD', KEYS[1])})
end
for i = 5, #ARGV do
  local member = redis.call('HGET', KEYS[6], ARGV[i])
  if member then
    return reply({kind = 'busy', player = ARGV[i], queue = parse_waiting(member)})
  end
  if live_session(ARGV[i]) then
    return reply({kind = 'busy', player = ARGV[i]})
  end
end
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[1], seq, leader)
redis.call('HSET', KEYS[2], leader, now)
if doc ~= '' then
  -- The join counter is the ticket's version: a plan names it, and claims only this ticket.
  redis.call('HSET', KEYS[7], leader, '{"v":' .. seq .. ',' .. string.sub(doc, 2))
end
local entry = qname .. '|' .. leader .. '|' .. now
for i = 4, #ARGV do
  -- Any pointer left is to a session that is over, or a timeout: forgotten with this join.
  redis.call('HDEL', KEYS[4], ARGV[i])
  redis.call('HSET', KEYS[6], ARGV[i], entry)
end
return reply({kind = 'queued', new = true, depth = redis.call('ZCARD', KEYS[1])})
