-- examples/plugins/system_prompt.lua with a fake ctx (examples/plugins/testing.lua).
local t = dofile("examples/plugins/testing.lua")
local gw = require("gw")

local FILE = "examples/plugins/system_prompt.lua"
local TEXT = 'Be brief. Say "hi" / \\o/'

local function run(path, body, entry)
  entry = entry or {}
  entry.text = entry.text or TEXT
  local plugin, conf = t.load(FILE, entry)
  local ctx = t.ctx({ path = path, body = body })
  local up = t.upstream(ctx)
  assert.is_nil(t.call(plugin, "on_upstream_request", ctx, conf))
  return up.body, ctx, plugin, conf
end

local ENC = gw.json.encode(TEXT)
local SYS = '{"role":"system","content":' .. ENC .. '}'

describe("examples/plugins/system_prompt", function()
  it("needs a text; position is prepend or append", function()
    assert.has_error(function() t.load(FILE, {}) end, "plugins[1].text: required")
    assert.has_error(function() t.load(FILE, { text = "x", position = "middle" }) end)
    local plugin, conf = t.load(FILE, { text = "x" })
    assert.equal("prepend", conf.position)
    assert.equal(910, plugin.priority)   -- above the provider plugin (900)
  end)

  describe("OpenAI chat", function()
    local P = "/v1/chat/completions"
    it("puts a system message first, keeping every other byte", function()
      local body = '{"model":"gpt-4o", "seed":12345678901234567, "tools":[],\n "messages":[ {"role":"user","content":"hi"} ]}'
      local out = run(P, body)
      assert.equal('{"model":"gpt-4o", "seed":12345678901234567, "tools":[],\n "messages":[ ' .. SYS ..
        ',{"role":"user","content":"hi"} ]}', out)
      assert.equal(TEXT, gw.json.decode(out).messages[1].content)
    end)

    it("an empty messages list gets just the system message", function()
      assert.equal('{"model":"m","messages":[' .. SYS .. ']}', run(P, '{"model":"m","messages":[]}'))
    end)

    it("prepend goes before the client's own system message; append after its leading ones", function()
      local body = '{"messages":[{"role":"system","content":"own"},{"role":"developer","content":"dev"},' ..
        '{"role":"user","content":"hi"},{"role":"system","content":"late"}]}'
      local pre = gw.json.decode(run(P, body))
      assert.same({ "system", "system", "developer", "user", "system" },
        { pre.messages[1].role, pre.messages[2].role, pre.messages[3].role, pre.messages[4].role, pre.messages[5].role })
      assert.equal(TEXT, pre.messages[1].content)
      local post = gw.json.decode(run(P, body, { position = "append" }))
      assert.equal("own", post.messages[1].content)
      assert.equal("dev", post.messages[2].content)
      assert.equal(TEXT, post.messages[3].content)
      assert.equal("hi", post.messages[4].content)
      -- only system messages: appended at the end
      local only = gw.json.decode(run(P, '{"messages":[{"role":"system","content":"own"}]}', { position = "append" }))
      assert.equal(TEXT, only.messages[2].content)
    end)

    it("only_if_missing leaves a request with its own system prompt alone", function()
      local body = '{"messages":[{"role":"user","content":"a"},{"role":"system","content":"own"}]}'
      assert.equal(body, run(P, body, { only_if_missing = true }))
      local out = gw.json.decode(run(P, '{"messages":[{"role":"user","content":"a"}]}', { only_if_missing = true }))
      assert.equal(TEXT, out.messages[1].content)
    end)

    it("leaves bodies it cannot read, and other endpoints, unchanged", function()
      assert.equal('{"model":"m","messages":"nope"}', run(P, '{"model":"m","messages":"nope"}'))
      assert.equal('{"model":"m"}', run(P, '{"model":"m"}'))
      assert.equal('{"model":"m","input":"x"}', run("/v1/embeddings", '{"model":"m","input":"x"}'))
    end)

    it("a key named like a member inside a message does not confuse it", function()
      local body = '{"x":{"messages":[1]},"messages":[{"role":"user","content":"\\"messages\\": ["}]}'
      local out = gw.json.decode(run(P, body))
      assert.same({ 1 }, out.x.messages)
      assert.equal(TEXT, out.messages[1].content)
    end)

    it("computes once per request, and every attempt gets it", function()
      local body = '{"messages":[{"role":"user","content":"hi"}]}'
      local out, ctx, plugin, conf = run(P, body)
      local calls = 0
      local orig = plugin.decorate
      plugin.decorate = function(...) calls = calls + 1 return orig(...) end
      for _ = 1, 3 do
        local up = t.upstream(ctx)
        plugin.on_upstream_request(ctx, conf)
        assert.equal(out, up.body)
      end
      assert.equal(0, calls)
      plugin.decorate = orig
    end)
  end)

  describe("Anthropic messages", function()
    local P = "/v1/messages"
    it("adds a system string when there is none", function()
      assert.equal('{"system":' .. ENC .. ',"model":"c","max_tokens":5,"messages":[]}',
        run(P, '{"model":"c","max_tokens":5,"messages":[]}'))
      assert.equal('{"system":' .. ENC .. '}', run(P, '{}'))
    end)

    it("joins a string system prompt, before or after", function()
      local body = '{"model":"c","system":"own \\u00e9","messages":[]}'
      assert.equal(TEXT .. "\n\nown \195\169", gw.json.decode(run(P, body)).system)
      assert.equal("own \195\169 | " .. TEXT, gw.json.decode(run(P, body, { position = "append", separator = " | " })).system)
      assert.equal(TEXT, gw.json.decode(run(P, '{"system":"","messages":[]}')).system)
      assert.equal(TEXT, gw.json.decode(run(P, '{"system":null,"messages":[]}')).system)
      assert.equal(body, run(P, body, { only_if_missing = true }))
    end)

    it("adds a text block to a list of blocks, first or last", function()
      local body = '{"system":[{"type":"text","text":"own","cache_control":{"type":"ephemeral"}}],"messages":[]}'
      assert.equal('{"system":[{"type":"text","text":' .. ENC .. '},{"type":"text","text":"own","cache_control":' ..
        '{"type":"ephemeral"}}],"messages":[]}', run(P, body))
      local post = gw.json.decode(run(P, body, { position = "append" }))
      assert.equal("own", post.system[1].text)
      assert.equal(TEXT, post.system[2].text)
      assert.equal('{"system":[{"type":"text","text":' .. ENC .. '}]}', run(P, '{"system":[]}'))
    end)
  end)
end)
