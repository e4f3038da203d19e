-- moongate.plugins: chains per phase, priority order, the runner.
local plugins = require("moongate.plugins")
local gw = require("gw")

local function names(list)
  local out = {}
  for i, p in ipairs(list) do out[i] = p.name end
  return out
end

-- an entry whose hooks append "<name>:<phase>" to ctx.log
local function recorder(name, priority, phases, conf)
  local plugin = {}
  for _, ph in ipairs(phases) do
    plugin[ph] = function(ctx, c, arg)
      ctx.log = ctx.log or {}
      ctx.log[#ctx.log + 1] = name .. ":" .. ph
    end
  end
  return { name = name, priority = priority, plugin = plugin, conf = conf }
end

describe("plugins.build", function()
  it("has one list per phase, every phase present", function()
    local chain = plugins.build({})
    for _, ph in ipairs(plugins.PHASES) do
      assert.same({}, chain[ph], ph)
    end
    assert.same({ "on_route", "on_request", "on_balance", "on_upstream_request", "on_response",
                  "on_chunk", "on_error", "on_log" }, plugins.PHASES)
  end)

  it("orders by priority, high first", function()
    local chain = plugins.build({
      recorder("low", 1, { "on_request" }),
      recorder("high", 100, { "on_request" }),
      recorder("mid", 50, { "on_request" }),
      recorder("neg", -5, { "on_request" }),
    })
    assert.same({ "high", "mid", "low", "neg" }, names(chain.on_request))
  end)

  it("keeps list order for equal priorities, a missing priority being 0", function()
    local entries = {}
    for i = 1, 20 do entries[i] = recorder("p" .. i, (i % 3 == 0) and 10 or nil, { "on_log" }) end
    entries[21] = recorder("zero", 0, { "on_log" })
    local chain = plugins.build(entries)
    assert.same({ "p3", "p6", "p9", "p12", "p15", "p18",
                  "p1", "p2", "p4", "p5", "p7", "p8", "p10", "p11", "p13", "p14", "p16", "p17",
                  "p19", "p20", "zero" }, names(chain.on_log))
  end)

  it("lists only the plugins implementing a phase", function()
    local chain = plugins.build({
      recorder("a", 5, { "on_request", "on_log" }),
      recorder("b", 9, { "on_chunk" }),
      { name = "c", priority = 1, plugin = { on_request = "not a function", name = "c" } },
      { name = "d", priority = 1, plugin = { init = function() end, schema = {} } },
    })
    assert.same({ "a" }, names(chain.on_request))
    assert.same({ "a" }, names(chain.on_log))
    assert.same({ "b" }, names(chain.on_chunk))
    assert.same({}, chain.on_route)
    assert.same({}, chain.on_balance)
  end)

  it("hands each hook its conf (an empty table when none)", function()
    local seen = {}
    local chain = plugins.build({
      { name = "a", plugin = { on_request = function(ctx, conf) seen.a = conf end }, conf = { x = 1 } },
      { name = "b", plugin = { on_request = function(ctx, conf) seen.b = conf end } },
    })
    plugins.run(chain, "on_request", {})
    assert.same({ x = 1 }, seen.a)
    assert.same({}, seen.b)
  end)
end)

describe("plugins.run", function()
  it("runs every hook in order and returns nil", function()
    local chain = plugins.build({ recorder("a", 2, { "on_request" }), recorder("b", 1, { "on_request" }) })
    local ctx = {}
    assert.is_nil(plugins.run(chain, "on_request", ctx))
    assert.same({ "a:on_request", "b:on_request" }, ctx.log)
    assert.is_nil(ctx._plugin)
  end)

  it("passes the extra argument", function()
    local got
    local chain = plugins.build({ { name = "e", plugin = { on_error = function(ctx, conf, err) got = err end } } })
    plugins.run(chain, "on_error", {}, { kind = "timeout" })
    assert.same({ kind = "timeout" }, got)
  end)

  it("stops at a gw.respond value and returns it", function()
    local resp
    local chain = plugins.build({
      recorder("first", 3, { "on_request" }),
      { name = "auth", priority = 2, plugin = { on_request = function(ctx)
          ctx.log[#ctx.log + 1] = "auth"
          resp = gw.respond(401, "no", { ["x-a"] = "1" })
          return resp
        end } },
      recorder("never", 1, { "on_request" }),
    })
    local ctx = {}
    local r = plugins.run(chain, "on_request", ctx)
    assert.equal(resp, r)
    assert.equal(401, r.status)
    assert.same({ "first:on_request", "auth" }, ctx.log)
    assert.is_nil(ctx._plugin)
  end)

  it("returns gw.retry() from on_response and on_error after running the rest of the chain", function()
    for _, phase in ipairs({ "on_response", "on_error" }) do
      local chain = plugins.build({
        { name = "health", priority = 2, plugin = { [phase] = function() return gw.retry() end } },
        recorder("later", 1, { phase }),
        recorder("last", 0, { phase }),
      })
      local ctx = { log = {} }
      assert.equal(gw.RETRY, plugins.run(chain, phase, ctx))
      assert.same({ "later:" .. phase, "last:" .. phase }, ctx.log)
      assert.equal("health", ctx._last_plugin)
    end
  end)

  it("lets a later gw.respond answer after a vote for a retry", function()
    local resp = gw.respond(418, "tea")
    local chain = plugins.build({
      { name = "health", priority = 2, plugin = { on_response = function() return gw.retry() end } },
      { name = "teapot", priority = 1, plugin = { on_response = function() return resp end } },
      recorder("never", 0, { "on_response" }),
    })
    local ctx = { log = {} }
    assert.equal(resp, plugins.run(chain, "on_response", ctx))
    assert.same({}, ctx.log)
  end)

  it("stops at gw.retry() in a phase that cannot retry (the runtime answers 500)", function()
    local chain = plugins.build({
      { name = "confused", priority = 2, plugin = { on_request = function() return gw.retry() end } },
      recorder("never", 1, { "on_request" }),
    })
    local ctx = { log = {} }
    assert.equal(gw.RETRY, plugins.run(chain, "on_request", ctx))
    assert.same({}, ctx.log)
  end)

  it("ignores other return values", function()
    local chain = plugins.build({
      { name = "a", priority = 2, plugin = { on_request = function() return { status = 500 } end } },
      { name = "b", priority = 1, plugin = { on_request = function() return "x" end } },
      recorder("c", 0, { "on_request" }),
    })
    local ctx = {}
    assert.is_nil(plugins.run(chain, "on_request", ctx))
    assert.same({ "c:on_request" }, ctx.log)
  end)

  it("names the running plugin in ctx._plugin, and leaves it set when the plugin raises", function()
    local during = {}
    local chain = plugins.build({
      { name = "ok", priority = 2, plugin = { on_request = function(ctx) during[#during + 1] = ctx._plugin end } },
      { name = "boom", priority = 1, plugin = { on_request = function(ctx)
          during[#during + 1] = ctx._plugin
          error("kaput")
        end } },
      recorder("never", 0, { "on_request" }),
    })
    local ctx = {}
    local ok, err = pcall(plugins.run, chain, "on_request", ctx)
    assert.is_false(ok)
    assert.matches("kaput", err)
    assert.same({ "ok", "boom" }, during)
    assert.equal("boom", ctx._plugin)
    assert.is_nil(ctx.log)
  end)
end)

describe("plugins.chunk", function()
  local function chunker(name, priority, fn)
    return { name = name, priority = priority, plugin = { on_chunk = fn } }
  end

  it("passes the chunk through unchanged when no plugin has on_chunk", function()
    assert.equal("data: x\n\n", plugins.chunk(plugins.build({}), {}, "data: x\n\n"))
  end)

  it("hands a replacement to the next plugin; nil keeps it", function()
    local seen = {}
    local chain = plugins.build({
      chunker("upper", 3, function(ctx, conf, c) seen[#seen + 1] = c return c:upper() end),
      chunker("keep", 2, function(ctx, conf, c) seen[#seen + 1] = c end),
      chunker("wrap", 1, function(ctx, conf, c) seen[#seen + 1] = c return "<" .. c .. ">" end),
    })
    assert.equal("<ABC>", plugins.chunk(chain, {}, "abc"))
    assert.same({ "abc", "ABC", "ABC" }, seen)
  end)

  it("drops the chunk on false, skipping later plugins", function()
    local later = false
    local chain = plugins.build({
      chunker("drop", 2, function() return false end),
      chunker("later", 1, function() later = true end),
    })
    local ctx = {}
    assert.is_false(plugins.chunk(chain, ctx, "abc"))
    assert.is_false(later)
    assert.is_nil(ctx._plugin)
  end)

  it("accepts an empty string as a replacement", function()
    local chain = plugins.build({ chunker("empty", 1, function() return "" end) })
    assert.equal("", plugins.chunk(chain, {}, "abc"))
  end)

  it("leaves ctx._plugin set when an on_chunk raises", function()
    local chain = plugins.build({ chunker("bad", 1, function() error("x") end) })
    local ctx = {}
    assert.is_false(pcall(plugins.chunk, chain, ctx, "abc"))
    assert.equal("bad", ctx._plugin)
  end)
end)

describe("plugins.wants_chunks", function()
  local function chunker(name, wants)
    return { name = name, plugin = { on_chunk = function() end, wants_chunks = wants } }
  end

  it("is false with no on_chunk plugin, or when every one says false", function()
    assert.is_false(plugins.wants_chunks(plugins.build({}), {}))
    local chain = plugins.build({ chunker("a", function() return false end),
                                  chunker("b", function() return false end) })
    local ctx = {}
    assert.is_false(plugins.wants_chunks(chain, ctx))
    assert.is_nil(ctx._plugin)
  end)

  it("is true when one plugin has no wants_chunks, or says anything but false", function()
    local no = function() return false end
    assert.is_true(plugins.wants_chunks(plugins.build({ chunker("a", no), chunker("b", nil) }), {}))
    assert.is_true(plugins.wants_chunks(plugins.build({ chunker("a", no),
                                                        chunker("b", function() end) }), {}))
    assert.is_true(plugins.wants_chunks(plugins.build({ chunker("a", function() return true end) }), {}))
  end)

  it("hands the plugin ctx and its conf", function()
    local seen
    local chain = plugins.build({ { name = "a", conf = { k = 1 }, plugin = { on_chunk = function() end,
      wants_chunks = function(ctx, conf) seen = { ctx.id, conf.k } return false end } } })
    plugins.wants_chunks(chain, { id = "r1" })
    assert.same({ "r1", 1 }, seen)
  end)
end)

describe("plugins.chain_for", function()
  local function cfg_with(globals)
    return { plugins = globals }
  end

  it("uses the global chain when neither route nor backend lists plugins", function()
    local cfg = cfg_with({ recorder("auth", 10, { "on_request" }), recorder("cost", 5, { "on_log" }) })
    local chain = plugins.chain_for(cfg, { name = "r1" }, { name = "b1" })
    assert.same({ "auth" }, names(chain.on_request))
    assert.same({ "cost" }, names(chain.on_log))
    assert.equal(plugins.global(cfg), chain)
    assert.equal(chain, plugins.chain_for(cfg, { name = "r2", plugins = {} }, { name = "b2" }))
  end)

  it("works with no route or backend and no global plugins", function()
    local chain = plugins.chain_for({}, nil, nil)
    assert.same({}, chain.on_request)
  end)

  it("lets a route entry replace a global one of the same name, for that route only", function()
    local g_auth = recorder("auth", 10, { "on_request" }, { which = "global" })
    local cfg = cfg_with({ g_auth, recorder("cost", 5, { "on_request" }) })
    local r_auth = recorder("auth", 10, { "on_request" }, { which = "route" })
    local route = { name = "special", plugins = { r_auth, recorder("extra", 7, { "on_request" }) } }
    local chain = plugins.chain_for(cfg, route, { name = "chat" })
    assert.same({ "auth", "extra", "cost" }, names(chain.on_request))
    assert.same({ which = "route" }, chain.on_request[1].conf)
    local plain = plugins.chain_for(cfg, { name = "other" }, { name = "chat" })
    assert.same({ "auth", "cost" }, names(plain.on_request))
    assert.same({ which = "global" }, plain.on_request[1].conf)
    -- the config's own list is not modified
    assert.equal(g_auth, cfg.plugins[1])
    assert.equal(2, #cfg.plugins)
  end)

  it("lets a backend entry replace a global one, and a route entry win over both", function()
    local cfg = cfg_with({ recorder("rl", 10, { "on_request" }, { by = "global" }) })
    local backend = { name = "chat", plugins = { recorder("rl", 10, { "on_request" }, { by = "backend" }) } }
    local c1 = plugins.chain_for(cfg, { name = "r" }, backend)
    assert.same({ by = "backend" }, c1.on_request[1].conf)
    assert.equal(1, #c1.on_request)
    local route = { name = "r2", plugins = { recorder("rl", 10, { "on_request" }, { by = "route" }) } }
    local c2 = plugins.chain_for(cfg, route, backend)
    assert.same({ by = "route" }, c2.on_request[1].conf)
    assert.equal(1, #c2.on_request)
  end)

  it("takes the replacing entry's priority", function()
    local cfg = cfg_with({ recorder("a", 10, { "on_request" }), recorder("b", 5, { "on_request" }) })
    local route = { name = "r", plugins = { recorder("a", 1, { "on_request" }) } }
    assert.same({ "b", "a" }, names(plugins.chain_for(cfg, route, { name = "x" }).on_request))
  end)

  it("caches per route and backend", function()
    local cfg = cfg_with({ recorder("g", 1, { "on_request" }) })
    local route = { name = "r", plugins = { recorder("x", 2, { "on_request" }) } }
    local b1, b2 = { name = "b1" }, { name = "b2", plugins = { recorder("y", 3, { "on_request" }) } }
    local c1 = plugins.chain_for(cfg, route, b1)
    assert.equal(c1, plugins.chain_for(cfg, route, b1))
    local c2 = plugins.chain_for(cfg, route, b2)
    assert.are_not.equal(c1, c2)
    assert.equal(c2, plugins.chain_for(cfg, route, b2))
    assert.same({ "y", "x", "g" }, names(c2.on_request))
    assert.same({ "x", "g" }, names(c1.on_request))
  end)

  it("keeps chains of different configs apart", function()
    local cfg1 = cfg_with({ recorder("one", 1, { "on_request" }) })
    local cfg2 = cfg_with({ recorder("two", 1, { "on_request" }) })
    local route = { name = "r", plugins = { recorder("x", 2, { "on_request" }) } }
    assert.same({ "x", "one" }, names(plugins.chain_for(cfg1, route, { name = "b" }).on_request))
    assert.same({ "x", "two" }, names(plugins.chain_for(cfg2, route, { name = "b" }).on_request))
  end)
end)

describe("shipped plugins", function()
  local function shipped()
    local files = {}
    local f = assert(io.popen("ls plugins/*.lua 2>/dev/null"))
    for line in f:lines() do files[#files + 1] = line end
    f:close()
    return files
  end

  it("load, are named after their file and have distinct numeric priorities", function()
    local files = shipped()
    assert.is_true(#files >= 3)
    local by_priority = {}
    for _, file in ipairs(files) do
      local ok, mod = pcall(dofile, file)
      assert.is_true(ok, file .. ": " .. tostring(mod))
      assert.is_table(mod, file)
      assert.equal(file:match("([^/]+)%.lua$"), mod.name, file)
      assert.is_number(mod.priority, file)
      assert.is_nil(by_priority[mod.priority],
        string.format("%s and %s share priority %s", file, tostring(by_priority[mod.priority]), mod.priority))
      by_priority[mod.priority] = file
    end
  end)

  it("run in the order route, balance, provider", function()
    local router, balancer, provider = dofile("plugins/router.lua"), dofile("plugins/balancer.lua"),
      dofile("plugins/provider.lua")
    assert.is_true(router.priority > balancer.priority)
    assert.is_true(balancer.priority > provider.priority)
  end)
end)
