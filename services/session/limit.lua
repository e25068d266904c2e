-- Fixed-window rate and quota counting: every window of one call in one atomic script.
--
-- KEYS[i]: `limit:<key>:<name>` for window i; the counter is `KEYS[i]:<window index>`,
--          where the index is Redis's own TIME divided by the window's length.
-- ARGV[1]: '1' to count this call, '0' to only read.
-- ARGV[2i], ARGV[2i+1]: window i's length in seconds and its limit (0 turns it off).
--
-- A call is allowed when no enabled window is full. Only an allowed, consuming call counts,
-- so a refused call leaves every counter as it was.
-- Returns {allowed (1 or 0), then for each window: used, seconds until it resets}.
local now = tonumber(redis.call('TIME')[1])
local consume = ARGV[1] == '1'
local n = #KEYS

local counters, enabled, used, resets = {}, {}, {}, {}
for i = 1, n do
  local seconds = tonumber(ARGV[2 * i])
  local index = math.floor(now / seconds)
  resets[i] = (index + 1) * seconds - now
  used[i] = 0
  if tonumber(ARGV[2 * i + 1]) > 0 then
    counters[i] = KEYS[i] .. ':' .. index
    enabled[#enabled + 1] = counters[i]
  end
end

-- One read for every enabled window's counter.
local allowed = 1
if #enabled > 0 then
  local values = redis.call('MGET', unpack(enabled))
  local j = 0
  for i = 1, n do
    if counters[i] then
      j = j + 1
      used[i] = tonumber(values[j] or '0')
      if used[i] >= tonumber(ARGV[2 * i + 1]) then allowed = 0 end
    end
  end
end

if allowed == 1 and consume then
  for i = 1, n do
    if counters[i] then
      used[i] = redis.call('INCR', counters[i])
      if used[i] == 1 then
        -- One second past the window's end, so a clock read at the boundary still finds it.
        redis.call('EXPIRE', counters[i], resets[i] + 1)
      end
    end
  end
end

local reply = {allowed}
for i = 1, n do
  reply[#reply + 1] = used[i]
  reply[#reply + 1] = resets[i]
end
return reply
