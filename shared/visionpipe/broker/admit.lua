#!lua
-- Ingress's check-and-publish: append frames only while the pipeline's streams hold fewer bytes than the limit.
-- Check and XADD in one script, so producers that submit at once are serialised by Redis and none of them can
-- slip in past the limit on a stale reading: the overshoot is at most the one batch admitted just under it.
--
-- KEYS[1]  the stream to publish to (the frames stream)
-- KEYS[2…] the streams whose bytes count (every stream the pipeline writes, KEYS[1] among them)
-- ARGV[1]  the byte limit; ARGV[2…] the messages, each as two values: its bytes, then its key ('' for none)
--
-- Reads MEMORY USAGE … SAMPLES 0 of KEYS[2…] (every node of each stream: exact, and no payload is copied); writes
-- XADD on KEYS[1]. No allow-oom: when Redis is over maxmemory the script is refused whole, which the caller reports
-- as a full broker. Returns nil when published, else the bytes each of KEYS[2…] holds.

local held, total = {}, 0
for j = 2, #KEYS do
  local n = redis.call('MEMORY', 'USAGE', KEYS[j], 'SAMPLES', '0') or 0
  held[#held + 1] = n
  total = total + n
end
if total >= tonumber(ARGV[1]) then
  return held
end
for j = 2, #ARGV, 2 do
  if ARGV[j + 1] == '' then
    redis.call('XADD', KEYS[1], '*', 'd', ARGV[j])
  else
    redis.call('XADD', KEYS[1], '*', 'd', ARGV[j], 'k', ARGV[j + 1])
  end
end
return false
