-- Ack deliveries of one consumer group, then trim what every group of the stream is done with.
--
-- KEYS[1]  the stream (an XADD stream of the pipeline, e.g. vp.tensors)
-- ARGV[1]  the consumer group whose deliveries are acked
-- ARGV[2…] entry ids to XACK (at most a few thousand: Lua's stack has ~8000 slots)
--
-- Reads XINFO GROUPS and, for each group, XPENDING of that group on KEYS[1]; writes XACK and XTRIM MINID on
-- KEYS[1]. An entry may go when, for each group, it lies below that group's oldest pending entry (or at or
-- below its last-delivered id when nothing is pending). So memory is bounded by acks, never by length
-- (MAXLEN would drop entries some group has not read: lost data). Returns the number of entries acked.

local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
local floor_ms, floor_seq = nil, nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local id, bump = info['last-delivered-id'], 1
  if info['pending'] > 0 then
    id, bump = redis.call('XPENDING', KEYS[1], info['name'])[2], 0
  end
  local ms, seq = string.match(id, '(%d+)-(%d+)')
  ms, seq = tonumber(ms), tonumber(seq) + bump
  if floor_ms == nil or ms < floor_ms or (ms == floor_ms and seq < floor_seq) then
    floor_ms, floor_seq = ms, seq
  end
end
if floor_ms ~= nil then
  redis.call('XTRIM', KEYS[1], 'MINID', string.format('%.0f-%.0f', floor_ms, floor_seq))
end
return acked
