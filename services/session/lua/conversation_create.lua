-- Create a conversation's index entry (POST /api/conversations); an existing one is left as it is.
--
-- KEYS[1]: the index `conversations:<uid>`; KEYS[2]: the titles hash `conversation_titles:<uid>`.
-- ARGV[1]: the conversation id; ARGV[2]: lifetime in milliseconds.
-- Returns {updated at (ms), title or nil}.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then
  local time = redis.call('TIME')
  score = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  redis.call('ZADD', KEYS[1], score, ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]))
return {tostring(score), redis.call('HGET', KEYS[2], ARGV[1]) or false}
