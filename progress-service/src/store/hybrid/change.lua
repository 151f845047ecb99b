-- Compare-and-set of one record plus its queue entry and event, atomically.
-- The update rules ran in Rust on the state read before; this only checks
-- that the state is unchanged, then writes what Rust decided.
-- KEYS: 1 hash, 2 tombstone, 3 stream, 4 pending set, 5 sequence counter
-- ARGV: 1 expected hash seq ('' = no hash), 2 expected tombstone ('' = none),
--       3 fence (server time in us when the state was read), 4 max fence age (us),
--       5 op ('u' update, 'd' delete), 6 manga id, 7 change json, 8 events channel,
--       9.. hash field/value pairs (updates)
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
redis.call('SET', KEYS[5], seq)
if ARGV[5] == 'u' then
  redis.call('HSET', KEYS[1], 'seq', seq, unpack(ARGV, 9))
  redis.call('PERSIST', KEYS[1])
  redis.call('DEL', KEYS[2])
else
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], seq)
end
redis.call('ZADD', KEYS[4], seq, ARGV[6])
redis.call('XADD', KEYS[3], '*', 's', seq, 'c', ARGV[7])
redis.call('PUBLISH', ARGV[8], ARGV[7])
return seq
