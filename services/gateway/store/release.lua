-- Undo a claim whose request never entered the pipeline, only while it is still that claim.
-- KEYS[1] the claim key; ARGV[1] the claim's value. Returns 1 when it was removed.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
