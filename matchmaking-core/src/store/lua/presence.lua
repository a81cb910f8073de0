-- A player's connection (or UDP flow) to a session's server opened or closed, as the proxy saw
-- it: keeps the record's `connected` players and `empty_since_ms`, and writes `connected` /
-- `left` events to the outbox (the history's join and leave times) when a player's first
-- connection opens or last one closes. A `left` event is published too (the supervisor of a
-- session whose queue backfills on leave times the player's leave grace from it).
-- KEYS: 1 sessions, 2 outbox
-- ARGV: 1 sid, 2 player, 3 delta (1 opened, -1 closed), 4 now_ms, 5 events channel
-- Reply: {kind='unknown'} | {kind='counted', connected=<players connected now>}
local record = load_record(KEYS[1], ARGV[1])
if not record then
  return reply({kind = 'unknown'})
end
local player, delta, now = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local rostered = false
for _, p in ipairs(record.players) do
  if p == player then rostered = true end
end
if not rostered then
  return reply({kind = 'unknown'})
end
local counts = record.connections
if type(counts) ~= 'table' then counts = {} end
local before = tonumber(counts[player]) or 0
local after = before + delta
if after < 0 then after = 0 end
if after == 0 then counts[player] = nil else counts[player] = after end
record.connections = counts
-- A player is listed from its first open connection to its last one's close, in that order.
local connected = {}
if type(record.connected) == 'table' then
  for _, p in ipairs(record.connected) do
    if p ~= player or after > 0 then table.insert(connected, p) end
  end
end
if before == 0 and after > 0 then table.insert(connected, player) end
record.connected = connected
if #connected == 0 then
  if record.empty_since_ms == nil or record.empty_since_ms == cjson.null then
    record.empty_since_ms = now
  end
else
  record.empty_since_ms = nil
end
if next(counts) == nil then record.connections = nil end
-- When each player not connected now left (a queue that backfills on leave gives its place
-- away once it stays gone long enough).
local left = record.left_ms
if type(left) ~= 'table' then left = {} end
if after > 0 then left[player] = nil end
if before > 0 and after == 0 then left[player] = now end
if next(left) == nil then record.left_ms = nil else record.left_ms = left end
save_record(KEYS[1], ARGV[1], record)
local kind = nil
if before == 0 and after > 0 then kind = 'connected' end
if before > 0 and after == 0 then kind = 'left' end
if kind == 'connected' then
  redis.call('XADD', KEYS[2], '*', 'event', cjson.encode({kind = kind, session_id = ARGV[1], players = {player},
    at_ms = now}))
elseif kind == 'left' then
  emit(KEYS[2], ARGV[5], {kind = kind, session_id = ARGV[1], players = {player}, at_ms = now}, nil)
end
return reply({kind = 'counted', connected = #connected})
