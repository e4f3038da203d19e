-- config/gateway.lua, the config `scripts/run.sh` starts: OpenAI when
-- OPENAI_API_KEY is set, the built-in mock provider otherwise.
local config = require("moongate.config")

local function load(env)
  return config.load("config/gateway.lua", {
    plugin_dirs = { "plugins" },
    env = function(name) return env[name] end,
  })
end

describe("the default config", function()
  it("routes /v1 to the mock provider without OPENAI_API_KEY", function()
    local cfg, errs = load({})
    assert.is_table(cfg, errs and table.concat(errs, "\n"))
    local t = cfg.backends.default.groups[1].targets[1]
    assert.equal("mock", cfg.providers[t.provider].type)
    assert.is_nil(cfg.providers.openai)
    assert.equal(false, t.model)
    assert.equal("/v1", cfg.routes[1].match.path_prefix)
    assert.equal("127.0.0.1", cfg.listen[1].host)
    assert.equal(8080, cfg.listen[1].port)
    assert.equal(9901, cfg.admin.listen.port)
  end)

  it("routes /v1 to OpenAI with the key when OPENAI_API_KEY is set", function()
    local cfg, errs = load({ OPENAI_API_KEY = "sk-test-123" })
    assert.is_table(cfg, errs and table.concat(errs, "\n"))
    local t = cfg.backends.default.groups[1].targets[1]
    local p = cfg.providers[t.provider]
    assert.equal("openai", p.type)
    assert.equal("https://api.openai.com/v1", p.base_url)
    assert.equal("sk-test-123", p.api_key)
    assert.equal(false, t.model)        -- the client's model goes to OpenAI as asked
  end)

  it("turns the admin API on only with MOONGATE_ADMIN_TOKEN", function()
    assert.is_nil(load({}).admin.token)
    assert.equal("secret", load({ MOONGATE_ADMIN_TOKEN = "secret" }).admin.token)
  end)
end)
