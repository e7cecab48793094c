#!lua flags=allow-oom
-- Settle a batch of one consumer group's deliveries in one atomic step: publish each input's outputs unless its
-- once-key says an earlier settle already did, ack the inputs, then trim what every group of the stream is done
-- with. A plain ack is a settle without outputs.
--
-- KEYS[1]   the input stream whose group acks (e.g. vp.tensors); it may be gone (a broker that restarted empty)
-- KEYS[2…]  the output streams and the once-keys, referred to below by their index in KEYS
-- ARGV[1]   the consumer group on KEYS[1]
-- ARGV[2]   time to live of a once-key, in ms
-- ARGV[3]   the retained streams among KEYS, as "index:age_ms:count:bytes" separated by spaces ('' for none)
-- ARGV[4]   n, the number of inputs; then for each input: its entry id, the KEYS index of its once-key (0: none),
--           m, the number of its outputs, then m times: the KEYS index of the output stream, the key ('' for none),
--           the message bytes
--
-- A retained stream (the dead letters) keeps its entries for operators whoever reads them: acks never trim it;
-- instead, whenever this script writes to it or acks on it, entries older than age_ms go, then the oldest beyond
-- count, then the oldest while it holds more than bytes (MEMORY USAGE, as ingress measures it).
--
-- Reads EXISTS of the once-keys and of KEYS[1], XINFO GROUPS and XPENDING of KEYS[1], TIME, and XLEN and MEMORY
-- USAGE of retained streams; writes XADD on the output streams, SET … PX on once-keys that were unset, XACK and
-- XTRIM MINID on KEYS[1], XTRIM on retained streams. An entry may go when, for each
-- group, it lies below that group's oldest pending entry (or at or below its last-delivered id when nothing is
-- pending). So memory is bounded by acks, never by length (MAXLEN would drop entries some group has not read: lost
-- data). allow-oom: settling is how a full Redis drains (an ack frees an input; refusing it would leave every stage
-- stuck), and only ingress is refused when memory is full.
-- Returns {inputs acked, inputs whose outputs were already published}.

-- Redis does not undo a script's writes when a later command in it fails (a refused ACL, a wrong key type), so a
-- once-key is set only after its input's outputs are in: a failure in between may repeat an output on the retry,
-- but can never mark an input settled whose outputs are missing.
local ttl = ARGV[2]
local retained = {}
for idx, age, count, bytes in string.gmatch(ARGV[3], '(%d+):(%d+):(%d+):(%d+)') do
  retained[tonumber(idx)] = {tonumber(age), tonumber(count), tonumber(bytes)}
end

local function retain(key, rule)
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('XTRIM', key, 'MINID', string.format('%.0f-0', math.max(0, now_ms - rule[1])))
  redis.call('XTRIM', key, 'MAXLEN', rule[2])
  local used = redis.call('MEMORY', 'USAGE', key, 'SAMPLES', '0') or 0
  local len = redis.call('XLEN', key)
  while used > rule[3] and len > 0 do
    len = math.min(len - 1, math.floor(len * rule[3] / used))
    redis.call('XTRIM', key, 'MAXLEN', len)
    used = redis.call('MEMORY', 'USAGE', key, 'SAMPLES', '0') or 0
  end
end

local i, ids, inputs, seen, duplicates = 5, {}, {}, {}, 0
for _ = 1, tonumber(ARGV[4]) do
  local once, m = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local fresh = once == 0 or (not seen[once] and redis.call('EXISTS', KEYS[once]) == 0)
  if once ~= 0 then seen[once] = true end
  if not fresh then duplicates = duplicates + 1 end
  ids[#ids + 1] = ARGV[i]
  inputs[#inputs + 1] = {once, fresh, i + 3, m}
  i = i + 3 + 3 * m
end
for _, input in ipairs(inputs) do
  local once, fresh, at, m = input[1], input[2], input[3], input[4]
  if fresh then
    for j = at, at + 3 * (m - 1), 3 do
      local stream, key = KEYS[tonumber(ARGV[j])], ARGV[j + 1]
      if key == '' then
        redis.call('XADD', stream, '*', 'd', ARGV[j + 2])
      else
        redis.call('XADD', stream, '*', 'd', ARGV[j + 2], 'k', key)
      end
    end
    if once ~= 0 then redis.call('SET', KEYS[once], '1', 'PX', ttl) end
  end
end

for idx, rule in pairs(retained) do
  if redis.call('EXISTS', KEYS[idx]) == 1 then retain(KEYS[idx], rule) end
end
if #ids == 0 or redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, duplicates}
end
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
if retained[1] then
  return {acked, duplicates}
end
local floor_ms, floor_seq = nil, nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for j = 1, #g, 2 do info[g[j]] = g[j + 1] end
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
return {acked, duplicates}
