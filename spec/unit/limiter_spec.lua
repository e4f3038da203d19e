-- moongate.limiter: window arithmetic, the sliding-window limiter against an in-memory store with
-- gw.shared's interface and a clock the test moves, and budget periods.
local limiter = require("moongate.limiter")

-- The operations of gw.shared (get, reserve, settle) with TTLs on the test's clock.
local function fake_store(clock)
  local data = {}
  local s = { data = data, calls = 0 }
  local function live(k)
    local e = data[k]
    if e and e.exp and clock() >= e.exp then
      data[k] = nil
      return nil
    end
    return e
  end
  function s.get(k)
    local e = live(k)
    return e and e.v
  end
  function s.reserve(k, n, limit, ttl)
    s.calls = s.calls + 1
    local e = live(k)
    local cur = e and e.v or 0
    if cur >= limit then return false, limit - cur end
    if e then e.v = cur + n else data[k] = { v = n, exp = ttl and ttl > 0 and clock() + ttl or nil } end
    return true, limit - (cur + n)
  end
  function s.settle(k, reserved, actual)
    local e = live(k)
    if not e then return 0 end
    e.v = e.v + actual - reserved
    return e.v
  end
  return s
end

local function setup(start)
  local t = { now = start or 1000 }
  local clock = function() return t.now end
  local store = fake_store(clock)
  return limiter.new(store, clock), t, store
end

describe("limiter", function()
  describe("window arithmetic", function()
    it("cuts time into fixed windows", function()
      assert.same({ 100, 0 }, { limiter.window(1000, 10) })
      assert.same({ 100, 9.5 }, { limiter.window(1009.5, 10) })
      assert.same({ 16, 40 }, { limiter.window(1000, 60) })
    end)

    it("gives a burst only after a window that left units unused", function()
      assert.equal(10, limiter.allowance(10, 0, 0))
      assert.equal(15, limiter.allowance(10, 5, 0))
      assert.equal(12, limiter.allowance(10, 5, 8))
      assert.equal(10, limiter.allowance(10, 5, 10))
      assert.equal(10, limiter.allowance(10, 5, 14))
    end)

    it("writes durations as OpenAI does", function()
      assert.equal("0s", limiter.duration(0))
      assert.equal("250ms", limiter.duration(0.25))
      assert.equal("1s", limiter.duration(1))
      assert.equal("1.5s", limiter.duration(1.5))
      assert.equal("59.999s", limiter.duration(59.9994))
      assert.equal("6m0s", limiter.duration(360))
      assert.equal("1m22.951s", limiter.duration(82.951))
      assert.equal("1h2m3s", limiter.duration(3723))
    end)

    it("resets when both windows are empty", function()
      assert.equal(0, limiter.reset(0, 0, 3, 10))
      assert.equal(7, limiter.reset(4, 0, 3, 10))
      assert.equal(17, limiter.reset(0, 1, 3, 10))
    end)
  end)

  describe("requests", function()
    it("admits the limit and refuses the next, with what remains", function()
      local lim = limiter.new(fake_store(function() return 1000 end), function() return 1000 end)
      local rem = {}
      for i = 1, 3 do
        local ok, st = lim:admit("rl:a", 1, 3, 10, 0)
        assert.is_true(ok)
        rem[i] = st.remaining
      end
      assert.same({ 2, 1, 0 }, rem)
      local ok, st = lim:admit("rl:a", 1, 3, 10, 0)
      assert.is_false(ok)
      assert.equal(0, st.remaining)
      assert.equal(3, st.limit)
      assert.truthy(st.retry_after > 0 and st.retry_after <= 20)
      -- another subject has its own counters
      assert.is_true((lim:admit("rl:b", 1, 3, 10, 0)))
    end)

    it("lets the previous window weigh less as the current one goes on", function()
      local lim, t = setup(1000)             -- the start of a 10 s window
      for _ = 1, 4 do lim:admit("k", 1, 4, 10, 0) end
      t.now = 1010                           -- next window: the previous 4 weigh fully
      assert.is_false((lim:admit("k", 1, 4, 10, 0)))
      t.now = 1015                           -- half-way: they weigh 2
      local ok, st = lim:admit("k", 1, 4, 10, 0)
      assert.is_true(ok)
      assert.near(3, st.used, 1e-9)
      ok = lim:admit("k", 1, 4, 10, 0)       -- 3 < 4: admitted (it crosses to 4)
      assert.is_true(ok)
      assert.is_false((lim:admit("k", 1, 4, 10, 0)))
      t.now = 1030                           -- two windows later: all forgotten
      local _, st2 = lim:admit("k", 1, 4, 10, 0)
      assert.equal(3, st2.remaining)
    end)

    it("says when to retry: admitted then, not before", function()
      for _, start in ipairs({ 1000, 1003.7, 1009.9 }) do
        local lim, t = setup(start)
        for _ = 1, 5 do lim:admit("k", 1, 5, 10, 0) end
        local ok, st = lim:admit("k", 1, 5, 10, 0)
        assert.is_false(ok)
        local wait = st.retry_after
        assert.truthy(wait > 0)
        t.now = start + wait - 0.01
        assert.is_false((lim:admit("k", 1, 5, 10, 0)), "admitted before Retry-After (start " .. start .. ")")
        t.now = start + wait + 0.01
        assert.is_true((lim:admit("k", 1, 5, 10, 0)), "refused after Retry-After (start " .. start .. ")")
      end
    end)

    it("refuses everything with a limit of 0, with no wait that would end it (not NaN)", function()
      local lim = setup()
      local ok, st = lim:admit("k", 1, 0, 10, 0)
      assert.is_false(ok)
      assert.is_nil(st.retry_after)
    end)

    it("allows a burst after an idle window, then the steady rate", function()
      local lim, t = setup(1000)
      local n = 0
      while lim:admit("k", 1, 4, 10, 2) do n = n + 1 end
      assert.equal(6, n)                     -- 4 + burst 2 after nothing
      t.now = 1020                           -- two windows on: idle again
      n = 0
      for _ = 1, 4 do if lim:admit("k", 1, 4, 10, 2) then n = n + 1 end end
      assert.equal(4, n)
      t.now = 1030                           -- the window before used the whole limit: no burst,
      assert.is_false((lim:admit("k", 1, 4, 10, 2)))   -- and its 4 weigh fully at the start
      t.now = 1035                           -- half-way they weigh 2: 2 more, not 2 + burst
      n = 0
      while lim:admit("k", 1, 4, 10, 2) and n < 100 do n = n + 1 end
      assert.equal(2, n)
    end)

    it("peeks without counting", function()
      local lim, _, store = setup(1000)
      lim:admit("k", 1, 3, 10, 0)
      local calls = store.calls
      local st = lim:peek("k", 3, 10, 0)
      assert.equal(1, st.used)
      assert.equal(2, st.remaining)
      assert.equal(calls, store.calls)
      assert.equal(1, lim:peek("k", 3, 10, 0).used)
    end)
  end)

  describe("tokens", function()
    it("reserves estimates, and the crossing request is the only overshoot", function()
      local lim = setup(1000)
      local admitted = 0
      for _ = 1, 10 do
        if lim:admit("t", 50, 120, 60, 0) then admitted = admitted + 1 end
      end
      assert.equal(3, admitted)              -- 0, 50, 100 were below 120: 150 reserved
    end)

    it("settles an estimate to the real count", function()
      local lim = setup(1000)
      local _, a = lim:admit("t", 100, 150, 60, 0)
      local _, b = lim:admit("t", 100, 150, 60, 0)
      assert.is_false((lim:admit("t", 100, 150, 60, 0)))
      lim:settle(a.key, 100, 10)
      lim:settle(b.key, 100, 20)
      local ok, st = lim:admit("t", 100, 150, 60, 0)
      assert.is_true(ok)
      assert.equal(130, st.used)
      lim:settle(st.key, 100, 0)             -- undone: as if never admitted
      assert.equal(30, lim:peek("t", 150, 60, 0).used)
    end)

    it("forgets counters two windows on (TTL)", function()
      local lim, t, store = setup(1000)
      lim:admit("t", 10, 100, 5, 0)
      t.now = 1012
      lim:peek("t", 100, 5, 0)
      assert.is_nil(store.get("t:200"))
    end)
  end)

  describe("budget periods", function()
    local function utc(ts) return os.date("!%Y-%m-%dT%H:%M:%SZ", ts) end
    -- 2026-12-15T13:45:10Z
    local NOW = 1797342310
    assert(utc(NOW) == "2026-12-15T13:45:10Z")

    it("align months to the 1st, UTC", function()
      local s, f, tag = limiter.period_window({ months = 1 }, NOW)
      assert.equal("2026-12-01T00:00:00Z", utc(s))
      assert.equal("2027-01-01T00:00:00Z", utc(f))
      assert.equal("2026-12", tag)
      s, f, tag = limiter.period_window({ months = 3 }, NOW)
      assert.equal("2026-10-01T00:00:00Z", utc(s))
      assert.equal("2027-01-01T00:00:00Z", utc(f))
      assert.equal("2026-10", tag)
      s, f = limiter.period_window({ months = 1 }, os.time({ year = 2028, month = 2, day = 29, hour = 12 }))
      assert.equal("2028-02-01T00:00:00Z", utc(s))
      assert.equal("2028-03-01T00:00:00Z", utc(f))
    end)

    it("align days, hours and shorter periods to the epoch (midnight UTC)", function()
      local s, f, tag = limiter.period_window({ seconds = 86400 }, NOW)
      assert.equal("2026-12-15T00:00:00Z", utc(s))
      assert.equal("2026-12-16T00:00:00Z", utc(f))
      assert.equal("2026-12-15", tag)
      s, f, tag = limiter.period_window({ seconds = 3600 }, NOW)
      assert.equal("2026-12-15T13:00:00Z", utc(s))
      assert.equal("2026-12-15T13", tag)
      s, f, tag = limiter.period_window({ seconds = 2 }, NOW)
      assert.equal(NOW, s)
      assert.equal(NOW + 2, f)
      assert.equal("2026-12-15T13:45:10", tag)
    end)

    it("name counters after the period's start", function()
      assert.equal("budget:team:search:2026-12", (limiter.budget_key("team", "search", { months = 1 }, NOW)))
      assert.equal("1mo", limiter.period_text({ months = 1 }))
      assert.equal("1d", limiter.period_text({ seconds = 86400 }))
      assert.equal("2h", limiter.period_text({ seconds = 7200 }))
      assert.equal("90s", limiter.period_text({ seconds = 90 }))
    end)
  end)
end)
