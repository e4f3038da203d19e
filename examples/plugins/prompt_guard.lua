-- prompt_guard — rejects or masks sensitive text in requests (an example plugin:
-- examples/plugins/README.md).
--
--   plugins = {
--     { name = "prompt_guard", path = "plugins/prompt_guard.lua",
--       action = "mask",                        -- or "reject" (the default)
--       detect = { "email", "card" },           -- the built-in detectors (the default: both)
--       masks = { { pattern = "sk%-[%w%-]+", replacement = "[api-key]" } },  -- more, Lua patterns
--       deny = { "(?i)ignore (all )?previous instructions" } },             -- PCRE2: always reject
--   }
--
-- Every string value of the JSON body is looked at (message contents, system prompts, tool
-- arguments, the `user` field ...; object keys are not), after JSON unescaping, so "\u0040" is an
-- "@" like any other.
--
-- - `deny` patterns (PCRE2, through require("moongate.regex"); compiled at load, so a bad one is
--   refused with its offset) reject the request in any mode.
-- - action = "reject": a detector or a `masks` pattern that finds anything rejects the request.
-- - action = "mask": each finding is replaced — emails by "[email]", card numbers by "[card]",
--   `masks` by their replacement — and the provider gets the masked body. Only the strings that
--   changed are re-encoded: every other byte of the body (numbers, [], key order, spacing) goes
--   as the client sent it.
--
-- A rejection is a 400 in the client's format: OpenAI's {"error":{...}} with code
-- "prompt_rejected", or Anthropic's {"type":"error","error":{...}} on /v1/messages paths. The
-- answer names what was found, never the text itself. ctx.vars.prompt_guard holds the counts
-- found, e.g. { email = 2, card = 1 }.
--
-- Detectors: "email" is local@domain.tld; "card" is 13 to 19 digits, optionally grouped by single
-- spaces or dashes, that pass the Luhn check (so order numbers and phone numbers are left alone).
--
-- Hooks: on_request decides (and computes the masked body once); on_upstream_request puts the
-- masked body in ctx.upstream.body for each attempt. It runs at priority 920, above the provider
-- plugin (900), so it edits the body in the client's format before any translation, and a
-- translated request (OpenAI client, Anthropic target) carries the masked text too.
local gw = require("gw")
local regex = require("moongate.regex")

local byte, find, format, gsub, sub = string.byte, string.find, string.format, string.gsub, string.sub
local concat = table.concat
local ipairs, pairs, tostring, type = ipairs, pairs, tostring, type

local _M = {
  name = "prompt_guard",
  priority = 920,
  schema = {
    type = "object",
    properties = {
      action = { type = "string", enum = { "reject", "mask" }, default = "reject",
                 description = "what to do with a finding" },
      detect = { type = "array", items = { type = "string", enum = { "email", "card" } },
                 description = "built-in detectors; default both" },
      masks = {
        type = "array", default = {},
        description = "more findings, as Lua patterns with their replacement",
        items = { type = "object", properties = {
          pattern = { type = "string", required = true, description = "a Lua pattern" },
          replacement = { type = "string", default = "[redacted]",
                          description = "what replaces it (a string.gsub replacement: %1 is a capture, %% a %)" },
          name = { type = "string", description = "named in rejections and counts; default masks[N]" },
        } },
      },
      deny = { type = "array", default = {}, items = { type = "string" },
               description = "PCRE2 patterns whose match always rejects" },
      message = { type = "string", default = "the request was refused by the prompt guard",
                  description = "start of the rejection message" },
    },
  },
}

---------------------------------------------------------------------------------------------------
-- Detectors
---------------------------------------------------------------------------------------------------

local EMAIL = "[%w%.%%%+%-_]+@[%w%-]+%.[%w%.%-]*%w"

local function luhn(digits)
  local sum, alt = 0, false
  for i = #digits, 1, -1 do
    local d = byte(digits, i) - 48
    if alt then
      d = d * 2
      if d > 9 then d = d - 9 end
    end
    sum = sum + d
    alt = not alt
  end
  return sum % 10 == 0
end

-- a run of digits, single spaces and dashes, starting and ending with a digit
local CARD_RUN = "%d[%d %-]*%d"

local function is_card(run)
  if find(run, "[ %-][ %-]") then return false end
  local digits = gsub(run, "[ %-]", "")
  return #digits >= 13 and #digits <= 19 and luhn(digits)
end

-- detectors: name -> function(s, mask) -> s', count. With mask false, s is returned unchanged.
local DETECTORS = {
  email = function(s, mask)
    if not find(s, "@", 1, true) then return s, 0 end
    local n = 0
    local out = gsub(s, EMAIL, function(m)
      n = n + 1
      return mask and "[email]" or m
    end)
    return out, n
  end,
  card = function(s, mask)
    if not find(s, "%d%d") then return s, 0 end
    local n = 0
    local out = gsub(s, CARD_RUN, function(run)
      if not is_card(run) then return run end
      n = n + 1
      return mask and "[card]" or run
    end)
    return out, n
  end,
}
_M.DETECTORS = DETECTORS

function _M.init(conf)
  conf.detect = conf.detect or { "email", "card" }
  conf._deny = {}
  for i, src in ipairs(conf.deny) do
    local re, err, offset = regex.compile(src)
    if not re then
      return nil, format("deny[%d]: %s (at offset %s of the pattern)", i, tostring(err), tostring(offset))
    end
    conf._deny[i] = re
  end
  for i, m in ipairs(conf.masks) do
    local ok, err = pcall(find, "", m.pattern)
    if not ok then return nil, format("masks[%d].pattern: %s", i, tostring(err)) end
    m.name = m.name or format("masks[%d]", i)
  end
  return true
end

---------------------------------------------------------------------------------------------------
-- The JSON text: string values, found and replaced in place
---------------------------------------------------------------------------------------------------

-- Outside string literals, a JSON text has no '"': each '"' found from the start opens a literal.
-- strings(body) -> list of { from, to } (1-based, quotes included) of the string *values*
local function string_values(body)
  local out, pos, n = {}, 1, #body
  while true do
    local s = find(body, '"', pos, true)
    if not s then return out end
    local j = s + 1
    local e
    while true do
      local k = find(body, '["\\]', j)
      if not k then return out end           -- not JSON; the runtime said it was, so unreachable
      if byte(body, k) == 92 then j = k + 2 else e = k break end
    end
    local after = find(body, "[^ \t\r\n]", e + 1)
    if not (after and after <= n and byte(body, after) == 58) then  -- not followed by ':': a value
      out[#out + 1] = { s, e }
    end
    pos = e + 1
  end
end

-- scan(conf, body, mask) -> found { name = count }, total, masked body | nil (unchanged),
-- denied pattern index | nil
local function scan(conf, body, mask)
  local found, total = {}, 0
  local parts, last, changed = {}, 1, false
  for _, span in ipairs(string_values(body)) do
    local lit = sub(body, span[1], span[2])
    -- a literal without escapes is its own text; only others need decoding
    local text = find(lit, "\\", 1, true) and gw.json.decode(lit) or sub(lit, 2, -2)
    if type(text) == "string" then
      for i, re in ipairs(conf._deny) do
        if re:find(text) then return found, total, nil, i end
      end
      local new = text
      for _, name in ipairs(conf.detect) do
        local c
        new, c = DETECTORS[name](new, mask)
        if c > 0 then
          found[name] = (found[name] or 0) + c
          total = total + c
        end
      end
      for _, m in ipairs(conf.masks) do
        local c
        new, c = gsub(new, m.pattern, mask and m.replacement or "%0")
        if c > 0 then
          found[m.name] = (found[m.name] or 0) + c
          total = total + c
        end
      end
      if mask and new ~= text then
        parts[#parts + 1] = sub(body, last, span[1] - 1)
        parts[#parts + 1] = gw.json.encode(new)
        last = span[2] + 1
        changed = true
      end
    end
  end
  if not changed then return found, total, nil end
  parts[#parts + 1] = sub(body, last)
  return found, total, concat(parts)
end
_M.scan = scan

---------------------------------------------------------------------------------------------------
-- Hooks
---------------------------------------------------------------------------------------------------

-- 400 in the client's format (the runtime picks Anthropic's for paths under /v1/messages)
local function reject(ctx, message)
  local target = ctx.request.target or ctx.request.path or ""
  if sub(target, 1, 12) == "/v1/messages" then
    return gw.respond(400, { type = "error", error = { type = "invalid_request_error", message = message } })
  end
  return gw.respond(400, { error = { message = message, type = "invalid_request_error", code = "prompt_rejected" } })
end

local function names(found)
  local list = {}
  for k in pairs(found) do list[#list + 1] = k end
  table.sort(list)
  return concat(list, ", ")
end

function _M.on_request(ctx, conf)
  local req = ctx.request
  if not req.is_json then return end   -- only JSON bodies are looked at
  local mask = conf.action == "mask"
  local found, total, masked, denied = scan(conf, req.body, mask)
  ctx.vars.prompt_guard = found
  if denied then
    gw.log("info", "prompt_guard: rejected, deny[" .. denied .. "] matched")
    return reject(ctx, conf.message .. " (a denied pattern matched)")
  end
  if total > 0 and not mask then
    gw.log("info", "prompt_guard: rejected, found " .. names(found))
    return reject(ctx, conf.message .. " (found: " .. names(found) .. ")")
  end
  if masked then
    ctx.vars.prompt_guard_body = masked
    gw.log("info", "prompt_guard: masked " .. total .. " finding(s): " .. names(found))
  end
end

-- ctx.upstream is built again for every attempt, from ctx.request.body: put the masked text in.
-- (Changing ctx.request.body in on_request would do it once, but the provider plugin splices the
-- model replacement at offsets it found in the body as received, so the body is changed here.)
function _M.on_upstream_request(ctx, conf)
  local masked = ctx.vars.prompt_guard_body
  if not masked then return end
  local up = ctx.upstream
  if up.body == ctx.request.body then
    up.body = masked
  else
    -- a plugin above this one changed it already: mask what it made
    local _, _, again = scan(conf, up.body, true)
    if again then up.body = again end
  end
end

return _M
