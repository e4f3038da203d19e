-- GET /admin/limits?consumer=NAME (SPEC §6): a consumer's current rate-limit and budget counters
-- (docs/limits.md has the shape).
--
-- Rate limits: every rule of every rate_limit entry (global, per route, per backend) counted by
-- this consumer or by its team, with the figures the limiter would use now. Budgets: the
-- consumer's and its team's, for the current period.
local admin = require("moongate.admin")
local consumers = require("moongate.consumers")
local gw = require("gw")
local limiter = require("moongate.limiter")

local ipairs, pairs, type = ipairs, pairs, type

local function rate_rules(cfg)
  local out = {}
  local function scan(list, scope, where)
    for _, e in ipairs(list or {}) do
      if e.name == "rate_limit" and type(e.conf) == "table" and type(e.conf.rules) == "table" then
        for _, r in ipairs(e.conf.rules) do out[#out + 1] = { rule = r, scope = scope, where = where } end
      end
    end
  end
  scan(cfg.plugins, "global")
  for _, r in ipairs(cfg.routes or {}) do scan(r.plugins, "route:" .. r.name, { route = r.name }) end
  for name, b in pairs(cfg.backends or {}) do scan(b.plugins, "backend:" .. name, { backend = name }) end
  return out
end

admin.route("GET", "/admin/limits", function(req, params, cfg)
  local q = admin.query(req)
  local name = q.consumer
  if not name or name == "" then
    return 400, { error = { message = "consumer: required (GET /admin/limits?consumer=NAME)" } }
  end
  local c = consumers.find(cfg, name)
  if not c then return 404, { error = { message = "no consumer named \"" .. name .. "\"" } } end

  local lim = limiter.new(gw.shared, gw.now)
  local rl = {}
  for _, x in ipairs(rate_rules(cfg)) do
    local r = x.rule
    local subject = (r.by == "consumer" and c.name) or (r.by == "team" and c.team) or nil
    if subject and r.kind then
      local base = limiter.rule_key(x.scope, r, subject)
      local st = lim:peek(base, r.limit, r.window, r.burst)
      local item = {
        rule = r.name, by = r.by, subject = subject, kind = r.kind, limit = r.limit,
        window = limiter.duration(r.window), window_seconds = r.window, burst = r.burst or 0,
        used = math.floor(st.used * 1000 + 0.5) / 1000, remaining = st.remaining,
        reset = limiter.duration(st.reset), reset_seconds = math.ceil(st.reset),
        conditional = r.when ~= nil,
      }
      if x.where then item.route, item.backend = x.where.route, x.where.backend end
      if r.count then item.count = r.count end
      rl[#rl + 1] = item
    end
  end

  local budgets = {}
  local now = gw.now()
  local function add(scope, bname, b)
    if not b then return end
    local start, finish = limiter.period_window(b.period, now)
    local key = limiter.budget_key(scope, bname, b.period, now)
    local spent = gw.shared.get(key)
    if type(spent) ~= "number" then spent = 0 end
    budgets[#budgets + 1] = {
      scope = scope, name = bname, usd = b.usd, period = limiter.period_text(b.period), hard = b.hard == true,
      spent_usd = spent, remaining_usd = math.max(0, b.usd - spent), exhausted = spent >= b.usd,
      period_start = os.date("!%Y-%m-%dT%H:%M:%SZ", start), resets_at = os.date("!%Y-%m-%dT%H:%M:%SZ", finish),
    }
  end
  add("consumer", c.name, c.budget)
  local team = c.team and cfg.teams and cfg.teams[c.team]
  if team then add("team", c.team, team.budget) end

  return 200, { consumer = c.name, team = c.team,
                rate_limits = setmetatable(rl, gw.json.array_mt),
                budgets = setmetatable(budgets, gw.json.array_mt) }
end)

return {}
