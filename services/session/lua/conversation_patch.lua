-- Rename a conversation; nothing happens to one that does not exist.
--
-- KEYS[1]: the list; KEYS[2]: the index; KEYS[3]: the titles hash. ARGV[1]: the id; ARGV[2]: the title.
-- Returns {updated at (ms) or nil} when the conversation exists, else {}.
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score and redis.call('EXISTS', KEYS[1]) == 0 then return {} end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return {score or false}
