-- budget — spend caps in USD per period (SPEC §2, §5), on_upstream_request / on_chunk / on_log.
--
-- Budgets are configured where they apply, not on this plugin:
--   consumers = { { name = "alice", key = ..., budget = { usd = 100, period = "1mo" } } }
--   teams = { search = { budget = { usd = 1000, period = "1mo", hard = true } } }
--   model_budgets = { ["gpt-4o"] = { usd = 50, period = "1d" } }       -- all consumers together
-- and the plugin switches itself on (with cost) when any is. Run-time consumers' budgets (POST
-- /admin/consumers) are enforced when it is on.
--
-- Periods are calendar-aligned in UTC ("1mo": from the 1st, 00:00 UTC; "1d": from midnight UTC;
-- "1h": from the hour); each period has its own counter in gw.shared, named after its start:
-- budget:consumer:alice:2026-12, budget:team:search:2026-12-03, budget:model:gpt-4o:2026-12-03T14.
-- A counter holds the period's recorded spend plus the estimates of requests in flight.
--
-- Admission (the first attempt's on_upstream_request, when the target and so its price are known):
-- the request's estimated cost (prompt bytes / 4 at the input price, max_tokens at the output
-- price) is reserved on every budget that applies — the consumer's, its team's, the target
-- model's and the client model's — with gw.shared.reserve: admitted while spend + reservations is
-- below the budget, so the request that crosses it is still served and concurrent requests
-- overshoot by at most one each. Refused: 429, code insufficient_quota, in the client's format.
-- on_log settles each reservation to the real cost (ctx.cost_usd, moongate.pricing).
--
-- hard = true also ends a stream that crosses the budget: on_chunk keeps a running estimate of the
-- request's cost from the streamed text, and when the period's spend would pass the budget it
-- sends an error event in the client's format and drops the rest of the stream.
--
-- Spend lives in gw.shared; at start, rebuild() puts each budget's current period back from the
-- ledger (SPEC §8), before any worker serves: a restart loses nothing recorded. With
-- cluster.redis, Redis keeps the spend and rebuild() does not overwrite it (see rebuild).
--
-- Priority 1900: after rate_limit (2000), before cost (1800).
local gw = require("gw")
local errors = require("moongate.errors")
local limiter = require("moongate.limiter")
local pricing = require("moongate.pricing")

local ceil, max = math.ceil, math.max
local find, format = string.find, string.format
local os_date = os.date
local ipairs, pairs, pcall, tostring, type = ipairs, pairs, pcall, tostring, type

local _M = {
  name = "budget",
  priority = 1900,
  schema = { type = "object", properties = {} },
}

-- Periods: moongate.limiter (window, period_text, budget_key)
_M.window = limiter.period_window
_M.period_text = limiter.period_text
_M.key = limiter.budget_key

---------------------------------------------------------------------------------------------------
-- Which budgets apply
---------------------------------------------------------------------------------------------------

-- applicable(ctx) -> { { scope =, name =, budget = }, ... }
function _M.applicable(ctx)
  local cfg = ctx.config or {}
  local out = {}
  local c = ctx.consumer
  if c then
    if c.budget then out[#out + 1] = { scope = "consumer", name = c.name, budget = c.budget } end
    local team = c.team and cfg.teams and cfg.teams[c.team]
    if team and team.budget then out[#out + 1] = { scope = "team", name = c.team, budget = team.budget } end
  end
  local mb = cfg.model_budgets or {}
  local tm = ctx.target and type(ctx.target.model) == "string" and ctx.target.model
  if tm and mb[tm] then out[#out + 1] = { scope = "model", name = tm, budget = mb[tm] } end
  local cm = ctx.request and ctx.request.model
  if cm and cm ~= tm and mb[cm] then out[#out + 1] = { scope = "model", name = cm, budget = mb[cm] } end
  return out
end

---------------------------------------------------------------------------------------------------
-- Hooks
---------------------------------------------------------------------------------------------------

-- a budget as configured: every digit the user wrote ($0.00001 stays that, not $0)
local function usd(x)
  return "$" .. pricing.decimal(x)
end

local function refuse(ctx, b, finish)
  local what = b.scope == "model" and ("model " .. b.name) or (b.scope .. " " .. b.name)
  return errors.respond(ctx, 429, format("Budget exhausted for %s: %s per %s; it renews at %s.",
    what, usd(b.budget.usd), _M.period_text(b.budget.period), os_date("!%Y-%m-%dT%H:%M:%SZ", finish)),
    "insufficient_quota")
end

-- instance_id(cfg) -> this instance's id: <data_dir>/instance-id, made at its first start
local function instance_id(cfg)
  local path = (cfg.data_dir or ".") .. "/instance-id"
  local f = io.open(path, "r")
  local id = f and f:read("*l")
  if f then f:close() end
  if id and id:match("^%x+$") then return id end
  id = require("moongate.consumers").random_hex(8)
  f = io.open(path, "w")
  if f then
    f:write(id, "\n")
    f:close()
  else
    gw.log("warn", "budget: cannot write " .. path .. "; this instance's id lasts until it stops")
  end
  return id
end

-- With cluster.redis, "<counter>@<instance>" in Redis says this instance has counted into the
-- counter since Redis made it: set once per counter and worker (marked), and at rebuild. A counter
-- Redis holds without this instance's mark was made again after Redis lost its data (see rebuild).
-- _M.instance is the id in <data_dir>/instance-id, set by rebuild when cluster.redis is on.
local marked, nmarked = {}, 0
local function mark(key, finish, now)
  -- one entry per counter this worker counted into; past periods' are of no use, so the cache
  -- starts over now and then (a mark set twice costs one Redis write)
  if nmarked >= 10000 then marked, nmarked = {}, 0 end
  marked[key] = true
  nmarked = nmarked + 1
  gw.shared.set(key .. "@" .. _M.instance, 1, max(1, finish - now + 3600))
end

function _M.on_upstream_request(ctx, conf)
  local v = ctx.vars
  local st = v.budget
  local list = _M.applicable(ctx)
  if not st then
    if #list == 0 then return end
    local prompt, completion = pricing.estimate(ctx)
    local prices = pricing.prices(ctx, v.pricing)
    st = { held = {}, prices = prices, prompt = prompt,
           est = pricing.cost(prices, { prompt_tokens = prompt, completion_tokens = completion }) }
    v.budget = st
  end
  -- a retry to another target may bring another model's budget in
  local now = gw.now()
  local shared = gw.shared
  for _, b in ipairs(list) do
    local key, finish = _M.key(b.scope, b.name, b.budget.period, now)
    local have = false
    for _, h in ipairs(st.held) do
      if h.key == key then have = true break end
    end
    if not have then
      local ok, rem = shared.reserve(key, st.est, b.budget.usd, max(1, finish - now + 3600))
      -- cluster.redis with fail_open = false and Redis unreachable (docs/cluster.md): the budget
      -- cannot be checked, so the request is refused
      if ok == nil and rem == "cluster unavailable" then
        for _, h in ipairs(st.held) do shared.settle(h.key, h.n, 0) end
        st.held = {}
        return errors.respond(ctx, 503, "Budgets cannot be checked: the cluster store (Redis) " ..
          "is unreachable. Please try again shortly.", "cluster_unavailable", { ["retry-after"] = "1" })
      end
      if not ok then
        for _, h in ipairs(st.held) do shared.settle(h.key, h.n, 0) end
        st.held = {}
        return refuse(ctx, b, finish)
      end
      st.held[#st.held + 1] = { key = key, n = st.est, b = b }
      if b.budget.hard then st.hard = true end
      if not marked[key] and ctx.config.cluster and ctx.config.cluster.redis then
        _M.instance = _M.instance or instance_id(ctx.config)   -- a worker's first: rebuild made it
        mark(key, finish, now)
      end
    end
  end
end

local function stream_error(ctx, message)
  if ctx.format == "anthropic" then
    return "event: error\ndata: " .. errors.body("anthropic", 429, message) .. "\n\n"
  end
  return "data: " .. errors.body("openai", 429, message, "insufficient_quota") .. "\n\n"
end

-- only a hard budget reads the chunks
function _M.wants_chunks(ctx, conf)
  local st = ctx.vars.budget
  return st ~= nil and st.hard == true
end

-- hard budgets: end a stream whose running cost takes the period's spend past the budget
function _M.on_chunk(ctx, conf, chunk)
  local st = ctx.vars.budget
  if not st or not st.hard then return end
  if st.cut then return false end
  local resp = ctx.response
  local ct = resp and resp.headers and resp.headers["content-type"] or ""
  if not find(ct, "text/event-stream", 1, true) then return end
  pricing.track(ctx, chunk)
  local u = ctx.usage or { prompt_tokens = st.prompt,
                           completion_tokens = ceil((ctx.vars._mg_text_bytes or 0) / 4) }
  local running = pricing.cost(st.prices, u)
  local shared = gw.shared
  for _, h in ipairs(st.held) do
    if h.b.budget.hard then
      local spent = shared.get(h.key)
      if type(spent) == "number" and spent - h.n + running >= h.b.budget.usd then
        st.cut = true
        -- asks the runtime to end the answer with a cut connection (never a clean end) and to stop
        -- reading the provider, which would go on billing what is dropped here
        resp.abort = true
        local b = h.b
        gw.log("info", "budget: " .. b.scope .. " " .. b.name .. " crossed its hard budget mid-stream; ending it")
        return stream_error(ctx, format("Budget exhausted for %s %s (%s per %s): the answer was cut.",
          b.scope, b.name, usd(b.budget.usd), _M.period_text(b.budget.period)))
      end
    end
  end
end

function _M.on_log(ctx, conf)
  local st = ctx.vars.budget
  if not st then return end
  local cost = pricing.compute(ctx, ctx.vars.pricing) or 0
  local shared = gw.shared
  for _, h in ipairs(st.held) do shared.settle(h.key, h.n, cost) end
end

---------------------------------------------------------------------------------------------------
-- Start-up
---------------------------------------------------------------------------------------------------

-- rebuild(cfg, ledger) -> number of counters set: each budget's spend in its current period, from
-- the ledger, into gw.shared. Main thread, before workers. The aggregates (moongate.ledger.totals)
-- answer when they hold the period exactly (it starts on an hour, day or month they keep); a
-- period they cannot cut ("90m", or older than their hour buckets) is summed from the records
-- themselves, in one pass from the earliest such start. A model budget counts the billed model
-- and, where the client asked for another name, the asked one (the asked_model aggregate), as
-- admission does (applicable).
-- With cluster.redis the spend in Redis is every instance's (SPEC §8) and this ledger holds only
-- this instance's share: a counter Redis holds with this instance's mark is left as it is (the
-- share is in it); one Redis lost (a new period, a flushed Redis), or holds without the mark (made
-- again by another instance after Redis lost its data), gets this instance's share added, never
-- set, so nothing another instance counted meanwhile is overwritten.
local DIM_OF = { consumer = { "consumer" }, team = { "team" }, model = { "model", "asked_model" } }

function _M.rebuild(cfg, ledger)
  local cluster = cfg.cluster and cfg.cluster.redis
  if cluster then _M.instance = instance_id(cfg) end
  local now = gw.now()
  local totals = {}   -- dim .. start -> { [key] = { cost_usd = } } | false (not exact)
  local wanted = {}   -- { scope, name, budget, start, finish, spend }
  local scan_from   -- the earliest start of a period the aggregates cannot answer
  local function put(scope, name, budget)
    if type(name) ~= "string" or not budget or not budget.period then return end
    local start, finish = limiter.period_window(budget.period, now)
    local w = { scope = scope, name = name, budget = budget, start = start, finish = finish, spend = 0 }
    for _, dim in ipairs(DIM_OF[scope]) do
      local tk = dim .. "\0" .. start
      local t = totals[tk]
      if t == nil then
        local rows, exact = ledger.totals(dim, start, now)
        t = rows and exact and rows or false
        totals[tk] = t
      end
      if t == false then
        w.scan = true
      else
        local row = t[name]
        if row and row.cost_usd then w.spend = w.spend + row.cost_usd end
      end
    end
    if w.scan then
      w.spend = 0
      if not scan_from or start < scan_from then scan_from = start end
    end
    wanted[#wanted + 1] = w
  end
  for _, c in ipairs(cfg.consumers or {}) do put("consumer", c.name, c.budget) end
  local ok, consumers = pcall(require, "moongate.consumers")
  if ok then
    local units = require("moongate.units")
    local status, doc = consumers.list(cfg)
    for _, c in ipairs(status == 200 and doc.consumers or {}) do
      if c.source == "admin" and c.budget then
        local period = units.period(c.budget.period)
        if period then put("consumer", c.name, { usd = c.budget.usd, period = period }) end
      end
    end
  end
  for name, t in pairs(cfg.teams or {}) do put("team", name, t.budget) end
  for model, b in pairs(cfg.model_budgets or {}) do put("model", model, b) end

  if scan_from then
    local scans = {}
    for _, w in ipairs(wanted) do
      if w.scan then scans[#scans + 1] = w end
    end
    local _, err = ledger.each_record(scan_from, function(rec)
      local t, cost = rec.time, rec.cost_usd
      if type(cost) ~= "number" or cost <= 0 or t >= now then return end
      for i = 1, #scans do
        local w = scans[i]
        if t >= w.start then
          local name = w.name
          local hit
          if w.scope == "model" then
            hit = rec.model == name or rec.client_model == name
          else
            hit = rec[w.scope] == name
          end
          if hit then w.spend = w.spend + cost end
        end
      end
    end)
    if err then gw.log("error", "budget: " .. tostring(err) .. "; budgets of periods the aggregates " ..
      "cannot cut start from 0") end
  end

  local set = 0
  for _, w in ipairs(wanted) do
    if w.spend > 0 then
      local key = _M.key(w.scope, w.name, w.budget.period, now)
      local ttl = max(1, w.finish - now + 3600)
      if not cluster then
        gw.shared.set(key, w.spend, ttl)
        set = set + 1
      elseif gw.shared.get(key) == nil or gw.shared.get(key .. "@" .. _M.instance) == nil then
        gw.shared.incr(key, w.spend, ttl)
        set = set + 1
      end
      if cluster then mark(key, w.finish, now) end
    end
  end
  return set
end

return _M
