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
