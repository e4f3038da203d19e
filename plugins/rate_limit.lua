-- rate_limit — requests and tokens per window (SPEC §2, §3), on_request / on_response / on_log.
--
--   { name = "rate_limit", rules = {
--       { by = "consumer", requests = 100, window = "1h" },
--       { by = "team", tokens = 200000, window = "1m", count = "completion" },
--       { by = "header:x-user", requests = 10, window = "1s", burst = 5, name = "per-user",
--         when = function(ctx) return ctx.request.stream end } } }
--
-- by: consumer | team | model (the client's) | route | ip | header:NAME; a request without that
-- subject (no consumer, no such header) is not counted by the rule. Each rule counts `requests`
-- or `tokens` (prompt + completion, or only one with `count`) per `window` on a sliding window
-- estimated from two fixed ones (moongate.limiter), in gw.shared: one limit for every worker.
-- Token rules reserve an estimate at admission (the prompt's bytes / 4 plus max_tokens) and settle
-- it to the real usage in on_log, so concurrent requests overshoot by at most one request.
--
-- Refused: 429 in the client's format with Retry-After (whole seconds, >= 1) and
-- x-ratelimit-{limit,remaining,reset}-{requests|tokens}; admitted answers carry the same headers
-- (the tightest rule of each kind). Resets are written like OpenAI's ("1s", "6m0s").
--
-- Priority 2000: after auth (2500), so ctx.consumer is known; before budget (1900).
local gw = require("gw")
local errors = require("moongate.errors")
local limiter = require("moongate.limiter")
local metrics = require("moongate.metrics")
local pricing = require("moongate.pricing")

local ceil, max = math.ceil, math.max
local format, lower, match, sub = string.format, string.lower, string.match, string.sub
local ipairs, pairs, pcall, tostring, type = ipairs, pairs, pcall, tostring, type
local raw_next = require("moongate.iter").raw_next   -- hot loops (lua/moongate/iter.lua)

local BY = { consumer = true, team = true, model = true, route = true, ip = true }

local function check_by(v)
  if BY[v] or match(v, "^header:[%w%-_]+$") then return true end
  return nil, 'must be "consumer", "team", "model", "route", "ip" or "header:NAME"'
end

local function positive(v)
  if v > 0 then return true end
  return nil, "must be more than 0 seconds"
end

local _M = {
  name = "rate_limit",
  priority = 2000,
  schema = {
    type = "object",
    properties = {
      rules = {
        type = "array", minItems = 1, required = true,
        description = "limits, all of which a request must pass",
        items = {
          type = "object",
          properties = {
            by = { type = "string", required = true, check = check_by,
                   description = "what is counted separately" },
            requests = { type = "integer", minimum = 0, description = "requests per window" },
            tokens = { type = "integer", minimum = 0, description = "tokens per window" },
            window = { type = "duration", required = true, check = positive },
            burst = { type = "integer", minimum = 0, default = 0,
                      description = "units above the limit after a window that left them unused" },
            when = { type = { "string", "function" }, description = "an expression or function(ctx)" },
            name = { type = "string", description = "for metrics and /admin/limits; default rules[N]" },
            count = { type = "string", enum = { "prompt", "completion" },
                      description = "tokens rules: count only these" },
          },
        },
      },
    },
  },
}

-- init(conf): cross-field checks; defaults; `when` compiled once.
function _M.init(conf)
  local names = {}
  for i, r in ipairs(conf.rules) do
    local path = "rules[" .. i .. "]"
    if r.requests == nil and r.tokens == nil then
      return nil, path .. ": needs requests or tokens"
    end
    if r.requests ~= nil and r.tokens ~= nil then
      return nil, path .. ": takes requests or tokens, not both (make two rules)"
    end
    if r.count and not r.tokens then
      return nil, path .. ".count: only for tokens rules"
    end
    r.name = r.name or path
    if names[r.name] then
      return nil, path .. ".name: duplicate rule name " .. format("%q", r.name) .. " (also " .. names[r.name] .. ")"
    end
    names[r.name] = path
    r.kind = r.requests and "requests" or "tokens"
    r.limit = r.requests or r.tokens
    local header = match(r.by, "^header:(.+)$")
    if header then r._header = lower(header) end
    if type(r.when) == "string" then
      local ok, expr = pcall(require, "moongate.expr")
      if not ok or type(expr) ~= "table" or not expr.compile then
        return nil, path .. ".when: expressions are not available in this build yet; " ..
          "use a Lua function (function(ctx) ... end)"
      end
      local fn, err = expr.compile(r.when)
      if not fn then return nil, path .. ".when: " .. tostring(err) end
      r._expr, r._expr_roots = fn, expr.roots(r.when)
    elseif type(r.when) == "function" then
      r._fn = r.when
    end
  end
  return true
end

local lim
local function now() return gw.now() end
local function get_limiter()
  if not lim then lim = limiter.new(gw.shared, now) end
  return lim
end

-- Where this entry is listed: counters of a route's own rules are not a global rule's.
local scopes = setmetatable({}, { __mode = "k" })
local function scope_of(ctx, conf)
  local s = scopes[conf]
  if s then return s end
  s = "global"
  for _, where in ipairs({ { "route", ctx.route }, { "backend", ctx.backend } }) do
    local owner = where[2]
    for _, e in ipairs(owner and owner.plugins or {}) do
      if e.conf == conf then s = where[1] .. ":" .. owner.name end
    end
  end
  scopes[conf] = s
  return s
end
_M.scope_of = scope_of

-- roots: the variables the rule's `when` reads (expr.roots; nil: all); the others are left out
local function expr_vars(ctx, roots)
  local req = ctx.request
  local c = ctx.consumer
  return {
    request = (not roots or roots.request) and { method = req.method, path = req.path,
      headers = req.headers, model = req.model, stream = req.stream == true } or nil,
    consumer = c and (not roots or roots.consumer) and { name = c.name, team = c.team } or nil,
  }
end

local function applies(rule, ctx)
  if rule._fn then return rule._fn(ctx) and true or false end
  if rule._expr then return rule._expr(expr_vars(ctx, rule._expr_roots)) and true or false end
  return true
end

-- subject(rule, ctx) -> what this request counts as for the rule | nil (not counted)
local function subject(rule, ctx)
  local by = rule.by
  if by == "consumer" then return ctx.consumer and ctx.consumer.name end
  if by == "team" then return ctx.consumer and ctx.consumer.team end
  if by == "model" then return ctx.request.model end
  if by == "route" then return ctx.route and ctx.route.name end
  if by == "ip" then return ctx.request.remote end
  local v = ctx.request.headers[rule._header]
  if v == "" then return nil end
  return v
end

local key_base = limiter.rule_key

local function tokens_of(rule, prompt, completion)
  if rule.count == "prompt" then return prompt end
  if rule.count == "completion" then return completion end
  return prompt + completion
end

local KINDS = { "requests", "tokens" }
local HEADER_NAMES = {}   -- kind -> the names of its three headers (no concatenation per answer)
for _, kind in ipairs(KINDS) do
  HEADER_NAMES[kind] = { "x-ratelimit-limit-" .. kind, "x-ratelimit-remaining-" .. kind,
                         "x-ratelimit-reset-" .. kind }
end

local function put_headers(h, kind, st)
  local names = HEADER_NAMES[kind]
  h[names[1]] = tostring(st.limit)
  h[names[2]] = tostring(st.remaining)
  h[names[3]] = limiter.duration(st.reset)
end

-- ctx.vars.rate_limit, made when a rule counts the request: what it holds, as triples (counter
-- key, amount, rule) in its array part, and under each kind ("requests", "tokens") the state of
-- the tightest rule of that kind, for the headers. One table, however many rules.
function _M.on_request(ctx, conf)
  local l = get_limiter()
  local scope = scope_of(ctx, conf)
  local held
  for _, rule in ipairs(conf.rules) do
    local subj = applies(rule, ctx) and subject(rule, ctx)
    if subj then
      local n = 1
      if rule.kind == "tokens" then
        local p, c = pricing.estimate(ctx)
        n = tokens_of(rule, p, c)
      end
      local ok, st = l:admit(key_base(scope, rule, tostring(subj)), n, rule.limit, rule.window, rule.burst)
      -- cluster.redis with fail_open = false and Redis unreachable (docs/cluster.md): the limit
      -- cannot be checked, so the request is refused (the outage itself is logged once, in C)
      if st.error == "cluster unavailable" then
        if held then for i = 1, #held, 3 do l:settle(held[i], held[i + 1], 0) end end
        return errors.respond(ctx, 503, "Rate limits cannot be checked: the cluster store (Redis) " ..
          "is unreachable. Please try again shortly.", "cluster_unavailable", { ["retry-after"] = "1" })
      end
      if st.error then gw.log("error", "rate_limit: " .. tostring(st.error)) end
      if not ok then
        if held then for i = 1, #held, 3 do l:settle(held[i], held[i + 1], 0) end end
        metrics.add("moongate_ratelimited_total", metrics.ratelimit_labels(rule.name), 1)
        local who = rule.by == "ip" and "this address" or (rule.by .. " " .. tostring(subj))
        -- a limit of 0 admits nothing: its Retry-After is a window, the soonest a reload could change it
        local wait = max(1, ceil((st.retry_after or rule.window) - 1e-6))
        local headers = { ["retry-after"] = tostring(wait) }
        put_headers(headers, rule.kind, st)
        local msg
        if not st.retry_after then
          msg = format("Rate limit reached for %s on %s (rule %s): it allows none.", rule.kind, who, rule.name)
        else
          msg = format("Rate limit reached for %s on %s (rule %s): %d per %s. Please try again in %ds.",
            rule.kind, who, rule.name, rule.limit, limiter.duration(rule.window), wait)
        end
        return errors.respond(ctx, 429, msg, "rate_limit_exceeded", headers)
      end
      if not held then
        held = {}
        ctx.vars.rate_limit = held
      end
      local k = #held
      held[k + 1], held[k + 2], held[k + 3] = st.key or false, n, rule
      local t = held[rule.kind]
      if not t or st.remaining < t.remaining then held[rule.kind] = st end
    end
  end
end

-- The gateway's limits replace the provider's own x-ratelimit-* headers: a client must not read
-- one kind from us and the other from the provider.
function _M.on_response(ctx, conf)
  local v = ctx.vars.rate_limit
  local h = ctx.response and ctx.response.headers
  if not v or not h then return end
  for k in raw_next, h do
    if sub(k, 1, 12) == "x-ratelimit-" then h[k] = nil end
  end
  for i = 1, #KINDS do
    local st = v[KINDS[i]]
    if st then put_headers(h, KINDS[i], st) end
  end
end

-- Token reservations become the real usage (nothing, when no provider answered).
function _M.on_log(ctx, conf)
  local v = ctx.vars.rate_limit
  if not v then return end
  local l = get_limiter()
  local usage
  for i = 1, #v, 3 do
    local key, n, rule = v[i], v[i + 1], v[i + 2]
    if rule.kind == "tokens" and key then
      if usage == nil then usage = pricing.usage(ctx) or false end
      local actual = 0
      if usage then
        actual = tokens_of(rule, usage.prompt_tokens or 0, usage.completion_tokens or 0)
      end
      l:settle(key, n, actual)
    end
  end
end

return _M
