-- health — judges every attempt (on_response, on_error): asks for the next
-- attempt when it failed, and keeps each target's health for the balancer
-- (moongate.health, in gw.shared, so every worker agrees).
--
-- An attempt is retried when its status or error kind is in the backend's
-- `retry.on` (without a retry block: 429, 500, 502, 503, 504,
-- connect-failure, timeout, and a reset or malformed answer) or when the backend's `unhealthy_condition`
-- holds. With a `health` block, an unhealthy answer (the condition; without
-- one any error, 5xx or 429) counts as a failure: `consecutive_failures` of
-- them evict the target for `eviction.duration`, doubled on each ejection
-- in a row (up to `eviction.max_duration`), or for as long as the
-- provider's Retry-After / retry-after-ms / x-ratelimit-reset-* asked on a
-- 429 when that is longer. Between attempts it waits `retry.backoff`,
-- doubling per attempt (at most 8×), never past timeout.total.
local gw = require("gw")
local health = require("moongate.health")

local _M = {
  name = "health",
  priority = 950,
  schema = { type = "object", properties = {} },
}

local ipairs, type = ipairs, type
local floor, min = math.floor, math.min

-- SPEC §2's defaults; a reset or a malformed answer before anything reached
-- the client is what a 502 is, so it fails over too
local DEFAULT_ON = { 429, 500, 502, 503, 504, "connect-failure", "timeout", "reset", "malformed" }

local compiled = setmetatable({}, { __mode = "k" })   -- backend -> its judging policy

local function compile_condition(src)
  if type(src) == "function" then return src, true end
  if type(src) ~= "string" then return nil end
  local ok, expr = pcall(require, "moongate.expr")
  if not ok then return nil end
  local fn, err = expr.compile(src)
  if not fn then
    gw.log("error", "health: unhealthy_condition does not compile: " .. tostring(err))
    return nil
  end
  -- the variables it reads: expr_vars builds only those, per attempt
  return fn, false, expr.roots(src)
end

local function judge_policy(backend)
  local p = compiled[backend]
  if p then return p end
  local retry = backend.retry or {}
  local on = { status = {}, kind = {} }
  for _, v in ipairs(retry.on or DEFAULT_ON) do
    if type(v) == "number" then on.status[v] = true
    elseif v == "5xx" then on.c5 = true
    elseif v == "4xx" then on.c4 = true
    else on.kind[v] = true end
  end
  local cond, is_lua, roots = compile_condition(backend.health and backend.health.unhealthy_condition)
  p = { on = on, cond = cond, cond_lua = is_lua, roots = roots, backoff = retry.backoff or 0,
        health = health.policy(backend) }
  compiled[backend] = p
  return p
end
_M.judge_policy = judge_policy

-- The variables of an expression (SPEC §4), for this attempt. What stays the same over a
-- request's attempts (request, consumer) is built once per request; the rest per attempt.
local target_views = setmetatable({}, { __mode = "k" })
-- roots: the variables the expression names (nil: all of them); the others are left out.
-- An expression that reads neither request nor consumer has nothing to keep over a request's
-- attempts: it gets these two tables, filled afresh for each evaluation (which runs at once and
-- keeps nothing), instead of two new ones per request.
local scratch_vars, scratch_response = {}, {}
local function expr_vars(ctx, err, roots)
  local req, t, res = ctx.request, ctx.target, ctx.response
  local v
  if roots and not roots.request and not roots.consumer then
    v = scratch_vars
  else
    v = ctx.vars.health_expr
    if not v then
      local c = ctx.consumer
      v = {
        request = (not roots or roots.request) and { method = req.method, path = req.path,
          headers = req.headers, model = req.model, stream = req.stream == true } or nil,
        consumer = c and (not roots or roots.consumer) and { name = c.name, team = c.team } or nil,
      }
      ctx.vars.health_expr = v
    end
  end
  if res and (not roots or roots.response) then
    local rv = v == scratch_vars and scratch_response or {}
    rv.code, rv.headers = res.status, res.upstream_headers or res.headers
    v.response = rv
  else
    v.response = nil
  end
  v.error = err and (not roots or roots.error) and { kind = err.kind } or nil
  -- a target's view is the same on every attempt: made once per target (per config)
  local tv = target_views[t]
  if not tv then
    tv = { name = t.name, provider = t.provider, model = t.model ~= false and t.model or nil }
    target_views[t] = tv
  end
  v.target = tv
  v.attempt = ctx.attempt
  v.latency_ms = ctx.timings.ttfb and floor(ctx.timings.ttfb * 1000 + 0.5) or nil
  return v
end
_M.expr_vars = expr_vars

local function unhealthy(p, ctx, err)
  if p.cond then
    if p.cond_lua then
      if ctx.response then ctx.response.code = ctx.response.status end
      return p.cond(ctx) and true or false
    end
    local v = p.cond(expr_vars(ctx, err, p.roots))
    return v ~= nil and v ~= false
  end
  if err then return true end
  local code = ctx.response.status
  return code >= 500 or code == 429
end

-- Waits before the next attempt, if there will be one.
local function backoff(ctx, p)
  if p.backoff <= 0 or ctx.attempt >= (ctx.max_attempts or 1) then return end
  local d = min(p.backoff * 2 ^ (ctx.attempt - 1), p.backoff * 8)
  if ctx.deadline then
    local left = ctx.deadline - gw.now()
    if left <= 0 then return end
    if d > left then d = left end
  end
  gw.sleep(d)
end

function _M.on_response(ctx, conf)
  local b, t = ctx.backend, ctx.target
  if not b or not t then return end
  local p = judge_policy(b)
  local code = ctx.response.status
  local bad = unhealthy(p, ctx, nil)
  if bad then
    local hint = (code == 429 or code == 503) and health.retry_hint(ctx.response.upstream_headers) or nil
    health.failure(b.name, t, p.health, hint)
  else
    health.success(b.name, t)
    if ctx.timings.ttfb then health.observe_latency(b.name, t, ctx.timings.ttfb) end
  end
  local on = p.on
  -- the condition, when the user wrote one, also asks for the next attempt
  if (bad and p.cond) or on.status[code] or (on.c5 and code >= 500) or (on.c4 and code >= 400 and code < 500) then
    backoff(ctx, p)
    return gw.retry()
  end
end

function _M.on_error(ctx, conf, err)
  local b, t = ctx.backend, ctx.target
  if not b or not t then return end
  local p = judge_policy(b)
  local bad = unhealthy(p, ctx, err)
  if bad then health.failure(b.name, t, p.health, nil) end
  if (bad and p.cond) or p.on.kind[err.kind] then
    backoff(ctx, p)
    return gw.retry()
  end
end

-- A stream cut after its first byte could not be retried; it still counts.
function _M.on_log(ctx, conf)
  local e = ctx.error
  if e and e.midway and ctx.backend and ctx.target then
    local p = judge_policy(ctx.backend)
    if unhealthy(p, ctx, e) then health.failure(ctx.backend.name, ctx.target, p.health, nil) end
  end
end

return _M
