-- The rate_limit plugin: its options checked at load, and requests and tokens counted per rule
-- (gw.shared is moongate.shared_lua here; gw.now is the test's clock).
local config = require("moongate.config")
local gw = require("gw")
local cjson = require("cjson.safe")

local function tmpdir()
  local name = os.tmpname()
  os.remove(name)
  assert(os.execute("mkdir -p '" .. name .. "'"))
  return name
end

local BASE = [[
providers = { m = { type = "mock" } }
backends = { main = { provider = "m", model = false } }
routes = { { name = "chat", match = { path_prefix = "/v1" }, backend = "main" } }
teams = { search = {} }
]]

describe("rate_limit", function()
  local dir, now, real_now

  setup(function()
    real_now = gw.now
    gw.now = function() return now end
  end)

  teardown(function()
    gw.now = real_now
  end)

  before_each(function()
    dir = tmpdir()
    now = 1000
    gw.shared._reset()
    require("moongate.shared_lua").clock = function() return now end
  end)

  after_each(function()
    os.execute("rm -rf '" .. dir .. "'")
  end)

  local function load(plugins)
    local f = assert(io.open(dir .. "/gateway.lua", "w"))
    f:write(BASE .. "plugins = " .. plugins .. "\n")
    f:close()
    return config.load(dir .. "/gateway.lua", { plugin_dirs = { "plugins" }, env = function() end,
      compile_expr = function(src) return require("moongate.expr").compile(src) end })
  end

  local function entry(cfg)
    for _, e in ipairs(cfg.plugins) do
      if e.name == "rate_limit" then return e.plugin, e.conf end
    end
  end

  describe("options", function()
    it("refuse negative limits, unknown windows and bad rules at load", function()
      local _, errs = load('{ { name = "rate_limit", rules = { { by = "consumer", requests = -1, window = "1m" } } } }')
      assert.same({ "plugins[1].rules[1].requests: must be >= 0" }, errs)
      _, errs = load('{ { name = "rate_limit", rules = { { by = "consumer", requests = 1, window = "1fortnight" } } } }')
      assert.matches('^plugins%[1%]%.rules%[1%]%.window: invalid duration "1fortnight"', errs[1])
      _, errs = load('{ { name = "rate_limit", rules = { { by = "consumer", requests = 1, window = 0 } } } }')
      assert.same({ "plugins[1].rules[1].window: must be more than 0 seconds" }, errs)
      _, errs = load('{ { name = "rate_limit", rules = { { by = "user", requests = 1, window = "1m" } } } }')
      assert.matches("^plugins%[1%]%.rules%[1%]%.by: must be", errs[1])
      _, errs = load('{ { name = "rate_limit", rules = { { by = "ip", window = "1m" } } } }')
      assert.same({ "plugins[1].rules[1]: needs requests or tokens" }, errs)
      _, errs = load('{ { name = "rate_limit", rules = { { by = "ip", requests = 1, tokens = 2, window = "1m" } } } }')
      assert.same({ "plugins[1].rules[1]: takes requests or tokens, not both (make two rules)" }, errs)
      _, errs = load('{ { name = "rate_limit", rules = { { by = "ip", requests = 1, window = "1m", count = "prompt" } } } }')
      assert.same({ "plugins[1].rules[1].count: only for tokens rules" }, errs)
      _, errs = load('{ { name = "rate_limit", rules = { { by = "ip", tokens = 1, window = "1m", count = "both" } } } }')
      assert.matches("^plugins%[1%]%.rules%[1%]%.count: must be one of", errs[1])
      _, errs = load('{ { name = "rate_limit", rules = { { by = "ip", requests = 1, window = "1m", burst = -2 } } } }')
      assert.same({ "plugins[1].rules[1].burst: must be >= 0" }, errs)
      _, errs = load('{ { name = "rate_limit", rules = { { by = "ip", requests = 1, window = "1m", name = "a" },'
        .. ' { by = "ip", requests = 2, window = "1m", name = "a" } } } }')
      assert.same({ 'plugins[1].rules[2].name: duplicate rule name "a" (also rules[1])' }, errs)
      _, errs = load('{ { name = "rate_limit", rules = { { by = "ip", requests = 1, window = "1m", when = "request.path ==" } } } }')
      assert.matches("^plugins%[1%]%.rules%[1%]%.when: ", errs[1])
      _, errs = load('{ { name = "rate_limit", rules = {} } }')
      assert.same({ "plugins[1].rules: must have at least 1 item" }, errs)
    end)

    it("name rules rules[N] by default", function()
      local cfg = assert(load('{ { name = "rate_limit", rules = { { by = "ip", requests = 1, window = "1m" },'
        .. ' { by = "ip", requests = 1, window = "1m", name = "mine" } } } }'))
      local _, conf = entry(cfg)
      assert.equal("rules[1]", conf.rules[1].name)
      assert.equal("mine", conf.rules[2].name)
      assert.equal(60, conf.rules[1].window)
    end)
  end)

  describe("counting", function()
    local plugin, conf, cfg

    local function ctx_for(consumer, team, extra)
      local body = (extra and extra.body) or '{"model":"m","max_tokens":40,"messages":[]}'
      local ctx = {
        config = cfg, vars = {}, format = "openai", route = cfg.routes[1], backend = cfg.backends.main,
        consumer = consumer and { name = consumer, team = team } or nil,
        request = { method = "POST", path = "/v1/chat/completions", headers = (extra and extra.headers) or {},
                    model = "m", remote = "10.0.0.1", body = body, json = cjson.decode(body) },
      }
      return ctx
    end

    local function run(ctx)
      local rv = plugin.on_request(ctx, conf)
      if rv then return rv end
      ctx.target = { model = "m" }
      ctx.response = { status = 200, headers = {} }
      plugin.on_response(ctx, conf)
      plugin.on_log(ctx, conf)
      return nil, ctx
    end

    it("refuses a consumer's 4th request with Retry-After and x-ratelimit-*, not another consumer's", function()
      cfg = assert(load('{ { name = "rate_limit", rules = { { by = "consumer", requests = 3, window = "10s" } } } }'))
      plugin, conf = entry(cfg)
      local remaining = {}
      for i = 1, 3 do
        local rv, ctx = run(ctx_for("alice"))
        assert.is_nil(rv)
        remaining[i] = ctx.response.headers["x-ratelimit-remaining-requests"]
        assert.equal("3", ctx.response.headers["x-ratelimit-limit-requests"])
      end
      assert.same({ "2", "1", "0" }, remaining)
      local rv = run(ctx_for("alice"))
      assert.equal(429, rv.status)
      local h = rv.headers
      assert.truthy(tonumber(h["retry-after"]) >= 1)
      assert.equal("3", h["x-ratelimit-limit-requests"])
      assert.equal("0", h["x-ratelimit-remaining-requests"])
      assert.matches("^[%d.]+[ms]*s$", h["x-ratelimit-reset-requests"])
      assert.equal("rate_limit_exceeded", cjson.decode(rv.body).error.code)
      assert.is_nil(run(ctx_for("bob")))
      assert.is_nil(run(ctx_for(nil)))     -- no consumer: not counted by a consumer rule
      now = now + 20
      assert.is_nil(run(ctx_for("alice")))
    end)

    it("undoes the reservations of earlier rules when a later one refuses", function()
      cfg = assert(load('{ { name = "rate_limit", rules = { { by = "consumer", requests = 10, window = "10s" },'
        .. ' { by = "team", requests = 1, window = "10s" } } } }'))
      plugin, conf = entry(cfg)
      assert.is_nil(run(ctx_for("alice", "search")))
      for _ = 1, 5 do assert.equal(429, run(ctx_for("alice", "search")).status) end
      -- only the admitted request counted against alice's rule
      local limiter = require("moongate.limiter")
      local r = conf.rules[1]
      local st = limiter.new(gw.shared, gw.now):peek(limiter.rule_key("global", r, "alice"), 10, 10, 0)
      assert.equal(1, st.used)
    end)

    it("counts tokens: reserves an estimate, then the real usage", function()
      cfg = assert(load('{ { name = "rate_limit", rules = { { by = "team", tokens = 100, window = "1m" } } } }'))
      plugin, conf = entry(cfg)
      local ctx = ctx_for("alice", "search")
      assert.is_nil(plugin.on_request(ctx, conf))
      -- the estimate: body bytes / 4 + max_tokens 40
      local est = math.ceil(#ctx.request.body / 4) + 40
      assert.equal(tostring(100 - est), ctx.vars.rate_limit.tokens.remaining .. "")
      ctx.target, ctx.response = { model = "m" }, { status = 200, headers = {} }
      ctx.usage = { prompt_tokens = 10, completion_tokens = 20, cached_tokens = 0 }
      plugin.on_response(ctx, conf)
      assert.equal("100", ctx.response.headers["x-ratelimit-limit-tokens"])
      plugin.on_log(ctx, conf)
      -- 30 used: two more requests are admitted (30 and 30 + est are below 100)...
      local c2 = ctx_for("alice", "search")
      assert.is_nil(plugin.on_request(c2, conf))
      local c3 = ctx_for("alice", "search")
      assert.is_nil(plugin.on_request(c3, conf))
      -- ...and with both estimates in flight the next one is refused
      local rv = plugin.on_request(ctx_for("alice", "search"), conf)
      assert.equal(429, rv.status)
      assert.equal("100", rv.headers["x-ratelimit-limit-tokens"])
      assert.truthy(rv.headers["retry-after"])
      -- a request that never reached a provider used nothing
      plugin.on_log(c2, conf)
      plugin.on_log(c3, conf)
      assert.is_nil(plugin.on_request(ctx_for("alice", "search"), conf))
    end)

    it("counts only prompt or completion tokens when asked", function()
      cfg = assert(load('{ { name = "rate_limit", rules = { { by = "consumer", tokens = 50, window = "1m", count = "completion" } } } }'))
      plugin, conf = entry(cfg)
      local ctx = ctx_for("alice")
      plugin.on_request(ctx, conf)
      assert.equal(10, ctx.vars.rate_limit.tokens.remaining)   -- 50 - max_tokens 40
    end)

    it("counts by ip, header, model and route, and only when `when` holds", function()
      cfg = assert(load([[{ { name = "rate_limit", rules = {
          { by = "ip", requests = 1, window = "1m", name = "ip" },
          { by = "header:X-User", requests = 1, window = "1m", name = "user" },
          { by = "consumer", requests = 1, window = "1m", name = "quality",
            when = "request.headers['x-tier'] == 'quality'" },
          { by = "model", requests = 100, window = "1m" },
          { by = "route", requests = 100, window = "1m", when = function(ctx) return ctx.request.stream end } } } }]]))
      plugin, conf = entry(cfg)
      local function req(ip, user, tier)
        local c = ctx_for("alice", nil, { headers = { ["x-user"] = user, ["x-tier"] = tier } })
        c.request.remote = ip
        return run(c)
      end
      assert.is_nil(req("10.0.0.1", nil, nil))
      local rv = req("10.0.0.1", nil, nil)
      assert.equal(429, rv.status)
      assert.matches("rule ip", cjson.decode(rv.body).error.message)
      assert.is_nil(req("10.0.0.2", "u1", nil))
      assert.matches("rule user", cjson.decode(req("10.0.0.3", "u1", nil).body).error.message)
      assert.is_nil(req("10.0.0.4", "u2", "quality"))
      assert.matches("rule quality", cjson.decode(req("10.0.0.5", "u3", "quality").body).error.message)
      assert.is_nil(req("10.0.0.6", "u4", "cheap"))
    end)

    it("keeps a route's own rules apart from the global ones", function()
      cfg = assert(load('{ { name = "rate_limit", rules = { { by = "consumer", requests = 1, window = "1m" } } } }\n' ..
        'routes[1].plugins = { { name = "rate_limit", rules = { { by = "consumer", requests = 1, window = "1m" } } } }'))
      local rp = cfg.routes[1].plugins[1]
      plugin = rp.plugin
      local global
      for _, e in ipairs(cfg.plugins) do if e.name == "rate_limit" then global = e.conf end end
      conf = global
      assert.is_nil(run(ctx_for("alice")))
      conf = rp.conf
      assert.is_nil(run(ctx_for("alice")))   -- its own counter
      assert.equal(429, run(ctx_for("alice")).status)
    end)
  end)
end)
