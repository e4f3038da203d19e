-- provider — turns the request into what the chosen target's provider
-- expects, on_upstream_request: the URL, the provider's credentials and
-- headers, and the model replacement (spliced into the JSON text so every
-- other byte stays as the client sent it).
--
-- This first version speaks the OpenAI wire (type openai and its presets)
-- and the in-process mock; the providers issue adds Anthropic, Azure and
-- Gemini translation.
local splice = require("moongate.json_splice")
local errors = require("moongate.errors")

local _M = {
  name = "provider",
  priority = 900,
  schema = { type = "object", properties = {} },
}

local pairs, sub = pairs, string.sub

local function replace_model(ctx, up)
  local model = ctx.target.model
  local req = ctx.request
  local is_json = req.is_json
  if is_json == nil then is_json = req.json and true end  -- a request not built by the runtime
  if type(model) ~= "string" or not is_json then return end
  if req.model == model then return end
  local quoted = splice.quote(model)
  local at = req.model_at
  if at and up.body == req.body then
    -- the runtime's scan already found the value in this very text
    up.body = up.body:sub(1, at - 1) .. quoted .. up.body:sub(req.model_end + 1)
    return
  end
  -- set, not replace: a client that sent no model still needs the target's
  local body, ok = splice.set(up.body, "model", quoted)
  if ok then up.body = body end
end

function _M.on_upstream_request(ctx, conf)
  local p = ctx.provider
  local up = ctx.upstream
  local target = ctx.target
  if not p then
    return errors.respond(ctx, 502, "target " .. target.name .. " names an unknown provider", "bad_target")
  end
  replace_model(ctx, up)
  for k, v in pairs(p.headers or {}) do up.headers[k:lower()] = v end
  for k, v in pairs(target.headers or {}) do up.headers[k:lower()] = v end
  if p.wire == "mock" then
    up.mock = p
    return
  end
  if p.wire ~= "openai" then
    return errors.respond(ctx, 501, "provider type " .. p.type ..
      " is not supported by this build yet", "unsupported_provider")
  end
  -- an openai base_url ends in /v1 like the SDKs'; the client's path starts with it
  local path = up.path
  local base = p.base_url  -- the config loader strips a trailing "/", but plugins may set it
  if sub(base, -1) == "/" then base = base:gsub("/+$", "") end
  if sub(base, -3) == "/v1" and sub(path, 1, 4) == "/v1/" then path = sub(path, 4) end
  up.url = base .. path .. (up.query and ("?" .. up.query) or "")
  if p.api_key then up.headers["authorization"] = "Bearer " .. p.api_key end
  up.ca_file = p.ca_file
  up.insecure = p.insecure
  local backend_timeout = ctx.backend.timeout or {}
  local per_try = target.timeout or p.timeout or backend_timeout.per_try
  up.connect_timeout = 10
  if per_try and per_try < up.connect_timeout then up.connect_timeout = per_try end
  -- a stream may run long: it is bounded by silence (stream_idle), not a total
  if ctx.request.stream then
    up.idle_timeout = backend_timeout.stream_idle or 300
  else
    up.timeout = per_try or 600
  end
end

return _M
