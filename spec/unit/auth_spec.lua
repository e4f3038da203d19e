-- The auth plugin and moongate.consumers: key hashing, reading keys, config consumers, and the
-- run-time store (data_dir file + gw.shared, here the in-memory moongate.shared_lua).
local auth = require("auth")
local config = require("moongate.config")
local consumers = require("moongate.consumers")
local gw = require("gw")
local cjson = require("cjson.safe")

local function tmpdir()
  local name = os.tmpname()
  os.remove(name)
  assert(os.execute("mkdir -p '" .. name .. "'"))
  return name
end

local function load_config(dir, text)
  local f = assert(io.open(dir .. "/gateway.lua", "w"))
  f:write(text)
  f:close()
  return config.load(dir .. "/gateway.lua", { plugin_dirs = { "plugins" }, env = function() end })
end

local CONFIG = [[
providers = { m = { type = "mock" } }
backends = { main = { provider = "m", model = false } }
routes = { { match = { path_prefix = "/v1" }, backend = "main" } }
teams = { search = {} }
consumers = {
  { name = "alice", key = "sk-alice-secret-1", team = "search", models = { "gpt-4o", "gpt-4o-mini" } },
  { name = "bob", key = "sk-bob-secret-22" },
}
plugins = { { name = "auth" } }
]]

local function contains(t, needle, seen)
  seen = seen or {}
  if type(t) == "string" then return t:find(needle, 1, true) ~= nil end
  if type(t) ~= "table" or seen[t] then return false end
  seen[t] = true
  for k, v in pairs(t) do
    if contains(k, needle, seen) or contains(v, needle, seen) then return true end
  end
  return false
end

describe("shipped plugins", function()
  it("have the documented priorities, no two alike (docs/limits.md)", function()
    local want = { router = 3000, auth = 2500, rate_limit = 2000, budget = 1900, cost = 1800,
                   balancer = 1000, health = 950, provider = 900 }
    local seen = {}
    local p = io.popen("ls plugins/*.lua")
    for file in p:lines() do
      local mod = assert(loadfile(file))()
      local name = file:match("([%w_]+)%.lua$")
      if want[name] then assert.equal(want[name], mod.priority, name) end
      assert.is_nil(seen[mod.priority], name .. " has the priority of " .. tostring(seen[mod.priority]))
      seen[mod.priority] = name
    end
    p:close()
  end)
end)

describe("auth", function()
  local dir, cfg

  before_each(function()
    gw.shared._reset()
    dir = tmpdir()
    local errs
    cfg, errs = load_config(dir, CONFIG)
    assert(cfg, errs and table.concat(errs, "\n"))
  end)

  after_each(function()
    os.execute("rm -rf '" .. dir .. "'")
  end)

  local function request(headers, model, path)
    path = path or "/v1/chat/completions"
    return { config = cfg, vars = {}, format = path:sub(1, 12) == "/v1/messages" and "anthropic" or "openai",
             request = { headers = headers, model = model, path = path } }
  end

  describe("keys", function()
    it("are hashed with SHA-256 (hex)", function()
      assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", consumers.hash_key("abc"))
      assert.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", consumers.hash_key(""))
      -- two blocks of padding
      assert.equal("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
        consumers.hash_key("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"))
    end)

    it("are compared in full", function()
      assert.is_true(consumers.const_eq("abc", "abc"))
      assert.is_false(consumers.const_eq("abc", "abd"))
      assert.is_false(consumers.const_eq("abc", "ab"))
    end)

    it("are read from Authorization: Bearer, x-api-key and api-key", function()
      assert.equal("k1", auth.key_of({ authorization = "Bearer k1" }))
      assert.equal("k1", auth.key_of({ authorization = "bearer   k1 " }))
      assert.equal("k2", auth.key_of({ ["x-api-key"] = "k2" }))
      assert.equal("k3", auth.key_of({ ["api-key"] = " k3" }))
      assert.equal("k2", auth.key_of({ authorization = "Basic dXNlcjpwYXNz", ["x-api-key"] = "k2" }))
      assert.is_nil(auth.key_of({ authorization = "Basic dXNlcjpwYXNz" }))
      assert.is_nil(auth.key_of({}))
    end)

    it("are not kept in plain text by the config", function()
      assert.is_false(contains(cfg, "sk-alice-secret-1"))
      assert.is_false(contains(cfg, "sk-bob-secret-22"))
      assert.equal(consumers.hash_key("sk-alice-secret-1"), cfg.consumers[1].key_sha256)
    end)

    it("are generated as sk-mg- and 64 hex characters", function()
      local a, b = consumers._new_key(), consumers._new_key()
      assert.matches("^sk%-mg%-" .. string.rep("%x", 64) .. "$", a)
      assert.not_equal(a, b)
    end)
  end)

  describe("the plugin", function()
    it("answers 401 without a key or with a wrong one, in the client's format", function()
      local rv = auth.on_request(request({}, "gpt-4o"), {})
      assert.equal(401, rv.status)
      assert.equal("missing_api_key", cjson.decode(rv.body).error.code)
      rv = auth.on_request(request({ authorization = "Bearer sk-nope" }, "gpt-4o"), {})
      assert.equal(401, rv.status)
      assert.equal("invalid_api_key", cjson.decode(rv.body).error.code)
      rv = auth.on_request(request({ ["x-api-key"] = "sk-nope" }, "gpt-4o", "/v1/messages"), {})
      assert.equal(401, rv.status)
      local doc = cjson.decode(rv.body)
      assert.equal("error", doc.type)
      assert.equal("authentication_error", doc.error.type)
      assert.is_nil(rv.body:find("sk-nope", 1, true))
    end)

    it("sets ctx.consumer, and refuses a model the key may not use with 403", function()
      local ctx = request({ authorization = "Bearer sk-alice-secret-1" }, "gpt-4o")
      assert.is_nil(auth.on_request(ctx, {}))
      assert.equal("alice", ctx.consumer.name)
      assert.equal("search", ctx.consumer.team)
      local rv = auth.on_request(request({ authorization = "Bearer sk-alice-secret-1" }, "o1"), {})
      assert.equal(403, rv.status)
      assert.equal("model_not_allowed", cjson.decode(rv.body).error.code)
      rv = auth.on_request(request({ ["api-key"] = "sk-alice-secret-1" }, "o1", "/v1/messages"), {})
      assert.equal("permission_error", cjson.decode(rv.body).error.type)
      -- no allow-list: any model
      ctx = request({ ["x-api-key"] = "sk-bob-secret-22" }, "o1")
      assert.is_nil(auth.on_request(ctx, {}))
      assert.equal("bob", ctx.consumer.name)
    end)
  end)

  describe("run-time consumers", function()
    it("are created with a key shown once, listed without it, and deleted", function()
      local status, body = consumers.create(cfg, { name = "carol", team = "search",
        budget = { usd = 5, period = "1d" }, models = "gpt-4o" })
      assert.equal(201, status)
      assert.equal("carol", body.name)
      local key = body.key
      local c = consumers.lookup(cfg, key)
      assert.equal("carol", c.name)
      assert.same({ "gpt-4o" }, c.models)
      assert.same({ seconds = 86400 }, c.budget.period)
      assert.is_true(consumers.allows(c, "gpt-4o"))
      assert.is_false(consumers.allows(c, "o1"))

      local file = assert(io.open(dir .. "/data/consumers.json")):read("*a")
      assert.is_nil(file:find(key, 1, true))
      assert.truthy(file:find(consumers.hash_key(key), 1, true))

      local _, list = consumers.list(cfg)
      local text = cjson.encode(list)
      assert.is_nil(text:find(key, 1, true))
      assert.is_nil(text:find("sk-alice-secret-1", 1, true))
      assert.equal(3, #list.consumers)
      assert.equal("admin", list.consumers[3].source)

      assert.equal(200, (consumers.delete(cfg, "carol")))
      assert.is_nil(consumers.lookup(cfg, key))
      assert.equal(404, (consumers.delete(cfg, "carol")))
    end)

    it("survive a restart (a new gw.shared, the same data_dir)", function()
      local _, body = consumers.create(cfg, { name = "dave", key = "sk-dave-own-key" })
      assert.equal("sk-dave-own-key", body.key)
      gw.shared._reset()
      assert.equal("dave", consumers.lookup(cfg, "sk-dave-own-key").name)
    end)

    it("refuse bad fields (400), duplicates (409) and config consumers' deletion", function()
      local status, body = consumers.create(cfg, { team = "search", extra = 1 })
      assert.equal(400, status)
      assert.matches("name: required", body.error.message)
      assert.matches("extra: unknown option", body.error.message)
      status, body = consumers.create(cfg, { name = "x", budget = { usd = -1, period = "1w" } })
      assert.equal(400, status)
      assert.matches("budget.usd", body.error.message)
      assert.matches("budget.period", body.error.message)
      assert.equal(400, (consumers.create(cfg, { name = "x", team = "nope" })))
      assert.equal(400, (consumers.create(cfg, { name = "x", key = "short" })))
      assert.equal(400, (consumers.create(cfg, false)))
      assert.equal(400, (consumers.create(cfg, { "a", "list" })))
      assert.equal(409, (consumers.create(cfg, { name = "alice" })))
      assert.equal(409, (consumers.create(cfg, { name = "eve", key = "sk-bob-secret-22" })))
      assert.equal(201, (consumers.create(cfg, { name = "eve", key = "sk-eve-key-1" })))
      assert.equal(409, (consumers.create(cfg, { name = "eve" })))
      assert.equal(409, (consumers.create(cfg, { name = "frank", key = "sk-eve-key-1" })))
      assert.equal(409, (consumers.delete(cfg, "alice")))
    end)

    it("are written atomically (no temporary file left)", function()
      consumers.create(cfg, { name = "g" })
      local p = io.popen("ls -a '" .. dir .. "/data'")
      local names = p:read("*a")
      p:close()
      assert.equal(".\n..\nconsumers.json\n", names)
    end)
  end)
end)
