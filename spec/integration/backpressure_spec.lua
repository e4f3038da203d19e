-- A client that reads slower than the provider writes slows the provider down
-- instead of filling the gateway's memory (DESIGN.md: back-pressure through
-- curl_easy_pause), and still gets every byte once it reads again.

local helpers = require "spec.support.helpers"
local socket  = require "socket"

local SIZE = 96 * 1048576   -- far more than every socket buffer on the path holds

local function rss_kb(pid)
  local status = helpers.read_file("/proc/" .. pid .. "/status") or ""
  return tonumber(status:match("VmRSS:%s*(%d+)"))
end

describe("back-pressure", function()
  local up, gw

  lazy_setup(function()
    up = helpers.start_fake_upstream()
    gw = helpers.start_gateway([[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}" }   -- never the default 9901: specs may run side by side
access_log = false
providers = { fake = { type = "openai", base_url = "http://127.0.0.1:${UP_PORT}/v1", api_key = "sk" },
              m = { type = "mock" } }
backends = { main = { provider = "fake", model = false }, mock = { provider = "m", model = false } }
routes = { { match = { path_prefix = "/mock" }, rewrite = "/v1/chat/completions", backend = "mock" },
           { match = { path_prefix = "/v1" }, backend = "main" } }
]], { vars = { UP_PORT = up.port } })
  end)

  lazy_teardown(function()
    up:stop()
    helpers.stop_and_check(gw)
  end)

  it("stalls the provider while the client does not read, then delivers the whole body", function()
    local before = rss_kb(gw.proc.pid)
    local conn = helpers.connect(gw.port)
    assert(conn:send("POST /v1/files HTTP/1.1\r\nHost: x\r\nx-fake-size: " .. SIZE ..
                     "\r\nContent-Length: 2\r\n\r\n{}"))

    -- The provider's writes stop well short of the body: the gateway stopped reading it.
    local last, still = -1, 0
    helpers.wait_until(function()
      local sent = up:stats().size_sent
      if sent > 0 and sent == last then still = still + 1 else still = 0 end
      last = sent
      return still >= 5            -- unchanged over five polls in a row
    end, 30, "the provider never stalled")
    assert.is_true(last < SIZE / 2, "the provider wrote " .. last .. " of " .. SIZE .. " bytes")
    local grown = rss_kb(gw.proc.pid) - before
    assert.is_true(grown < 32 * 1024, "the gateway grew by " .. grown .. " KB")

    -- Now read it all: every byte arrives.
    local res = helpers.read_response(conn, { timeout = 60 })
    assert.equal(200, res.status)
    assert.equal(SIZE, #res.body)
    assert.equal(SIZE, up:stats().size_sent)
    conn:close()
  end)

  it("lets the mock provider's long stream wait for a slow reader and finish", function()
    local N = 20000               -- some 5 MB of events: more than the socket buffers take
    local conn = helpers.connect(gw.port)
    local body = '{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    assert(conn:send("POST /mock HTTP/1.1\r\nHost: x\r\nx-mock-chunks: " .. N ..
                     "\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body))
    -- not reading yet: the gateway must neither block nor drop anything meanwhile
    local other = helpers.http(gw.port, { method = "GET", path = "/v1/models" })
    assert.equal(200, other.status)
    local res = helpers.read_response(conn, { timeout = 60 })
    assert.equal(200, res.status)
    local events = 0
    for _ in res.body:gmatch("data: ") do events = events + 1 end
    assert.equal(N + 3, events)   -- role chunk, N pieces, finish chunk, [DONE]
    assert.truthy(res.body:find("data: [DONE]", 1, true))
    conn:close()
  end)
end)
