-- After a batch committed to Postgres (called for a part of it at a time):
-- acknowledge and remove queue entries, and let the cached copies the batch
-- made durable expire - but only where Redis still holds exactly the flushed
-- change.
-- KEYS: 1 stream, then per flushed record: hash, tombstone, pending set
-- ARGV: 1 group, 2 ttl seconds, 3 number of entry ids, then the ids,
--       then per flushed record: op, seq
local n = tonumber(ARGV[3])
local chunk = 500
for i = 4, 3 + n, chunk do
  local last = math.min(i + chunk - 1, 3 + n)
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, i, last))
  redis.call('XDEL', KEYS[1], unpack(ARGV, i, last))
end
local a = 4 + n
local k = 2
while a + 1 <= #ARGV do
  local op, seq = ARGV[a], ARGV[a + 1]
  if op == 'u' then
    if redis.call('HGET', KEYS[k], 'seq') == seq then
      redis.call('EXPIRE', KEYS[k], ARGV[2])
    end
  elseif redis.call('GET', KEYS[k + 1]) == seq then
    redis.call('EXPIRE', KEYS[k + 1], ARGV[2])
  end
  -- The member only if its score is still this change's seq: seqs are
  -- unique, so no other member has it.
  redis.call('ZREMRANGEBYSCORE', KEYS[k + 2], seq, seq)
  a = a + 2
  k = k + 3
end
return n
