-- moongate.limiter — rate counting for the rate_limit plugin: a sliding window estimated from two
-- fixed windows, on nothing but gw.shared's atomic operations (get, reserve, settle), so that every
-- worker — and, with the Redis backend, every instance — counts against one limit.
--
-- A rule allows `limit` units per `size` seconds. Time is cut into fixed windows
-- (index = floor(now / size)), each with its own counter key "<base>:<index>" that expires after
-- two windows. The units used "in the last `size` seconds" are estimated as
--
--     used = previous window's count * (1 - elapsed / size) + this window's count
--
-- (Cloudflare's estimate; exact when traffic is even, never off by more than the previous
-- window's count). A request is admitted while used < allowance, with one atomic
-- reserve on this window's key: reserve(key, n, allowance - weighted previous) adds n only while
-- the key is below that figure, so concurrent requests cannot pass the limit except for the one
-- that crosses it. Token rules reserve an estimate and settle() it to the real count later.
--
-- burst: up to `burst` units above the limit when the previous window left them unused
-- (allowance = limit + min(burst, limit - previous count)). An idle client may send limit + burst
-- at once; a client at the steady rate gets exactly the limit.
--
--   local lim = limiter.new(store, clock)   store: get/reserve/settle as gw.shared; clock() -> s
--   ok, st = lim:admit(base, n, limit, size, burst)
--     st = { key, limit, used, remaining, reset, retry_after (refused only; nil for a limit of 0) }
--   lim:settle(key, reserved, actual)
--   st = lim:peek(base, limit, size, burst)    the same figures, nothing reserved
local floor, ceil, max, min = math.floor, math.ceil, math.max, math.min
local format = string.format
local os_date = os.date
local setmetatable, tostring = setmetatable, tostring

local _M = { _VERSION = "0.1" }

local L = {}
L.__index = L

-- window(now, size) -> index, elapsed: the fixed window `now` falls in, and how far into it
function _M.window(now, size)
  local idx = floor(now / size)
  return idx, now - idx * size
end

-- allowance(limit, burst, prev) -> what may be used in a window after one that used `prev`
local function allowance(limit, burst, prev)
  if burst and burst > 0 then
    local unused = limit - prev
    if unused > 0 then return limit + min(burst, unused) end
  end
  return limit
end
_M.allowance = allowance

-- retry_after(...) -> seconds until used < allowance again (what a refused client waits for),
-- or nil for a limit of 0, which never admits anything
function _M.retry_after(prev, curr, elapsed, size, limit, burst)
  if limit <= 0 then return nil end
  local a = allowance(limit, burst, prev)
  if prev > 0 then
    -- this window: prev * (1 - t / size) + curr < a  once t passes
    local t = size * (1 - (a - curr) / prev)
    if t < size then return max(0, t - elapsed) end
  elseif curr < a then
    return 0
  end
  -- the next window: this one's count becomes the previous one, weighed down as it goes
  local wait = size - elapsed
  local a2 = allowance(limit, burst, curr)
  if curr < a2 then return wait end
  return wait + size * (1 - a2 / curr)
end

-- reset(...) -> seconds until the counts are back to zero (OpenAI's "resets to its initial state")
function _M.reset(prev, curr, elapsed, size)
  if curr > 0 then return (size - elapsed) + size end
  if prev > 0 then return size - elapsed end
  return 0
end

-- duration(s) -> "1s", "250ms", "6m0s", "1h2m3s" (as OpenAI writes x-ratelimit-reset-*; Go's
-- time.Duration format, to the millisecond)
function _M.duration(s)
  local ms = floor(s * 1000 + 0.5)
  if ms <= 0 then return "0s" end
  if ms < 1000 then return ms .. "ms" end
  local h = floor(ms / 3600000)
  local m = floor((ms % 3600000) / 60000)
  -- the seconds from integer milliseconds, without trailing zeros (every answer of a limited
  -- route carries one of these: no pattern, which the JIT does not compile)
  local rest = ms % 60000
  local whole, frac = floor(rest / 1000), rest % 1000
  local secs
  if frac == 0 then
    secs = format("%d", whole)
  elseif frac % 100 == 0 then
    secs = format("%d.%d", whole, frac / 100)
  elseif frac % 10 == 0 then
    secs = format("%d.%02d", whole, frac / 10)
  else
    secs = format("%d.%03d", whole, frac)
  end
  if h > 0 then return format("%dh%dm%ss", h, m, secs) end
  if m > 0 then return format("%dm%ss", m, secs) end
  return secs .. "s"
end

-- rule_key(scope, rule, subject) -> the base name of a rate rule's counters ("rl:...", without the
-- window index). scope: "global", "route:NAME" or "backend:NAME" (where the rule is listed). The
-- limit is not in it, so a reload that changes a limit keeps the counts.
function _M.rule_key(scope, rule, subject)
  local prefix = rule._key_prefix
  if rule._key_scope ~= scope or not prefix then   -- made once per rule (a rule has one scope)
    prefix = "rl:" .. scope .. ":" .. rule.name .. ":" .. rule.by .. ":" .. rule.kind .. ":" ..
      tostring(rule.window) .. ":"
    rule._key_prefix, rule._key_scope = prefix, scope
  end
  return prefix .. subject
end

-- window_keys(base, idx) -> the keys of window idx and of the one before; kept per base while
-- its window lasts, so that a request does not turn numbers into strings (bounded: the table
-- starts over past 4096 bases, as with one per client address)
local wkeys, nwkeys = {}, 0
local function window_keys(base, idx)
  local e = wkeys[base]
  if e and e.idx == idx then return e.curr, e.prev end
  if not e then
    if nwkeys >= 4096 then wkeys, nwkeys = {}, 0 end
    e = {}
    wkeys[base] = e
    nwkeys = nwkeys + 1
  end
  e.idx, e.curr, e.prev = idx, base .. ":" .. idx, base .. ":" .. (idx - 1)
  return e.curr, e.prev
end

function _M.new(store, clock)
  return setmetatable({ store = store, clock = clock }, L)
end

local function figures(st, prev, curr, elapsed, size, limit, burst)
  local a = allowance(limit, burst, prev)
  local used = prev * (1 - elapsed / size) + curr
  st.limit = limit
  st.used = used
  st.remaining = min(limit, max(0, floor(a - used + 1e-9)))
  st.reset = _M.reset(prev, curr, elapsed, size)
  return st
end

-- admit(base, n, limit, size, burst) -> ok, st
-- n units (1 for a request, an estimate for tokens) against `limit` per `size` seconds.
-- A store error (a key holding a string) admits, and says so in st.error.
function L:admit(base, n, limit, size, burst)
  local store = self.store
  local idx, elapsed = _M.window(self.clock(), size)
  local key, prev_key = window_keys(base, idx)
  local prev = store.get(prev_key)
  if type(prev) ~= "number" then prev = 0 end
  local a = allowance(limit, burst, prev)
  local cap = a - prev * (1 - elapsed / size)
  local ok, rem = store.reserve(key, n, cap, 2 * size + 1)
  if ok == nil then
    return true, { key = nil, limit = limit, used = 0, remaining = limit, reset = 0, error = rem }
  end
  local curr = cap - rem            -- the count after this reserve (or as it stands, if refused)
  local st = figures({ key = key }, prev, curr, elapsed, size, limit, burst)
  if not ok then
    st.retry_after = _M.retry_after(prev, curr, elapsed, size, limit, burst)
  end
  return ok, st
end

-- settle(key, reserved, actual): correct a reservation to what was really used (0 to undo it)
function L:settle(key, reserved, actual)
  if not key or reserved == actual then return end
  self.store.settle(key, reserved, actual)
end

-- peek(base, limit, size, burst) -> st, without counting anything (for /admin/limits)
function L:peek(base, limit, size, burst)
  local store = self.store
  local idx, elapsed = _M.window(self.clock(), size)
  local prev = store.get(base .. ":" .. (idx - 1))
  local curr = store.get(base .. ":" .. idx)
  if type(prev) ~= "number" then prev = 0 end
  if type(curr) ~= "number" then curr = 0 end
  return figures({ key = base .. ":" .. idx }, prev, curr, elapsed, size, limit, burst)
end

---------------------------------------------------------------------------------------------------
-- Budget periods (calendar-aligned, UTC)
---------------------------------------------------------------------------------------------------

local days_from_civil = require("moongate.units").days_from_civil

local function month_start(mi)   -- mi: months since year 0 (year * 12 + month - 1)
  return days_from_civil(floor(mi / 12), mi % 12 + 1, 1) * 86400
end

-- period_window(period, now) -> start, finish, tag: the calendar period (UTC) `now` falls in.
-- period: { months = N } | { seconds = N } (as the config parses "1mo", "1d", "3600")
function _M.period_window(period, now)
  if period.months then
    local t = os_date("!*t", floor(now))
    local mi = t.year * 12 + (t.month - 1)
    local s = mi - mi % period.months
    return month_start(s), month_start(s + period.months),
      format("%04d-%02d", floor(s / 12), s % 12 + 1)
  end
  local p = period.seconds
  local start = floor(now / p) * p
  local tag
  if p % 1 ~= 0 or start % 1 ~= 0 then
    tag = format("%.3f", start)
  elseif p % 86400 == 0 then
    tag = os_date("!%Y-%m-%d", start)
  elseif p % 3600 == 0 then
    tag = os_date("!%Y-%m-%dT%H", start)
  else
    tag = os_date("!%Y-%m-%dT%H:%M:%S", start)
  end
  return start, start + p, tag
end

-- period_text(period) -> "1mo", "1d", "2h", "90s"
function _M.period_text(p)
  if p.months then return p.months .. "mo" end
  local s = p.seconds
  if s % 86400 == 0 then return (s / 86400) .. "d" end
  if s % 3600 == 0 then return (s / 3600) .. "h" end
  if s % 60 == 0 then return (s / 60) .. "m" end
  return tostring(s) .. "s"
end

-- budget_key(scope, name, period, now) -> the counter's key, the period's end
function _M.budget_key(scope, name, period, now)
  local _, finish, tag = _M.period_window(period, now)
  return "budget:" .. scope .. ":" .. name .. ":" .. tag, finish
end

return _M
