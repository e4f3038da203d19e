-- jwt — bearer JSON Web Tokens as client credentials (SPEC §2 `jwt`, §3), on_request.
--
--   { name = "jwt", jwks_file = "jwks.json", issuer = "https://idp.example.com",
--     audience = "moongate", claims = { consumer = "sub", team = "org" } }
--
-- `Authorization: Bearer <jwt>` signed with HS256, RS256 or ES256 by a key of `jwks_file` (a
-- JWKS, read at every load and reload) or by `secret` (HS256); iss, aud, exp and nbf checked
-- with `leeway`. The claims named by `claims` (dotted paths reach nested objects) become
-- ctx.consumer = { name =, team =, jwt = <all claims> }, which rate_limit and budget count by.
-- A missing or refused token: 401 in the client's error format saying only "Invalid token." or
-- "Token expired."; why exactly goes to the log (info), never the token itself.
-- Parsing, key choice and claim checks: moongate.jwt; signatures: mbedTLS (runtime/crypto.c).
--
-- Priority 2450: just after auth (2500). A request auth already attributed to an API key
-- (ctx.consumer set) is left alone; auth leaves bearer tokens shaped like a JWT to this plugin
-- when both are configured, and if an entry's priority puts jwt first, jwt leaves anything that
-- is not a bearer JWT to auth (docs/jwt.md).
local gw = require("gw")
local errors = require("moongate.errors")
local jwt = require("moongate.jwt")

local ipairs, match, tostring, type = ipairs, string.match, tostring, type

local function one_or_list(desc)
  return {
    type = "array", items = { type = "string" }, minItems = 1, description = desc,
    coerce = function(v)
      if type(v) == "string" then return { v } end
      return v
    end,
  }
end

local _M = {
  name = "jwt",
  priority = 2450,
  schema = {
    type = "object",
    properties = {
      jwks_file = { type = "string", description = "JWKS file of the verification keys " ..
                    "(relative to the config folder); read at every load and reload" },
      secret = { type = "string", description = "an HS256 secret (32 bytes at least), as well " ..
                 "as or instead of jwks_file" },
      issuer = one_or_list("accepted iss values; unset: iss not checked"),
      audience = one_or_list("accepted aud values (the token's aud, a string or a list, must " ..
                             "hold one); unset: aud not checked"),
      leeway = { type = "duration", default = 60, description = "clock skew allowed on exp and nbf" },
      require_exp = { type = "boolean", default = true, description = "refuse tokens without exp" },
      algorithms = { type = "array", minItems = 1, description = "algs accepted (default all three)",
                     items = { type = "string", enum = { "HS256", "RS256", "ES256" } } },
      claims = {
        type = "object", default = {}, description = "claims naming the consumer and its team",
        properties = {
          consumer = { type = "string", default = "sub", description = "claim (or dotted path) " ..
                       "for ctx.consumer.name; a token without it is refused" },
          team = { type = "string", description = "claim (or dotted path) for ctx.consumer.team" },
        },
      },
    },
  },
}

function _M.init(conf)
  if conf.jwks_file == nil and conf.secret == nil then
    return nil, "jwks_file or secret required"
  end
  local keys, err = jwt.load_keyset(conf.jwks_file, conf.secret)
  if not keys then return nil, err end
  for _, why in ipairs(keys.skipped) do
    gw.log("warn", "jwt: " .. tostring(conf.jwks_file) .. ": skipped " .. why)
  end
  local allowed
  if conf.algorithms then
    allowed = {}
    for _, a in ipairs(conf.algorithms) do allowed[a] = true end
  end
  -- What authenticate needs, once per load (a reload makes a new conf). "_" keys are runtime
  -- caches: GET /admin/config leaves them out, so no key material is shown.
  conf._jwt = {
    keys = keys, allowed = allowed, issuer = conf.issuer, audience = conf.audience,
    leeway = conf.leeway, require_exp = conf.require_exp, claims = conf.claims,
  }
  return true
end

-- The bearer token of the request, or nil.
local function bearer(h)
  local auth = h["authorization"]
  if not auth then return nil end
  return match(auth, "^[Bb][Ee][Aa][Rr][Ee][Rr]%s+(%S+)%s*$")
end
_M.bearer = bearer

-- Whether the auth plugin runs after this one on this request's chain (an entry's `priority`
-- may put jwt first): then credentials that are not a bearer JWT are auth's to judge. Never
-- true when auth ran before, so nothing unjudged gets through.
local function auth_follows(ctx)
  local list = ctx._chain and ctx._chain.on_request
  if not list then return false end
  local me = false
  for i = 1, #list do
    local name = list[i].name
    if me and name == "auth" then return true end
    if name == ctx._plugin then me = true end
  end
  return false
end

function _M.on_request(ctx, conf)
  if ctx.consumer ~= nil then return end   -- auth took an API key already
  local state = conf._jwt
  local token = bearer(ctx.request.headers)
  if (token == nil or not jwt.looks_like(token)) and auth_follows(ctx) then return end
  if token == nil then
    return errors.respond(ctx, 401, "Missing bearer token: send it as \"Authorization: Bearer " ..
      "<token>\".", "missing_token")
  end
  local consumer, kind, detail
  if jwt.looks_like(token) then
    consumer, kind, detail = jwt.authenticate(state, token, gw.now())
  else
    kind, detail = "invalid", "bearer token is not a JWT"
  end
  if not consumer then
    gw.log("info", "jwt: token refused: " .. tostring(detail))
    if kind == "expired" then
      return errors.respond(ctx, 401, "Token expired.", "token_expired")
    end
    return errors.respond(ctx, 401, "Invalid token.", "invalid_token")
  end
  ctx.consumer = consumer
end

return _M
