-- moongate.json_splice — edit one top-level member of a JSON object in place,
-- leaving every other byte as the client sent it (SPEC §3: numbers keep every
-- digit, empty arrays stay arrays). A scanner, not a parser: it skips nested
-- values and strings just well enough to find the member's value.
local cjson = require("cjson.safe")
local byte, sub, find = string.byte, string.sub, string.find

local _M = { _VERSION = "0.1" }

local B_QUOTE, B_BSLASH, B_LBRACE, B_RBRACE = 34, 92, 123, 125
local B_LBRACK, B_RBRACK, B_COLON, B_COMMA = 91, 93, 58, 44

local function skip_ws(s, i)
  return find(s, "[^ \t\r\n]", i) or #s + 1
end

-- end of the string starting at i (the quote); returns the index of the closing quote
local function string_end(s, i)
  local j = i + 1
  while true do
    local q = find(s, '["\\]', j)
    if not q then return nil end
    if byte(s, q) == B_QUOTE then return q end
    j = q + 2
  end
end

-- end index of the value starting at i
local function value_end(s, i)
  local c = byte(s, i)
  if c == B_QUOTE then return string_end(s, i) end
  if c == B_LBRACE or c == B_LBRACK then
    local depth, j = 0, i
    while j <= #s do
      local k = find(s, '[{}%[%]"]', j)
      if not k then return nil end
      local b = byte(s, k)
      if b == B_QUOTE then
        k = string_end(s, k)
        if not k then return nil end
      elseif b == B_LBRACE or b == B_LBRACK then
        depth = depth + 1
      else
        depth = depth - 1
        if depth == 0 then return k end
      end
      j = k + 1
    end
    return nil
  end
  local k = find(s, "[,}%] \t\r\n]", i)
  return k and k - 1 or #s
end

-- A key written with escapes ("mod\u0065l") names the same member as the
-- plain one: decode such keys before comparing, as a JSON parser would.
local function key_text(raw)
  if not find(raw, "\\", 1, true) then return raw end
  local ok, v = pcall(cjson.decode, '"' .. raw .. '"')
  return ok and v or raw
end

-- ranges(s, key) -> { a1, b1, a2, b2, ... }: the value ranges of every
-- top-level member named key (a duplicated key appears more than once;
-- parsers keep the last, so an edit must reach all of them).
local function ranges(s, key)
  local out = {}
  local i = skip_ws(s, 1)
  if byte(s, i) ~= B_LBRACE then return out end
  i = skip_ws(s, i + 1)
  while i <= #s do
    local c = byte(s, i)
    if c ~= B_QUOTE then return out end
    local ke = string_end(s, i)
    if not ke then return out end
    local k = key_text(sub(s, i + 1, ke - 1))
    i = skip_ws(s, ke + 1)
    if byte(s, i) ~= B_COLON then return out end
    i = skip_ws(s, i + 1)
    if i > #s then return out end
    local ve = value_end(s, i)
    if not ve then return out end
    if k == key then
      out[#out + 1] = i
      out[#out + 1] = ve
    end
    i = skip_ws(s, ve + 1)
    if byte(s, i) == B_COMMA then i = skip_ws(s, i + 1) end
  end
  return out
end

-- find(s, key) -> value_start, value_end | nil  (the last top-level member `key`)
function _M.find(s, key)
  local r = ranges(s, key)
  local n = #r
  if n == 0 then return nil end
  return r[n - 1], r[n]
end

-- replace(s, key, json_value) -> new text, true | s, false when the member is absent
function _M.replace(s, key, json_value)
  local r = ranges(s, key)
  if #r == 0 then return s, false end
  for k = #r - 1, 1, -2 do
    s = sub(s, 1, r[k] - 1) .. json_value .. sub(s, r[k + 1] + 1)
  end
  return s, true
end

-- set(s, key, json_value) -> new text, true: replace the member, or add it
-- first in the object when absent | s, false when s is not a JSON object
function _M.set(s, key, json_value)
  local out, ok = _M.replace(s, key, json_value)
  if ok then return out, true end
  local i = skip_ws(s, 1)
  if byte(s, i) ~= B_LBRACE then return s, false end
  local j = skip_ws(s, i + 1)
  local member = _M.quote(key) .. ":" .. json_value
  if byte(s, j) == B_RBRACE then
    return sub(s, 1, i) .. member .. sub(s, i + 1), true
  end
  return sub(s, 1, i) .. member .. "," .. sub(s, i + 1), true
end

-- quote a Lua string as a JSON string
function _M.quote(v)
  return '"' .. v:gsub('[%c"\\]', function(ch)
    if ch == '"' then return '\\"' end
    if ch == "\\" then return "\\\\" end
    return string.format("\\u%04x", byte(ch))
  end) .. '"'
end

return _M
