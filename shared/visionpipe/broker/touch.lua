#!lua flags=allow-oom
-- Heartbeat of deliveries still being worked on: reset their idle time, so XAUTOCLAIM (which takes entries idle
-- past broker.reclaim_idle_s) only ever takes them from a consumer that died, never from a slow live one.
--
-- KEYS[1]  the input stream
-- ARGV[1]  the consumer group, ARGV[2] the consumer working on the entries, ARGV[3] and ARGV[4] the lowest and
--          highest of their ids, ARGV[5…] the ids
--
-- Reads XPENDING of the group (entries between the two ids held by ARGV[2]); writes XCLAIM … JUSTID of those to
-- ARGV[2] itself, which resets their idle time without counting a delivery. Entries another consumer has taken
-- meanwhile, or already acked, are left alone. allow-oom: a heartbeat adds no data. Returns how many were refreshed.

-- The count leaves room for the consumer's other entries in the range (its other batches in flight).
local rows = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[4], #ARGV - 4 + 1000, ARGV[2])
if rows['err'] then
  return 0  -- no such stream or group: the broker lost them, and the worker's next consume says so
end
local wanted = {}
for j = 5, #ARGV do wanted[ARGV[j]] = true end
local mine = {}
for _, row in ipairs(rows) do
  if wanted[row[1]] then mine[#mine + 1] = row[1] end
end
if #mine == 0 then
  return 0
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(mine), 'JUSTID')
return #mine
