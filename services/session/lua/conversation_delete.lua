-- Delete a conversation: its messages, its index entry and its title.
--
-- KEYS[1]: the list; KEYS[2]: the index; KEYS[3]: the titles hash. ARGV[1]: the id.
-- Returns 1 when there was a conversation, else 0.
local existed = redis.call('DEL', KEYS[1]) + redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if existed > 0 then return 1 end
return 0
