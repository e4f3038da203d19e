-- auth — API keys (SPEC §2 `consumers`, §3), on_request.
--
-- The key is read from `Authorization: Bearer <key>`, `x-api-key` or `api-key` (what the OpenAI,
-- Anthropic and Azure SDKs send; the runtime never forwards them upstream). It is looked up among
-- gateway.lua's consumers and those created through POST /admin/consumers (moongate.consumers:
-- SHA-256 digests only, compared in constant time). No key, or an unknown one: 401; a model the
-- consumer may not use (its `models` list, the client's model name): 403 — both in the client's
-- error format. Otherwise ctx.consumer = { name, team, budget, models } for the plugins after it
-- (rate_limit, budget, the ledger).
--
-- Priority 2500: after the router (3000), which chooses the route (and so the route's own plugin
-- list), before rate_limit (2000) and budget (1900), which count per consumer and team.
local consumers = require("moongate.consumers")
local errors = require("moongate.errors")
local jwt = require("moongate.jwt")

local _M = {
  name = "auth",
  priority = 2500,
  schema = { type = "object", properties = {} },
}

local match = string.match

-- key_of(headers) -> the client's key | nil
local function key_of(h)
  local auth = h["authorization"]
  if auth then
    local k = match(auth, "^[Bb][Ee][Aa][Rr][Ee][Rr]%s+(%S+)%s*$")
    if k then return k end
  end
  local k = h["x-api-key"] or h["api-key"]
  if k then
    k = match(k, "^%s*(%S+)%s*$")
    if k then return k end
  end
  return nil
end
_M.key_of = key_of

-- Whether the jwt plugin runs after this one on this request's chain (it does at the shipped
-- priorities, 2500 and 2450; an entry's priority may change that).
local function jwt_follows(ctx)
  local list = ctx._chain and ctx._chain.on_request
  if not list then return false end
  local me = false
  for i = 1, #list do
    local name = list[i].name
    if me and name == "jwt" then return true end
    if name == ctx._plugin then me = true end
  end
  return false
end

function _M.on_request(ctx, conf)
  if ctx.consumer ~= nil then return end   -- a plugin before this one authenticated it
  local key = key_of(ctx.request.headers)
  if not key then
    return errors.respond(ctx, 401, "Missing API key: send it as \"Authorization: Bearer <key>\", " ..
      "x-api-key or api-key.", "missing_api_key")
  end
  local c = consumers.lookup(ctx.config, key)
  if not c then
    -- a bearer JWT is the jwt plugin's (priority 2450) to accept or refuse
    if jwt_follows(ctx) and jwt.looks_like(key) then return end
    return errors.respond(ctx, 401, "Incorrect API key provided.", "invalid_api_key")
  end
  local model = ctx.request.model
  if model ~= nil and not consumers.allows(c, model) then
    return errors.respond(ctx, 403, "This key may not use model \"" .. tostring(model) .. "\".",
      "model_not_allowed")
  end
  ctx.consumer = c
end

return _M
