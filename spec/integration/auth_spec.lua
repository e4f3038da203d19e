-- The auth plugin in the real binary: 401s and 403s in both client formats, consumers created,
-- listed and deleted through the admin API (main thread) and used at once by two workers, and a
-- created consumer surviving a restart with the same data_dir.

local helpers = require "spec.support.helpers"
local cjson = require "cjson.safe"

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}", token = "admin-secret" }
workers = 2
access_log = false
providers = { m = { type = "mock" } }
backends = { main = { provider = "m", model = false } }
routes = { { name = "v1", match = { path_prefix = "/v1" }, backend = "main" } }
teams = { search = {} }
consumers = {
  { name = "alice", key = "sk-alice-0123456789", team = "search", models = { "gpt-4o-mini", "claude-3-5-haiku" } },
  { name = "bob", key = "sk-bob-0123456789" },
}
plugins = { { name = "auth" } }
]]

local CHAT = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
local MSG = '{"model":"claude-3-5-haiku","max_tokens":20,"messages":[{"role":"user","content":"hi"}]}'

local function chat(gw, headers, body, path)
  headers = headers or {}
  headers["Content-Type"] = "application/json"
  headers["Connection"] = "close"
  local res = helpers.http(gw.port, { method = "POST", path = path or "/v1/chat/completions",
    headers = headers, body = body or CHAT })
  return res.status, cjson.decode(res.body), res
end

local function admin(gw, method, path, body)
  local res = helpers.http(gw.admin_port, { method = method, path = path, body = body,
    headers = { Authorization = "Bearer admin-secret", ["Content-Type"] = "application/json" } })
  return res.status, cjson.decode(res.body), res
end

describe("auth", function()
  local gw

  lazy_setup(function()
    gw = helpers.start_gateway(CONFIG)
  end)

  lazy_teardown(function()
    helpers.stop_and_check(gw)
  end)

  it("answers 401 without a key and with a wrong one, in the OpenAI format", function()
    local status, doc = chat(gw)
    assert.equal(401, status)
    assert.equal("authentication_error", doc.error.type)
    assert.equal("missing_api_key", doc.error.code)
    status, doc = chat(gw, { Authorization = "Bearer sk-wrong-key-000" })
    assert.equal(401, status)
    assert.equal("invalid_api_key", doc.error.code)
    assert.is_nil(cjson.encode(doc):find("sk-wrong", 1, true))
    status = chat(gw, { Authorization = "Basic YWxpY2U6eA==" })
    assert.equal(401, status)
  end)

  it("answers 401 in the Anthropic format on /v1/messages", function()
    local status, doc = chat(gw, {}, MSG, "/v1/messages")
    assert.equal(401, status)
    assert.equal("error", doc.type)
    assert.equal("authentication_error", doc.error.type)
    status, doc = chat(gw, { ["x-api-key"] = "sk-wrong-key-000" }, MSG, "/v1/messages")
    assert.equal(401, status)
    assert.equal("authentication_error", doc.error.type)
  end)

  it("accepts a key as Bearer, x-api-key or api-key", function()
    assert.equal(200, (chat(gw, { Authorization = "Bearer sk-alice-0123456789" })))
    assert.equal(200, (chat(gw, { ["x-api-key"] = "sk-alice-0123456789" })))
    assert.equal(200, (chat(gw, { ["api-key"] = "sk-bob-0123456789" })))
    assert.equal(200, (chat(gw, { ["x-api-key"] = "sk-alice-0123456789" }, MSG, "/v1/messages")))
  end)

  it("answers 403 for a model the key may not use, in both formats", function()
    local status, doc = chat(gw, { Authorization = "Bearer sk-alice-0123456789" },
      '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}')
    assert.equal(403, status)
    assert.equal("permission_error", doc.error.type)
    assert.equal("model_not_allowed", doc.error.code)
    status, doc = chat(gw, { ["x-api-key"] = "sk-alice-0123456789" },
      '{"model":"claude-opus-4","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}', "/v1/messages")
    assert.equal(403, status)
    assert.equal("error", doc.type)
    assert.equal("permission_error", doc.error.type)
    -- bob has no allow-list
    assert.equal(200, (chat(gw, { Authorization = "Bearer sk-bob-0123456789" },
      '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}')))
  end)

  describe("consumers created through the admin API", function()
    local key

    it("show the key once, and it works on every worker at once", function()
      local status, doc = admin(gw, "POST", "/admin/consumers",
        '{"name":"carol","team":"search","models":["gpt-4o-mini"]}')
      assert.equal(201, status)
      assert.equal("carol", doc.name)
      assert.matches("^sk%-mg%-" .. string.rep("%x", 32), doc.key)
      key = doc.key
      for _ = 1, 20 do   -- fresh connections: both workers
        assert.equal(200, (chat(gw, { Authorization = "Bearer " .. key })))
      end
      assert.equal(403, (chat(gw, { Authorization = "Bearer " .. key },
        '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}')))
      -- one given by the caller
      status, doc = admin(gw, "POST", "/admin/consumers", '{"name":"dave","key":"sk-dave-chosen-key"}')
      assert.equal(201, status)
      assert.equal("sk-dave-chosen-key", doc.key)
      assert.equal(200, (chat(gw, { ["api-key"] = "sk-dave-chosen-key" })))
    end)

    it("are listed without keys", function()
      local status, doc, res = admin(gw, "GET", "/admin/consumers")
      assert.equal(200, status)
      local names = {}
      for _, c in ipairs(doc.consumers) do
        names[#names + 1] = c.name .. ":" .. c.source
        assert.is_nil(c.key)
        assert.matches("^%x+$", c.key_id)
      end
      assert.same({ "alice:config", "bob:config", "carol:admin", "dave:admin" }, names)
      assert.is_nil(res.body:find(key, 1, true))
      assert.is_nil(res.body:find("sk-dave-chosen-key", 1, true))
      assert.is_nil(res.body:find("sk-alice-0123456789", 1, true))
      local file = helpers.read_file(gw.dir .. "/data/consumers.json")
      assert.is_nil(file:find(key, 1, true))
      -- nor does the running config show any
      local _, _, cres = admin(gw, "GET", "/admin/config")
      assert.is_nil(cres.body:find("sk-alice-0123456789", 1, true))
      local one = select(2, admin(gw, "GET", "/admin/consumers/carol"))
      assert.equal("search", one.team)
    end)

    it("refuse malformed JSON and bad fields (400), duplicates (409), unknown names (404)", function()
      local status, doc = admin(gw, "POST", "/admin/consumers", '{"name": ')
      assert.equal(400, status)
      assert.truthy(doc.error.message)
      status, doc = admin(gw, "POST", "/admin/consumers", '{"team":"search"}')
      assert.equal(400, status)
      assert.matches("name: required", doc.error.message)
      status, doc = admin(gw, "POST", "/admin/consumers", '{"name":"x","budget":{"usd":-5,"period":"1mo"}}')
      assert.equal(400, status)
      assert.matches("budget.usd", doc.error.message)
      status, doc = admin(gw, "POST", "/admin/consumers", '{"name":"x","budget":{"usd":1e400,"period":"1mo"}}')
      assert.equal(400, status)
      assert.matches("budget.usd: must be a finite number", doc.error.message, 1, true)
      for _, bad in ipairs({ '""', '"a\\nb"', '"' .. string.rep("n", 201) .. '"' }) do
        status, doc = admin(gw, "POST", "/admin/consumers", '{"name":' .. bad .. '}')
        assert.equal(400, status, bad)
        assert.matches("name: must", doc.error.message, 1, true)
      end
      status, doc = admin(gw, "POST", "/admin/consumers", '{"name":"x","team":"nobody"}')
      assert.equal(400, status)
      assert.matches("team", doc.error.message)
      assert.equal(409, (admin(gw, "POST", "/admin/consumers", '{"name":"alice"}')))
      assert.equal(409, (admin(gw, "POST", "/admin/consumers", '{"name":"carol"}')))
      assert.equal(409, (admin(gw, "POST", "/admin/consumers", '{"name":"x","key":"sk-bob-0123456789"}')))
      assert.equal(409, (admin(gw, "POST", "/admin/consumers", '{"name":"x","key":"sk-dave-chosen-key"}')))
      assert.equal(404, (admin(gw, "DELETE", "/admin/consumers/nobody")))
      assert.equal(404, (admin(gw, "GET", "/admin/consumers/nobody")))
      assert.equal(409, (admin(gw, "DELETE", "/admin/consumers/alice")))
    end)

    it("stop working once deleted", function()
      assert.equal(200, (admin(gw, "DELETE", "/admin/consumers/carol")))
      for _ = 1, 10 do
        assert.equal(401, (chat(gw, { Authorization = "Bearer " .. key })))
      end
      assert.equal(404, (admin(gw, "DELETE", "/admin/consumers/carol")))
    end)

    it("survive a restart with the same data_dir", function()
      local code = gw:stop()
      assert.equal(0, code)
      gw = helpers.start_gateway(CONFIG, { dir = gw.dir, port = gw.port, admin_port = gw.admin_port })
      assert.equal(200, (chat(gw, { ["api-key"] = "sk-dave-chosen-key" })))
      assert.equal(401, (chat(gw, { Authorization = "Bearer " .. key })))
      local _, doc = admin(gw, "GET", "/admin/consumers")
      assert.equal(3, #doc.consumers)
      -- and keep being managed
      assert.equal(200, (admin(gw, "DELETE", "/admin/consumers/dave")))
      assert.equal(401, (chat(gw, { ["api-key"] = "sk-dave-chosen-key" })))
    end)

    it("keep their names and keys from gateway.lua: a reload that reuses one is refused", function()
      assert.equal(201, (admin(gw, "POST", "/admin/consumers", '{"name":"erin","key":"sk-erin-run-time-key"}')))
      gw:write_config(CONFIG:gsub('{ name = "bob", key = "sk%-bob%-0123456789" },',
        '{ name = "bob", key = "sk-bob-0123456789" }, { name = "erin", key = "sk-erin-other-key" },' ..
        ' { name = "fay", key = "sk-erin-run-time-key" },'))
      local status, doc = admin(gw, "POST", "/admin/reload")
      assert.equal(400, status)
      local errs = table.concat(doc.error.errors, "\n")
      assert.matches('consumers[3].name: "erin" is already a consumer created at run time', errs, 1, true)
      assert.matches('consumers[4].key: is already the key of the consumer "erin"', errs, 1, true)
      assert.matches("POST /admin/reload: config not reloaded (400)", gw:log(), 1, true)
      -- the running config is kept: erin's run-time key still works, and only once in the list
      assert.equal(200, (chat(gw, { Authorization = "Bearer sk-erin-run-time-key" })))
      local _, list = admin(gw, "GET", "/admin/consumers")
      local n = 0
      for _, c in ipairs(list.consumers) do if c.name == "erin" then n = n + 1 end end
      assert.equal(1, n)
      gw:write_config(CONFIG)
    end)

    it("keep their team: a reload that removes it is refused", function()
      assert.equal(201, (admin(gw, "POST", "/admin/consumers", '{"name":"gus","team":"search"}')))
      gw:write_config((CONFIG:gsub("teams = { search = {} }", "teams = {}"):gsub(' team = "search",', "")))
      local status, doc = admin(gw, "POST", "/admin/reload")
      assert.equal(400, status)
      assert.matches('teams: "search" is the team of the consumer "gus" created at run time',
        table.concat(doc.error.errors, "\n"), 1, true)
      gw:write_config(CONFIG)
      assert.equal(200, (admin(gw, "DELETE", "/admin/consumers/gus")))
    end)
  end)
end)
