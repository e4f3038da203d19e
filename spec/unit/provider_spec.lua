-- plugins/provider.lua: on_upstream_request shapes what goes to the provider.
local provider = require("provider")
local gw = require("gw")
local cjson = require("cjson.safe")

local BODY = '{ "model" : "client-model",\n  "seed": 12345678901234567890, "tools": [], "t": 1e400,\n' ..
             '  "messages": [{"role":"user","content":"say \\"model\\": {x}"}] }'

-- ctx(over) -> a ctx as the runtime builds it before on_upstream_request
local function make_ctx(over)
  over = over or {}
  local body = over.body or BODY
  local ctx = {
    provider = { type = "openai", wire = "openai", base_url = "http://h:1/v1", api_key = "k", headers = {} },
    target = { name = "t1", model = "m", headers = {} },
    backend = { timeout = {} },
    request = { json = cjson.decode(body) or false, model = "client-model", stream = false, body = body },
    upstream = { method = "POST", path = "/v1/chat/completions", query = nil, headers = {}, body = body },
    vars = {},
  }
  for _, part in ipairs({ "provider", "target", "backend", "request", "upstream" }) do
    for k, v in pairs(over[part] or {}) do ctx[part][k] = v end
  end
  if over.no_json then ctx.request.json = nil end
  return ctx
end

local function run(ctx)
  return provider.on_upstream_request(ctx, {})
end

describe("provider", function()
  it("is a plugin with a name, a priority and on_upstream_request", function()
    assert.equal("provider", provider.name)
    assert.is_number(provider.priority)
    assert.is_function(provider.on_upstream_request)
  end)

  describe("URL", function()
    local function url(base, path, query)
      local ctx = make_ctx({ provider = { base_url = base }, upstream = { path = path, query = query } })
      assert.is_nil(run(ctx))
      return ctx.upstream.url
    end

    it("does not double /v1 when the base ends in /v1", function()
      assert.equal("http://h:1/v1/chat/completions", url("http://h:1/v1", "/v1/chat/completions"))
      assert.equal("https://api.openai.com/v1/embeddings", url("https://api.openai.com/v1", "/v1/embeddings"))
    end)

    it("appends the path to a base without /v1", function()
      assert.equal("http://h:1/v1/chat/completions", url("http://h:1", "/v1/chat/completions"))
      assert.equal("http://h:1/openai/v1/models", url("http://h:1/openai", "/v1/models"))
    end)

    it("ignores trailing slashes on the base", function()
      assert.equal("http://h:1/v1/chat/completions", url("http://h:1/v1/", "/v1/chat/completions"))
      assert.equal("http://h:1/v1/chat/completions", url("http://h:1//", "/v1/chat/completions"))
    end)

    it("keeps a path that does not start with /v1/ whole", function()
      assert.equal("http://h:1/v1/health", url("http://h:1/v1", "/health"))
      assert.equal("http://h:1/v1/v1beta/x", url("http://h:1/v1", "/v1beta/x"))
    end)

    it("does not strip a base that merely ends in v1", function()
      assert.equal("http://h:1/apiv1/v1/models", url("http://h:1/apiv1", "/v1/models"))
    end)

    it("keeps the query", function()
      assert.equal("http://h:1/v1/models?limit=2&after=a%20b", url("http://h:1/v1", "/v1/models", "limit=2&after=a%20b"))
      assert.equal("http://h:1/v1/models", url("http://h:1/v1", "/v1/models", nil))
    end)
  end)

  describe("headers", function()
    it("sets authorization: Bearer <api_key>", function()
      local ctx = make_ctx()
      run(ctx)
      assert.equal("Bearer k", ctx.upstream.headers["authorization"])
    end)

    it("sets no authorization without an api_key", function()
      local ctx = make_ctx()
      ctx.provider.api_key = nil
      run(ctx)
      assert.is_nil(ctx.upstream.headers["authorization"])
    end)

    it("applies provider then target headers, lower-cased", function()
      local ctx = make_ctx({
        provider = { headers = { ["X-Org"] = "p", ["X-Both"] = "provider", ["OpenAI-Project"] = "proj" } },
        target = { headers = { ["X-Both"] = "target", ["X-Target"] = "t" } },
        upstream = { headers = { ["x-client"] = "c" } },
      })
      run(ctx)
      assert.same({ ["x-org"] = "p", ["x-both"] = "target", ["openai-project"] = "proj", ["x-target"] = "t",
                    ["x-client"] = "c", authorization = "Bearer k" }, ctx.upstream.headers)
    end)

    it("lets the provider's api_key win over a configured authorization header", function()
      local ctx = make_ctx({ provider = { headers = { Authorization = "Basic xyz" } } })
      run(ctx)
      assert.equal("Bearer k", ctx.upstream.headers["authorization"])
      assert.is_nil(ctx.upstream.headers["Authorization"])
    end)

    it("works without provider or target headers", function()
      local ctx = make_ctx()
      ctx.provider.headers, ctx.target.headers = nil, nil
      assert.is_nil(run(ctx))
      assert.equal("Bearer k", ctx.upstream.headers.authorization)
    end)
  end)

  describe("model replacement", function()
    it("replaces the model byte-exactly, leaving every other byte", function()
      local ctx = make_ctx()
      run(ctx)
      local want = BODY:gsub('"client%-model"', '"m"', 1)
      assert.equal(want, ctx.upstream.body)
      assert.truthy(ctx.upstream.body:find("12345678901234567890", 1, true))
      assert.truthy(ctx.upstream.body:find('"tools": []', 1, true))
      assert.truthy(ctx.upstream.body:find('"t": 1e400', 1, true))
      assert.equal(BODY, ctx.request.body)
    end)

    it("quotes a target model with characters JSON escapes", function()
      local ctx = make_ctx({ target = { model = 'org/m"1\\' } })
      run(ctx)
      assert.equal('org/m"1\\', cjson.decode(ctx.upstream.body).model)
    end)

    it("leaves the body alone when the target's model is false", function()
      local ctx = make_ctx({ target = { model = false } })
      run(ctx)
      assert.equal(BODY, ctx.upstream.body)
    end)

    it("leaves the body alone when the client already asked for the target's model", function()
      local ctx = make_ctx({ target = { model = "client-model" } })
      run(ctx)
      assert.equal(BODY, ctx.upstream.body)
    end)

    it("leaves the body alone when the request has no JSON", function()
      local raw = 'not json "model":"client-model"'
      local ctx = make_ctx({ body = raw, no_json = true })
      run(ctx)
      assert.equal(raw, ctx.upstream.body)
    end)

    it("adds the target's model when the JSON has no top-level model, leaving nested ones", function()
      local body = '{"input":"x","extra":{"model":"nested"}}'
      local ctx = make_ctx({ body = body, request = { model = nil } })
      run(ctx)
      assert.equal('{"model":"m","input":"x","extra":{"model":"nested"}}', ctx.upstream.body)
    end)

    it("splices at the position the runtime's scan found, when the body is unchanged", function()
      local body = '{ "model" : "client-model" , "n":12345678901234567890}'
      local at = body:find('"client-model"', 1, true)
      local ctx = make_ctx({ body = body, request = { model = "client-model", model_at = at,
                                                      model_end = at + #'"client-model"' - 1 } })
      run(ctx)
      assert.equal('{ "model" : "m" , "n":12345678901234567890}', ctx.upstream.body)
    end)

    it("falls back to a scan when a plugin changed the body", function()
      local body = '{"model":"client-model"}'
      local ctx = make_ctx({ body = body, request = { model = "client-model", model_at = 10, model_end = 23 } })
      ctx.upstream.body = '{"x":1,"model":"client-model"}'
      run(ctx)
      assert.equal('{"x":1,"model":"m"}', ctx.upstream.body)
    end)

    it("adds the model to an empty object", function()
      local ctx = make_ctx({ body = ' { } ', request = { model = nil } })
      run(ctx)
      assert.equal(' {"model":"m" } ', ctx.upstream.body)
    end)

    it("edits ctx.upstream.body, not the client's request body", function()
      local ctx = make_ctx()
      ctx.upstream.body = '{"model":"client-model","x":1}'
      run(ctx)
      assert.equal('{"model":"m","x":1}', ctx.upstream.body)
      assert.equal(BODY, ctx.request.body)
    end)

    it("replaces the model for the mock wire too", function()
      local ctx = make_ctx({ provider = { type = "mock", wire = "mock" } })
      run(ctx)
      assert.equal("m", cjson.decode(ctx.upstream.body).model)
    end)
  end)

  describe("wires", function()
    it("hands a mock provider to ctx.upstream.mock, without URL or credentials", function()
      local p = { type = "mock", wire = "mock", latency = 0.02, headers = { ["X-M"] = "1" } }
      local ctx = make_ctx()
      ctx.provider = p
      assert.is_nil(run(ctx))
      assert.equal(p, ctx.upstream.mock)
      assert.is_nil(ctx.upstream.url)
      assert.is_nil(ctx.upstream.headers.authorization)
      assert.equal("1", ctx.upstream.headers["x-m"])
    end)

    it("sets no mock for an openai wire", function()
      local ctx = make_ctx()
      run(ctx)
      assert.is_nil(ctx.upstream.mock)
    end)

    it("answers 501 for a wire this build does not speak", function()
      for _, t in ipairs({ "anthropic", "gemini" }) do
        local ctx = make_ctx({ provider = { type = t, wire = t, base_url = "https://api.anthropic.com" } })
        local r = run(ctx)
        assert.is_table(r)
        assert.equal(gw.RESPOND_MT, getmetatable(r))
        assert.equal(501, r.status)
        local body = cjson.decode(r.body)
        assert.equal("unsupported_provider", body.error.code)
        assert.matches(t, body.error.message)
        assert.is_nil(ctx.upstream.url)
      end
    end)

    it("answers 501 in the Anthropic format for an Anthropic client", function()
      local ctx = make_ctx({ provider = { type = "anthropic", wire = "anthropic" } })
      ctx.format = "anthropic"
      local r = run(ctx)
      assert.equal(501, r.status)
      assert.equal("error", cjson.decode(r.body).type)
    end)

    it("answers 502 naming the target when there is no provider", function()
      local ctx = make_ctx()
      ctx.provider = nil
      local r = run(ctx)
      assert.equal(gw.RESPOND_MT, getmetatable(r))
      assert.equal(502, r.status)
      assert.matches("t1", cjson.decode(r.body).error.message)
    end)
  end)

  describe("TLS options", function()
    it("passes ca_file and insecure through", function()
      local ctx = make_ctx({ provider = { ca_file = "/etc/ca.pem", insecure = true } })
      run(ctx)
      assert.equal("/etc/ca.pem", ctx.upstream.ca_file)
      assert.is_true(ctx.upstream.insecure)
    end)
  end)

  describe("timeouts", function()
    it("gives a non-stream request a total timeout, 600s by default", function()
      local ctx = make_ctx()
      run(ctx)
      assert.equal(600, ctx.upstream.timeout)
      assert.equal(10, ctx.upstream.connect_timeout)
    end)

    it("gives a stream no total timeout", function()
      local ctx = make_ctx({ request = { stream = true }, backend = { timeout = { per_try = 30 } } })
      run(ctx)
      assert.is_nil(ctx.upstream.timeout)
      assert.equal(10, ctx.upstream.connect_timeout)
    end)

    it("takes the backend's per_try", function()
      local ctx = make_ctx({ backend = { timeout = { per_try = 30 } } })
      run(ctx)
      assert.equal(30, ctx.upstream.timeout)
    end)

    it("prefers the target's timeout, then the provider's, over the backend's", function()
      local ctx = make_ctx({ backend = { timeout = { per_try = 30 } }, provider = { timeout = 20 } })
      run(ctx)
      assert.equal(20, ctx.upstream.timeout)
      local ctx2 = make_ctx({ backend = { timeout = { per_try = 30 } }, provider = { timeout = 20 },
                              target = { timeout = 5 } })
      run(ctx2)
      assert.equal(5, ctx2.upstream.timeout)
    end)

    it("caps the connect timeout at a shorter per-try timeout", function()
      local ctx = make_ctx({ backend = { timeout = { per_try = 2.5 } } })
      run(ctx)
      assert.equal(2.5, ctx.upstream.connect_timeout)
      assert.equal(2.5, ctx.upstream.timeout)
    end)

    it("works when the backend has no timeout table", function()
      local ctx = make_ctx()
      ctx.backend.timeout = nil
      assert.is_nil(run(ctx))
      assert.equal(600, ctx.upstream.timeout)
    end)
  end)
end)
