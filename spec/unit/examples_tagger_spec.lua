-- examples/plugins/tagger.lua with a fake ctx (examples/plugins/testing.lua).
local t = dofile("examples/plugins/testing.lua")

local FILE = "examples/plugins/tagger.lua"

local RULES = {
  { header = "X-Client-App", equals = "ios", tag = "mobile" },
  { header = "user-agent", pattern = "^OpenAI/Python", tag = "python-sdk" },
  { header = "x-team", pattern = "^(%w+)%-(%w+)$", tag = "team-%1-%2" },
  { header = "x-debug", tag = "debug" },
}

describe("examples/plugins/tagger", function()
  it("checks its options as the gateway's loader does", function()
    local plugin = dofile(FILE)
    assert.equal("tagger", plugin.name)
    assert.equal(3100, plugin.priority)   -- before the router (3000)
    assert.has_error(function() t.load(FILE, { tag = 5 }) end, "plugins[1].tag: expected string")
    assert.has_error(function() t.load(FILE, { rules = { { header = "x" } } }) end,
      "plugins[1].rules[1].tag: required")
    assert.has_error(function() t.load(FILE, { colour = "red" }) end, "plugins[1].colour: unknown option")
    assert.has_error(function() t.load(FILE, { rules = { { header = "x", pattern = "(", tag = "a" } } }) end)
    assert.has_error(function()
      t.load(FILE, { rules = { { header = "x", pattern = "a", equals = "a", tag = "a" } } })
    end, "plugins[1].rules[1]: use equals or pattern, not both")
    local _, conf = t.load(FILE, {})
    assert.equal("x-moongate-tag", conf.header)
    assert.is_true(conf.upstream)
    assert.is_true(conf.response)
  end)

  it("takes the first rule that matches: equals, pattern with captures, presence, the default", function()
    local plugin, conf = t.load(FILE, { tag = "web", rules = RULES })
    local function tag(headers)
      local ctx = t.ctx({ headers = headers })
      plugin.on_route(ctx, conf)
      return ctx.vars.tag, ctx
    end
    assert.equal("mobile", tag({ ["x-client-app"] = "ios" }))
    assert.equal("web", tag({ ["x-client-app"] = "android" }))
    assert.equal("python-sdk", tag({ ["user-agent"] = "OpenAI/Python 1.50.0" }))
    assert.equal("team-search-eu", tag({ ["x-team"] = "search-eu" }))
    assert.equal("web", tag({ ["x-team"] = "search eu" }))
    assert.equal("debug", tag({ ["x-debug"] = "" }))
    assert.equal("mobile", tag({ ["x-client-app"] = "ios", ["x-debug"] = "1" }))   -- rule order
    local _, ctx = tag({})
    assert.equal("web", ctx.request.headers["x-moongate-tag"])
  end)

  it("replaces a tag the client sent, and removes it when there is no tag", function()
    local plugin, conf = t.load(FILE, { rules = RULES })
    local ctx = t.ctx({ headers = { ["x-moongate-tag"] = "admin", ["x-client-app"] = "ios" } })
    plugin.on_route(ctx, conf)
    assert.equal("mobile", ctx.request.headers["x-moongate-tag"])
    ctx = t.ctx({ headers = { ["x-moongate-tag"] = "admin" } })
    plugin.on_route(ctx, conf)
    assert.is_nil(ctx.vars.tag)
    assert.is_nil(ctx.request.headers["x-moongate-tag"])
  end)

  it("tags in on_request when listed on a route, once per request", function()
    local plugin, conf = t.load(FILE, { tag = "blue" })
    local ctx = t.ctx()
    assert.is_nil(t.call(plugin, "on_request", ctx, conf))
    assert.equal("blue", ctx.vars.tag)
    ctx.vars.tag = "changed-by-another-plugin"
    plugin.on_request(ctx, conf)
    assert.equal("changed-by-another-plugin", ctx.vars.tag)
  end)

  it("sends the tag to the client in on_response, and keeps it from either side when asked", function()
    local plugin, conf = t.load(FILE, { tag = "blue", header = "X-Tag" })
    local ctx = t.ctx()
    plugin.on_route(ctx, conf)
    plugin.on_request(ctx, conf)
    assert.equal("blue", ctx.request.headers["x-tag"])
    t.response(ctx, 200)
    plugin.on_response(ctx, conf)
    assert.equal("blue", ctx.response.headers["x-tag"])

    plugin, conf = t.load(FILE, { tag = "blue", upstream = false, response = false })
    ctx = t.ctx()
    plugin.on_route(ctx, conf)
    assert.equal("blue", ctx.request.headers["x-moongate-tag"])   -- routes may still match on it
    plugin.on_request(ctx, conf)
    assert.is_nil(ctx.request.headers["x-moongate-tag"])          -- but it does not go upstream
    t.response(ctx, 200)
    plugin.on_response(ctx, conf)
    assert.is_nil(ctx.response.headers["x-moongate-tag"])
  end)

  it("logs one line with the tag when log = true", function()
    local plugin, conf = t.load(FILE, { tag = "blue", log = true })
    local gw = require("gw")
    local lines = {}
    local orig = gw.log
    gw.log = function(level, ...) lines[#lines + 1] = level .. " " .. table.concat({ ... }, " ") end
    local ok, err = pcall(function()
      local ctx = t.ctx()
      plugin.on_route(ctx, conf)
      t.response(ctx, 200)
      plugin.on_log(ctx, conf)
    end)
    gw.log = orig
    assert(ok, err)
    assert.same({ "info tag=blue route=- status=200" }, lines)
  end)
end)
