-- plugins/router.lua: on_route chooses ctx.route and ctx.backend (SPEC §2 routes).
local router = require("router")

local BACKENDS = {
  chat = { name = "chat" }, fast = { name = "fast" }, quality = { name = "quality" },
  b2 = { name = "b2" }, other = { name = "other" },
}

local function request(over)
  local r = { method = "POST", path = "/v1/chat/completions", headers = {}, model = "gpt-4o", query = nil }
  for k, v in pairs(over or {}) do r[k] = v end
  return r
end

-- route(routes, request fields) -> ctx after on_route
local function route(routes, over)
  local ctx = { config = { routes = routes, backends = BACKENDS }, request = request(over) }
  router.on_route(ctx, {})
  return ctx
end

local chosen
local function pair(routes, over)
  local r, b = chosen(routes, over)
  return { r, b }
end

function chosen(routes, over)
  local ctx = route(routes, over)
  return ctx.route and ctx.route.name, ctx.backend and ctx.backend.name, ctx
end

describe("router", function()
  it("is a plugin with a name, a priority and on_route", function()
    assert.equal("router", router.name)
    assert.is_number(router.priority)
    assert.is_function(router.on_route)
  end)

  it("takes the first matching route", function()
    local routes = {
      { name = "r1", match = { path = "/nope" }, backend = "other" },
      { name = "r2", match = { path_prefix = "/v1" }, backend = "chat" },
      { name = "r3", match = { path_prefix = "/v1" }, backend = "fast" },
    }
    local r, b = chosen(routes)
    assert.equal("r2", r)
    assert.equal("chat", b)
  end)

  it("matches a route without match keys (or an empty match) for everything", function()
    assert.equal("any", (chosen({ { name = "any", backend = "chat" } }, { path = "/whatever" })))
    assert.equal("any", (chosen({ { name = "any", match = {}, backend = "chat" } }, { method = "GET" })))
  end)

  it("matches path exactly", function()
    local routes = { { name = "p", match = { path = "/v1/chat/completions" }, backend = "chat" } }
    assert.equal("p", (chosen(routes)))
    assert.is_nil((chosen(routes, { path = "/v1/chat/completions/" })))
    assert.is_nil((chosen(routes, { path = "/v1/chat" })))
    assert.is_nil((chosen(routes, { path = "/V1/chat/completions" })))
  end)

  it("matches path_prefix", function()
    local routes = { { name = "p", match = { path_prefix = "/v1/" }, backend = "chat" } }
    assert.equal("p", (chosen(routes, { path = "/v1/embeddings" })))
    assert.equal("p", (chosen(routes, { path = "/v1/" })))
    assert.is_nil((chosen(routes, { path = "/v1" })))
    assert.is_nil((chosen(routes, { path = "/v2/x" })))
    assert.is_nil((chosen(routes, { path = "/x/v1/" })))
  end)

  it("treats pattern characters in path_prefix literally", function()
    local routes = { { name = "p", match = { path_prefix = "/a.b%" }, backend = "chat" } }
    assert.equal("p", (chosen(routes, { path = "/a.b%/c" })))
    assert.is_nil((chosen(routes, { path = "/axb%/c" })))
  end)

  it("matches a method list", function()
    local routes = { { name = "m", match = { method = { "GET", "POST" } }, backend = "chat" } }
    assert.equal("m", (chosen(routes, { method = "POST" })))
    assert.equal("m", (chosen(routes, { method = "GET" })))
    assert.is_nil((chosen(routes, { method = "DELETE" })))
    local only_post = { { name = "m", match = { method = { "POST" } }, backend = "chat" } }
    assert.is_nil((chosen(only_post, { method = "GET" })))
  end)

  it("matches headers exactly, every one listed", function()
    local routes = { { name = "h", match = { headers = { ["x-model-tier"] = "fast", ["x-team"] = "a" } },
                       backend = "fast" } }
    assert.equal("h", (chosen(routes, { headers = { ["x-model-tier"] = "fast", ["x-team"] = "a", other = "1" } })))
    assert.is_nil((chosen(routes, { headers = { ["x-model-tier"] = "fast" } })))
    assert.is_nil((chosen(routes, { headers = { ["x-model-tier"] = "quality", ["x-team"] = "a" } })))
    assert.is_nil((chosen(routes, { headers = { ["x-model-tier"] = "FAST", ["x-team"] = "a" } })))
    assert.is_nil((chosen(routes, { headers = {} })))
  end)

  it("matches a model list", function()
    local routes = { { name = "mo", match = { model = { "gpt-4o", "gpt-4o-mini" } }, backend = "chat" } }
    assert.equal("mo", (chosen(routes, { model = "gpt-4o" })))
    assert.equal("mo", (chosen(routes, { model = "gpt-4o-mini" })))
    assert.is_nil((chosen(routes, { model = "gpt-4" })))
  end)

  it("does not match a model route when the request has no model", function()
    local routes = {
      { name = "mo", match = { model = { "gpt-4o" } }, backend = "chat" },
      { name = "rest", backend = "other" },
    }
    assert.equal("rest", (chosen(routes, { model = false })))
    local ctx = { config = { routes = routes, backends = BACKENDS }, request = request() }
    ctx.request.model = nil
    router.on_route(ctx, {})
    assert.equal("rest", ctx.route.name)
  end)

  it("matches a when function, called with ctx", function()
    local got
    local routes = {
      { name = "w", match = { when = function(ctx) got = ctx return ctx.request.headers["x-beta"] == "1" end },
        backend = "chat" },
      { name = "rest", backend = "other" },
    }
    local r, _, ctx = chosen(routes, { headers = { ["x-beta"] = "1" } })
    assert.equal("w", r)
    assert.equal(ctx, got)
    assert.equal("rest", (chosen(routes, { headers = {} })))
  end)

  -- SPEC §4: `when` takes an expression string or a Lua function; the config
  -- keeps the source text and the router compiles it once.
  it("matches a string `when` expression over request and consumer", function()
    local routes = {
      { name = "e", match = { when = "request.headers['x-tier'] == 'q' && request.model.startsWith('gpt')" },
        backend = "quality" },
      { name = "c", match = { when = "consumer.team == 'search'" }, backend = "b2" },
      { name = "rest", backend = "other" },
    }
    assert.equal("e", (chosen(routes, { headers = { ["x-tier"] = "q" } })))
    assert.equal("rest", (chosen(routes, { headers = { ["x-tier"] = "q" }, model = "claude" })))
    local ctx = { config = { routes = routes, backends = BACKENDS }, request = request(),
                  consumer = { name = "alice", team = "search" } }
    router.on_route(ctx, {})
    assert.equal("c", ctx.route.name)
  end)

  it("needs every match key to hold", function()
    local routes = {
      { name = "all", match = { path = "/v1/chat/completions", method = { "POST" },
          headers = { ["x-model-tier"] = "quality" }, model = { "gpt-4o" },
          when = function(ctx) return ctx.request.query == "beta=1" end },
        backend = "quality" },
      { name = "rest", backend = "other" },
    }
    local ok = { headers = { ["x-model-tier"] = "quality" }, query = "beta=1" }
    assert.equal("all", (chosen(routes, ok)))
    local function with(k, v)
      local o = { headers = ok.headers, query = ok.query }
      o[k] = v
      return o
    end
    assert.equal("rest", (chosen(routes, with("path", "/v1/completions"))))
    assert.equal("rest", (chosen(routes, with("method", "GET"))))
    assert.equal("rest", (chosen(routes, with("headers", { ["x-model-tier"] = "fast" }))))
    assert.equal("rest", (chosen(routes, with("model", "gpt-4o-mini"))))
    assert.equal("rest", (chosen(routes, with("query", "beta=0"))))
  end)

  it("rewrites the path only for the matched route", function()
    local routes = {
      { name = "alias", match = { path_prefix = "/openai" }, rewrite = "/v1/chat/completions", backend = "chat" },
      { name = "other", match = { path_prefix = "/x" }, rewrite = "/never", backend = "other" },
    }
    local r, b, ctx = chosen(routes, { path = "/openai" })
    assert.equal("alias", r)
    assert.equal("chat", b)
    assert.equal("/v1/chat/completions", ctx.request.path)
    local _, _, ctx2 = chosen(routes, { path = "/v1/embeddings" })
    assert.is_nil(ctx2.route)
    assert.equal("/v1/embeddings", ctx2.request.path)
  end)

  it("does not rewrite for a route that matched but had no backend", function()
    local routes = {
      { name = "mapped", match = { path_prefix = "/openai" }, rewrite = "/rewritten",
        model_map = { ["other-model"] = "b2" } },
      { name = "rest", backend = "chat" },
    }
    local r, b, ctx = chosen(routes, { path = "/openai/x", model = "gpt-4o" })
    assert.equal("rest", r)
    assert.equal("chat", b)
    assert.equal("/openai/x", ctx.request.path)
  end)

  it("leaves method, headers and model alone", function()
    local _, _, ctx = chosen({ { name = "a", match = { path_prefix = "/openai" }, rewrite = "/v1/chat/completions",
      backend = "chat" } }, { path = "/openai", headers = { a = "1" }, query = "q=1" })
    assert.equal("POST", ctx.request.method)
    assert.same({ a = "1" }, ctx.request.headers)
    assert.equal("gpt-4o", ctx.request.model)
    assert.equal("q=1", ctx.request.query)
  end)

  it("picks the model_map backend, falling back to backend", function()
    local routes = {
      { name = "mm", match = { path_prefix = "/v1" }, model_map = { ["gpt-4o"] = "b2", ["claude"] = "quality" },
        backend = "chat" },
    }
    assert.same({ "mm", "b2" }, pair(routes, { model = "gpt-4o" }))
    assert.same({ "mm", "quality" }, pair(routes, { model = "claude" }))
    assert.same({ "mm", "chat" }, pair(routes, { model = "gpt-4o-mini" }))
    local ctx = { config = { routes = routes, backends = BACKENDS }, request = request() }
    ctx.request.model = nil
    router.on_route(ctx, {})
    assert.equal("mm", ctx.route.name)
    assert.equal(BACKENDS.chat, ctx.backend)
  end)

  it("skips a model_map route with no mapping for the model and no backend", function()
    local routes = {
      { name = "mm", model_map = { ["gpt-4o"] = "b2" } },
      { name = "rest", backend = "other" },
    }
    assert.same({ "mm", "b2" }, pair(routes, { model = "gpt-4o" }))
    assert.same({ "rest", "other" }, pair(routes, { model = "gpt-4" }))
    local ctx = { config = { routes = { routes[1] }, backends = BACKENDS }, request = request({ model = "x" }) }
    router.on_route(ctx, {})
    assert.is_nil(ctx.route)
    assert.is_nil(ctx.backend)
  end)

  it("leaves ctx.route and ctx.backend nil when nothing matches", function()
    local ctx = route({ { name = "a", match = { path = "/a" }, backend = "chat" } }, { path = "/b" })
    assert.is_nil(ctx.route)
    assert.is_nil(ctx.backend)
    local ctx2 = { config = { backends = BACKENDS }, request = request() }
    router.on_route(ctx2, {})
    assert.is_nil(ctx2.route)
    local ctx3 = route({}, {})
    assert.is_nil(ctx3.route)
  end)

  describe("SPEC §2 example routes", function()
    local routes = {
      { name = "openai-alias", match = { path_prefix = "/openai" }, rewrite = "/v1/chat/completions",
        backend = "chat" },
      { name = "routes[2]", match = { path = "/v1/chat/completions", headers = { ["x-model-tier"] = "fast" } },
        backend = "fast" },
      { name = "routes[3]", match = { path_prefix = "/v1" }, backend = "chat" },
    }

    it("rewrites /openai to /v1/chat/completions on chat", function()
      local r, b, ctx = chosen(routes, { path = "/openai" })
      assert.equal("openai-alias", r)
      assert.equal("chat", b)
      assert.equal("/v1/chat/completions", ctx.request.path)
    end)

    it("sends x-model-tier: fast to the fast backend", function()
      local r, b, ctx = chosen(routes, { headers = { ["x-model-tier"] = "fast" } })
      assert.equal("routes[2]", r)
      assert.equal("fast", b)
      assert.equal("/v1/chat/completions", ctx.request.path)
    end)

    it("sends x-model-tier: quality (and no tier) to chat", function()
      assert.same({ "routes[3]", "chat" }, pair(routes, { headers = { ["x-model-tier"] = "quality" } }))
      assert.same({ "routes[3]", "chat" }, pair(routes, { headers = {} }))
    end)

    it("sends x-model-tier: fast on another /v1 path to chat", function()
      assert.same({ "routes[3]", "chat" },
        pair(routes, { path = "/v1/embeddings", headers = { ["x-model-tier"] = "fast" } }))
    end)

    it("finds no route outside /v1 and /openai", function()
      assert.is_nil((chosen(routes, { path = "/healthz", method = "GET" })))
    end)
  end)

  describe("with x-model-tier routes for fast and quality", function()
    local routes = {
      { name = "fast", match = { headers = { ["x-model-tier"] = "fast" } }, backend = "fast" },
      { name = "quality", match = { headers = { ["x-model-tier"] = "quality" } }, backend = "quality" },
      { name = "default", backend = "chat" },
    }
    it("routes each tier to its backend", function()
      assert.equal("fast", select(2, chosen(routes, { headers = { ["x-model-tier"] = "fast" } })))
      assert.equal("quality", select(2, chosen(routes, { headers = { ["x-model-tier"] = "quality" } })))
      assert.equal("chat", select(2, chosen(routes, { headers = { ["x-model-tier"] = "other" } })))
      assert.equal("chat", select(2, chosen(routes, { headers = {} })))
    end)
  end)
end)
