-- The shipped config/gateway.lua works offline: without OPENAI_API_KEY it
-- answers from the in-process mock provider, plain and streamed. The file is
-- copied with only its two listen addresses changed to free ports.

local helpers = require "spec.support.helpers"
local cjson   = require "cjson.safe"

describe("default config", function()
  local gw

  lazy_setup(function()
    local text = assert(helpers.read_file(helpers.root .. "/config/gateway.lua"))
    local n1, n2
    text, n1 = text:gsub('"127%.0%.0%.1:8080"', '"127.0.0.1:${PORT}"')
    text, n2 = text:gsub('"127%.0%.0%.1:9901"', '"127.0.0.1:${ADMIN_PORT}"')
    assert(n1 == 1 and n2 == 1, "config/gateway.lua no longer listens on 127.0.0.1:8080 and "
                                .. "admin 127.0.0.1:9901; update this spec")
    -- The copy sits one folder down, so its relative paths (data_dir = "../data")
    -- stay inside the temporary directory.
    local dir = helpers.tmpdir() .. "/config"
    assert(os.execute("mkdir -p '" .. dir .. "'"))
    gw = helpers.start_gateway(text, {
      dir = dir, cwd = dir,
      env = { OPENAI_API_KEY = false, MOONGATE_ADMIN_TOKEN = false },
    })
  end)

  lazy_teardown(function()
    helpers.stop_and_check(gw)
  end)

  it("answers a chat completion from the mock provider", function()
    local res = helpers.http(gw.port, {
      method = "POST", path = "/v1/chat/completions",
      headers = { ["Content-Type"] = "application/json", Authorization = "Bearer anything" },
      body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hi"}]}',
    })
    assert.equal(200, res.status, res.body)
    local body = helpers.json(res)
    assert.equal("chat.completion", body.object)
    assert.equal("gpt-4o-mini", body.model)           -- model = false keeps the client's
    assert.is_string(body.choices[1].message.content)
    assert.truthy(#body.choices[1].message.content > 0)
    assert.equal("1", res.headers["x-moongate-attempts"])
    assert.matches("^mock", res.headers["x-moongate-target"] or "")
  end)

  it("streams a chat completion from the mock provider", function()
    local s = helpers.stream(gw.port, {
      method = "POST", path = "/v1/chat/completions",
      headers = { ["Content-Type"] = "application/json" },
      body = '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Say hi"}]}',
    })
    assert.equal(200, s.status)
    assert.matches("text/event-stream", s.headers["content-type"], 1, true)
    local events, reason = s:read_all(10)
    assert.equal("eof", reason)
    assert.truthy(#events >= 2)
    assert.equal("[DONE]", helpers.parse_sse(events[#events]).data)
    local text = {}
    for i = 1, #events - 1 do
      local obj = cjson.decode(helpers.parse_sse(events[i]).data or "")
      assert.is_table(obj, events[i])
      assert.equal("chat.completion.chunk", obj.object)
      local d = obj.choices[1] and obj.choices[1].delta
      if d and d.content then text[#text + 1] = d.content end
    end
    assert.truthy(#table.concat(text) > 0, "no content streamed")
  end)

  it("lists models from the mock provider", function()
    local res = helpers.http(gw.port, { path = "/v1/models" })
    assert.equal(200, res.status, res.body)
    assert.equal("list", helpers.json(res).object)
  end)

  it("answers /ready on its admin port", function()
    assert.equal(200, helpers.http(gw.admin_port, { path = "/ready" }).status)
  end)
end)
