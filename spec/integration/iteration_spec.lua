-- Plugin code iterates tables correctly however hot it runs. Debian's LuaJIT mis-iterates a
-- `pairs` loop that its JIT blacklists midway (LuaJIT issue #827): it stops early or skips keys.
-- The gateway runs its Lua with pairs and next that cannot take that path
-- (lua/moongate/iter.lua); these loops fail within ~40,000 rounds without it.

local helpers = require "spec.support.helpers"

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
access_log = false
providers = { m = { type = "mock" } }
backends = { main = { provider = "m", model = "mock-1" } }
routes = { { name = "chat", match = { path_prefix = "/v1" }, backend = "main" } }
plugins = {
  { name = "loops", handler = {
      on_request = function(ctx)
        local op = (ctx.request.query or ""):match("^op=(%w+)")
        if op == "errors" then
          local ok1, e1 = pcall(function() local f = pairs(nil); return f end)
          local ok2, e2 = pcall(function() local k = next(nil); return k end)
          return gw.respond(200, { pairs = not ok1 and tostring(e1) or "no error",
                                   next = not ok2 and tostring(e2) or "no error" })
        end
        local inner = { 1, 2, 3, 4, 5 }
        local tab = { a = inner, b = inner, c = inner, d = inner, e = inner }
        -- a vararg function with a loop of its own: the loop below is entered afresh each round
        local function reenter(...) for _ = 1, 100 do end end
        local rounds, bad, first_bad = 150000, 0, nil
        for i = 1, rounds do
          reenter()
          local c = 0
          if op == "next" then
            for _, v in next, tab do
              for _ in next, v do end
              c = c + 1
            end
          else
            for k, v in pairs(tab) do
              for _ in pairs(v) do end
              if type(k) == "string" then c = c + 1 end
            end
          end
          if c ~= 5 then
            bad = bad + 1
            first_bad = first_bad or i
          end
        end
        return gw.respond(200, { rounds = rounds, bad = bad, first_bad = first_bad or 0 })
      end } },
}
]]

describe("plugin code", function()
  local gw

  lazy_setup(function()
    gw = helpers.start_gateway(CONFIG)
  end)

  lazy_teardown(function()
    helpers.stop_and_check(gw)
  end)

  local function run(op)
    local res = helpers.http(gw.port, { path = "/v1/x?op=" .. op, timeout = 60 })
    assert.equal(200, res.status, res.body)
    return helpers.json(res)
  end

  it("visits every key of a table in a hot nested pairs loop", function()
    local r = run("pairs")
    assert.equal(150000, r.rounds)
    assert.equal(0, r.bad, "rounds that missed keys, the first at " .. tostring(r.first_bad))
  end)

  it("visits every key in a hot nested `for k, v in next, t` loop", function()
    local r = run("next")
    assert.equal(0, r.bad, "rounds that missed keys, the first at " .. tostring(r.first_bad))
  end)

  it("keeps pairs' and next's own error messages", function()
    local r = run("errors")
    assert.matches("bad argument #1 to 'pairs' %(table expected, got nil%)", r.pairs)
    assert.matches("bad argument #1 to 'next' %(table expected, got nil%)", r.next)
  end)
end)
