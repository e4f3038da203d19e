-- moongate.record — what a finished request leaves behind: its ledger record (SPEC §8) and its
-- access log line (SPEC §2 `access_log`). fill() copies the figures from ctx into one
-- mg_record_t; runtime/record.c writes both JSON lines from it (docs/ledger.md has the fields of
-- both). The lines are built in C: they are made on
-- every request, and in Lua they were the largest single cost of one.
--
--   record.fill(rec, ctx, status, now, latency, bytes) -> rec
--       rec: an mg_record_t (or, in the unit specs, a plain table: the same fields);
--       now: wall-clock seconds at the end; latency: seconds since the request arrived;
--       bytes: body bytes sent to the client.
--   record.model_of(ctx) -> the model a request is counted under (the target's, else the client's)
--
-- Never a secret: no headers, no keys, no bodies, and the path without its query string.
local null = require("cjson").null

local type, tostring = type, tostring

local _M = { _VERSION = "0.1" }

-- a name as the record has it: strings as they are, nothing (nil, cjson.null) as NULL, anything
-- else as tostring would write it
local anchors = {}   -- strings made here, kept alive while C reads them (until the next fill)
local nanchors = 0
local function name(v)
  if type(v) == "string" then return v end
  if v == nil or v == null then return nil end
  local s = tostring(v)
  nanchors = nanchors + 1
  anchors[nanchors] = s
  return s
end

-- only a string counts (a consumer without a team has none)
local function str_or_nil(v)
  if type(v) == "string" then return v end
  return nil
end

local function num(v)
  if type(v) == "number" then return v end
  return 0
end

function _M.model_of(ctx)
  local t = ctx.target
  if t and type(t.model) == "string" then return t.model end
  local m = ctx.request and ctx.request.model
  if type(m) == "string" then return m end
  return nil
end
local model_of = _M.model_of

local function len(s) return s and #s or 0 end

local EMPTY = {}

function _M.fill(rec, ctx, status, now, latency, bytes)
  for i = 1, nanchors do anchors[i] = nil end
  nanchors = 0
  local req = ctx.request or EMPTY
  local consumer = ctx.consumer
  local target = ctx.target
  local route, backend = ctx.route, ctx.backend
  local s
  s = name(ctx.id);                                  rec.id, rec.id_len = s, len(s)
  s = consumer and str_or_nil(consumer.name);        rec.consumer, rec.consumer_len = s, len(s)
  s = consumer and str_or_nil(consumer.team);        rec.team, rec.team_len = s, len(s)
  s = route and name(route.name);                    rec.route, rec.route_len = s, len(s)
  s = backend and name(backend.name);                rec.backend, rec.backend_len = s, len(s)
  s = target and name(target.name);                  rec.target, rec.target_len = s, len(s)
  s = target and str_or_nil(target.provider);        rec.provider, rec.provider_len = s, len(s)
  s = model_of(ctx);                                 rec.model, rec.model_len = s, len(s)
  s = str_or_nil(req.model);                         rec.client_model, rec.client_model_len = s, len(s)
  s = name(req.remote);                              rec.remote, rec.remote_len = s, len(s)
  s = name(req.method);                              rec.method, rec.method_len = s, len(s)
  s = name(req.path);                                rec.path, rec.path_len = s, len(s)
  rec.time, rec.latency = now, latency
  local ttfb = ctx.timings and ctx.timings.ttfb
  if type(ttfb) == "number" then
    rec.ttfb, rec.has_ttfb = ttfb, 1
  else
    rec.ttfb, rec.has_ttfb = 0, 0
  end
  local u = ctx.usage
  if type(u) == "table" then
    rec.usage = u.estimated and 2 or 1
    rec.prompt, rec.completion, rec.cached = num(u.prompt_tokens), num(u.completion_tokens),
      num(u.cached_tokens)
  else
    rec.usage, rec.prompt, rec.completion, rec.cached = 0, 0, 0, 0
  end
  local cost = ctx.cost_usd
  if type(cost) == "number" and cost == cost then
    rec.cost_usd, rec.has_cost = cost, 1
  else
    rec.cost_usd, rec.has_cost = 0, 0
  end
  rec.bytes = bytes or 0
  rec.status = status
  rec.attempts = ctx.attempt or 0
  rec.stream = req.stream == true and 1 or 0
  return rec
end

return _M
