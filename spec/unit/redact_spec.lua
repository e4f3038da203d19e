-- GET /admin/config's view of the config: no secret survives, everything
-- else does, functions are named, the original is untouched.
local config = require("moongate.config")
local redact = require("moongate.redact")
local cjson = require("cjson.safe")

local CONFIG = [[
listen = { "127.0.0.1:8080" }
admin = { listen = "127.0.0.1:9901", token = "admin-token-1234" }
providers = {
  openai = { type = "openai", api_key = "sk-live-abcdef" },
  vllm = { type = "openai", base_url = "http://vllm.internal:8000/v1",
           headers = { ["x-api-key"] = "hdr-key-9876", Authorization = "Bearer hdr-bearer-555",
                       ["x-tenant"] = "blue" } },
  gem = { type = "openai", base_url = "https://user:basic-pass-777@llm.example.com/v1" },
}
backends = { chat = { provider = "openai", model = "gpt-4o-mini" } }
routes = { { name = "r", match = { path_prefix = "/v1", when = function(ctx) return true end },
             backend = "chat" } }
teams = { search = { budget = { usd = 10, period = "1mo" } } }
consumers = { { name = "alice", key = "consumer-key-4242", team = "search" } }
plugins = {
  { name = "guard", secret = "plugin-secret-31337", mode = "strict",
    handler = { on_request = function() end } },
}
]]

describe("redact.config", function()
  local cfg, view, text

  setup(function()
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write(CONFIG)
    f:close()
    local errs
    cfg, errs = config.load(path, { plugin_dirs = { "plugins" }, env = function() end })
    os.remove(path)
    assert(cfg, errs and table.concat(errs, "\n"))
    cfg._chains = { cached = function() end }   -- what the runtime adds
    view = redact.config(cfg)
    text = assert(cjson.encode(view))
  end)

  it("leaves out every secret", function()
    for _, s in ipairs({ "admin-token-1234", "sk-live-abcdef", "hdr-key-9876", "hdr-bearer-555",
                         "basic-pass-777", "consumer-key-4242", "plugin-secret-31337" }) do
      assert.is_nil(text:find(s, 1, true), s .. " is shown")
    end
    assert.equal("[redacted]", view.providers.openai.api_key)
    assert.equal("[redacted]", view.admin.token)
    -- the config keeps consumer keys as digests only (moongate.consumers); those are hidden too
    assert.is_nil(view.consumers[1].key)
    assert.equal("[redacted]", view.consumers[1].key_sha256)
    assert.equal("[redacted]", view.providers.vllm.headers.Authorization
                               or view.providers.vllm.headers.authorization)
    assert.equal("https://[redacted]@llm.example.com/v1", view.providers.gem.base_url)
  end)

  it("shows everything else", function()
    assert.equal("127.0.0.1", view.listen[1].host)
    assert.equal(9901, view.admin.listen.port)
    assert.equal("http://vllm.internal:8000/v1", view.providers.vllm.base_url)
    assert.equal("blue", view.providers.vllm.headers["x-tenant"])
    assert.equal("/v1", view.routes[1].match.path_prefix)
    assert.equal("search", view.consumers[1].team)
    local guard
    for _, p in ipairs(view.plugins) do if p.name == "guard" then guard = p end end
    assert.equal("strict", guard.conf.mode)
    assert.equal("[redacted]", guard.conf.secret)
    assert.is_nil(guard.plugin)
  end)

  it("names functions and drops runtime caches", function()
    assert.equal("<function>", view.routes[1].match.when)
    assert.is_nil(view._chains)
    assert.is_nil(text:find("function: 0x", 1, true))
  end)

  it("does not change the config it is given", function()
    assert.equal("sk-live-abcdef", cfg.providers.openai.api_key)
    assert.equal("admin-token-1234", cfg.admin.token)
    assert.is_function(cfg.routes[1].match.when)
    assert.is_table(cfg._chains)
  end)

  it("survives cycles", function()
    local t = { name = "a" }
    t.self = t
    local v = redact.config({ x = t, y = { t, t } })
    assert.equal("<cycle>", v.x.self)
    assert.equal("a", v.y[1].name)
    assert.equal("a", v.y[2].name)   -- shared, not cyclic
    assert.truthy(cjson.encode(v))
  end)
end)
