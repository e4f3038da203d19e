-- balancer — chooses ctx.target for each attempt (on_balance).
--
-- Groups are tried in priority order; inside a group the group's `strategy`
-- picks among the targets this request has not tried yet that are healthy
-- (not evicted) and below their `max_inflight`:
--
--   round_robin  smooth weighted round robin (nginx's), one position shared
--                by every worker (gw.shared): weights 1:2 give a b b a b b ...
--   random       weighted random
--   least_busy   fewest requests in flight relative to weight
--   latency      lowest EWMA of time to first byte; a target not measured
--                yet goes first, and 1 pick in 20 explores another one so a
--                recovered target is measured again
--   cost         cheapest (input + output price per million tokens: the
--                target's `prices`, else config/pricing.lua), ties round robin
--   usage        fewest tokens in the current minute
--   sticky       rendezvous hash of a header or cookie: a key keeps its
--                target, and only the keys of a target that left move
--
-- A target ramping up after an eviction gets a growing share of its weight.
-- When every target of the backend is evicted, `health.panic` (on by
-- default) tries the one whose eviction ends first. When every candidate is
-- at its max_inflight, the request waits in the backend's bounded `queue`
-- for a free slot, up to queue.timeout; then the runtime answers 503.
-- In-flight counts, positions, latencies and token counts live in
-- gw.shared, so every worker balances on the same figures.
local gw = require("gw")
local health = require("moongate.health")
local bit = require("bit")

local _M = {
  name = "balancer",
  priority = 1000,
  schema = { type = "object", properties = {} },
}

local ipairs, pairs, type, tostring = ipairs, pairs, type, tostring
local raw_next = require("moongate.iter").raw_next   -- hot paths (lua/moongate/iter.lua)
local floor, random, log = math.floor, math.random, math.log
local bxor, lshift, tobit = bit.bxor, bit.lshift, bit.tobit
local byte = string.byte

local shared = health.store

-- ====================== round robin ======================

local function gcd(a, b)
  while b ~= 0 do a, b = b, a % b end
  return a
end

-- The smooth weighted round-robin order of a group, computed once: position
-- n of the shared counter picks seq[n % #seq + 1].
local sequences = setmetatable({}, { __mode = "k" })
local function sequence(group)
  local seq = sequences[group]
  if seq then return seq end
  local ts = group.targets
  local w, all_int = {}, true
  for i, t in ipairs(ts) do
    w[i] = t.weight or 1
    if w[i] ~= floor(w[i]) then all_int = false end
  end
  if not all_int then
    for i = 1, #w do w[i] = w[i] > 0 and math.max(1, floor(w[i] * 100 + 0.5)) or 0 end
  end
  local g, total = 0, 0
  for i = 1, #w do
    if w[i] > 0 then g = gcd(w[i], g) end
  end
  if g > 1 then for i = 1, #w do w[i] = w[i] / g end end
  for i = 1, #w do total = total + w[i] end
  if total > 10000 then   -- keep the order short: scale down, keeping every target
    for i = 1, #w do
      if w[i] > 0 then w[i] = math.max(1, floor(w[i] * 10000 / total)) end
    end
    total = 0
    for i = 1, #w do total = total + w[i] end
  end
  seq = {}
  local cur = {}
  for i = 1, #w do cur[i] = 0 end
  for _ = 1, total do
    local best
    for i = 1, #w do
      if w[i] > 0 then
        cur[i] = cur[i] + w[i]
        if not best or cur[i] > cur[best] then best = i end
      end
    end
    if not best then break end
    cur[best] = cur[best] - total
    seq[#seq + 1] = ts[best]
  end
  sequences[group] = seq
  return seq
end

local rr_keys = setmetatable({}, { __mode = "k" })   -- group -> { [signature] = key }
local subsets = setmetatable({}, { __mode = "k" })   -- group -> { [signature] = { targets } }

-- The order and shared position for a set of candidates: the group's own
-- when every target is a candidate; else one of the subset's, so that the
-- share of a target that is out spreads evenly over the others (walking
-- the full order would hand all of it to its successor).
local function rr_order(bname, gi, group, ok, n)
  local ts = group.targets
  local sig = ""
  if n < #ts then
    local names = {}
    for _, t in ipairs(ts) do
      if ok[t] then names[#names + 1] = t.name end
    end
    sig = table.concat(names, "\0")
  end
  local keys = rr_keys[group]
  if not keys then
    keys = {}
    rr_keys[group] = keys
  end
  local k = keys[sig]
  if not k then
    k = "brr|" .. bname .. "|" .. gi .. (sig ~= "" and ("|" .. sig) or "")
    keys[sig] = k
  end
  if sig == "" then return sequence(group), k end
  local subs = subsets[group]
  if not subs then
    subs = {}
    subsets[group] = subs
  end
  local sub = subs[sig]
  if not sub then
    local list = {}
    for _, t in ipairs(ts) do
      if ok[t] then list[#list + 1] = t end
    end
    sub = { targets = list }
    subs[sig] = sub
  end
  return sequence(sub), k
end

-- ok: candidate set { [target] = factor }
local function pick_rr(bname, gi, group, ok, n)
  if n == 1 then return (raw_next(ok)) end
  local seq, key = rr_order(bname, gi, group, ok, n)
  local len = #seq
  if len == 0 then
    for t in pairs(ok) do return t end   -- weight-0 targets only
    return nil
  end
  local pos = (shared.incr(key, 1) or 1) - 1
  local fallback
  for k = 0, len - 1 do
    local t = seq[(pos + k) % len + 1]
    local f = ok[t]
    if f then
      if f >= 1 or random() < f then return t end
      fallback = fallback or t
    end
  end
  if fallback then return fallback end
  for t in pairs(ok) do return t end
end

-- ====================== the other strategies ======================

local function pick_random(ok)
  local total = 0
  for t, f in pairs(ok) do total = total + (t.weight or 1) * f end
  if total <= 0 then
    for t in pairs(ok) do return t end
  end
  local x = random() * total
  local last
  for t, f in pairs(ok) do
    x = x - (t.weight or 1) * f
    last = t
    if x <= 0 then return t end
  end
  return last
end

-- lowest score wins; ties go round robin so they share the load
local function pick_lowest(bname, gi, group, ok, n, score)
  local best, best_s = {}, nil
  for t, f in pairs(ok) do
    local s = score(t, f)
    -- the tied keep their slow-start share (f), which round robin honours
    if not best_s or s < best_s - 1e-12 then
      best, best_s = { [t] = f }, s
    elseif s <= best_s + 1e-12 then
      best[t] = f
    end
  end
  local m = 0
  for _ in pairs(best) do m = m + 1 end
  return pick_rr(bname, gi, group, best, m)
end

local function price_of(t, ctx)
  local p = t.prices
  if not p then
    local ok, pricing = pcall(require, "moongate.pricing")
    if ok and type(pricing) == "table" and pricing.lookup then
      p = pricing.lookup(type(t.model) == "string" and t.model or ctx.request.model)
    end
  end
  if not p then return math.huge end
  return (p.input or 0) + (p.output or 0)
end

-- 32-bit FNV-1a
local function fnv(s)
  local h = tobit(2166136261)
  for i = 1, #s do
    h = bxor(h, byte(s, i))
    -- h * 16777619 mod 2^32, as 2^24 h + 403 h (a double is exact below 2^53)
    h = tobit(lshift(h, 24) + h * 403)
  end
  if h < 0 then h = h + 4294967296 end
  return h
end

local function sticky_key(ctx, sticky)
  local h = ctx.request.headers
  if sticky.header then return h[sticky.header:lower()] end
  local cookies = h.cookie
  if not cookies then return nil end
  for name, value in cookies:gmatch("([^=;%s]+)=([^;]*)") do
    if name == sticky.cookie then return value end
  end
end

local function pick_sticky(bname, gi, group, ok, n, ctx)
  local key = sticky_key(ctx, group.sticky or {})
  if not key or key == "" then return pick_rr(bname, gi, group, ok, n) end
  local best, best_s
  for t in pairs(ok) do
    -- weighted rendezvous hashing: -w / ln(u), u uniform in (0, 1)
    local u = (fnv(key .. "\0" .. t.name) + 0.5) / 4294967296
    local s = -(t.weight or 1) / log(u)
    if not best_s or s > best_s or (s == best_s and t.name < best.name) then best, best_s = t, s end
  end
  return best
end

-- The strategies that score with a closure live apart from pick(), so that
-- pick's common path (round robin) holds no closure a trace must close.
-- least_busy: in flight over weight, as nginx's least_conn; idle targets all tie at 0, so sequential
-- traffic is split by weight (round robin among the tied), not all sent to the heaviest
local function pick_least_busy(bname, gi, group, ok, n)
  return pick_lowest(bname, gi, group, ok, n, function(t, f)
    return health.inflight(bname, t) / ((t.weight or 1) * f + 1e-9)
  end)
end

local function pick_latency(bname, gi, group, ok, n)
  local unmeasured = {}
  local m = 0
  for t in pairs(ok) do
    if not health.latency(bname, t) then unmeasured[t] = 1; m = m + 1 end
  end
  if m > 0 then return pick_rr(bname, gi, group, unmeasured, m) end
  if random() < 0.05 then return pick_random(ok) end
  return pick_lowest(bname, gi, group, ok, n, function(t) return health.latency(bname, t) end)
end

local function pick_cost(ctx, bname, gi, group, ok, n)
  return pick_lowest(bname, gi, group, ok, n, function(t) return price_of(t, ctx) end)
end

local function pick_usage(bname, gi, group, ok, n)
  return pick_lowest(bname, gi, group, ok, n, function(t, f)
    return health.tokens(bname, t) / ((t.weight or 1) * f + 1e-9)
  end)
end

local function pick_one(ok)
  local t = next(ok)
  return t
end

local function pick(ctx, bname, gi, group, ok, n)
  local strategy = group.strategy
  if strategy == "round_robin" or strategy == nil then return pick_rr(bname, gi, group, ok, n) end
  if n == 1 then return pick_one(ok) end
  if strategy == "random" then return pick_random(ok) end
  if strategy == "least_busy" then return pick_least_busy(bname, gi, group, ok, n) end
  if strategy == "latency" then return pick_latency(bname, gi, group, ok, n) end
  if strategy == "cost" then return pick_cost(ctx, bname, gi, group, ok, n) end
  if strategy == "usage" then return pick_usage(bname, gi, group, ok, n) end
  if strategy == "sticky" then return pick_sticky(bname, gi, group, ok, n, ctx) end
  return pick_rr(bname, gi, group, ok, n)
end

-- ====================== choosing a target ======================

-- the target this request holds an in-flight slot of (vars.balancer_hold) and its backend's name
local function release_hold(ctx)
  local vars = ctx.vars
  local t = vars.balancer_hold
  if t then
    health.release(vars.balancer_hold_backend, t)
    vars.balancer_hold = nil
  end
end

-- One pass over the groups. -> target | nil, why ("evicted" | "busy" | "tried")
-- The candidate sets (target -> slow-start factor) are recycled: one is made per request
-- otherwise. A set may be held across a yield (health.acquire on a Redis store), so each
-- choose() takes its own from the pool and gives it back empty.
local spare, nspare = {}, 0
local tclear = require("table.clear")

local function choose(ctx, backend, tried, pol)
  local bname = backend.name
  local now = gw.now()
  local any_busy, any_evicted = false, false
  local ok
  if nspare > 0 then
    ok = spare[nspare]
    spare[nspare] = nil
    nspare = nspare - 1
  else
    ok = {}
  end
  local found
  for gi, group in ipairs(backend.groups) do
    local n = 0
    for _, t in ipairs(group.targets) do
      if not tried[t.name] then
        local evicted, _, f = health.state(bname, t, now, pol)
        if evicted then
          any_evicted = true
        elseif t.max_inflight and health.inflight(bname, t) >= t.max_inflight then
          any_busy = true
        else
          ok[t] = f
          n = n + 1
        end
      end
    end
    while n > 0 do
      local t = pick(ctx, bname, gi, group, ok, n)
      if not t then break end
      if health.acquire(bname, t, t.max_inflight) then
        found = t
        break
      end
      -- another worker took the last slot meanwhile
      ok[t] = nil
      n = n - 1
      any_busy = true
    end
    tclear(ok)
    if found then break end
  end
  if nspare < 64 then
    nspare = nspare + 1
    spare[nspare] = ok
  end
  if found then return found end
  if any_busy then return nil, "busy" end
  if any_evicted then return nil, "evicted" end
  return nil, "tried"
end

-- Every untried target is evicted: the one whose eviction ends first
-- (never one drained by hand or by the active checks).
local function panic_pick(backend, tried)
  local best, best_until
  for _, group in ipairs(backend.groups) do
    for _, t in ipairs(group.targets) do
      if not tried[t.name] then
        local untl = shared.get(health.keys(backend.name, t).ev)
        if untl and untl < health.FOREVER and (not best_until or untl < best_until) then
          best, best_until = t, untl
        end
      end
    end
  end
  if best and health.acquire(backend.name, best, best.max_inflight) then return best end
end

-- whether the request's client has hung up (in the gateway; never outside it, as in unit specs)
local mgffi = require("moongate.ffi")
local function client_gone(ctx)
  return mgffi.available and ctx._req ~= nil and mgffi.C.mg_req_alive(ctx._req) ~= 1
end

-- Waits in the backend's queue for a target below its max_inflight.
local function wait_in_queue(ctx, backend, tried, pol)
  local q = backend.queue or {}
  local qmax, qtimeout = q.max or 100, q.timeout or 2
  local qkey = "bq|" .. backend.name
  if not shared.reserve(qkey, 1, qmax) then
    ctx.vars.no_target_reason = "every target of backend " .. backend.name ..
      " is at its max_inflight and the queue is full"
    return nil
  end
  local give_up = gw.now() + qtimeout
  local t, why
  local pause = 0.002
  repeat
    gw.sleep(pause)
    if pause < 0.02 then pause = pause * 2 end
    if client_gone(ctx) then break end   -- its place in the queue goes to the next one
    t, why = choose(ctx, backend, tried, pol)
  until t or why ~= "busy" or gw.now() >= give_up
  shared.incr(qkey, -1)
  if not t then
    ctx.vars.no_target_reason = "every target of backend " .. backend.name ..
      " stayed at its max_inflight for queue.timeout"
  end
  return t
end

function _M.on_balance(ctx, conf)
  local backend = ctx.backend
  if not backend then return end
  release_hold(ctx)
  local tried = ctx.vars.balancer_tried
  if not tried then
    tried = {}
    ctx.vars.balancer_tried = tried
  end
  local pol = health.policy(backend)
  local t, why = choose(ctx, backend, tried, pol)
  if not t and why == "tried" and next(tried) then
    -- every target tried once: go round again (the runtime bounds attempts)
    for k in pairs(tried) do tried[k] = nil end
    t, why = choose(ctx, backend, tried, pol)
  end
  if not t and why == "evicted" then
    if pol.panic then t = panic_pick(backend, tried) end
    if not t then
      ctx.vars.no_target_reason = "every target of backend " .. backend.name .. " is evicted"
    end
  end
  if not t and why == "busy" then t = wait_in_queue(ctx, backend, tried, pol) end
  if t then
    tried[t.name] = true
    ctx.vars.balancer_hold, ctx.vars.balancer_hold_backend = t, backend.name
    ctx.target = t
    ctx.provider = ctx.config.providers[t.provider]
  end
end

-- backend -> whether a group of it balances by `usage` (the only strategy that needs token counts)
local counts_usage = setmetatable({}, { __mode = "k" })

function _M.on_log(ctx, conf)
  release_hold(ctx)
  local u, t, b = ctx.usage, ctx.target, ctx.backend
  if not (u and t and b) then return end
  local need = counts_usage[b]
  if need == nil then
    need = false
    for _, g in ipairs(b.groups) do
      if g.strategy == "usage" then need = true break end
    end
    counts_usage[b] = need
  end
  if need then health.add_tokens(b.name, t, (u.prompt_tokens or 0) + (u.completion_tokens or 0)) end
end

_M._sequence = sequence
_M._fnv = fnv
return _M
