-- Connections and the process over time: the access log, clients that leave
-- in the middle of a stream, idle keep-alive connections, and a graceful stop
-- on SIGTERM/SIGINT (in-flight streams finish, new connections are refused,
-- exit code 0; shutdown_timeout bounds the wait).

local helpers = require "spec.support.helpers"
local socket  = require "socket"
local signal  = require "posix.signal"

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}" }
workers = 2                      -- the stop reaches every worker
access_log = "stdout"
shutdown_timeout = "${SHUTDOWN}"
limits = { idle_timeout = "1s", header_timeout = "5s" }

providers = {
  fake = { type = "openai", base_url = "${UP}/v1", api_key = "sk-provider-secret" },
  sleepy = { type = "mock", latency = "30s" },
}
backends = {
  main = { provider = "fake", model = "gpt-4o-mini" },
  sleepy = { provider = "sleepy", model = false },
}
routes = {
  { match = { path_prefix = "/v1", headers = { ["x-route"] = "sleepy" } }, backend = "sleepy" },
  { match = { path_prefix = "/v1" }, backend = "main" },
}
]]

local STREAM_BODY = '{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'
local CHAT = '{"model":"m","messages":[{"role":"user","content":"hi"}]}'

local function chat(port, headers)
  local h = { ["Content-Type"] = "application/json" }
  for k, v in pairs(headers or {}) do h[k] = v end
  return helpers.http(port, { method = "POST", path = "/v1/chat/completions", headers = h, body = CHAT })
end

local function open_stream(port, headers)
  local h = { ["Content-Type"] = "application/json" }
  for k, v in pairs(headers or {}) do h[k] = v end
  return helpers.stream(port, { method = "POST", path = "/v1/chat/completions",
                                headers = h, body = STREAM_BODY, timeout = 10 })
end

local function inflight(gw)
  local res = helpers.http(gw.admin_port, { path = "/metrics" })
  return tonumber(res.body:match("\nmoongate_inflight%s+(%S+)"))
end

local function refused(port)
  local ok, conn = pcall(helpers.connect, port, 1)
  if ok then conn:close() end
  return not ok
end

-- Lines of the gateway log that report an error (not access log lines).
local function error_lines(log)
  local out = {}
  for line in log:gmatch("[^\n]+") do
    if line:find("%[error%]") or line:find("%[crit%]") or line:find("panic")
       or line:find("AddressSanitizer") or line:find("runtime error") then
      out[#out + 1] = line
    end
  end
  return out
end

describe("lifecycle", function()
  local up

  lazy_setup(function()
    up = helpers.start_fake_upstream()
  end)

  lazy_teardown(function()
    helpers.cleanup()
  end)

  before_each(function()
    up:reset()
  end)

  describe("a running gateway", function()
    local gw

    lazy_setup(function()
      gw = helpers.start_gateway(CONFIG, { vars = { UP = up.url, SHUTDOWN = "10s" } })
    end)

    lazy_teardown(function()
      up:reset()
      local code, err = gw:stop()
      assert(code == 0, "gateway exit code on SIGTERM: " .. tostring(code) .. " "
                        .. tostring(err) .. "\n" .. gw:log())
    end)

    it("writes an access log line with the request id", function()
      local res = chat(gw.port, { ["X-Request-Id"] = "access-log-id-7731" })
      assert.equal(200, res.status)
      local generated = chat(gw.port).headers["x-request-id"]
      assert.equal(32, #generated)
      helpers.wait_until(function()
        local log = gw:log()
        return log:find("access-log-id-7731", 1, true) and log:find(generated, 1, true)
      end, 5, "both request ids in the access log")
      for line in gw:log():gmatch("[^\n]+") do
        if line:find("access-log-id-7731", 1, true) then
          assert.matches("/v1/chat/completions", line, 1, true)
          assert.matches('"status":200,', line, 1, true)   -- a JSON line (docs/http.md)
        end
      end
    end)

    it("stops the upstream transfer when the client leaves in the middle of a stream", function()
      local s = open_stream(gw.port, { ["x-fake-hold"] = "left", ["X-Request-Id"] = "client-left-1" })
      assert.equal(200, s.status)
      assert.is_string((s:read_event(10)))
      assert.equal(1, inflight(gw))
      s:close()
      -- The provider is still holding the rest: only an aborted transfer ends
      -- the request now.
      helpers.wait_until(function() return inflight(gw) == 0 end, 5,
                         "moongate_inflight back to 0 after the client left")
      helpers.wait_until(function() return gw:log():find("client-left-1", 1, true) end, 5,
                         "access log line for the abandoned stream")
      up:release("left")
      -- Still serving, plain and streamed.
      assert.equal(200, chat(gw.port).status)
      local s2 = open_stream(gw.port)
      local events, reason = s2:read_all(10)
      assert.equal("eof", reason)
      assert.equal("[DONE]", helpers.parse_sse(events[#events]).data)
      assert.same({}, error_lines(gw:log()))
      assert.truthy(gw.proc:alive())
    end)

    it("survives many clients leaving in the middle of streams", function()
      local streams = {}
      for i = 1, 8 do
        local s = open_stream(gw.port, { ["x-fake-hold"] = "many" })
        assert.equal(200, s.status)
        assert.is_string((s:read_event(10)))
        streams[i] = s
      end
      helpers.wait_until(function() return inflight(gw) == 8 end, 5, "8 streams in flight")
      for i = 1, #streams do streams[i]:close() end
      helpers.wait_until(function() return inflight(gw) == 0 end, 5, "all 8 transfers aborted")
      up:release("many")
      assert.equal(200, chat(gw.port).status)
      assert.same({}, error_lines(gw:log()))
      assert.truthy(gw.proc:alive())
    end)

    it("closes an idle keep-alive connection after idle_timeout", function()
      local conn = helpers.connect(gw.port)
      local res = helpers.http(gw.port, { conn = conn, method = "POST", path = "/v1/chat/completions",
                                          headers = { ["Content-Type"] = "application/json" },
                                          body = CHAT })
      assert.equal(200, res.status)
      local t0 = socket.gettime()
      assert.is_true(conn:closed(6), "idle connection not closed within 6s (idle_timeout = 1s)")
      local elapsed = socket.gettime() - t0
      assert.truthy(elapsed >= 0.7, string.format("closed too early: %.2fs", elapsed))
    end)

    it("does not close a connection whose request is still being answered at idle_timeout", function()
      -- The provider takes longer than idle_timeout to answer.
      local res = chat(gw.port, { ["x-fake-delay-ms"] = "1500" })
      assert.equal(200, res.status)
      assert.equal("fake reply", helpers.json(res).choices[1].message.content)
    end)
  end)

  -- Each case stops its own gateway: it is started in lazy_setup and the
  -- teardown checks (or forces) its end.
  local function stopping(title, what, shutdown, body)
    describe(title, function()
      local gw
      lazy_setup(function()
        gw = helpers.start_gateway(CONFIG, { vars = { UP = up.url, SHUTDOWN = shutdown } })
      end)
      lazy_teardown(function()
        up:reset()
        local code, err = gw:stop()
        assert(code == 0, "gateway exit code: " .. tostring(code) .. " " .. tostring(err)
                          .. "\n" .. gw:log())
      end)
      it(what, function() body(gw) end)
    end)
  end

  stopping("on SIGTERM with a stream in flight",
           "finishes the stream, refuses new connections, then exits 0", "20s", function(gw)
    -- An idle keep-alive connection must not hold the stop up.
    local idle = helpers.connect(gw.port)
    assert.equal(200, helpers.http(gw.port, {
      conn = idle, method = "POST", path = "/v1/chat/completions",
      headers = { ["Content-Type"] = "application/json" }, body = CHAT }).status)

    local s = open_stream(gw.port, { ["x-fake-hold"] = "term" })
    assert.equal(200, s.status)
    local first = s:read_event(10)
    assert.is_string(first)

    assert.is_true(gw.proc:kill(signal.SIGTERM))
    helpers.wait_until(function() return refused(gw.port) end, 5,
                       "new connections refused after SIGTERM")
    assert.truthy(gw.proc:alive(), "exited with a stream still in flight")
    -- the admin listener stays up while workers drain, and says not ready
    assert.equal(503, helpers.http(gw.admin_port, { path = "/ready" }).status)

    up:release("term")
    local rest, reason = s:read_all(10)
    assert.equal("eof", reason, "the in-flight stream was cut by the stop")
    assert.equal("[DONE]", helpers.parse_sse(rest[#rest]).data)

    -- shutdown_timeout is 20s: only a clean drain exits within this bound.
    local code = gw.proc:wait(8)
    idle:close()
    assert.equal(0, code, "exit code after SIGTERM; log:\n" .. gw:log())
    assert.same({}, error_lines(gw:log()))
  end)

  stopping("on SIGTERM with a slow plain request in flight",
           "finishes the request, closes its connection, then exits 0", "20s", function(gw)
    local conn = helpers.connect(gw.port)
    assert.truthy(conn:send("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      .. "x-fake-delay-ms: 700\r\nContent-Type: application/json\r\nContent-Length: "
      .. #CHAT .. "\r\n\r\n" .. CHAT))
    helpers.wait_until(function() return #up:requests() == 1 end, 5, "request reached the provider")
    assert.is_true(gw.proc:kill(signal.SIGTERM))
    local res = helpers.read_response(conn, { timeout = 10 })
    assert.equal(200, res.status)
    assert.equal("fake reply", helpers.json(res).choices[1].message.content)
    assert.is_true(conn:closed(5), "connection kept open by a stopping gateway")
    assert.equal(0, gw.proc:wait(8), "exit code after SIGTERM; log:\n" .. gw:log())
  end)

  stopping("on SIGTERM with a stream that outlives shutdown_timeout",
           "cuts the stream (no clean end) and exits 0 at shutdown_timeout", "1s", function(gw)
    local s = open_stream(gw.port, { ["x-fake-hold"] = "never" })
    assert.equal(200, s.status)
    assert.is_string((s:read_event(10)))
    local t0 = socket.gettime()
    assert.is_true(gw.proc:kill(signal.SIGTERM))
    local code = gw.proc:wait(10)
    local elapsed = socket.gettime() - t0
    assert.equal(0, code, "exit code after shutdown_timeout; log:\n" .. gw:log())
    assert.truthy(elapsed >= 0.7, string.format("exited after %.2fs, before shutdown_timeout", elapsed))
    assert.truthy(elapsed < 6, string.format("exited after %.2fs, long after shutdown_timeout", elapsed))
    local _, reason = s:read_all(5)
    assert.equal("closed", reason, "a stream cut by the stop must not end cleanly")
    -- and it is not lost: it has its access-log line (and ledger record, written with it), with
    -- the status its client was sent and the tokens so far
    assert.truthy(gw:log():find('"path":"/v1/chat/completions"[^\n]*"status":200'),
      "no access-log line for the cut stream; log:\n" .. gw:log())
  end)

  stopping("on SIGTERM with a request to a provider slower than shutdown_timeout",
           "cuts it at shutdown_timeout, and its access-log line and ledger record say 499", "1s",
           function(gw)
    local conn = helpers.connect(gw.port)
    assert.truthy(conn:send("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      .. "x-route: sleepy\r\nContent-Type: application/json\r\nContent-Length: "
      .. #CHAT .. "\r\n\r\n" .. CHAT))
    helpers.wait_until(function()
      local text = helpers.http(gw.admin_port, { path = "/metrics" }).body
      local n = tonumber(text:match("\nmoongate_inflight (%d+)") or text:match("\nmoongate_inflight{[^}]*} (%d+)"))
      return n and n >= 1
    end, 10, "the request never got in flight")
    assert.is_true(gw.proc:kill(signal.SIGTERM))
    assert.equal(0, gw.proc:wait(10), "exit code after shutdown_timeout; log:\n" .. gw:log())
    conn:close()
    assert.truthy(gw:log():find('"path":"/v1/chat/completions"[^\n]*"status":499'),
      "no access-log line for the request cut by the stop; log:\n" .. gw:log())
    local p = io.popen("cat " .. gw.dir .. "/data/ledger/*.jsonl 2>/dev/null")
    local ledger = p:read("*a")
    p:close()
    assert.truthy(ledger:find('"status":499', 1, true), "no ledger record for it")
  end)

  stopping("on SIGINT", "exits 0 like SIGTERM", "10s", function(gw)
    assert.equal(200, chat(gw.port).status)
    local code, err = gw:stop(signal.SIGINT, 10)
    assert.equal(0, code, tostring(err) .. "\n" .. gw:log())
    assert.is_true(refused(gw.port))
  end)
end)
