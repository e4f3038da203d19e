-- moongate.health — the health of every backend's targets, kept in gw.shared
-- so that every worker sees the same evictions, failures, in-flight counts
-- and latencies. The shipped health plugin writes it (passive checks), the
-- active prober and the admin API too; the balancer reads it.
--
-- Keys (one set per backend and target name, "|"-separated):
--   hev   eviction: the wall-clock time it ends (1e12: until restored); the
--         key lives on for slow_start seconds after that, while the target
--         ramps back up to its full share of traffic
--   hwhy  why it was evicted: "passive", "active", "manual"
--   hfail consecutive failures        hej  ejections in a row (doubles the time)
--   hin   requests in flight          hlat EWMA of time to first byte (s)
--   hok / hbad  answers judged healthy / unhealthy (counts)
--   hprobe  failed active probes in a row
--   htok|<minute>  tokens used this minute (the `usage` strategy)
local gw = require("gw")

local floor, min, max = math.floor, math.min, math.max
local pairs, tonumber, type = pairs, tonumber, type

local _M = { _VERSION = "0.1" }

_M.FOREVER = 1e12
_M.store = gw.shared          -- replaceable in unit specs
_M.clock = gw.now

local keycache = setmetatable({}, { __mode = "k" })   -- target table -> its keys

-- keys(backend_name, target) -> { ev =, why =, ... }
local function keys(bname, t)
  local k = keycache[t]
  if k and k.b == bname then return k end
  local base = "|" .. bname .. "|" .. t.name
  k = { b = bname, ev = "hev" .. base, why = "hwhy" .. base, fail = "hfail" .. base,
        ej = "hej" .. base, inflight = "hin" .. base, lat = "hlat" .. base,
        ok = "hok" .. base, bad = "hbad" .. base, tok = "htok" .. base .. "|",
        probe = "hprobe" .. base }
  keycache[t] = k
  return k
end
_M.keys = keys

-- The eviction policy of a backend, with its defaults (docs/routing.md).
local policies = setmetatable({}, { __mode = "k" })
function _M.policy(backend)
  local p = policies[backend]
  if p then return p end
  local h = backend.health or {}
  local ev = h.eviction or {}
  local duration = ev.duration or 10
  p = {
    evicting = backend.health ~= nil,
    duration = duration,
    max_duration = ev.max_duration or max(300, duration),
    threshold = ev.consecutive_failures or 1,
    slow_start = h.slow_start or min(duration, 30),
    panic = h.panic ~= false,
  }
  policies[backend] = p
  return p
end

-- state(bname, target, now, policy) -> evicted (bool), until, factor
-- factor: the share of its weight a target gets while it ramps up again (0..1]
function _M.state(bname, t, now, pol)
  local k = keys(bname, t)
  local untl = _M.store.get(k.ev)
  if not untl then return false, nil, 1 end
  if now < untl then return true, untl, 0 end
  local ss = pol and pol.slow_start or 10
  if ss <= 0 then return false, nil, 1 end
  local f = (now - untl) / ss
  if f >= 1 then return false, nil, 1 end
  if f < 0.1 then f = 0.1 end
  return false, nil, f
end

function _M.evict(bname, t, seconds, why, pol)
  local k = keys(bname, t)
  local now = _M.clock()
  local untl = seconds >= _M.FOREVER and _M.FOREVER or now + seconds
  local ss = pol and pol.slow_start or 0
  -- a manual or active eviction has no end of its own: no ttl
  _M.store.set(k.ev, untl, untl >= _M.FOREVER and 0 or (untl - now) + ss + 1)
  _M.store.set(k.why, why or "passive", untl >= _M.FOREVER and 0 or (untl - now) + ss + 1)
  _M.store.set(k.fail, 0)
  return untl
end

-- restore: back in service now, ramping up over slow_start
function _M.restore(bname, t, pol)
  local k = keys(bname, t)
  local ss = pol and pol.slow_start or 0
  if ss > 0 then
    _M.store.set(k.ev, _M.clock(), ss + 1)
    _M.store.set(k.why, "restored", ss + 1)
  else
    _M.store.delete(k.ev)
    _M.store.delete(k.why)
  end
  _M.store.set(k.fail, 0)
  _M.store.delete(k.ej)
end

-- failure(bname, t, pol, hint) -> evicted until | nil. hint: seconds the
-- provider asked for (Retry-After and the like); it wins when longer, up to max_duration (a
-- provider's "come back tomorrow" does not take a target out for longer than the user allows).
function _M.failure(bname, t, pol, hint)
  local k = keys(bname, t)
  local s = _M.store
  s.incr(k.bad, 1)
  if not pol.evicting then return nil end
  local n = s.incr(k.fail, 1) or 1
  if n < pol.threshold then return nil end
  local ej = s.get(k.ej) or 0
  local d = min(pol.duration * 2 ^ ej, pol.max_duration)
  if hint and hint > d then d = min(hint, pol.max_duration) end
  local untl = _M.evict(bname, t, d, "passive", pol)
  -- the count of ejections in a row is forgotten after a calm spell
  s.set(k.ej, ej + 1, 2 * d + pol.slow_start + 1)
  return untl
end

function _M.success(bname, t)
  local k = keys(bname, t)
  local s = _M.store
  s.incr(k.ok, 1)
  -- one write per answer: cheaper than reading first
  s.set(k.fail, 0)
end

-- in-flight requests: acquire(…, cap) is atomic against the cap
function _M.acquire(bname, t, cap)
  local k = keys(bname, t)
  if cap then
    local ok = _M.store.reserve(k.inflight, 1, cap)
    return ok and true or false
  end
  _M.store.incr(k.inflight, 1)
  return true
end

function _M.release(bname, t)
  local k = keys(bname, t)
  local n = _M.store.incr(k.inflight, -1)
  if n and n < 0 then _M.store.set(k.inflight, 0) end
end

function _M.inflight(bname, t)
  return _M.store.get(keys(bname, t).inflight) or 0
end

local ALPHA = 0.3
function _M.observe_latency(bname, t, seconds)
  if type(seconds) ~= "number" or seconds < 0 then return end
  local k = keys(bname, t)
  local old = _M.store.get(k.lat)
  _M.store.set(k.lat, old and (old + ALPHA * (seconds - old)) or seconds)
end

function _M.latency(bname, t)
  return _M.store.get(keys(bname, t).lat)
end

local function minute(now) return floor(now / 60) end

function _M.add_tokens(bname, t, n)
  if type(n) ~= "number" or n <= 0 then return end
  local k = keys(bname, t)
  _M.store.incr(k.tok .. minute(_M.clock()), n, 120)
end

function _M.tokens(bname, t)
  return _M.store.get(keys(bname, t).tok .. minute(_M.clock())) or 0
end

-- report(bname, t, pol) -> the admin API's view of one target
function _M.report(bname, t, pol)
  local k = keys(bname, t)
  local s = _M.store
  local now = _M.clock()
  local untl = s.get(k.ev)
  local evicted = untl ~= nil and now < untl
  local why = s.get(k.why)
  local out = {
    name = t.name, provider = t.provider, model = t.model ~= false and t.model or nil,
    weight = t.weight or 1, max_inflight = t.max_inflight,
    state = evicted and "evicted" or "healthy",
    evicted_until = evicted and untl < _M.FOREVER and untl or nil,
    evicted_reason = evicted and why or nil,
    consecutive_failures = s.get(k.fail) or 0,
    inflight = s.get(k.inflight) or 0,
    ewma_ttfb_ms = (s.get(k.lat) and floor(s.get(k.lat) * 1e6) / 1e3) or nil,
    healthy_answers = s.get(k.ok) or 0,
    unhealthy_answers = s.get(k.bad) or 0,
    tokens_this_minute = s.get(k.tok .. minute(now)) or 0,
  }
  if not evicted and untl then
    local _, _, f = _M.state(bname, t, now, pol)
    if f < 1 then out.state = "recovering"; out.traffic_share = floor(f * 100) / 100 end
  end
  return out
end

-- The seconds a provider asked us to wait, from its answer's headers:
-- Retry-After (seconds or an HTTP date), retry-after-ms, and OpenAI's
-- x-ratelimit-reset-requests / -tokens ("1s", "6m0s", "20ms").
local function go_duration(v)
  if type(v) ~= "string" then return nil end
  local total, any = 0, false
  for num, unit in v:gmatch("([%d%.]+)(%a+)") do
    local n = tonumber(num)
    if not n then return nil end
    local mul = ({ h = 3600, m = 60, s = 1, ms = 0.001, us = 1e-6, ["µs"] = 1e-6, ns = 1e-9 })[unit]
    if not mul then return nil end
    total, any = total + n * mul, true
  end
  if not any then return tonumber(v) end
  return total
end

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8,
                 Sep = 9, Oct = 10, Nov = 11, Dec = 12 }

local function http_date(v)
  local d, mon, y, hh, mm, ss = v:match("^%a+, (%d+) (%a+) (%d+) (%d+):(%d+):(%d+) GMT$")
  if not d or not MONTHS[mon] then return nil end
  local days = require("moongate.units").days_from_civil(tonumber(y), MONTHS[mon], tonumber(d))
  return days * 86400 + tonumber(hh) * 3600 + tonumber(mm) * 60 + tonumber(ss)
end

function _M.retry_hint(headers, now)
  if type(headers) ~= "table" then return nil end
  local best
  local function take(s) if s and s > 0 and (not best or s > best) then best = s end end
  local ms = tonumber(headers["retry-after-ms"])
  if ms then take(ms / 1000) end
  local ra = headers["retry-after"]
  if ra then
    local n = tonumber(ra)
    if n then take(n)
    else
      local at = http_date(ra)
      if at then take(at - (now or _M.clock())) end
    end
  end
  take(go_duration(headers["x-ratelimit-reset-requests"]))
  take(go_duration(headers["x-ratelimit-reset-tokens"]))
  return best
end
_M.go_duration = go_duration

return _M
