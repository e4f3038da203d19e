-- The access log (SPEC §2 `access_log`, §1 SIGUSR1): one JSON line per request with its figures
-- and never a secret, to a file or stdout; SIGUSR1 reopens the file (log rotation).

local helpers = require "spec.support.helpers"
local cjson   = require "cjson.safe"
local signal  = require "posix.signal"

local HAVE_AUTH = helpers.read_file(helpers.root .. "/plugins/auth.lua") ~= nil
local HAVE_COST = helpers.read_file(helpers.root .. "/plugins/cost.lua") ~= nil

local PLUGINS = {}
if HAVE_AUTH then PLUGINS[#PLUGINS + 1] = '{ name = "auth" }' end
if HAVE_COST then PLUGINS[#PLUGINS + 1] = '{ name = "cost" }' end

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}", token = "admin-secret" }
workers = 2
access_log = ${LOG}
providers = { fake = { type = "mock", api_key = "sk-provider-secret" } }
backends = { main = { provider = "fake", model = "gpt-4o-mini", prices = { input = 2.5, output = 10 } } }
routes = { { name = "chat", match = { path_prefix = "/v1" }, backend = "main" } }
teams = { search = {} }
consumers = { { key = "sk-client-secret-key", name = "alice", team = "search" } }
plugins = { ]] .. table.concat(PLUGINS, ", ") .. [[ }
]]

local CHAT = '{"model":"client-model","messages":[{"role":"user","content":"the body is a secret too"}]}'

local function chat(gw, id)
  return helpers.http(gw.port, { method = "POST", path = "/v1/chat/completions?api_key=sk-query-secret",
    headers = { ["Content-Type"] = "application/json", ["X-Request-Id"] = id,
                Authorization = "Bearer sk-client-secret-key", Cookie = "session=cookie-secret" },
    body = CHAT })
end

-- the JSON access log lines in text, by request id
local function lines(text)
  local out = {}
  for line in (text or ""):gmatch("[^\n]+") do
    if line:sub(1, 9) == '{"time":"' then
      local r = cjson.decode(line)
      if r then out[r.id] = { doc = r, raw = line } end
    end
  end
  return out
end

describe("access log", function()
  lazy_teardown(function() helpers.cleanup() end)

  describe("to a file", function()
    local gw, path

    lazy_setup(function()
      local dir = helpers.tmpdir()
      path = dir .. "/access.log"
      gw = helpers.start_gateway(CONFIG, { dir = dir, vars = { LOG = '"./access.log"' } })
    end)

    lazy_teardown(function() helpers.stop_and_check(gw) end)

    it("has one JSON line per request with its figures and no secret", function()
      local res = chat(gw, "access-1")
      assert.equal(200, res.status, res.body)
      local usage = helpers.json(res).usage
      local missing = helpers.http(gw.port, { path = "/nowhere", headers = { ["X-Request-Id"] = "access-2" } })
      assert.equal(404, missing.status)
      local got = helpers.wait_until(function()
        local l = lines(helpers.read_file(path))
        return l["access-1"] and l["access-2"] and l
      end, 10, "both lines in the access log")
      local r = got["access-1"].doc
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", r.time)
      assert.equal("127.0.0.1", r.remote)
      assert.equal("POST", r.method)
      assert.equal("/v1/chat/completions", r.path)          -- the query string stays out
      assert.equal("chat", r.route)
      assert.equal("fake/gpt-4o-mini", r.target)
      assert.equal("gpt-4o-mini", r.model)
      assert.equal(200, r.status)
      assert.equal(1, r.attempts)
      assert.equal(usage.prompt_tokens, r.prompt_tokens)
      assert.equal(usage.completion_tokens, r.completion_tokens)
      assert.is_number(r.latency_ms)
      assert.is_number(r.ttfb_ms)
      assert.is_number(r.bytes)
      if HAVE_AUTH then
        assert.equal("alice", r.consumer)
        assert.equal("search", r.team)
      end
      if HAVE_COST then
        assert.near((usage.prompt_tokens * 2.5 + usage.completion_tokens * 10) / 1e6, r.cost_usd, 1e-12)
      end
      local m = got["access-2"].doc
      assert.equal(404, m.status)
      assert.equal("/nowhere", m.path)
      assert.equal(cjson.null, m.target)
      assert.equal(cjson.null, m.ttfb_ms)
      local text = helpers.read_file(path)
      for _, secret in ipairs({ "sk-client-secret-key", "sk-query-secret", "cookie-secret",
                                "sk-provider-secret", "the body is a secret" }) do
        assert.is_nil(text:find(secret, 1, true), secret)
      end
    end)

    it("reopens the file on SIGUSR1", function()
      assert.equal(200, chat(gw, "before-rotate").status)
      helpers.wait_until(function() return lines(helpers.read_file(path))["before-rotate"] end, 10,
        "the line before the rotation")
      assert(os.rename(path, path .. ".1"))
      assert.truthy(gw.proc:kill(signal.SIGUSR1))
      -- the signal is handled on the main loop: until then lines still go to the old file
      local n = 0
      helpers.wait_until(function()
        n = n + 1
        assert.equal(200, chat(gw, "after-rotate-" .. n).status)
        local l = lines(helpers.read_file(path))
        for id in pairs(l) do if id:match("^after%-rotate") then return true end end
      end, 10, "a new access.log after SIGUSR1")
      -- from then on every line goes to the new file
      assert.equal(200, chat(gw, "after-reopen").status)
      helpers.wait_until(function() return lines(helpers.read_file(path))["after-reopen"] end, 10,
        "the next line in the new file")
      local old = lines(helpers.read_file(path .. ".1"))
      assert.truthy(old["before-rotate"])
      assert.is_nil(old["after-reopen"])
      assert.is_nil(lines(helpers.read_file(path))["before-rotate"])
      assert.truthy(gw.proc:alive())
    end)
  end)

  it("goes to stdout by default, and nowhere when false", function()
    local gw = helpers.start_gateway(CONFIG, { vars = { LOG = '"stdout"' } })
    assert.equal(200, chat(gw, "to-stdout").status)
    helpers.wait_until(function() return lines(gw:log())["to-stdout"] end, 10, "the line on stdout")
    helpers.stop_and_check(gw)
    gw = helpers.start_gateway(CONFIG, { vars = { LOG = "false" } })
    assert.equal(200, chat(gw, "nowhere").status)
    -- the ledger has it once flushed (1s); the access log never does
    helpers.wait_until(function()
      local p = io.popen("cat '" .. gw.dir .. "'/data/ledger/ledger-*.jsonl 2>/dev/null")
      local t = p:read("*a")
      p:close()
      return t:find('"nowhere"', 1, true)
    end, 10, "the request in the ledger")
    assert.is_nil(lines(gw:log())["nowhere"])
    helpers.stop_and_check(gw)
  end)
end)
