-- Record that a session's server is ready: allocating -> matched.
-- KEYS: 1 sessions, 2 outbox
-- ARGV: 1 sid, 2 server name, 3 server TCP address ('' for none), 4 now_ms, 5 events channel,
--       6 server UDP address ('' for none), 7 identity mode, 8 the profile's version ('' for none)
-- Reply: {kind='ready'} | {kind='not_allocating'} (the session ended meanwhile, or is unknown)
local record = load_record(KEYS[1], ARGV[1])
if not record or record.state ~= 'allocating' then
  return reply({kind = 'not_allocating'})
end
record.state = 'matched'
record.server = ARGV[2]
if ARGV[3] ~= '' then record.addr = ARGV[3] end
if ARGV[6] and ARGV[6] ~= '' then record.udp_addr = ARGV[6] end
if ARGV[7] and ARGV[7] ~= 'join-line' then record.identity = ARGV[7] end
local version = nil
if ARGV[8] and ARGV[8] ~= '' then version = ARGV[8]; record.version = version end
record.ready_ms = tonumber(ARGV[4])
save_record(KEYS[1], ARGV[1], record)
emit(KEYS[2], ARGV[5], {kind = 'ready', session_id = ARGV[1], players = record.players, at_ms = record.ready_ms,
  server = ARGV[2], addr = ARGV[3], version = version})
return reply({kind = 'ready'})
