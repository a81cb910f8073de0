-- Commit a rule queue's plan (made by one replica from what it read): each session forms only
-- if every one of its tickets is still queued at the version the plan read, so no ticket is
-- ever in two sessions, whatever other replicas or leavers did meanwhile. Tickets the plan
-- times out end the same way: only if still queued at that version.
-- Backfill comes first: a ticket goes into a running session's open slot only if the session's
-- request is still the one the plan read, with room on that team, and the session is still
-- running and not full.
-- KEYS: 1 queue, 2 joined, 3 tickets, 4 waiting, 5 live, 6 outbox, 7 player_session,
--       8 sessions, 9 timed_out, 10 backfill
-- ARGV: 1 queue name, 2 now_ms, 3 instance, 4 events channel, 5 the plan (JSON):
--       {backfills: [{session_id, since_ms, team (index into the request's slots, from 0),
--         ticket: [id, version], players, joined_ms}], backfills_ended: [[session_id, since_ms]],
--        size, sessions: [{session_id, tickets: [[id, version], ...], players, joined_ms, teams?,
--         region?, skill_spread?, team_skill_gap?, max_latency_ms?, max_wait_ms}],
--        expire: [[id, version], ...], retention_ms}
-- Reply: {formed: [session_id, ...], expired: [[players...], ...], stale: [ticket id, ...],
--         backfilled: [{session_id, players}], backfills_ended: n}
local qname, now, instance, channel = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local plan = cjson.decode(ARGV[5])
local formed, expired, stale, backfilled = {}, {}, {}, {}
local backfills_ended = 0

-- The raw document of ticket `id` if it is still queued at `version`, else nil.
local function current(id, version)
  if not redis.call('ZSCORE', KEYS[1], id) then
    return nil
  end
  local raw = redis.call('HGET', KEYS[3], id)
  if raw and tonumber(string.match(raw, '^{"v":(%d+)')) == version then
    return raw
  end
  return nil
end

local function take(id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end

-- The request of running session `sid` if it is still the one opened at `since`.
local function request_of(sid, since)
  local raw = redis.call('HGET', KEYS[10], sid)
  if not raw then return nil end
  local doc = cjson.decode(raw)
  if tonumber(doc.since_ms) ~= tonumber(since) then return nil end
  return doc
end

for _, b in ipairs(plan.backfills or {}) do
  local sid, team = b.session_id, tonumber(b.team) + 1
  local doc = request_of(sid, b.since_ms)
  local record = load_record(KEYS[8], sid)
  local fits = doc and record and record.state == 'matched'
    and (tonumber(doc.slots[team]) or 0) >= #b.players
    and #record.players + #b.players <= tonumber(plan.size)
  local raw = fits and current(b.ticket[1], b.ticket[2])
  if raw then
    take(b.ticket[1])
    for i, p in ipairs(b.players) do
      redis.call('HDEL', KEYS[4], p)
      redis.call('HSET', KEYS[7], p, sid)
      record.players[#record.players + 1] = p
      record.joined_ms[#record.joined_ms + 1] = b.joined_ms[i]
      if type(record.backfilled) ~= 'table' then record.backfilled = {} end
      record.backfilled[p] = tonumber(b.since_ms)
      if type(record.teams) == 'table' and record.teams[team] then
        local members = record.teams[team]
        members[#members + 1] = p
      end
    end
    if type(record.tickets) ~= 'table' then record.tickets = {} end
    record.tickets[#record.tickets + 1] = raw
    record.roster_version = (tonumber(record.roster_version) or 0) + 1
    save_record(KEYS[8], sid, record)
    doc.slots[team] = tonumber(doc.slots[team]) - #b.players
    local open = 0
    for _, n in ipairs(doc.slots) do open = open + tonumber(n) end
    if open > 0 then
      redis.call('HSET', KEYS[10], sid, cjson.encode(doc))
    else
      redis.call('HDEL', KEYS[10], sid)
    end
    emit(KEYS[6], channel, {kind = 'backfilled', session_id = sid, players = b.players, at_ms = now, team = team - 1,
      since_ms = tonumber(b.since_ms), queue = qname})
    backfilled[#backfilled + 1] = {session_id = sid, players = b.players, since_ms = tonumber(b.since_ms)}
  else
    stale[#stale + 1] = b.ticket[1]
  end
end

for _, e in ipairs(plan.backfills_ended or {}) do
  if request_of(e[1], e[2]) then
    redis.call('HDEL', KEYS[10], e[1])
    backfills_ended = backfills_ended + 1
  end
end

for _, s in ipairs(plan.sessions) do
  local raws = {}
  for _, t in ipairs(s.tickets) do
    local raw = current(t[1], t[2])
    if raw then
      raws[#raws + 1] = raw
    else
      stale[#stale + 1] = t[1]
    end
  end
  if #raws == #s.tickets then
    local sid = s.session_id
    for _, t in ipairs(s.tickets) do
      take(t[1])
    end
    for _, p in ipairs(s.players) do
      redis.call('HDEL', KEYS[4], p)
      redis.call('HSET', KEYS[7], p, sid)
    end
    local placement = {queue = qname, teams = s.teams, region = s.region, skill_spread = s.skill_spread,
      team_skill_gap = s.team_skill_gap, max_latency_ms = s.max_latency_ms, max_wait_ms = s.max_wait_ms}
    local record = {state = 'allocating', players = s.players, joined_ms = s.joined_ms, created_ms = now,
      instance = instance, tickets = raws}
    local event = {kind = 'formed', session_id = sid, players = s.players, at_ms = now, instance = instance}
    for k, v in pairs(placement) do
      record[k] = v
      event[k] = v
    end
    save_record(KEYS[8], sid, record)
    redis.call('ZADD', KEYS[5], now, sid)
    emit(KEYS[6], channel, event)
    formed[#formed + 1] = sid
  end
end

for _, t in ipairs(plan.expire) do
  local raw = current(t[1], t[2])
  if raw then
    take(t[1])
    local players = cjson.decode(raw).players
    local pointer = 'timed_out|' .. qname .. '|' .. now
    for _, p in ipairs(players) do
      redis.call('HDEL', KEYS[4], p)
      redis.call('HSET', KEYS[7], p, pointer)
      redis.call('ZADD', KEYS[9], now, p)
    end
    -- Long polls of these players wake; the history has nothing to record.
    redis.call('PUBLISH', channel, cjson.encode({kind = 'timed_out', session_id = 'timed_out', players = players,
      at_ms = now, queue = qname}))
    expired[#expired + 1] = players
  else
    stale[#stale + 1] = t[1]
  end
end
prune_timeouts(KEYS[9], KEYS[7], now - tonumber(plan.retention_ms))
return cjson.encode({formed = formed, expired = expired, stale = stale, backfilled = backfilled,
  backfills_ended = backfills_ended})
