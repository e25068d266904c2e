-- Write back what happened to one conversation while Redis was down (the fallback entry).
--
-- KEYS[1]: the list; KEYS[2]: the index; KEYS[3]: the titles hash; KEYS[4]: the write-back guard.
-- ARGV[1]: the entry's version (20 digits); ARGV[2]: its epoch (a random token per outage entry);
-- ARGV[3]: lifetime in ms; ARGV[4]: guard TTL in seconds; ARGV[5]: the conversation id;
-- ARGV[6]: '1' when the entry replaces what Redis holds (deleted during the outage), else '0';
-- ARGV[7]: '1' when the conversation is deleted; ARGV[8]: 'set', 'initial' or '' (title mode);
-- ARGV[9]: the title; ARGV[10..]: the messages appended during the outage, oldest first.
--
-- Entries only grow during an outage, so the guard remembers how many of this epoch's messages
-- were pushed: a newer version of the same entry pushes only the rest, and an older or the same
-- version is skipped. A message already among the list's last entries (its last N + 16, N the
-- messages to push) is not pushed again: an append that ran in Redis but whose reply was lost was
-- also taken by the fallback, and the bytes are the same (one encoding serves both), id included.
-- Returns 1 when applied, 0 when a newer version was already written back.
local seen = redis.call('GET', KEYS[4])
local pushed = 0
if seen then
  local version, epoch, count = string.match(seen, '^(%d+):([^:]*):(%d+)$')
  if version and version >= ARGV[1] then return 0 end
  if epoch == ARGV[2] then pushed = tonumber(count) end
end

local id = ARGV[5]
if ARGV[7] == '1' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
else
  if ARGV[6] == '1' and pushed == 0 then
    redis.call('DEL', KEYS[1])
    redis.call('HDEL', KEYS[3], id)
  end
  local first = 10 + pushed
  local held = {}
  if first <= #ARGV then
    for _, message in ipairs(redis.call('LRANGE', KEYS[1], -(#ARGV - first + 1 + 16), -1)) do
      held[message] = true
    end
  end
  for i = first, #ARGV do
    if not held[ARGV[i]] then
      redis.call('RPUSH', KEYS[1], ARGV[i])
      held[ARGV[i]] = true
    end
  end
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  redis.call('ZADD', KEYS[2], now, id)
  if ARGV[8] == 'set' then
    redis.call('HSET', KEYS[3], id, ARGV[9])
  elseif ARGV[8] == 'initial' then
    redis.call('HSETNX', KEYS[3], id, ARGV[9])
  end
  local lifetime = tonumber(ARGV[3])
  redis.call('PEXPIRE', KEYS[1], lifetime)
  redis.call('PEXPIRE', KEYS[2], lifetime)
  redis.call('PEXPIRE', KEYS[3], lifetime)
end
redis.call('SET', KEYS[4], ARGV[1] .. ':' .. ARGV[2] .. ':' .. (#ARGV - 9), 'EX', tonumber(ARGV[4]))
return 1
