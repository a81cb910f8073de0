-- Open, change or withdraw a running session's backfill request, after releasing players from
-- its roster if asked: one request per session, its open slots per team (one entry without
-- teams) never more than the room its roster leaves. The request keeps the time its slots first
-- opened (its wait widens its windows) until none is open.
-- KEYS: 1 sessions, 2 backfill, 3 player_session, 4 outbox
-- ARGV: 1 sid, 2 now_ms, 3 events channel, 4 the request (JSON): {queue, slots, key, skill_range,
--       targets, region}, 5 mode: 'set' (slots are the open slots now) or 'add' (slots open on
--       top of those open), 6 players in a full session, 7 players in a full team (0: no teams),
--       8 players to release (JSON list), 9 only release those gone since at most this ms ('' for any)
-- Reply: {kind='unknown'} | {kind='not_running', state}
--      | {kind='open', slots, since_ms (0: none open), released, players}
local sid, now, channel = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local request = cjson.decode(ARGV[4])
local mode, size, team_size = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local release = cjson.decode(ARGV[8])
local gone_before = tonumber(ARGV[9])
local record = load_record(KEYS[1], sid)
if not record then
  return reply({kind = 'unknown'})
end
if record.state ~= 'matched' then
  return reply({kind = 'not_running', state = record.state})
end

local function without(list, value)
  local out = {}
  for _, v in ipairs(list or {}) do
    if v ~= value then out[#out + 1] = v end
  end
  return out
end

local released = {}
for _, p in ipairs(release) do
  local at = nil
  for i, q in ipairs(record.players) do
    if q == p then at = i end
  end
  local left = type(record.left_ms) == 'table' and tonumber(record.left_ms[p]) or nil
  local gone_long = gone_before == nil or (left ~= nil and left <= gone_before)
  if at and gone_long then
    table.remove(record.players, at)
    table.remove(record.joined_ms, at)
    if type(record.teams) == 'table' then
      for t, team in ipairs(record.teams) do
        record.teams[t] = without(team, p)
      end
    end
    record.connected = without(record.connected, p)
    if type(record.connections) == 'table' then record.connections[p] = nil end
    if type(record.left_ms) == 'table' then record.left_ms[p] = nil end
    if redis.call('HGET', KEYS[3], p) == sid then
      redis.call('HDEL', KEYS[3], p)
    end
    released[#released + 1] = p
  end
end
if #released > 0 then
  record.roster_version = (tonumber(record.roster_version) or 0) + 1
  save_record(KEYS[1], sid, record)
  emit(KEYS[4], channel, {kind = 'released', session_id = sid, players = released, at_ms = now})
end

-- Room per team (or in the whole session).
local room = {}
if team_size > 0 and type(record.teams) == 'table' and #record.teams > 0 then
  for t, team in ipairs(record.teams) do
    room[t] = team_size - #team
  end
else
  room[1] = size - #record.players
end
local existing = nil
local raw = redis.call('HGET', KEYS[2], sid)
if raw then existing = cjson.decode(raw) end
local slots, open = {}, 0
for t = 1, #room do
  local want = tonumber(request.slots[t]) or 0
  if mode == 'add' and existing then
    want = want + (tonumber(existing.slots[t]) or 0)
  end
  if want > room[t] then want = room[t] end
  if want < 0 then want = 0 end
  slots[t] = want
  open = open + want
end
local since = 0
if open == 0 then
  redis.call('HDEL', KEYS[2], sid)
else
  since = (existing and tonumber(existing.since_ms)) or now
  request.slots = slots
  request.since_ms = since
  redis.call('HSET', KEYS[2], sid, cjson.encode(request))
end
return reply({kind = 'open', slots = slots, since_ms = since, released = released, players = record.players})
