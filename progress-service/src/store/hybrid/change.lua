-- Compare-and-set of one record plus its queue entry and change-log entry,
-- atomically. The update rules ran in Rust on the state read before; this
-- only checks that the state is unchanged, then writes what Rust decided.
-- KEYS: 1 hash, 2 tombstone, 3 write-behind stream, 4 pending set,
--       5 sequence counter, 6 change-log stream, 7 change-log epoch
-- ARGV: 1 expected hash seq ('' = no hash), 2 expected tombstone ('' = none),
--       3 fence (server time in us when the state was read), 4 max fence age (us),
--       5 op ('u' update, 'd' delete), 6 manga id, 7 change json,
--       8 change-log retention (us), 9 epoch for a new dataset,
--       10.. hash field/value pairs (updates)
local cur = redis.call('HGET', KEYS[1], 'seq') or ''
local tomb = redis.call('GET', KEYS[2]) or ''
if cur ~= ARGV[1] or tomb ~= ARGV[2] then
  return -1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if ARGV[1] == '' and now - tonumber(ARGV[3]) > tonumber(ARGV[4]) then
  -- Nothing cached: the Postgres copy read after the fence may have been
  -- superseded and expired from Redis since; read again.
  return -1
end
local last = tonumber(redis.call('GET', KEYS[5]) or '0')
local seq = string.format('%.0f', math.max(last + 1, now))
-- The log entry first: if it fails, nothing else is written. Its id is the
-- position, so readers resume with XREAD/XRANGE after the last one seen.
local minid = string.format('%.0f', math.max(0, tonumber(seq) - tonumber(ARGV[8])))
redis.call('XADD', KEYS[6], 'MINID', '~', minid, seq .. '-0', 'c', ARGV[7])
redis.call('SET', KEYS[7], ARGV[9], 'NX')
redis.call('SET', KEYS[5], seq)
if ARGV[5] == 'u' then
  redis.call('HSET', KEYS[1], 'seq', seq, unpack(ARGV, 10))
  redis.call('PERSIST', KEYS[1])
  redis.call('DEL', KEYS[2])
else
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], seq)
end
redis.call('ZADD', KEYS[4], seq, ARGV[6])
redis.call('XADD', KEYS[3], '*', 's', seq, 'c', ARGV[7])
return seq
