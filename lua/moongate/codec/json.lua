-- moongate.codec.json — JSON for translated bodies, in Lua, keeping what
-- lua-cjson 2.1 loses (SPEC §3: "numbers keep every digit, empty arrays stay
-- arrays"):
--
--   * a number is decoded as its text (a `raw` value) and encoded back as that
--     text: 12345678901234567890 and 1.0000000000000001 survive a round trip;
--   * arrays and objects are told apart by metatable, so [] stays [] and {}
--     stays {};
--   * an object remembers the order of its keys; objects built with
--     json.object(k1, v1, k2, v2, ...) are written in that order;
--   * null is json.null, so a member set to null is still there.
--
-- decode() never raises: garbage, truncation and absurd nesting give nil, err.
-- encode() raises only for values no codec builds (functions, cycles).
local byte, char, find, format, sub = string.byte, string.char, string.find, string.format, string.sub
local concat, sort = table.concat, table.sort
local floor, huge = math.floor, math.huge
local getmetatable, setmetatable, ipairs, pairs, pcall, rawget, select, tonumber, tostring, type =
  getmetatable, setmetatable, ipairs, pairs, pcall, rawget, select, tonumber, tostring, type
local bit = require("bit")
local band, bor, rshift, lshift = bit.band, bit.bor, bit.rshift, bit.lshift

local _M = { _VERSION = "0.1" }

local ARRAY = { __name = "json.array" }
local OBJECT = { __name = "json.object" }
local RAW = { __name = "json.raw", __tostring = function(r) return r[1] end }
local NULL = setmetatable({}, { __name = "json.null", __tostring = function() return "null" end })
_M.null = NULL
_M.ARRAY, _M.OBJECT, _M.RAW = ARRAY, OBJECT, RAW

-- object -> its keys in order (weak: the order dies with the object)
local ORDER = setmetatable({}, { __mode = "k" })

local MAX_DEPTH = 500

-- ====================== values ======================

-- object(k1, v1, k2, v2, ...) -> an object written in this order; nil values are left out
function _M.object(...)
  local o, keys = setmetatable({}, OBJECT), {}
  local n = select("#", ...)
  for i = 1, n, 2 do
    local k, v = select(i, ...)
    if v ~= nil then
      keys[#keys + 1] = k
      o[k] = v
    end
  end
  ORDER[o] = keys
  return o
end

-- array(list?) -> list marked as an array (a new empty one without list)
function _M.array(list)
  return setmetatable(list or {}, ARRAY)
end

-- raw(text) -> a value written as this JSON text verbatim
function _M.raw(text)
  return setmetatable({ text }, RAW)
end

-- set(o, k, v): o[k] = v, keeping k's place or appending it (v nil removes)
function _M.set(o, k, v)
  local keys = ORDER[o]
  if keys and o[k] == nil and v ~= nil then keys[#keys + 1] = k end
  o[k] = v
  return o
end

function _M.is_array(v)
  return type(v) == "table" and getmetatable(v) == ARRAY
end

function _M.is_object(v)
  return type(v) == "table" and getmetatable(v) == OBJECT
end

-- num(v) -> v as a Lua number (a Lua number or a decoded number), or nil
function _M.num(v)
  local tv = type(v)
  if tv == "number" then
    if v ~= v or v == huge or v == -huge then return nil end
    return v
  end
  if tv == "table" and getmetatable(v) == RAW then
    local n = tonumber(v[1])
    if n and n == n and n ~= huge and n ~= -huge then return n end
  end
  return nil
end

-- is_num(v): a number (decoded or Lua)
function _M.is_num(v)
  return _M.num(v) ~= nil
end

-- keys(o) -> the object's keys in order (decoded order, then any added by plain assignment, sorted)
function _M.keys(o)
  local out, seen = {}, {}
  local keys = ORDER[o]
  if keys then
    for i = 1, #keys do
      local k = keys[i]
      if not seen[k] and o[k] ~= nil then
        seen[k] = true
        out[#out + 1] = k
      end
    end
  end
  local extra
  for k in pairs(o) do
    if type(k) == "string" and not seen[k] then
      extra = extra or {}
      extra[#extra + 1] = k
    end
  end
  if extra then
    sort(extra)
    for i = 1, #extra do out[#out + 1] = extra[i] end
  end
  return out
end

-- ====================== decode ======================

local function fail(s, i, what)
  error({ json_error = format("%s at byte %d", what, i) }, 0)
end

local function skip(s, i)
  return find(s, "[^ \t\r\n]", i) or #s + 1
end

local function utf8_of(cp)
  if cp < 0x80 then return char(cp) end
  if cp < 0x800 then return char(bor(0xC0, rshift(cp, 6)), bor(0x80, band(cp, 0x3F))) end
  if cp < 0x10000 then
    return char(bor(0xE0, rshift(cp, 12)), bor(0x80, band(rshift(cp, 6), 0x3F)), bor(0x80, band(cp, 0x3F)))
  end
  return char(bor(0xF0, rshift(cp, 18)), bor(0x80, band(rshift(cp, 12), 0x3F)),
    bor(0x80, band(rshift(cp, 6), 0x3F)), bor(0x80, band(cp, 0x3F)))
end

local ESC = { [34] = '"', [92] = "\\", [47] = "/", [98] = "\b", [102] = "\f", [110] = "\n",
  [114] = "\r", [116] = "\t" }

-- string starting at the quote at i -> value, index after the closing quote
local function dstring(s, i)
  local j = i + 1
  local parts, np = nil, 0
  while true do
    local k = find(s, '[%z\1-\31"\\]', j)
    if not k then fail(s, i, "unterminated string") end
    local c = byte(s, k)
    if c == 34 then
      if not parts then return sub(s, i + 1, k - 1), k + 1 end
      np = np + 1
      parts[np] = sub(s, j, k - 1)
      return concat(parts, "", 1, np), k + 1
    end
    if c ~= 92 then fail(s, k, "control character in string") end
    parts = parts or {}
    np = np + 1
    parts[np] = sub(s, j, k - 1)
    local e = byte(s, k + 1)
    if e == 117 then -- \uXXXX
      local hex = sub(s, k + 2, k + 5)
      if not find(hex, "^%x%x%x%x$") then fail(s, k, "bad \\u escape") end
      local cp = tonumber(hex, 16)
      j = k + 6
      if cp >= 0xD800 and cp <= 0xDBFF then
        local lo = sub(s, j, j + 5)
        if find(lo, "^\\u[dD][c-fC-F]%x%x$") then
          cp = 0x10000 + lshift(cp - 0xD800, 10) + (tonumber(sub(lo, 3), 16) - 0xDC00)
          j = j + 6
        else
          cp = 0xFFFD
        end
      elseif cp >= 0xDC00 and cp <= 0xDFFF then
        cp = 0xFFFD
      end
      np = np + 1
      parts[np] = utf8_of(cp)
    else
      local r = e and ESC[e]
      if not r then fail(s, k, "bad escape") end
      np = np + 1
      parts[np] = r
      j = k + 2
    end
  end
end

local dvalue

local function dnumber(s, i)
  local _, e = find(s, "^-?%d+", i)
  if not e then fail(s, i, "unexpected character") end
  local int = sub(s, byte(s, i) == 45 and i + 1 or i, e)
  if #int > 1 and byte(int, 1) == 48 then fail(s, i, "leading zero") end
  local _, f = find(s, "^%.%d+", e + 1)
  if f then e = f elseif byte(s, e + 1) == 46 then fail(s, e + 1, "bad number") end
  local _, x = find(s, "^[eE][-+]?%d+", e + 1)
  if x then e = x elseif find(s, "^[eE]", e + 1) then fail(s, e + 1, "bad number") end
  return setmetatable({ sub(s, i, e) }, RAW), e + 1
end

local function darray(s, i, depth)
  local a, n = setmetatable({}, ARRAY), 0
  i = skip(s, i + 1)
  if byte(s, i) == 93 then return a, i + 1 end
  while true do
    local v
    v, i = dvalue(s, i, depth)
    n = n + 1
    a[n] = v
    i = skip(s, i)
    local c = byte(s, i)
    if c == 93 then return a, i + 1 end
    if c ~= 44 then fail(s, i, c and "expected , or ]" or "unexpected end") end
    i = skip(s, i + 1)
  end
end

local function dobject(s, i, depth)
  local o, keys = setmetatable({}, OBJECT), {}
  ORDER[o] = keys
  i = skip(s, i + 1)
  if byte(s, i) == 125 then return o, i + 1 end
  while true do
    if byte(s, i) ~= 34 then fail(s, i, byte(s, i) and "expected a key" or "unexpected end") end
    local k
    k, i = dstring(s, i)
    i = skip(s, i)
    if byte(s, i) ~= 58 then fail(s, i, "expected :") end
    local v
    v, i = dvalue(s, skip(s, i + 1), depth)
    if o[k] == nil then keys[#keys + 1] = k end
    o[k] = v
    i = skip(s, i)
    local c = byte(s, i)
    if c == 125 then return o, i + 1 end
    if c ~= 44 then fail(s, i, c and "expected , or }" or "unexpected end") end
    i = skip(s, i + 1)
  end
end

function dvalue(s, i, depth)
  local c = byte(s, i)
  if c == 34 then return dstring(s, i) end
  if c == 123 or c == 91 then
    if depth >= MAX_DEPTH then fail(s, i, "nested too deeply") end
    if c == 123 then return dobject(s, i, depth + 1) end
    return darray(s, i, depth + 1)
  end
  if c == 116 then
    if sub(s, i, i + 3) == "true" then return true, i + 4 end
  elseif c == 102 then
    if sub(s, i, i + 4) == "false" then return false, i + 5 end
  elseif c == 110 then
    if sub(s, i, i + 3) == "null" then return NULL, i + 4 end
  elseif c == nil then
    fail(s, i, "unexpected end")
  else
    return dnumber(s, i)
  end
  fail(s, i, "unexpected character")
end

-- decode(text) -> value | nil, err  (never raises)
function _M.decode(s)
  if type(s) ~= "string" then return nil, "not a string" end
  local ok, v, i = pcall(dvalue, s, skip(s, 1), 0)
  if not ok then
    if type(v) == "table" and v.json_error then return nil, v.json_error end
    return nil, tostring(v)
  end
  i = skip(s, i)
  if i <= #s then return nil, format("trailing characters at byte %d", i) end
  return v
end

-- ====================== encode ======================

local function quote(s)
  if not find(s, '[%z\1-\31"\\\127]') then return '"' .. s .. '"' end
  return '"' .. s:gsub('[%z\1-\31"\\\127]', function(c)
    if c == '"' then return '\\"' end
    if c == "\\" then return "\\\\" end
    if c == "\n" then return "\\n" end
    if c == "\r" then return "\\r" end
    if c == "\t" then return "\\t" end
    return format("\\u%04x", byte(c))
  end) .. '"'
end
_M.quote = quote

local function number_text(x)
  if x ~= x or x == huge or x == -huge then return "null" end
  if floor(x) == x and x > -9007199254740992 and x < 9007199254740992 then
    return format("%d", x)
  end
  -- the shortest text that reads back as the same double
  for _, f in ipairs({ "%.15g", "%.16g" }) do
    local t = format(f, x)
    if tonumber(t) == x then return t end
  end
  return format("%.17g", x)
end

local evalue

local function earray(t, buf, n, seen)
  buf[n + 1] = "["
  n = n + 1
  for i = 1, #t do
    if i > 1 then n = n + 1; buf[n] = "," end
    n = evalue(t[i], buf, n, seen)
  end
  n = n + 1
  buf[n] = "]"
  return n
end

local function eobject(t, buf, n, seen)
  n = n + 1
  buf[n] = "{"
  local first = true
  for _, k in ipairs(_M.keys(t)) do
    local v = t[k]
    if v ~= nil then
      if not first then n = n + 1; buf[n] = "," end
      first = false
      n = n + 1
      buf[n] = quote(k)
      n = n + 1
      buf[n] = ":"
      n = evalue(v, buf, n, seen)
    end
  end
  n = n + 1
  buf[n] = "}"
  return n
end

-- lua-cjson's null (a light userdata), for tables that came from it (gw.json)
local CJSON_NULL = require("cjson.safe").null

function evalue(v, buf, n, seen)
  local tv = type(v)
  if tv == "string" then
    n = n + 1
    buf[n] = quote(v)
  elseif tv == "number" then
    n = n + 1
    buf[n] = number_text(v)
  elseif tv == "boolean" then
    n = n + 1
    buf[n] = v and "true" or "false"
  elseif tv == "table" then
    local mt = getmetatable(v)
    if v == NULL then
      n = n + 1
      buf[n] = "null"
    elseif mt == RAW then
      n = n + 1
      buf[n] = v[1]
    else
      if seen[v] then error("json.encode: a cycle", 0) end
      seen[v] = true
      if mt == ARRAY or (mt ~= OBJECT and rawget(v, 1) ~= nil) then
        n = earray(v, buf, n, seen)
      else
        n = eobject(v, buf, n, seen)
      end
      seen[v] = nil
    end
  elseif v == nil or v == CJSON_NULL then
    n = n + 1
    buf[n] = "null"
  else
    error("json.encode: cannot encode a " .. tv, 0)
  end
  return n
end

-- encode(value) -> text
function _M.encode(v)
  local buf = {}
  local n = evalue(v, buf, 0, {})
  return concat(buf, "", 1, n)
end

return _M
