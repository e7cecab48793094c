-- Store finished requests, each only where its submission holds the request id's claim, in one atomic step.
--
-- KEYS      pairs, one per result: the claim key ({prefix}:req:{id}), then the result key ({prefix}:result:{id})
-- ARGV[1]   time to live of a result, in ms
-- ARGV[2]   the pub/sub channel that wakes waiters on every replica
-- ARGV[3…]  triples, one per result: the request id, the submission (ingress enqueue stamp), the document
--
-- A claim's value is "<fingerprint> <submission>". A result whose submission does not hold the claim is dropped:
-- it is a late result of an earlier submission, and the id belongs to another image now. Otherwise the result is
-- set as "<submission> <document>", the claim is made to live at least as long (created, with an unknown
-- fingerprint, when it had expired), and "<id> <submission> <document>" is published.
-- Returns how many results were stored.
local ttl, channel, stored = tonumber(ARGV[1]), ARGV[2], 0
for n = 1, #KEYS / 2 do
  local claim_key, result_key = KEYS[2 * n - 1], KEYS[2 * n]
  local id, submission, doc = ARGV[3 * n], ARGV[3 * n + 1], ARGV[3 * n + 2]
  local claim = redis.call('GET', claim_key)
  local ours = true
  if claim then
    ours = string.match(claim, ' (%d+)$') == submission
    if ours and redis.call('PTTL', claim_key) < ttl then
      redis.call('PEXPIRE', claim_key, ttl)
    end
  else
    redis.call('SET', claim_key, ' ' .. submission, 'PX', ttl)
  end
  if ours then
    redis.call('SET', result_key, submission .. ' ' .. doc, 'PX', ttl)
    redis.call('PUBLISH', channel, id .. ' ' .. submission .. ' ' .. doc)
    stored = stored + 1
  end
end
return stored
