-- Fixed-window rate and quota counting: every window of one call in one atomic script.
--
-- KEYS[1]: the hash `limit:{<tag>}...` of one limiter key (services/session/keys.py); its
--          field <name> holds '<window index>:<count>', where the index is Redis's own
--          TIME divided by the window's length. One declared key keeps the script on one
--          Redis Cluster slot, and the clock stays Redis's.
-- ARGV[1]: '1' to count this call, '0' to only read.
-- ARGV[3i-1], ARGV[3i], ARGV[3i+1]: window i's name, length in seconds and limit (0 turns it off).
--
-- A call is allowed when no enabled window is full. Only an allowed, consuming call counts,
-- so a refused call leaves every counter as it was.
-- Returns {allowed (1 or 0), then for each window: used, seconds until it resets}.
local now = tonumber(redis.call('TIME')[1])
local consume = ARGV[1] == '1'
local n = (#ARGV - 1) / 3

local names, indexes, limits, used, resets = {}, {}, {}, {}, {}
for i = 1, n do
  names[i] = ARGV[3 * i - 1]
  local seconds = tonumber(ARGV[3 * i])
  limits[i] = tonumber(ARGV[3 * i + 1])
  indexes[i] = math.floor(now / seconds)
  resets[i] = (indexes[i] + 1) * seconds - now
end

-- One read for every window's field; a field of an earlier window counts as empty.
local values = redis.call('HMGET', KEYS[1], unpack(names))
local allowed = 1
for i = 1, n do
  used[i] = 0
  if limits[i] > 0 then
    local value = values[i]
    if value then
      local sep = string.find(value, ':', 1, true)
      if tonumber(string.sub(value, 1, sep - 1)) == indexes[i] then used[i] = tonumber(string.sub(value, sep + 1)) end
    end
    if used[i] >= limits[i] then allowed = 0 end
  end
end

if allowed == 1 and consume then
  local keep = 0
  for i = 1, n do
    if limits[i] > 0 then
      used[i] = used[i] + 1
      redis.call('HSET', KEYS[1], names[i], indexes[i] .. ':' .. used[i])
      -- One second past the window's end, so a clock read at the boundary still finds it.
      if resets[i] + 1 > keep then keep = resets[i] + 1 end
    end
  end
  if keep > 0 and redis.call('TTL', KEYS[1]) < keep then redis.call('EXPIRE', KEYS[1], keep) end
end

local reply = {allowed}
for i = 1, n do
  reply[#reply + 1] = used[i]
  reply[#reply + 1] = resets[i]
end
return reply
