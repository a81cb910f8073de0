-- Prepended to every script (see store/mod.rs). Records are JSON (the session record contract);
-- every reply is one JSON document the Rust side decodes into a typed value.

-- The decoded record of session `sid` in the `sessions` hash, or nil.
local function load_record(sessions, sid)
  local raw = redis.call('HGET', sessions, sid)
  if raw then
    return cjson.decode(raw), raw
  end
  return nil, nil
end

local function save_record(sessions, sid, record)
  redis.call('HSET', sessions, sid, cjson.encode(record))
end

-- `fields` encoded as a JSON object, with `raw` (a JSON document, or '' for none) spliced in
-- under `name`: raw documents are passed on as they are, never re-encoded.
local function json_with(fields, name, raw)
  local json = cjson.encode(fields)
  if raw == nil or raw == '' then
    return json
  end
  return string.sub(json, 1, -2) .. ',"' .. name .. '":' .. raw .. '}'
end

-- Appends a lifecycle event to the outbox (for the history) and publishes the same document
-- (for long polls and supervisors on every replica).
local function emit(outbox, channel, event, report)
  local json = json_with(event, 'report', report)
  redis.call('XADD', outbox, '*', 'event', json)
  redis.call('PUBLISH', channel, json)
end

local function reply(fields)
  return cjson.encode(fields)
end

-- A `waiting` entry: queue, ticket (its leader's id), join time in ms.
local function parse_waiting(entry)
  local queue, ticket, joined = string.match(entry, '^(.-)|(.-)|(.*)$')
  return queue, ticket, tonumber(joined)
end

-- Forgets `timed_out` pointers older than `before` (a few per call).
local function prune_timeouts(timed_out, player_session, before)
  for _, p in ipairs(redis.call('ZRANGEBYSCORE', timed_out, '-inf', before, 'LIMIT', 0, 16)) do
    local pointer = redis.call('HGET', player_session, p)
    if pointer and string.sub(pointer, 1, 10) == 'timed_out|' then
      redis.call('HDEL', player_session, p)
    end
    redis.call('ZREM', timed_out, p)
  end
end
