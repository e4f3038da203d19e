-- provider — turns the request into what the chosen target's provider
-- expects (on_upstream_request): the URL, the provider's credentials and
-- headers, the body in the provider's format, and the decoder that brings
-- the answer back in the client's format (ctx.upstream.decoder).
--
-- Providers are data (lua/moongate/providers/presets.lua): each type names
-- its wire (openai, anthropic, gemini, mock) and its quirks. Protocols are
-- written once (lua/moongate/codec/): one codec per wire format, one SSE
-- codec, OpenAI chat as the hub between them.
--
-- A request in the provider's own format is never re-encoded: the model and
-- stream_options edits are splices into the client's text, so every other
-- byte reaches the provider as the client sent it. A translated request is
-- decoded and encoded with codec.json, which keeps numbers' digits and empty
-- arrays.
local splice = require("moongate.json_splice")
local errors = require("moongate.errors")
local presets = require("moongate.providers.presets")
local J = require("moongate.codec.json")
local common = require("moongate.codec.common")
local usage = require("moongate.codec.usage")
local decoder = require("moongate.codec.decoder")
local oa = require("moongate.codec.openai")
local an = require("moongate.codec.anthropic")
local ge = require("moongate.codec.gemini")

local _M = {
  name = "provider",
  priority = 900,
  schema = { type = "object", properties = {} },
}

local pairs, sub, type = pairs, string.sub, type
local raw_next = require("moongate.iter").raw_next   -- hot loops (lua/moongate/iter.lua)
local NONE = {}

-- the endpoints the gateway knows; anything else is "other" (passed through)
local ENDPOINTS = {
  ["/v1/chat/completions"] = { "POST", "chat", "openai" },
  ["/v1/completions"] = { "POST", "completions", "openai" },
  ["/v1/embeddings"] = { "POST", "embeddings", "openai" },
  ["/v1/models"] = { "GET", "models", "openai" },
  ["/v1/messages"] = { "POST", "messages", "anthropic" },
  ["/v1/messages/count_tokens"] = { "POST", "count_tokens", "anthropic" },
}

local function endpoint_of(method, path)
  local e = ENDPOINTS[path]
  if e and e[1] == method then return e[2], e[3] end
  return "other", errors.format_of(path)
end

local function replace_model(ctx, up)
  local model = ctx.target.model
  local req = ctx.request
  local is_json = req.is_json
  if is_json == nil then is_json = req.json and true end  -- a request not built by the runtime
  if type(model) ~= "string" or not is_json then return end
  if req.model == model then return end
  local quoted = splice.quote(model)
  local at = req.model_at
  if at and up.body == req.model_body then
    -- the runtime's scan already found the value in this very text
    up.body = up.body:sub(1, at - 1) .. quoted .. up.body:sub(req.model_end + 1)
    return
  end
  -- set, not replace: a client that sent no model still needs the target's
  local body, ok = splice.set(up.body, "model", quoted)
  if ok then up.body = body end
end

-- the model the provider is asked for: the target's, or the client's with model = false
local function model_of(ctx, doc)
  local m = ctx.target.model
  if type(m) == "string" then return m end
  if type(ctx.request.model) == "string" then return ctx.request.model end
  return doc and common.str(doc.model) or nil
end

local function strip_slash(base)
  if sub(base, -1) == "/" then base = base:gsub("/+$", "") end
  return base
end

local function req_headers(ctx)
  return ctx.request.headers or {}
end

-- the client's body decoded for translation, or a 400 answer
local function decode_body(ctx, up)
  local doc, err = J.decode(up.body or "")
  if not common.obj(doc) then
    return nil, errors.respond(ctx, 400, "request body is not a JSON object" ..
      (err and (": " .. err) or ""), "invalid_json")
  end
  return doc
end

-- translate(ctx, fn, ...) -> result | nil, answer: runs a request translator
-- under the provider's policy; a refusal becomes the client's 400
local function translate(ctx, fn, ...)
  local out, refusal = common.run(fn, ...)
  if out == nil then
    return nil, errors.respond(ctx, refusal.status, refusal.message, refusal.code)
  end
  return out
end

local function refuse(ctx, p, what)
  return errors.respond(ctx, 400, "provider type " .. p.type .. " (target " .. ctx.target.name .. ") " .. what,
    "unsupported_endpoint")
end

local function log_dropped(policy, ctx)
  if #policy.dropped > 0 then
    require("gw").log("info", "target " .. ctx.target.name .. ": dropped unsupported fields: " ..
      table.concat(policy.dropped, ", "))
  end
end

local function set_auth(h, kind, key)
  if not key then return end
  if kind == "bearer" then h["authorization"] = "Bearer " .. key
  elseif kind then h[kind] = key end
end

-- count_tokens for a provider without it: the estimate, answered here
local function count_locally(ctx, up)
  local doc = J.decode(up.body or "")
  return require("gw").respond(200, '{"input_tokens":' .. usage.prompt_tokens(doc) .. '}',
    { ["content-type"] = "application/json" })
end

local function decoder_opts(ctx, p, kind, o)
  o.ctx = ctx
  -- no request_doc: the tracker reads ctx.request.json if it must estimate (no closure per request)
  o.usage_path = kind.usage_path
  o.owned_by = p.type
  return decoder.new(o)
end

-- ====================== wires ======================

local WIRES = {}

-- The in-process mock answers in the client's format: only usage to read.
function WIRES.mock(ctx, p, kind, up, ep, client, stream)
  replace_model(ctx, up)
  up.mock = p
  if ep ~= "chat" and ep ~= "completions" and ep ~= "messages" and ep ~= "embeddings" then return end
  local wants = false
  if stream and client == "openai" then
    wants = oa.wants_stream_usage(up.body)
    if not wants then up.body = oa.with_stream_usage(up.body) end
  end
  up.decoder = decoder_opts(ctx, p, kind, { client = client, wire = client, endpoint = ep, stream = stream,
    wants_usage = wants, drop_usage_chunk = not wants, model = model_of(ctx) })
end

local function azure_url(p, ctx, ep, path, doc)
  local base = strip_slash(p.base_url)
  local q = "?api-version=" .. tostring(p.api_version)
  if ep == "models" then return base .. "/openai/models" .. q end
  local rest = sub(path, 1, 4) == "/v1/" and sub(path, 4) or path
  if ep == "chat" or ep == "completions" or ep == "embeddings" then
    local dep = model_of(ctx, doc) or ""
    return base .. "/openai/deployments/" .. dep:gsub("[^%w%-%._~]", function(c)
      return string.format("%%%02X", c:byte())
    end) .. rest .. q
  end
  return base .. "/openai" .. rest .. q
end

local function openai_url(p, path, query)
  -- an openai base_url ends in /v1 like the SDKs'; the client's path starts with it
  local base = strip_slash(p.base_url)
  if sub(base, -3) == "/v1" and sub(path, 1, 4) == "/v1/" then path = sub(path, 4) end
  return base .. path .. (query and ("?" .. query) or "")
end

function WIRES.openai(ctx, p, kind, up, ep, client, stream)
  set_auth(up.headers, kind.auth or "bearer", p.api_key)
  local path = up.path
  if client == "anthropic" then
    if ep == "count_tokens" then return count_locally(ctx, up) end
    if ep ~= "messages" then return refuse(ctx, p, "has no Anthropic endpoint " .. path) end
    local doc, bad = decode_body(ctx, up)
    if not doc then return bad end
    local policy = common.policy(p.type, p.drop_unsupported)
    local hub, answer = translate(ctx, an.request_to_hub, doc, { policy = policy, model = model_of(ctx, doc),
      max_tokens_field = kind.max_tokens_field, top_k = kind.top_k, stream_usage = kind.stream_usage })
    if not hub then return answer end
    log_dropped(policy, ctx)
    up.body = J.encode(hub)
    up.method, path = "POST", "/v1/chat/completions"
    up.decoder = decoder_opts(ctx, p, kind, { client = "anthropic", wire = "openai", endpoint = "messages",
      stream = stream, model = model_of(ctx, doc), request_doc = doc })
    ep = "chat"
    up.url = kind.url == "azure" and azure_url(p, ctx, ep, path, doc) or openai_url(p, path, nil)
    return
  end
  -- an OpenAI client: the body goes as it is, but for the model and stream_options
  replace_model(ctx, up)
  local wants = false
  if stream and (ep == "chat" or ep == "completions") then
    wants = oa.wants_stream_usage(up.body)
    if not wants and kind.stream_usage ~= false then up.body = oa.with_stream_usage(up.body) end
  end
  if ep == "chat" or ep == "completions" or ep == "embeddings" then
    up.decoder = decoder_opts(ctx, p, kind, { client = "openai", wire = "openai", endpoint = ep,
      stream = stream, wants_usage = wants, drop_usage_chunk = not wants, model = model_of(ctx) })
  elseif ep == "models" and req_headers(ctx)["anthropic-version"] then
    up.decoder = decoder_opts(ctx, p, kind, { client = "openai", wire = "openai", endpoint = "models",
      models_style = "anthropic" })
  end
  up.url = kind.url == "azure" and azure_url(p, ctx, ep, path) or openai_url(p, path, up.query)
end

function WIRES.anthropic(ctx, p, kind, up, ep, client, stream)
  local h = up.headers
  set_auth(h, kind.auth or "x-api-key", p.api_key)
  -- an Anthropic client's own version (and betas) go through; others get ours
  if not req_headers(ctx)["anthropic-version"] then
    h["anthropic-version"] = kind.version or an.VERSION_HEADER
  end
  local base = strip_slash(p.base_url)
  local path = up.path
  if client == "anthropic" then
    replace_model(ctx, up)
    if ep == "messages" then
      up.decoder = decoder_opts(ctx, p, kind, { client = "anthropic", wire = "anthropic", endpoint = "messages",
        stream = stream, model = model_of(ctx) })
    end
    up.url = base .. path .. (up.query and ("?" .. up.query) or "")
    return
  end
  if ep == "models" then
    up.url = base .. "/v1/models" .. (up.query and ("?" .. up.query) or "")
    if not req_headers(ctx)["anthropic-version"] then
      up.decoder = decoder_opts(ctx, p, kind, { client = "openai", wire = "anthropic", endpoint = "models",
        models_style = "openai" })
    end
    return
  end
  if ep == "embeddings" then return refuse(ctx, p, "has no embeddings") end
  if ep ~= "chat" then return refuse(ctx, p, "has no endpoint " .. path .. "; use /v1/chat/completions") end
  local doc, bad = decode_body(ctx, up)
  if not doc then return bad end
  local policy = common.policy(p.type, p.drop_unsupported)
  local req, answer = translate(ctx, an.request_from_hub, doc, { policy = policy, model = model_of(ctx, doc),
    max_tokens = kind.max_tokens })
  if not req then return answer end
  log_dropped(policy, ctx)
  up.body = J.encode(req)
  up.method = "POST"
  up.url = base .. "/v1/messages"
  local so = common.obj(doc.stream_options)
  up.decoder = decoder_opts(ctx, p, kind, { client = "openai", wire = "anthropic", endpoint = "chat",
    stream = stream, wants_usage = so ~= nil and so.include_usage == true, model = model_of(ctx, doc),
    request_doc = doc })
end

local function gemini_base(p)
  local base = strip_slash(p.base_url)
  if base:match("/v1beta$") or base:match("/v1$") or base:match("/v1alpha$") then return base end
  return base .. "/v1beta"
end

local function escape_model(m)
  return (tostring(m):gsub("^models/", ""):gsub("[^%w%-%._~]", function(c)
    return string.format("%%%02X", c:byte())
  end))
end

function WIRES.gemini(ctx, p, kind, up, ep, client, stream)
  set_auth(up.headers, kind.auth or "x-goog-api-key", p.api_key)
  local base = gemini_base(p)
  if ep == "models" then
    up.url = base .. "/models" .. (up.query and ("?" .. up.query) or "")
    up.decoder = decoder_opts(ctx, p, kind, { client = client, wire = "gemini", endpoint = "models",
      models_style = req_headers(ctx)["anthropic-version"] and "anthropic" or "openai" })
    return
  end
  if ep == "count_tokens" then return count_locally(ctx, up) end
  if ep ~= "chat" and ep ~= "messages" and ep ~= "embeddings" then
    return refuse(ctx, p, "has no endpoint " .. up.path)
  end
  local doc, bad = decode_body(ctx, up)
  if not doc then return bad end
  local model = model_of(ctx, doc)
  if not model then return errors.respond(ctx, 400, "model: required", "invalid_request") end
  local policy = common.policy(p.type, p.drop_unsupported)
  up.method = "POST"
  if ep == "embeddings" then
    local req, answer = translate(ctx, ge.embeddings_from_hub, doc, { policy = policy,
      model = model:gsub("^models/", "") })
    if not req then return answer end
    log_dropped(policy, ctx)
    up.body = J.encode(req)
    up.url = base .. "/models/" .. escape_model(model) .. ":batchEmbedContents"
    up.decoder = decoder_opts(ctx, p, kind, { client = "openai", wire = "gemini", endpoint = "embeddings",
      model = model, request_doc = doc, embeddings_base64 = doc.encoding_format == "base64" })
    return
  end
  local hub = doc
  if client == "anthropic" then
    local answer
    hub, answer = translate(ctx, an.request_to_hub, doc, { policy = policy, model = model,
      top_k = true, stream_usage = false })
    if not hub then return answer end
  end
  local req, answer = translate(ctx, ge.request_from_hub, hub, { policy = policy })
  if not req then return answer end
  log_dropped(policy, ctx)
  up.body = J.encode(req)
  up.url = base .. "/models/" .. escape_model(model) ..
    (stream and ":streamGenerateContent?alt=sse" or ":generateContent")
  local so = common.obj(doc.stream_options)
  up.decoder = decoder_opts(ctx, p, kind, { client = client, wire = "gemini", endpoint = ep, stream = stream,
    wants_usage = client == "openai" and so ~= nil and so.include_usage == true, model = model,
    request_doc = doc })
end

-- ====================== the hook ======================

function _M.on_upstream_request(ctx, conf)
  local p = ctx.provider
  local up = ctx.upstream
  local target = ctx.target
  if not p then
    return errors.respond(ctx, 502, "target " .. target.name .. " names an unknown provider", "bad_target")
  end
  local kind = presets.types[p.type] or {}
  local wire = p.wire or kind.wire
  local handler = WIRES[wire]
  if not handler then
    return errors.respond(ctx, 501, "provider type " .. tostring(p.type) ..
      " is not supported by this build", "unsupported_provider")
  end
  for k, v in raw_next, p.headers or NONE do up.headers[k:lower()] = v end
  for k, v in raw_next, target.headers or NONE do up.headers[k:lower()] = v end
  local ep, client = endpoint_of(up.method, up.path)
  -- the Anthropic SDK's other calls (models.retrieve: GET /v1/models/{id}) go to an Anthropic
  -- target as they are
  if ep == "other" and wire == "anthropic" and req_headers(ctx)["anthropic-version"] then
    client = "anthropic"
  end
  local stream = ctx.request.stream == true and (ep == "chat" or ep == "completions" or ep == "messages")
  local rv = handler(ctx, p, kind, up, ep, client, stream)
  if rv then return rv end
  if wire == "mock" then return end
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
