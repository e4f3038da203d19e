-- gw.http and gw.sleep from plugins: a subrequest yields the request's
-- coroutine (the worker serves others meanwhile), reports failures as
-- nil, "kind: message", and waiting inside on_chunk loses no event of the
-- stream being read.

local helpers = require "spec.support.helpers"

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}" }   -- never the default 9901: specs may run side by side
workers = 1
providers = { up = { type = "openai", base_url = "${UP}/v1", api_key = "sk-x" } }
backends = { main = { provider = "up", model = "gpt-4o-mini" } }
routes = { { match = { path_prefix = "/v1" }, backend = "main" } }
plugins = {
  { name = "caller", up = "${UP}", handler = {
      on_request = function(ctx, conf)
        local op = (ctx.request.query or ""):match("^op=([%w-]+)")
        if op == "post" then
          local res, err = gw.http(conf.up .. "/v1/chat/completions", {
            headers = { ["x-from-plugin"] = "yes" },
            body = { model = "policy", messages = { { role = "user", content = "ok?" } } } })
          if not res then return gw.respond(502, { err = err }) end
          local doc = gw.json.decode(res.body)
          return gw.respond(200, { status = res.status, ctype = res.headers["content-type"],
                                   reply = doc.choices[1].message.content })
        elseif op == "refused" then
          local res, err = gw.http("http://127.0.0.1:${CLOSED}/x", { timeout = 5 })
          return gw.respond(200, { res = res ~= nil, err = err })
        elseif op == "slow" then
          local res, err = gw.http(conf.up .. "/v1/chat/completions", { timeout = "200ms",
            headers = { ["x-fake-delay-ms"] = "3000" }, body = "{}" })
          return gw.respond(200, { res = res ~= nil, err = err })
        elseif op == "big" then
          local res, err = gw.http(conf.up .. "/v1/chat/completions", { max_body = "1KB",
            headers = { ["x-fake-size"] = "100000" }, body = "{}" })
          return gw.respond(200, { res = res ~= nil, err = err })
        elseif op == "bad-url" then
          gw.http("ftp://example.com/")
        elseif op == "spin" then
          -- yields with gw.sleep(0) until another request says stop (or 20 s pass)
          gw.log("warn", "spin: looping on gw.sleep(0)")
          local t0, n = gw.now(), 0
          while gw.shared.get("spin-stop") ~= 1 and gw.now() - t0 < 20 do
            gw.sleep(0)
            n = n + 1
          end
          return gw.respond(200, { stopped = gw.shared.get("spin-stop") == 1, yields = n })
        elseif op == "stop" then
          gw.shared.set("spin-stop", 1)
          return gw.respond(200, { ok = true })
        end
      end,
      on_chunk = function(ctx, conf, chunk)
        if ctx.request.headers["x-sleepy"] then gw.sleep(0.01) end
      end } },
}
]]

local STREAM_BODY = '{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'

describe("gw.http", function()
  local gw, up

  lazy_setup(function()
    up = helpers.start_fake_upstream()
    gw = helpers.start_gateway(CONFIG, { vars = { UP = up.url, CLOSED = helpers.free_port() } })
  end)

  lazy_teardown(function()
    helpers.stop_and_check(gw)
  end)

  local function op(name)
    local res = helpers.http(gw.port, { path = "/v1/x?op=" .. name, timeout = 15 })
    return res.status, helpers.json(res)
  end

  it("makes a subrequest and gets status, headers and body", function()
    up:reset()
    local status, doc = op("post")
    assert.equal(200, status)
    assert.same({ status = 200, ctype = "application/json", reply = "fake reply" }, doc)
    local reqs = up:requests()
    assert.equal(1, #reqs)
    assert.equal("yes", reqs[1].headers["x-from-plugin"])
    assert.equal("application/json", reqs[1].headers["content-type"])
    assert.equal("policy", helpers.json({ body = reqs[1].body }).model)
  end)

  it("serves other requests while one waits on a slow subrequest", function()
    local t0 = require("socket").gettime()
    local slow = helpers.connect(gw.port)
    assert.truthy(slow:send("GET /v1/x?op=slow HTTP/1.1\r\nHost: x\r\n\r\n"))
    -- meanwhile, on the same single worker
    local status = op("post")
    assert.equal(200, status)
    local res = helpers.read_response(slow, { timeout = 10 })
    local doc = helpers.json(res)
    assert.is_false(doc.res)
    assert.matches("^timeout", doc.err)
    assert.truthy(require("socket").gettime() - t0 < 2.5, "the timeout did not cut the subrequest")
  end)

  it("serves other requests while one loops on gw.sleep(0)", function()
    local spin = helpers.connect(gw.port)
    assert.truthy(spin:send("GET /v1/x?op=spin HTTP/1.1\r\nHost: x\r\n\r\n"))
    helpers.wait_until(function() return gw:log():find("spin: looping", 1, true) end, 10,
      "the looping request did not start")
    -- the same single worker must still read and answer this one, which ends the loop
    local status = op("stop")
    assert.equal(200, status)
    local doc = helpers.json(helpers.read_response(spin, { timeout = 30 }))
    assert.is_true(doc.stopped, "the loop ran out its 20 s: the stop request was not served meanwhile")
    assert.truthy(doc.yields > 0)
  end)

  it("reports a refused connection and an oversized answer", function()
    local _, doc = op("refused")
    assert.is_false(doc.res)
    assert.matches("^connect%-failure", doc.err)
    local _, big = op("big")
    assert.is_false(big.res)
    assert.matches("too large", big.err)
  end)

  it("raises on misuse, which is the plugin's 500", function()
    local status = op("bad-url")
    assert.equal(500, status)
    helpers.wait_until(function()
      return gw:log():find("url must be an http", 1, true)
    end, 5, "the misuse was not logged")
  end)

  it("lets on_chunk wait without losing any event of the stream", function()
    local s = helpers.stream(gw.port, { method = "POST", path = "/v1/chat/completions",
      headers = { ["Content-Type"] = "application/json", ["x-sleepy"] = "1",
                 ["x-fake-chunk-delay-ms"] = "4" },
      body = STREAM_BODY, timeout = 10 })
    assert.equal(200, s.status)
    local events, reason = s:read_all(10)
    assert.equal("eof", reason)
    local plain = helpers.stream(gw.port, { method = "POST", path = "/v1/chat/completions",
      headers = { ["Content-Type"] = "application/json" }, body = STREAM_BODY, timeout = 10 })
    local expected = plain:read_all(10)
    assert.equal(#expected, #events)
    assert.equal("[DONE]", helpers.parse_sse(events[#events]).data)
    for i = 1, #events do
      assert.equal(helpers.parse_sse(expected[i]).data:gsub('"created":%d+', ""),
                   (helpers.parse_sse(events[i]).data:gsub('"created":%d+', "")))
    end
  end)
end)
