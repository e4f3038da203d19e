-- system_prompt — adds a system prompt to chat requests (an example plugin:
-- examples/plugins/README.md).
--
--   plugins = {
--     { name = "system_prompt", path = "plugins/system_prompt.lua",
--       text = "You are the ACME support assistant. Answer in English.",
--       position = "prepend",        -- or "append": after the client's own system prompt
--       only_if_missing = false },   -- true: leave requests that bring a system prompt alone
--   }
--
-- OpenAI chat (POST /v1/chat/completions): a message {"role":"system","content":TEXT} goes
-- first in `messages` ("prepend"), or right after the client's leading system/developer
-- messages ("append").
-- Anthropic messages (POST /v1/messages): the top-level `system` gets TEXT — added when absent;
-- joined to a string system prompt with `separator` (default a blank line), before or after it;
-- or added as a {"type":"text"} block first or last when `system` is a list of blocks.
-- Other paths (embeddings, completions, pass-through) are left alone.
--
-- The body is edited as text: the new message (or the new `system` string) is spliced in and
-- every other byte goes to the provider as the client sent it. Decoding the body and encoding it
-- again with gw.json would be shorter to write, but lua-cjson 2.1 writes an empty array as {}
-- (so "tools":[] arrives as "tools":{}) and numbers with 14 significant digits (a seed of
-- 12345678901234567 arrives as 1.2345678901235e+16) — see the README's caveats.
--
-- Hook: on_upstream_request at priority 910, above the provider plugin (900), so the body is
-- still in the client's format and a translated request (an OpenAI client sent to an Anthropic
-- target) carries the prompt in the target's format too. It is applied to every attempt's
-- ctx.upstream (built again from ctx.request.body each time); the result is computed once.
local gw = require("gw")

local byte, find, sub = string.byte, string.find, string.sub
local ipairs, type = ipairs, type

local _M = {
  name = "system_prompt",
  priority = 910,
  schema = {
    type = "object",
    properties = {
      text = { type = "string", required = true, description = "the system prompt added" },
      position = { type = "string", enum = { "prepend", "append" }, default = "prepend",
                   description = "before or after the client's own system prompt" },
      separator = { type = "string", default = "\n\n",
                    description = "between TEXT and an Anthropic string system prompt" },
      only_if_missing = { type = "boolean", default = false,
                          description = "leave requests that already have a system prompt unchanged" },
    },
  },
}

---------------------------------------------------------------------------------------------------
-- A JSON text, walked without decoding it (positions are 1-based)
---------------------------------------------------------------------------------------------------

local function skip_ws(s, i)
  return find(s, "[^ \t\r\n]", i) or #s + 1
end

-- s[i] is '"': the position after the closing quote
local function skip_string(s, i)
  local j = i + 1
  while true do
    local k = find(s, '["\\]', j)
    if not k then return nil end
    if byte(s, k) == 92 then j = k + 2 else return k + 1 end
  end
end

-- the position after the value starting at i
local function skip_value(s, i)
  local c = byte(s, i)
  if c == 34 then return skip_string(s, i) end
  if c == 123 or c == 91 then   -- { [
    local depth, j = 0, i
    while true do
      local k = find(s, '["{}%[%]]', j)
      if not k then return nil end
      local ch = byte(s, k)
      if ch == 34 then
        j = skip_string(s, k)
        if not j then return nil end
      else
        depth = depth + ((ch == 123 or ch == 91) and 1 or -1)
        j = k + 1
        if depth == 0 then return j end
      end
    end
  end
  return find(s, "[,}%] \t\r\n]", i) or #s + 1   -- a number, true, false, null
end

-- members(s) -> { key = { from, to } } of the top-level object's values (to: last byte), and
-- the position of its opening brace; nil when s is not an object
local function members(s)
  local i = skip_ws(s, 1)
  if byte(s, i) ~= 123 then return nil end
  local open = i
  local out = {}
  i = skip_ws(s, i + 1)
  if byte(s, i) == 125 then return out, open end
  while true do
    if byte(s, i) ~= 34 then return nil end
    local kend = skip_string(s, i)
    if not kend then return nil end
    local key = gw.json.decode(sub(s, i, kend - 1))
    i = skip_ws(s, kend)
    if byte(s, i) ~= 58 then return nil end
    local vstart = skip_ws(s, i + 1)
    local vend = skip_value(s, vstart)
    if not vend then return nil end
    if out[key] == nil then out[key] = { vstart, vend - 1 } end   -- the first of duplicates
    i = skip_ws(s, vend)
    local c = byte(s, i)
    if c == 125 then return out, open end
    if c ~= 44 then return nil end
    i = skip_ws(s, i + 1)
  end
end

-- elements(s, from) -> list of { from, to } of the array starting at from ('[')
local function elements(s, from)
  local out = {}
  local i = skip_ws(s, from + 1)
  if byte(s, i) == 93 then return out end
  while true do
    local e = skip_value(s, i)
    if not e then return nil end
    out[#out + 1] = { i, e - 1 }
    i = skip_ws(s, e)
    local c = byte(s, i)
    if c == 93 then return out end
    if c ~= 44 then return nil end
    i = skip_ws(s, i + 1)
  end
end

local function insert(s, at, text)
  return sub(s, 1, at - 1) .. text .. sub(s, at)
end

local function replace(s, from, to, text)
  return sub(s, 1, from - 1) .. text .. sub(s, to + 1)
end

local function enc(str)
  return gw.json.encode(str)
end

---------------------------------------------------------------------------------------------------
-- The two formats
---------------------------------------------------------------------------------------------------

local function role_of(s, span)
  local m = members(sub(s, span[1], span[2]))
  if not m or not m.role then return nil end
  local r = m.role
  local el = sub(s, span[1], span[2])
  return gw.json.decode(sub(el, r[1], r[2]))
end

-- OpenAI chat: a new system message in `messages`
function _M.openai(body, conf)
  local m = members(body)
  local msgs = m and m.messages
  if not msgs or byte(body, msgs[1]) ~= 91 then return nil end
  local list = elements(body, msgs[1])
  if not list then return nil end
  local leading = 0   -- the client's system/developer messages before the first other one
  for _, span in ipairs(list) do
    local role = role_of(body, span)
    if role ~= "system" and role ~= "developer" then break end
    leading = leading + 1
  end
  if conf.only_if_missing then
    for _, span in ipairs(list) do
      local role = role_of(body, span)
      if role == "system" or role == "developer" then return nil end
    end
  end
  local msg = '{"role":"system","content":' .. enc(conf.text) .. '}'
  if #list == 0 then return insert(body, msgs[1] + 1, msg) end
  if conf.position == "prepend" or leading == 0 then
    return insert(body, list[1][1], msg .. ",")
  end
  return insert(body, list[leading][2] + 1, "," .. msg)
end

-- Anthropic messages: the top-level `system`
function _M.anthropic(body, conf)
  local m, open = members(body)
  if not m then return nil end
  local sys = m.system
  local text = conf.text
  if not sys then
    local rest = skip_ws(body, open + 1)
    local comma = byte(body, rest) == 125 and "" or ","
    return insert(body, open + 1, '"system":' .. enc(text) .. comma)
  end
  local c = byte(body, sys[1])
  local old = sub(body, sys[1], sys[2])
  if c == 34 then   -- a string
    local cur = gw.json.decode(old)
    if type(cur) ~= "string" then return nil end
    if cur ~= "" and conf.only_if_missing then return nil end
    local new
    if cur == "" then new = text
    elseif conf.position == "prepend" then new = text .. conf.separator .. cur
    else new = cur .. conf.separator .. text end
    return replace(body, sys[1], sys[2], enc(new))
  elseif c == 91 then   -- a list of blocks
    local list = elements(body, sys[1])
    if not list then return nil end
    if #list > 0 and conf.only_if_missing then return nil end
    local block = '{"type":"text","text":' .. enc(text) .. '}'
    if #list == 0 then return insert(body, sys[1] + 1, block) end
    if conf.position == "prepend" then return insert(body, list[1][1], block .. ",") end
    return insert(body, list[#list][2] + 1, "," .. block)
  elseif old == "null" then
    return replace(body, sys[1], sys[2], enc(text))
  end
  return nil   -- something else: the provider will say what it thinks of it
end

-- decorate(path, body, conf) -> the new body | nil (unchanged)
function _M.decorate(path, body, conf)
  if path == "/v1/chat/completions" then return _M.openai(body, conf) end
  if path == "/v1/messages" then return _M.anthropic(body, conf) end
  return nil
end

---------------------------------------------------------------------------------------------------
-- Hook
---------------------------------------------------------------------------------------------------

function _M.on_upstream_request(ctx, conf)
  local req, up, v = ctx.request, ctx.upstream, ctx.vars
  if req.method ~= "POST" or not req.is_json then return end
  -- once per request: every attempt starts again from the same text
  if v.system_prompt_in ~= up.body then
    v.system_prompt_in = up.body
    v.system_prompt_out = _M.decorate(up.path, up.body, conf) or false
  end
  if v.system_prompt_out then up.body = v.system_prompt_out end
end

return _M
