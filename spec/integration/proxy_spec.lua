-- The gateway as a plain proxy in front of one OpenAI-type provider (the
-- fake upstream): what the client gets back, what the provider receives,
-- byte-exact bodies, keep-alive, pipelining and chunked request bodies.

local helpers = require "spec.support.helpers"

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}" }
access_log = "stdout"
shutdown_timeout = "10s"

providers = {
  fake = { type = "openai", base_url = "${UP}/v1", api_key = "sk-provider-secret",
           headers = { ["X-Provider-Header"] = "from-provider" } },
}

backends = {
  main = { provider = "fake", model = "gpt-4o-mini",
           headers = { ["x-target-header"] = "from-target" } },
  keep = { provider = "fake", model = false },
}

routes = {
  { match = { path_prefix = "/v1", headers = { ["x-route"] = "keep" } }, backend = "keep" },
  { match = { path_prefix = "/v1" }, backend = "main" },
}
]]

local CHAT = '{"model":"client-model","messages":[{"role":"user","content":"hi"}]}'

local function chat(port, extra)
  extra = extra or {}
  local headers = { ["Content-Type"] = "application/json" }
  for k, v in pairs(extra.headers or {}) do headers[k] = v end
  return helpers.http(port, {
    method = "POST", path = extra.path or "/v1/chat/completions",
    headers = headers, body = extra.body or CHAT, conn = extra.conn,
    keepalive = extra.keepalive,
  })
end

describe("proxy", function()
  local up, gw

  lazy_setup(function()
    up = helpers.start_fake_upstream()
    gw = helpers.start_gateway(CONFIG, { vars = { UP = up.url } })
  end)

  lazy_teardown(function()
    helpers.stop_and_check(gw)
  end)

  before_each(function()
    up:reset()
  end)

  it("answers a chat completion with the provider's body and the gateway's headers", function()
    local res = chat(gw.port)
    assert.equal(200, res.status)
    local body = helpers.json(res)
    assert.equal("chat.completion", body.object)
    assert.equal("fake reply", body.choices[1].message.content)
    assert.equal("gpt-4o-mini", body.model)
    assert.same({ prompt_tokens = 3, completion_tokens = 2, total_tokens = 5 }, body.usage)
    assert.matches("application/json", res.headers["content-type"], 1, true)
    assert.equal("fake/gpt-4o-mini", res.headers["x-moongate-target"])
    assert.equal("1", res.headers["x-moongate-attempts"])
    local id = res.headers["x-request-id"]
    assert.is_string(id)
    assert.equal(32, #id)
    assert.truthy(id:match("^%x+$"), "x-request-id is not hex: " .. id)
  end)

  it("generates a different request id for each request", function()
    local a = chat(gw.port).headers["x-request-id"]
    local b = chat(gw.port).headers["x-request-id"]
    assert.is_string(a)
    assert.is_string(b)
    assert.are_not.equal(a, b)
  end)

  it("echoes the client's own x-request-id", function()
    local res = chat(gw.port, { headers = { ["X-Request-Id"] = "client-req-0042" } })
    assert.equal(200, res.status)
    assert.equal("client-req-0042", res.headers["x-request-id"])
  end)

  it("sends the provider's key and never the client's key upstream", function()
    local res = chat(gw.port, { headers = {
      ["Authorization"] = "Bearer client-key-authz",
      ["x-api-key"] = "client-key-x-api-key",
      ["api-key"] = "client-key-api-key",
    } })
    assert.equal(200, res.status)
    local reqs = up:requests()
    assert.equal(1, #reqs)
    local h = reqs[1].headers
    assert.equal("POST", reqs[1].method)
    assert.equal("/v1/chat/completions", reqs[1].path)
    assert.equal("Bearer sk-provider-secret", h["authorization"])
    assert.is_nil(h["x-api-key"])
    assert.is_nil(h["api-key"])
    for name, value in pairs(h) do
      assert.is_nil(value:find("client-key", 1, true),
                    "client key leaked upstream in header " .. name .. ": " .. value)
    end
    assert.is_nil(reqs[1].body:find("client-key", 1, true))
  end)

  it("forwards the client's other headers and adds provider and target headers", function()
    local res = chat(gw.port, { headers = { ["X-Client-Thing"] = "kept" } })
    assert.equal(200, res.status)
    local h = up:requests()[1].headers
    assert.equal("kept", h["x-client-thing"])
    assert.equal("from-provider", h["x-provider-header"])
    assert.equal("from-target", h["x-target-header"])
  end)

  it("does not forward the client's Host, cookies or hop-by-hop headers", function()
    local res = chat(gw.port, { headers = {
      Host = "client.example",
      Cookie = "session=client-cookie",
      Connection = "keep-alive, X-Hop-Secret",
      ["X-Hop-Secret"] = "hop-value",
      ["Keep-Alive"] = "timeout=5",
      TE = "trailers",
      Upgrade = "h2c",
      ["Proxy-Authorization"] = "Basic cHJveHk6c2VjcmV0",
      ["X-End-To-End"] = "kept",
    } })
    assert.equal(200, res.status)
    local h = up:requests()[1].headers
    assert.equal("127.0.0.1:" .. up.port, h["host"])
    assert.equal("kept", h["x-end-to-end"])
    assert.is_nil(h["cookie"])
    assert.is_nil(h["keep-alive"])
    assert.is_nil(h["te"])
    assert.is_nil(h["upgrade"])
    assert.is_nil(h["proxy-authorization"])
    -- RFC 9110 §7.6.1: headers named in Connection are hop-by-hop too.
    assert.is_nil(h["x-hop-secret"], "a header named in Connection was forwarded")
  end)

  it("replaces the client's model with the target's model", function()
    local res = chat(gw.port)
    assert.equal(200, res.status)
    local reqs = up:requests()
    assert.equal('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}',
                 reqs[1].body)
  end)

  it("keeps the client's model when the target has model = false", function()
    local res = chat(gw.port, { headers = { ["x-route"] = "keep" } })
    assert.equal(200, res.status)
    assert.equal("client-model", helpers.json(res).model)
    assert.equal(CHAT, up:requests()[1].body)
  end)

  it("serves a JSON body sent as text/plain", function()
    local res = chat(gw.port, { headers = { ["Content-Type"] = "text/plain" } })
    assert.equal(200, res.status)
    assert.equal("fake reply", helpers.json(res).choices[1].message.content)
    local reqs = up:requests()
    assert.equal(1, #reqs)
    assert.equal('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}',
                 reqs[1].body)
  end)

  it("sends the target's model when the client sent none", function()
    local res = chat(gw.port, { body = '{"messages":[{"role":"user","content":"hi"}]}' })
    assert.equal(200, res.status)
    local sent = require("cjson.safe").decode(up:requests()[1].body)
    assert.is_table(sent)
    assert.equal("gpt-4o-mini", sent.model, "upstream body: " .. up:requests()[1].body)
    assert.same({ { role = "user", content = "hi" } }, sent.messages)
  end)

  it("forwards the query string", function()
    local res = chat(gw.port, { path = "/v1/chat/completions?api-version=2024-10-21&x=a%2Fb" })
    assert.equal(200, res.status)
    assert.equal("/v1/chat/completions?api-version=2024-10-21&x=a%2Fb", up:requests()[1].path)
  end)

  it("passes a GET through to the provider", function()
    local res = helpers.http(gw.port, { path = "/v1/models" })
    assert.equal(200, res.status)
    assert.equal("list", helpers.json(res).object)
    local reqs = up:requests()
    assert.equal("GET", reqs[1].method)
    assert.equal("/v1/models", reqs[1].path)
    assert.equal("Bearer sk-provider-secret", reqs[1].headers["authorization"])
  end)

  it("returns a provider's error status, body and Retry-After", function()
    local res = chat(gw.port, { headers = { ["x-fake-status"] = "429", ["x-fake-retry-after"] = "7" } })
    assert.equal(429, res.status)
    assert.equal("7", res.headers["retry-after"])
    local body = helpers.json(res)
    assert.is_table(body.error)
    assert.equal("rate_limit_error", body.error.type)
    assert.equal("1", res.headers["x-moongate-attempts"])
    local res2 = chat(gw.port, { headers = { ["x-fake-status"] = "400" } })
    assert.equal(400, res2.status)
    assert.equal("invalid_request_error", helpers.json(res2).error.type)
  end)

  it("passes a provider's response body through byte-exact", function()
    local text = '{"id":"x","n":12345678901234567890,"f":1.0000000000000001,"a":[],"o":{},'
                 .. '"s":"caf\\u00e9 a\\/b","big":"' .. string.rep("0123456789", 3000) .. '"}'
    local res = chat(gw.port, { headers = { ["x-fake-body"] = text } })
    assert.equal(200, res.status)
    assert.is_nil(res.incomplete)
    assert.equal(text, res.body)
  end)

  it("frames a close-delimited provider body for the client and keeps the client connection", function()
    local conn = helpers.connect(gw.port)
    local text = '{"close":"delimited","pad":"' .. string.rep("z", 5000) .. '"}'
    local res = chat(gw.port, { conn = conn, headers = { ["x-fake-body"] = text, ["x-fake-no-length"] = "1" } })
    assert.equal(200, res.status)
    assert.is_nil(res.incomplete)
    assert.equal(text, res.body)
    assert.is_falsy(conn.is_closed)
    local res2 = chat(gw.port, { conn = conn })
    assert.equal(200, res2.status)
    conn:close()
  end)

  it("answers Expect: 100-continue and then serves the request", function()
    local conn = helpers.connect(gw.port)
    assert.truthy(conn:send("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      .. "Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: "
      .. #CHAT .. "\r\n\r\n"))
    -- curl waits 1 s for the interim answer before sending the body anyway.
    local deadline = require("socket").gettime() + 0.9
    while not conn.buf:find("\r\n\r\n", 1, true) do
      assert.truthy(conn:fill(deadline), "no 100 Continue before the body was sent")
    end
    assert.matches("^HTTP/1.1 100", conn.buf)
    assert.truthy(conn:send(CHAT))
    local res = helpers.read_response(conn)
    conn:close()
    assert.equal(200, res.status)
    assert.equal("fake reply", helpers.json(res).choices[1].message.content)
  end)

  it("closes after the response when the client sends Connection: close", function()
    local conn = helpers.connect(gw.port)
    local res = chat(gw.port, { conn = conn, headers = { Connection = "close" } })
    assert.equal(200, res.status)
    assert.is_true(conn:closed(5))
  end)

  it("serves an HTTP/1.0 client and closes", function()
    local out, closed = helpers.raw(gw.port, "POST /v1/chat/completions HTTP/1.0\r\n"
      .. "Content-Type: application/json\r\nContent-Length: " .. #CHAT .. "\r\n\r\n" .. CHAT,
      { timeout = 5 })
    assert.matches("^HTTP/1%.[01] 200", out)
    assert.matches("fake reply", out, 1, true)
    assert.is_nil(out:lower():find("transfer-encoding: chunked", 1, true))
    assert.is_true(closed)
  end)

  describe("request bodies reach the provider byte-exact", function()
    -- Big integers, a float that a double would round, empty containers,
    -- escapes a re-encoder would rewrite, odd whitespace and key order.
    local BODY = '{ "messages" : [ {"role":"user","content":"caf\\u00e9 a\\/b \\ud83d\\ude00 caf\195\169",'
              .. ' "model": "inner", "name": "\\"model\\": \\"quoted\\""} ],\n'
              .. '  "model" :  "client-model" ,\n'
              .. '  "seed": 12345678901234567890, "temperature": 1.0000000000000001,\n'
              .. '  "stop": [], "metadata": {}, "logit_bias": {"50256": -100}, "n": 1e0 }'

    it("except for the model value", function()
      local res = chat(gw.port, { body = BODY })
      assert.equal(200, res.status)
      local expected = BODY:gsub('"client%-model"', '"gpt-4o-mini"')
      assert.are_not.equal(BODY, expected)
      assert.equal(expected, up:requests()[1].body)
    end)

    it("entirely when the model is kept", function()
      local res = chat(gw.port, { body = BODY, headers = { ["x-route"] = "keep" } })
      assert.equal(200, res.status)
      assert.equal(BODY, up:requests()[1].body)
    end)

    it("when the client sends the body chunked", function()
      local body = CHAT
      local a, b, c = body:sub(1, 5), body:sub(6, 23), body:sub(24)
      local framed = string.format("%x\r\n%s\r\n%x;ext=1\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n",
                                   #a, a, #b, b, #c, c)
      local res = helpers.http(gw.port, {
        method = "POST", path = "/v1/chat/completions",
        headers = { ["Content-Type"] = "application/json", ["Transfer-Encoding"] = "chunked" },
        body = framed,
      })
      assert.equal(200, res.status)
      assert.equal("fake reply", helpers.json(res).choices[1].message.content)
      local reqs = up:requests()
      assert.equal(1, #reqs)
      assert.equal('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}',
                   reqs[1].body)
    end)

    it("when the client sends a chunked body in pieces over time", function()
      local body = CHAT
      local pieces = {
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
          .. "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        string.format("%x\r\n%s\r\n", 10, body:sub(1, 10)),
        string.format("%x\r\n%s\r\n", #body - 10, body:sub(11)),
        "0\r\n\r\n",
      }
      local out = helpers.raw(gw.port, pieces, { pause = 0.05, timeout = 10,
                                                 until_pattern = "fake reply" })
      assert.matches("^HTTP/1.1 200", out)
      assert.equal('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}',
                   up:requests()[1].body)
    end)
  end)

  describe("connections", function()
    it("serves several requests over one client connection", function()
      local conn = helpers.connect(gw.port)
      for i = 1, 4 do
        local res = chat(gw.port, { conn = conn, headers = { ["X-Request-Id"] = "ka-" .. i } })
        assert.equal(200, res.status)
        assert.equal("ka-" .. i, res.headers["x-request-id"])
        assert.is_nil((res.headers["connection"] or ""):lower():find("close", 1, true))
        assert.is_falsy(conn.is_closed, "the gateway closed the connection after request " .. i)
      end
      conn:close()
      assert.equal(4, #up:requests())
    end)

    it("reuses its upstream connection for sequential requests", function()
      -- one client connection: one worker, whose connection pool is its own
      local conn = helpers.connect(gw.port)
      for _ = 1, 4 do
        assert.equal(200, chat(gw.port, { conn = conn }).status)
      end
      conn:close()
      local stats = up:stats()
      assert.equal(4, stats.requests)
      assert.equal(1, stats.connections)
      local reqs = up:requests()
      for i = 2, #reqs do assert.equal(reqs[1].conn, reqs[i].conn) end
    end)

    it("serves concurrent requests concurrently", function()
      local n = 16
      local conns = {}
      for i = 1, n do
        local body = '{"model":"m","messages":[]}'
        local c = helpers.connect(gw.port)
        assert.truthy(c:send("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: c-" .. i
          .. "\r\nx-fake-delay-ms: 400\r\nContent-Type: application/json\r\nContent-Length: "
          .. #body .. "\r\n\r\n" .. body))
        conns[i] = c
      end
      local t0 = require("socket").gettime()
      for i = 1, n do
        local res = helpers.read_response(conns[i], { timeout = 10 })
        assert.equal(200, res.status)
        assert.equal("c-" .. i, res.headers["x-request-id"])
        conns[i]:close()
      end
      local elapsed = require("socket").gettime() - t0
      -- One after the other would take 16 * 0.4 = 6.4 s.
      assert.truthy(elapsed < 3, string.format("16 requests of 0.4 s took %.2fs", elapsed))
      assert.equal(n, #up:requests())
    end)

    it("carries a large request body byte-exact", function()
      local filler = {}
      for i = 1, 20000 do filler[i] = string.format("%05d", i) end
      local body = '{"model":"client-model","messages":[{"role":"user","content":"'
                   .. table.concat(filler, " ") .. '"}],"seed":98765432109876543210}'
      assert.truthy(#body > 100000)
      local res = chat(gw.port, { body = body })
      assert.equal(200, res.status)
      assert.equal((body:gsub('"client%-model"', '"gpt-4o-mini"', 1)), up:requests()[1].body)
    end)

    it("answers pipelined requests in order", function()
      local function req(id, path, body)
        if body then
          return "POST " .. path .. " HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: " .. id
                 .. "\r\nContent-Type: application/json\r\nContent-Length: " .. #body
                 .. "\r\n\r\n" .. body
        end
        return "GET " .. path .. " HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: " .. id .. "\r\n\r\n"
      end
      local slow = '{"model":"m1","messages":[]}'
      local bytes = req("pipe-1", "/v1/chat/completions", slow)
                 .. req("pipe-2", "/v1/models")
                 .. req("pipe-3", "/v1/chat/completions", '{"model":"m3","messages":[]}')
      local conn = helpers.connect(gw.port)
      assert.truthy(conn:send(bytes))
      local r1 = helpers.read_response(conn)
      local r2 = helpers.read_response(conn)
      local r3 = helpers.read_response(conn)
      conn:close()
      assert.equal(200, r1.status)
      assert.equal(200, r2.status)
      assert.equal(200, r3.status)
      assert.equal("pipe-1", r1.headers["x-request-id"])
      assert.equal("pipe-2", r2.headers["x-request-id"])
      assert.equal("pipe-3", r3.headers["x-request-id"])
      assert.equal("chat.completion", helpers.json(r1).object)
      assert.equal("list", helpers.json(r2).object)
      assert.equal("chat.completion", helpers.json(r3).object)
    end)

    it("answers pipelined requests in order even when the first is the slowest", function()
      local function req(id, delay)
        local body = '{"model":"m","messages":[]}'
        return "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: " .. id
               .. "\r\nx-fake-delay-ms: " .. delay
               .. "\r\nContent-Type: application/json\r\nContent-Length: " .. #body
               .. "\r\n\r\n" .. body
      end
      local out = helpers.raw(gw.port, req("slow-1", 300) .. req("fast-2", 0) .. req("fast-3", 0),
                              { timeout = 10, until_pattern = "fast%-3.-fake reply" })
      local ids = {}
      for id in out:gmatch("[Xx]%-[Rr]equest%-[Ii]d: ([%w%-]+)") do ids[#ids + 1] = id end
      assert.same({ "slow-1", "fast-2", "fast-3" }, ids)
      local statuses = {}
      for s in out:gmatch("HTTP/1.1 (%d+)") do statuses[#statuses + 1] = s end
      assert.same({ "200", "200", "200" }, statuses)
    end)
  end)
end)
