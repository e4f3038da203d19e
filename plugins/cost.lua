-- cost — what each request cost (SPEC §2, §3, §7), on_request / on_chunk / on_log.
--
--   { name = "cost" }                                   prices from config/pricing.lua
--   { name = "cost", pricing = "my-prices.lua" }        another file of the same shape
--
-- A target's `prices` (gateway.lua) come first; then its model in the table, then the client's
-- model (exact, else the longest dated-variant prefix: moongate.pricing). ctx.cost_usd is computed
-- in on_log from ctx.usage — as the provider reported it, or estimated from sizes when it did not
-- (ctx.usage.estimated) — cached prompt tokens at the cached_input price, the rest at input.
-- When usage is known before the headers go out (a buffered answer), the answer carries
-- x-moongate-cost-usd as a plain decimal. Metrics: moongate_tokens_total{model,team,direction},
-- moongate_request_cost_dollars{model,team}.
--
-- Priority 1800: after budget (1900), whose reservations it prices through the same module.
local metrics = require("moongate.metrics")
local pricing = require("moongate.pricing")

local _M = {
  name = "cost",
  priority = 1800,
  schema = {
    type = "object",
    properties = {
      pricing = { type = "path", description = "a price file like config/pricing.lua (the default)" },
    },
  },
}

local type = type

function _M.init(conf)
  if conf.pricing then
    local t, err = pricing.load(conf.pricing)
    if not t then return nil, "pricing: " .. tostring(err) end
    conf._table = t
  else
    -- read again on every config load, so a reload picks up edited prices
    local t, err = pricing.load(pricing.default_file())
    if not t then return nil, "config/pricing.lua: " .. tostring(err) end
    conf._table = t
  end
  return true
end

-- the budget plugin's estimates use the same table
function _M.on_request(ctx, conf)
  ctx.vars.pricing = conf._table
end

function _M.on_chunk(ctx, conf, chunk)
  local resp = ctx.response
  if ctx.usage then
    if resp and resp.headers and not resp.headers_sent then
      local p = pricing.prices(ctx, conf._table)
      resp.headers["x-moongate-cost-usd"] = pricing.decimal(pricing.cost(p, ctx.usage))
    end
    return
  end
  pricing.track(ctx, chunk)
end

-- on_chunk has nothing to do on a stream whose usage the gateway keeps (ctx.usage) once its
-- headers are out: it prices only at on_log
function _M.wants_chunks(ctx, conf)
  local resp, dec = ctx.response, ctx.upstream and ctx.upstream.decoder
  if not (resp and resp.headers_sent) then return true end
  return not (ctx.usage or (dec and dec.tracks_usage and dec:tracks_usage()))
end

local function model_of(ctx)
  local t = ctx.target
  if t and type(t.model) == "string" then return t.model end
  return ctx.request.model or ""
end

function _M.on_log(ctx, conf)
  local cost = pricing.compute(ctx, conf._table)
  if cost == nil then return end
  local u = ctx.usage
  local model = model_of(ctx)
  local team = ctx.consumer and ctx.consumer.team or ""
  metrics.add("moongate_tokens_total", metrics.token_labels(model, team, "input"), u.prompt_tokens or 0)
  metrics.add("moongate_tokens_total", metrics.token_labels(model, team, "output"), u.completion_tokens or 0)
  metrics.observe("moongate_request_cost_dollars", metrics.cost_labels(model, team), cost)
end

return _M
