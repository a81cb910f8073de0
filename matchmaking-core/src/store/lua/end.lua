-- End a session once (the first end wins); later calls only add a first result report.
-- A session that fails while still allocating (its server never became ready, or reported
-- before it was marked ready) puts its tickets back at the head of its queue, in their order,
-- keeping their original join times; a party goes back whole. So does one whose region was lost,
-- whatever its state.
-- Ended records (and the players' pointers to them) are kept for status answers, then pruned
-- here, a few per call.
-- KEYS: 1 sessions, 2 live, 3 ended, 4 outbox, 5 queue, 6 joined, 7 player_session, 8 waiting,
--       9 tickets (KEYS 5, 6, 9: the keys of the queue named by ARGV 7), 10 backfill
-- ARGV: 1 sid, 2 reason, 3 now_ms, 4 events channel, 5 report JSON or '', 6 ms to keep ended records,
--       7 the queue the caller expects the session to be of, 8 '1': a failure requeues its
--       players even if it was running (its region was lost)
-- Reply: {kind='unknown'} | {kind='already_ended', reason} | {kind='ended', requeued, reason}
--      | {kind='wrong_queue', queue}: nothing done; call again with that queue's keys
local sid, reason, now, report = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[5]
local record = load_record(KEYS[1], sid)
if not record then
  return reply({kind = 'unknown'})
end
if record.state == 'ended' then
  if report ~= '' and not record.reported then
    record.reported = true
    save_record(KEYS[1], sid, record)
    emit(KEYS[4], ARGV[4], {kind = 'reported', session_id = sid, players = record.players, at_ms = now}, report)
  end
  return reply({kind = 'already_ended', reason = record.end_reason})
end
-- A server reporting while its session is still allocating was orphaned (its backend died
-- before marking it ready): its players never got tickets, so the session failed.
if report ~= '' and record.state == 'allocating' then
  reason = 'failed'
end
local requeue = reason == 'failed' and (record.state == 'allocating' or ARGV[8] == '1')
local qname = record.queue or 'default'
if requeue and qname ~= ARGV[7] then
  return reply({kind = 'wrong_queue', queue = qname})
end
record.state = 'ended'
record.end_reason = reason
record.ended_ms = now
if report ~= '' then
  record.reported = true
end
save_record(KEYS[1], sid, record)
-- A session that ends withdraws its backfill request.
redis.call('HDEL', KEYS[10], sid)
redis.call('ZREM', KEYS[2], sid)
redis.call('ZADD', KEYS[3], now, sid)
if requeue then
  local head = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
  local min = 0
  if head[2] then
    min = tonumber(head[2])
  end
  local joined_of = {}
  for i, p in ipairs(record.players) do
    joined_of[p] = record.joined_ms[i] or now
  end
  -- Each ticket: its id (the leader), its players, and its document in a rule queue.
  local tickets = {}
  if record.tickets then
    for _, raw in ipairs(record.tickets) do
      local players = cjson.decode(raw).players
      tickets[#tickets + 1] = {id = players[1], players = players, raw = raw}
    end
  else
    for _, p in ipairs(record.players) do
      tickets[#tickets + 1] = {id = p, players = {p}}
    end
  end
  local n = #tickets
  for i, t in ipairs(tickets) do
    if redis.call('HGET', KEYS[7], t.id) == sid then
      local joined = joined_of[t.id] or now
      redis.call('ZADD', KEYS[5], min - n - 1 + i, t.id)
      redis.call('HSET', KEYS[6], t.id, joined)
      if t.raw then
        redis.call('HSET', KEYS[9], t.id, t.raw)
      end
      local entry = qname .. '|' .. t.id .. '|' .. joined
      for _, p in ipairs(t.players) do
        redis.call('HSET', KEYS[8], p, entry)
        redis.call('HDEL', KEYS[7], p)
      end
    end
  end
end
emit(KEYS[4], ARGV[4], {kind = 'ended', session_id = sid, players = record.players, at_ms = now, reason = reason,
  requeued = requeue}, report)
-- Forget records ended longer ago than the retention, and the pointers still naming them.
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[6]), 'LIMIT', 0, 8)
for _, old in ipairs(expired) do
  local gone = load_record(KEYS[1], old)
  if gone then
    for _, p in ipairs(gone.players) do
      if redis.call('HGET', KEYS[7], p) == old then
        redis.call('HDEL', KEYS[7], p)
      end
    end
    redis.call('HDEL', KEYS[1], old)
  end
  redis.call('ZREM', KEYS[3], old)
end
return reply({kind = 'ended', requeued = requeue, reason = reason})
