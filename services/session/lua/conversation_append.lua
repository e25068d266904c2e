-- Append the messages of one chat turn, in one call: the list, the index, the title, the expiry.
--
-- KEYS[1]: the list `conversation:<uid>:<id>`; KEYS[2]: the index `conversations:<uid>`;
-- KEYS[3]: the titles hash `conversation_titles:<uid>`.
-- ARGV[1]: the conversation id; ARGV[2]: lifetime in milliseconds; ARGV[3]: most messages a
-- conversation may hold; ARGV[4]: when the list holds exactly this many messages, its last one
-- is replaced (regenerate), -1 for never; ARGV[5]: the title for a conversation without one
-- ('' for none); ARGV[6..]: the messages (MessagePack UIMessages).
-- Returns {1, messages now held, updated at (ms)}, or {0, messages held} when the limit
-- would be passed (then nothing is written).
local total = redis.call('LLEN', KEYS[1])
local replace = total > 0 and total == tonumber(ARGV[4])
local kept = replace and total - 1 or total
local adding = #ARGV - 5
if kept + adding > tonumber(ARGV[3]) then return {0, total} end

if replace then redis.call('RPOP', KEYS[1]) end
for i = 6, #ARGV do
  redis.call('RPUSH', KEYS[1], ARGV[i])
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZADD', KEYS[2], now, ARGV[1])
if ARGV[5] ~= '' then redis.call('HSETNX', KEYS[3], ARGV[1], ARGV[5]) end
local lifetime = tonumber(ARGV[2])
redis.call('PEXPIRE', KEYS[1], lifetime)
redis.call('PEXPIRE', KEYS[2], lifetime)
redis.call('PEXPIRE', KEYS[3], lifetime)
return {1, kept + adding, now}
