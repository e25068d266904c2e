-- Patch one session's top-level fields by splicing its MessagePack bytes (services/session/redis_store.py).
--
-- Untouched fields keep their exact bytes (bin stays bin, a float stays a float, an empty map
-- stays a map), big integers keep their precision, and no Lua library is needed (cmsgpack is
-- missing on some Redis-compatible services). The result's map header is the smallest that fits.
--
-- KEYS[1]: the session key. ARGV[1]: lifetime in seconds. ARGV[2]: k, the number of fields to set.
-- ARGV[3..2+2k]: for each field to set, its name then its MessagePack key+value bytes.
-- ARGV[3+2k..]: names of the fields to remove.
-- Returns the new bytes, nil when there is no session, or -1 when the stored bytes are not a map.
local raw = redis.call('GET', KEYS[1])
if not raw then return false end

local byte, sub = string.byte, string.sub
local len = #raw

local function need(pos, n)
  if pos + n - 1 > len then error('truncated') end
end
local function u8(pos) need(pos, 1); return byte(raw, pos) end
local function u16(pos) need(pos, 2); local a, b = byte(raw, pos, pos + 1); return a * 256 + b end
local function u32(pos)
  need(pos, 4)
  local a, b, c, d = byte(raw, pos, pos + 3)
  return ((a * 256 + b) * 256 + c) * 256 + d
end

-- skip(pos) returns the position just after the MessagePack object starting at pos.
local skip
local function skip_n(pos, n)
  for _ = 1, n do pos = skip(pos) end
  return pos
end
skip = function(pos)
  local b = u8(pos)
  if b <= 0x7f or b >= 0xe0 then return pos + 1 end                  -- fixint
  if b <= 0x8f then return skip_n(pos + 1, (b - 0x80) * 2) end       -- fixmap
  if b <= 0x9f then return skip_n(pos + 1, b - 0x90) end             -- fixarray
  if b <= 0xbf then return pos + 1 + (b - 0xa0) end                  -- fixstr
  if b == 0xc0 or b == 0xc2 or b == 0xc3 then return pos + 1 end    -- nil, false, true
  if b == 0xc4 or b == 0xd9 then return pos + 2 + u8(pos + 1) end    -- bin8, str8
  if b == 0xc5 or b == 0xda then return pos + 3 + u16(pos + 1) end   -- bin16, str16
  if b == 0xc6 or b == 0xdb then return pos + 5 + u32(pos + 1) end   -- bin32, str32
  if b == 0xc7 then return pos + 3 + u8(pos + 1) end                 -- ext8
  if b == 0xc8 then return pos + 4 + u16(pos + 1) end                -- ext16
  if b == 0xc9 then return pos + 6 + u32(pos + 1) end                -- ext32
  if b == 0xca then return pos + 5 end                               -- float32
  if b == 0xcb then return pos + 9 end                               -- float64
  if b == 0xcc or b == 0xd0 then return pos + 2 end                  -- (u)int8
  if b == 0xcd or b == 0xd1 then return pos + 3 end                  -- (u)int16
  if b == 0xce or b == 0xd2 then return pos + 5 end                  -- (u)int32
  if b == 0xcf or b == 0xd3 then return pos + 9 end                  -- (u)int64
  if b == 0xd4 then return pos + 3 end                               -- fixext1
  if b == 0xd5 then return pos + 4 end                               -- fixext2
  if b == 0xd6 then return pos + 6 end                               -- fixext4
  if b == 0xd7 then return pos + 10 end                              -- fixext8
  if b == 0xd8 then return pos + 18 end                              -- fixext16
  if b == 0xdc then return skip_n(pos + 3, u16(pos + 1)) end         -- array16
  if b == 0xdd then return skip_n(pos + 5, u32(pos + 1)) end         -- array32
  if b == 0xde then return skip_n(pos + 3, u16(pos + 1) * 2) end     -- map16
  if b == 0xdf then return skip_n(pos + 5, u32(pos + 1) * 2) end     -- map32
  error('invalid')                                                   -- 0xc1
end

-- The text of a str (or bin) key between start and stop, or nil for other key types.
local function key_text(start, stop)
  local b = byte(raw, start)
  if b >= 0xa0 and b <= 0xbf then return sub(raw, start + 1, stop - 1) end
  if b == 0xd9 or b == 0xc4 then return sub(raw, start + 2, stop - 1) end
  if b == 0xda or b == 0xc5 then return sub(raw, start + 3, stop - 1) end
  if b == 0xdb or b == 0xc6 then return sub(raw, start + 5, stop - 1) end
  return nil
end

local function splice()
  local b = u8(1)
  local count, pos
  if b >= 0x80 and b <= 0x8f then count, pos = b - 0x80, 2
  elseif b == 0xde then count, pos = u16(2), 4
  elseif b == 0xdf then count, pos = u32(2), 6
  else error('not a map') end

  local nset = tonumber(ARGV[2])
  local touched = {}
  for i = 1, nset do touched[ARGV[1 + 2 * i]] = true end
  for i = 3 + 2 * nset, #ARGV do touched[ARGV[i]] = true end

  local parts, kept = {''}, 0
  for _ = 1, count do
    local kstart = pos
    local vstart = skip(kstart)
    local vend = skip(vstart)
    local name = key_text(kstart, vstart)
    if name == nil or not touched[name] then
      parts[#parts + 1] = sub(raw, kstart, vend - 1)
      kept = kept + 1
    end
    pos = vend
  end
  if pos ~= len + 1 then error('trailing bytes') end
  for i = 1, nset do parts[#parts + 1] = ARGV[2 + 2 * i] end

  local n = kept + nset
  if n < 16 then
    parts[1] = string.char(0x80 + n)
  elseif n < 65536 then
    parts[1] = string.char(0xde, math.floor(n / 256), n % 256)
  else
    parts[1] = string.char(0xdf, math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
  end
  return table.concat(parts)
end

local ok, result = pcall(splice)
if not ok then return -1 end
redis.call('SET', KEYS[1], result, 'EX', ARGV[1])
return result
