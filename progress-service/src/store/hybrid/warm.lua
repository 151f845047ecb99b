-- Cache-aside warm: store a record read from Postgres only if nothing newer
-- is in Redis. Returns {code, hash}: 1 warmed, 2 a newer copy is cached
-- (returned), 0 deleted (unflushed or recent tombstone), 3 not warmed (the
-- read is too old to prove the Postgres copy still current).
-- KEYS: 1 hash, 2 tombstone
-- ARGV: 1 row seq, 2 ttl seconds, 3 fence (us), 4 max fence age (us), 5.. field/value pairs
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {0, {}}
end
local cur = redis.call('HGET', KEYS[1], 'seq')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then
  return {2, redis.call('HGETALL', KEYS[1])}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if now - tonumber(ARGV[3]) > tonumber(ARGV[4]) then
  return {3, {}}
end
redis.call('HSET', KEYS[1], 'seq', ARGV[1], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return {1, {}}
