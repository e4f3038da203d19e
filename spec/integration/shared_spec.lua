-- gw.shared from a plugin, in the real binary: counters that persist across
-- requests, reserve/settle, strings and TTLs, and misuse reported clearly.

local helpers = require "spec.support.helpers"

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}" }   -- never the default 9901: specs may run side by side
shared = { max_keys = 64 }
providers = { m = { type = "mock" } }
backends = { main = { provider = "m", model = false } }
routes = { { match = { path_prefix = "/v1" }, backend = "main" } }
plugins = {
  { name = "counter", handler = {
      on_request = function(ctx)
        local s = gw.shared
        local q = ctx.request.query or ""
        if q == "op=incr" then
          return gw.respond(200, { value = s.incr("hits", 1) })
        elseif q == "op=reserve" then
          local ok, remaining = s.reserve("tokens", 40, 100, 60)
          return gw.respond(200, { ok = ok, remaining = remaining })
        elseif q == "op=settle" then
          return gw.respond(200, { value = s.settle("tokens", 40, 5) })
        elseif q == "op=string" then
          s.set("greeting", "hello", 60)
          return gw.respond(200, { value = s.get("greeting"), missing = s.get("nothing") == nil })
        elseif q == "op=ttl" then
          s.set("short", 1, 0.2)
          return gw.respond(200, { value = s.get("short") })
        elseif q == "op=get-short" then
          return gw.respond(200, { gone = s.get("short") == nil })
        elseif q == "op=bad" then
          s.set("greeting", "hello", 60)
          local v, err = s.incr("greeting", 1)   -- a string: incr refuses, returns nil, err
          return gw.respond(200, { err = err })
        elseif q == "op=fill" then
          for i = 1, 200 do s.set("fill:" .. i, i) end
          local present = 0
          for i = 1, 200 do if s.get("fill:" .. i) then present = present + 1 end end
          return gw.respond(200, { present = present, last = s.get("fill:200") })
        elseif q == "op=misuse" then
          s.incr(nil)                    -- raises: the plugin fails, 500
        end
      end } },
}
]]

describe("gw.shared", function()
  local gw

  lazy_setup(function()
    gw = helpers.start_gateway(CONFIG)
  end)

  lazy_teardown(function()
    helpers.stop_and_check(gw)
  end)

  local function op(name)
    local res = helpers.http(gw.port, { method = "GET", path = "/v1/x?op=" .. name })
    return res.status, helpers.json(res), res
  end

  it("keeps a counter across requests and connections", function()
    local _, a = op("incr")
    local _, b = op("incr")
    local _, c = op("incr")
    assert.equal(a.value + 1, b.value)
    assert.equal(b.value + 1, c.value)
  end)

  it("reserves while below the limit and settles to the real figure", function()
    local _, r1 = op("reserve")
    assert.same({ ok = true, remaining = 60 }, r1)
    local _, r2 = op("reserve")
    assert.same({ ok = true, remaining = 20 }, r2)
    local _, r3 = op("reserve")
    assert.same({ ok = true, remaining = -20 }, r3)      -- 80 < 100: admitted, crosses it
    local _, r4 = op("reserve")
    assert.same({ ok = false, remaining = -20 }, r4)     -- 120: refused
    local _, s = op("settle")                            -- estimate 40, used 5
    assert.equal(85, s.value)
    local _, r5 = op("reserve")
    assert.equal(true, r5.ok)
  end)

  it("stores strings and forgets keys whose ttl passed", function()
    local _, s = op("string")
    assert.equal("hello", s.value)
    assert.is_true(s.missing)
    local _, t = op("ttl")
    assert.equal(1, t.value)
    helpers.wait_until(function()
      local _, g = op("get-short")
      return g.gone
    end, 10, "a key with a 0.2 s ttl was still there")
  end)

  it("stays within shared.max_keys, keeping the most recent keys", function()
    local _, r = op("fill")
    assert.truthy(r.present <= 64, r.present .. " keys kept with max_keys = 64")
    assert.truthy(r.present > 0)
    assert.equal(200, r.last)
  end)

  it("reports an operation on the wrong type, and misuse as a plugin error", function()
    local _, b = op("bad")
    assert.matches("holds a string", b.err)
    local status, body = op("misuse")
    assert.equal(500, status)
    assert.not_matches("counter", body.error.message)
    helpers.wait_until(function()
      return gw:log():find("plugin counter failed", 1, true)
    end, 5, "the plugin's name was not logged")
    assert.truthy(gw:log():find("key must be a non-empty string", 1, true))
  end)
end)
