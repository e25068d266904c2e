-- Read a conversation for a chat turn or a reload: one call, the newest messages first.
--
-- KEYS[1]: the list `conversation:<uid>:<id>`; KEYS[2]: the index `conversations:<uid>`;
-- KEYS[3]: the titles hash `conversation_titles:<uid>`.
-- ARGV[1]: the conversation id; ARGV[2]: byte budget of the messages returned (0: all);
-- ARGV[3]: messages returned whatever their size (the newest ones);
-- ARGV[4]: lifetime in milliseconds, to slide the expiry (0: only read, for a Redis refusing writes).
-- Returns {0} when the conversation does not exist, else
-- {1, total messages, updated at (ms) or nil, title or nil, the newest messages, oldest first...}.
local total = redis.call('LLEN', KEYS[1])
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if total == 0 and not score then return {0} end

local budget = tonumber(ARGV[2])
local keep = tonumber(ARGV[3])
local newest = {}
local bytes = 0
local pos = total
local full = false
while pos > 0 and not full do
  local from = math.max(0, pos - 64)
  local items = redis.call('LRANGE', KEYS[1], from, pos - 1)
  for j = #items, 1, -1 do
    local size = #items[j]
    if budget > 0 and #newest >= keep and bytes + size > budget then
      full = true
      break
    end
    bytes = bytes + size
    newest[#newest + 1] = items[j]
  end
  pos = from
end

local lifetime = tonumber(ARGV[4])
if lifetime > 0 then
  redis.call('PEXPIRE', KEYS[1], lifetime)
  redis.call('PEXPIRE', KEYS[2], lifetime)
  redis.call('PEXPIRE', KEYS[3], lifetime)
end

local reply = {1, total, score or false, redis.call('HGET', KEYS[3], ARGV[1]) or false}
for i = #newest, 1, -1 do
  reply[#reply + 1] = newest[i]
end
return reply
