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
                                                      model_end = at + #'"client-model"' - 1,
                                                      model_body = body } })
      run(ctx)
      assert.equal('{ "model" : "m" , "n":12345678901234567890}', ctx.upstream.body)
    end)

    it("scans again when an on_request plugin replaced ctx.request.body", function()
      local scanned = '{"model":"client-model","messages":[]}'
      local edited = '{"messages":[{"role":"system","content":"be brief"}],"model":"client-model"}'
      local ctx = make_ctx({ body = edited, request = { model = "client-model", model_at = 10, model_end = 23,
                                                        model_body = scanned } })
      run(ctx)
      assert.equal('{"messages":[{"role":"system","content":"be brief"}],"model":"m"}', ctx.upstream.body)
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
      local ctx = make_ctx({ provider = { type = "carrier-pigeon", wire = "pigeon" } })
      local r = run(ctx)
      assert.equal(gw.RESPOND_MT, getmetatable(r))
      assert.equal(501, r.status)
      assert.equal("unsupported_provider", cjson.decode(r.body).error.code)
      assert.is_nil(ctx.upstream.url)
    end)

    it("answers 501 in the Anthropic format for an Anthropic client", function()
      local ctx = make_ctx({ provider = { type = "carrier-pigeon", wire = "pigeon" } })
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

  -- ====================== the providers issue ======================

  local function chat_ctx(over, body)
    body = body or '{"model":"client-model","messages":[{"role":"user","content":"hi"}]}'
    over = over or {}
    over.body = body
    local ctx = make_ctx(over)
    ctx.request.headers = over.headers or {}
    ctx.request.is_json = true
    ctx.format = ctx.upstream.path:sub(1, 12) == "/v1/messages" and "anthropic" or "openai"
    return ctx
  end

  describe("openai wire", function()
    local STREAM = '{"model":"client-model","stream":true,"messages":[{"role":"user","content":"hi"}],"n":12345678901234567890}'

    it("asks a stream for usage by splicing stream_options, every other byte kept", function()
      local ctx = chat_ctx({ request = { stream = true } }, STREAM)
      assert.is_nil(run(ctx))
      assert.equal('{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}],' ..
        '"n":12345678901234567890,"stream_options":{"include_usage":true}}', ctx.upstream.body)
      local d = ctx.upstream.decoder
      assert.is_table(d)
      assert.is_true(d.drop_usage_chunk)
      assert.is_false(d.wants_usage)
    end)

    it("leaves a stream that asked for usage alone, and keeps its usage chunk", function()
      local body = '{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}'
      local ctx = chat_ctx({ request = { stream = true, model = "m" } }, body)
      run(ctx)
      assert.equal(body, ctx.upstream.body)
      assert.is_true(ctx.upstream.decoder.wants_usage)
      assert.is_false(ctx.upstream.decoder.drop_usage_chunk)
    end)

    it("does not splice for a vendor whose quirk says so (mistral)", function()
      local ctx = chat_ctx({ provider = { type = "mistral" }, request = { stream = true } }, STREAM)
      run(ctx)
      assert.is_nil(ctx.upstream.body:find("stream_options", 1, true))
    end)

    it("sets a same-format decoder on chat, completions and embeddings, none on other paths", function()
      for path, want in pairs({ ["/v1/chat/completions"] = true, ["/v1/completions"] = true,
                                ["/v1/embeddings"] = true, ["/v1/files"] = false }) do
        local ctx = chat_ctx({ upstream = { path = path } })
        run(ctx)
        assert.equal(want, ctx.upstream.decoder ~= nil, path)
      end
      local ctx = chat_ctx({ upstream = { path = "/v1/models", method = "GET" } })
      ctx.request.is_json = false
      run(ctx)
      assert.is_nil(ctx.upstream.decoder)
    end)

    it("answers the Anthropic SDK's model list in Anthropic's shape", function()
      local ctx = chat_ctx({ upstream = { path = "/v1/models", method = "GET" },
        headers = { ["anthropic-version"] = "2023-06-01" } })
      run(ctx)
      assert.equal("anthropic", ctx.upstream.decoder.models_style)
    end)

    it("translates an Anthropic client's request to chat completions", function()
      local ctx = chat_ctx({ upstream = { path = "/v1/messages" }, request = { stream = true } },
        '{"model":"claude","max_tokens":64,"stream":true,"system":"Be brief.","messages":[{"role":"user","content":"hi"}]}')
      assert.is_nil(run(ctx))
      assert.equal("http://h:1/v1/chat/completions", ctx.upstream.url)
      assert.equal('{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}],' ..
        '"max_completion_tokens":64,"stream":true,"stream_options":{"include_usage":true}}', ctx.upstream.body)
      assert.equal("Bearer k", ctx.upstream.headers.authorization)
      assert.equal("anthropic", ctx.upstream.decoder.client)
      assert.equal("openai", ctx.upstream.decoder.wire)
    end)

    it("uses max_completion_tokens for OpenAI itself", function()
      local ctx = chat_ctx({ upstream = { path = "/v1/messages" } },
        '{"model":"claude","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}')
      run(ctx)
      assert.equal(64, cjson.decode(ctx.upstream.body).max_completion_tokens)
      ctx = chat_ctx({ provider = { type = "vllm" }, upstream = { path = "/v1/messages" } },
        '{"model":"claude","max_tokens":64,"top_k":5,"messages":[{"role":"user","content":"hi"}]}')
      run(ctx)
      local doc = cjson.decode(ctx.upstream.body)
      assert.equal(64, doc.max_tokens)
      assert.equal(5, doc.top_k)
    end)

    it("answers count_tokens itself with an estimate", function()
      local ctx = chat_ctx({ upstream = { path = "/v1/messages/count_tokens" } },
        '{"model":"claude","messages":[{"role":"user","content":"twelve chars"}]}')
      local r = run(ctx)
      assert.equal(200, r.status)
      assert.equal('{"input_tokens":3}', r.body)
    end)
  end)

  describe("azure", function()
    local function azure(over, body)
      over = over or {}
      over.provider = { type = "azure", wire = "openai", base_url = "https://res.openai.azure.com",
        api_version = "2024-10-21", api_key = "az-key" }
      return chat_ctx(over, body)
    end

    it("sends to the deployment named by the target's model, with api-key and api-version", function()
      local ctx = azure({ target = { model = "gpt4o-prod" } })
      assert.is_nil(run(ctx))
      assert.equal("https://res.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
        ctx.upstream.url)
      assert.equal("az-key", ctx.upstream.headers["api-key"])
      assert.is_nil(ctx.upstream.headers.authorization)
    end)

    it("builds the embeddings, completions and models URLs", function()
      local ctx = azure({ target = { model = "emb" }, upstream = { path = "/v1/embeddings" } })
      run(ctx)
      assert.equal("https://res.openai.azure.com/openai/deployments/emb/embeddings?api-version=2024-10-21", ctx.upstream.url)
      ctx = azure({ upstream = { path = "/v1/models", method = "GET" } })
      run(ctx)
      assert.equal("https://res.openai.azure.com/openai/models?api-version=2024-10-21", ctx.upstream.url)
    end)

    it("takes an Anthropic client too", function()
      local ctx = azure({ target = { model = "dep" }, upstream = { path = "/v1/messages" } },
        '{"model":"claude","max_tokens":9,"messages":[{"role":"user","content":"hi"}]}')
      run(ctx)
      assert.equal("https://res.openai.azure.com/openai/deployments/dep/chat/completions?api-version=2024-10-21",
        ctx.upstream.url)
      assert.equal(9, cjson.decode(ctx.upstream.body).max_tokens)
    end)
  end)

  describe("anthropic wire", function()
    local function anth(over, body)
      over = over or {}
      over.provider = { type = "anthropic", wire = "anthropic", base_url = "https://api.anthropic.com",
        api_key = "sk-ant", drop_unsupported = over.drop }
      return chat_ctx(over, body)
    end

    it("translates an OpenAI chat request to the Messages API", function()
      local ctx = anth({ target = { model = "claude-3-5-haiku-latest" } },
        '{"model":"gpt-4o","temperature":0.2,"messages":[{"role":"system","content":"S"},{"role":"user","content":"hi"}]}')
      assert.is_nil(run(ctx))
      assert.equal("https://api.anthropic.com/v1/messages", ctx.upstream.url)
      assert.equal("sk-ant", ctx.upstream.headers["x-api-key"])
      assert.equal("2023-06-01", ctx.upstream.headers["anthropic-version"])
      assert.is_nil(ctx.upstream.headers.authorization)
      assert.equal('{"model":"claude-3-5-haiku-latest","max_tokens":4096,"system":"S","messages":' ..
        '[{"role":"user","content":[{"type":"text","text":"hi"}]}],"temperature":0.2}', ctx.upstream.body)
      local d = ctx.upstream.decoder
      assert.equal("openai", d.client)
      assert.equal("anthropic", d.wire)
    end)

    it("refuses a field it cannot honour with a 400 naming it, unless drop_unsupported", function()
      local body = '{"model":"gpt-4o","n":3,"messages":[{"role":"user","content":"hi"}]}'
      local r = run(anth({}, body))
      assert.equal(400, r.status)
      local e = cjson.decode(r.body).error
      assert.matches("^n: ", e.message)
      assert.equal("unsupported_parameter", e.code)
      local ctx = anth({ drop = true }, body)
      assert.is_nil(run(ctx))
      assert.is_nil(cjson.decode(ctx.upstream.body).n)
    end)

    it("answers embeddings and completions with a 400 saying the provider has none", function()
      local r = run(anth({ upstream = { path = "/v1/embeddings" } }, '{"model":"x","input":"hi"}'))
      assert.equal(400, r.status)
      assert.matches("has no embeddings", cjson.decode(r.body).error.message)
      r = run(anth({ upstream = { path = "/v1/completions" } }, '{"model":"x","prompt":"hi"}'))
      assert.equal(400, r.status)
    end)

    it("sends an Anthropic client's request byte for byte but the model, keeping its version header", function()
      local body = '{"model":"claude","max_tokens":10,"n":12345678901234567890,"messages":[{"role":"user","content":"hi"}]}'
      local ctx = anth({ upstream = { path = "/v1/messages" }, headers = { ["anthropic-version"] = "2023-01-01" },
        request = { model = "claude" } }, body)
      assert.is_nil(run(ctx))
      assert.equal((body:gsub('"claude"', '"m"')), ctx.upstream.body)
      assert.is_nil(ctx.upstream.headers["anthropic-version"])   -- the client's goes through
      assert.equal("https://api.anthropic.com/v1/messages", ctx.upstream.url)
      assert.equal("anthropic", ctx.upstream.decoder.client)
      assert.equal("anthropic", ctx.upstream.decoder.wire)
    end)

    it("forwards count_tokens to Anthropic", function()
      local ctx = anth({ upstream = { path = "/v1/messages/count_tokens" } },
        '{"model":"c","messages":[{"role":"user","content":"hi"}]}')
      assert.is_nil(run(ctx))
      assert.equal("https://api.anthropic.com/v1/messages/count_tokens", ctx.upstream.url)
    end)

    it("lists models for the OpenAI SDK in OpenAI's shape", function()
      local ctx = anth({ upstream = { path = "/v1/models", method = "GET" } })
      run(ctx)
      assert.equal("https://api.anthropic.com/v1/models", ctx.upstream.url)
      assert.equal("openai", ctx.upstream.decoder.models_style)
    end)

    it("answers a body that is not a JSON object with a 400", function()
      local ctx = anth({}, '[1,2]')
      local r = run(ctx)
      assert.equal(400, r.status)
    end)
  end)

  describe("gemini wire", function()
    local function gem(over, body)
      over = over or {}
      over.provider = { type = "gemini", wire = "gemini", base_url = "https://generativelanguage.googleapis.com",
        api_key = "g-key" }
      return chat_ctx(over, body)
    end

    it("sends to generateContent with x-goog-api-key", function()
      local ctx = gem({ target = { model = "gemini-2.0-flash" } })
      assert.is_nil(run(ctx))
      assert.equal("https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent",
        ctx.upstream.url)
      assert.equal("g-key", ctx.upstream.headers["x-goog-api-key"])
      assert.equal('{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}', ctx.upstream.body)
    end)

    it("streams from streamGenerateContent?alt=sse", function()
      local ctx = gem({ target = { model = "gemini-2.0-flash" }, request = { stream = true } },
        '{"model":"x","stream":true,"messages":[{"role":"user","content":"hi"}]}')
      run(ctx)
      assert.equal("https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
        ctx.upstream.url)
      assert.is_true(ctx.upstream.decoder.stream)
    end)

    it("takes an Anthropic client through the hub", function()
      local ctx = gem({ target = { model = "gemini-2.0-flash" }, upstream = { path = "/v1/messages" } },
        '{"model":"claude","max_tokens":100,"system":"S","messages":[{"role":"user","content":"hi"}]}')
      assert.is_nil(run(ctx))
      local doc = cjson.decode(ctx.upstream.body)
      assert.equal("S", doc.systemInstruction.parts[1].text)
      assert.equal(100, doc.generationConfig.maxOutputTokens)
      assert.equal("anthropic", ctx.upstream.decoder.client)
    end)

    it("embeds with batchEmbedContents", function()
      local ctx = gem({ target = { model = "text-embedding-004" }, upstream = { path = "/v1/embeddings" } },
        '{"model":"x","input":"hi","encoding_format":"base64"}')
      run(ctx)
      assert.equal("https://generativelanguage.googleapis.com/v1beta/models/text-embedding-004:batchEmbedContents",
        ctx.upstream.url)
      assert.is_true(ctx.upstream.decoder.embeddings_base64)
    end)

    it("keeps a base_url that already names the API version, and uses the client's model with model = false", function()
      local ctx = gem({ target = { model = false }, request = { model = "gemini-pro" } })
      ctx.provider.base_url = "http://127.0.0.1:9/v1beta/"
      run(ctx)
      assert.equal("http://127.0.0.1:9/v1beta/models/gemini-pro:generateContent", ctx.upstream.url)
    end)

    it("answers count_tokens itself", function()
      local r = run(gem({ upstream = { path = "/v1/messages/count_tokens" } },
        '{"model":"c","system":"12345678","messages":[{"role":"user","content":"1234"}]}'))
      assert.equal('{"input_tokens":3}', r.body)
    end)
  end)

  describe("mock wire", function()
    it("asks the mock for stream usage and reads it in the client's format", function()
      local ctx = chat_ctx({ provider = { type = "mock", wire = "mock" }, request = { stream = true } },
        '{"model":"x","stream":true,"messages":[]}')
      run(ctx)
      assert.equal('{"model":"m","stream":true,"messages":[],"stream_options":{"include_usage":true}}', ctx.upstream.body)
      assert.equal("openai", ctx.upstream.decoder.wire)
      ctx = chat_ctx({ provider = { type = "mock", wire = "mock" }, upstream = { path = "/v1/messages" } },
        '{"model":"x","max_tokens":5,"messages":[]}')
      run(ctx)
      assert.equal("anthropic", ctx.upstream.decoder.wire)
      assert.equal("anthropic", ctx.upstream.decoder.client)
    end)
  end)
end)
