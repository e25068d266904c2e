-- One page of a user's conversations, newest first: ids, last update and titles in one call.
--
-- KEYS[1]: the index `conversations:<uid>`; KEYS[2]: the titles hash `conversation_titles:<uid>`.
-- ARGV[1]: page size; ARGV[2]: the cursor's score ('' for the first page); ARGV[3]: the cursor's id;
-- ARGV[4]: lifetime in milliseconds; ARGV[5]: the list key prefix `conversation:<uid>:`.
-- Conversations of equal score are ordered by id, descending, as ZREVRANGEBYSCORE orders them.
-- An index entry older than the lifetime whose list has expired is removed on the way.
-- Returns {more (1 or 0), then id, updated at (ms), title or nil for each conversation}.
local limit = tonumber(ARGV[1])
local lifetime = tonumber(ARGV[4])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local out, stale = {}, {}
local found = 0

local function take(id, score)
  if tonumber(score) < now - lifetime and redis.call('EXISTS', ARGV[5] .. id) == 0 then
    stale[#stale + 1] = id
    return true
  end
  found = found + 1
  if found > limit then return false end
  out[#out + 1] = id
  out[#out + 1] = score
  out[#out + 1] = redis.call('HGET', KEYS[2], id) or false
  return true
end

local max = '+inf'
local going = true
if ARGV[2] ~= '' then
  local ties = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[2], ARGV[2], 'WITHSCORES')
  for i = 1, #ties, 2 do
    if ties[i] < ARGV[3] then
      going = take(ties[i], ties[i + 1])
      if not going then break end
    end
  end
  max = '(' .. ARGV[2]
end
local offset = 0
while going do
  local page = redis.call('ZREVRANGEBYSCORE', KEYS[1], max, '-inf', 'WITHSCORES', 'LIMIT', offset, limit + 1)
  if #page == 0 then break end
  for i = 1, #page, 2 do
    going = take(page[i], page[i + 1])
    if not going then break end
  end
  offset = offset + #page / 2
end

for _, id in ipairs(stale) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
redis.call('PEXPIRE', KEYS[1], lifetime)
redis.call('PEXPIRE', KEYS[2], lifetime)
table.insert(out, 1, found > limit and 1 or 0)
return out
