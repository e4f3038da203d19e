-- The command line (SPEC §1): version, check, a broken config refused at
-- start, and the `moongate mock` provider.

local helpers = require "spec.support.helpers"
local cjson   = require "cjson.safe"

local GOOD = [[
listen = { "127.0.0.1:${PORT}" }
providers = { fake = { type = "mock", latency = "1ms" } }
backends = { chat = { provider = "fake", model = "mock-model" } }
routes = { { match = { path_prefix = "/v1" }, backend = "chat" } }
]]

-- Line 3 has the syntax error.
local SYNTAX_ERROR = [[
listen = { "127.0.0.1:${PORT}" }
providers = { fake = { type = "mock" } }
backends = { chat = { provider = "fake" model = "m" } }
routes = { { match = { path_prefix = "/v1" }, backend = "chat" } }
]]

local UNKNOWN_PROVIDER = [[
listen = { "127.0.0.1:${PORT}" }
providers = { openai = { type = "mock" } }
backends = {
  chat = { groups = { { targets = { { provider = "opnai", model = "gpt-4o-mini" } } } } },
}
routes = { { match = { path_prefix = "/v1" }, backend = "chat" } }
]]

local function write_config(dir, name, text, port)
  local path = dir .. "/" .. name
  helpers.write_file(path, (text:gsub("%${PORT}", tostring(port or helpers.free_port()))))
  return path
end

local function refused(port)
  return not pcall(helpers.connect, port, 1)
end

describe("cli", function()
  local dir

  lazy_setup(function()
    dir = helpers.tmpdir()
  end)

  lazy_teardown(function()
    helpers.cleanup()
  end)

  it("version prints moongate's and its libraries' versions", function()
    local code, out = helpers.run({ helpers.bin(), "version" }, { timeout = 10 })
    assert.equal(0, code, out)
    assert.matches("moongate%s+v?%d+%.%d+", out)
    assert.matches("LuaJIT%s+%d+%.%d+", out)
    assert.matches("libuv%s+v?%d+%.%d+", out)
    assert.matches("llhttp%s+v?%d+%.%d+", out)
    assert.matches("mbed ?TLS%s+v?%d+%.%d+", out)
    assert.matches("libcurl%s+v?%d+%.%d+", out)
  end)

  it("check prints ok and exits 0 for a good config", function()
    local path = write_config(dir, "good.lua", GOOD)
    local code, out = helpers.run({ helpers.bin(), "check", "-c", path }, { timeout = 10 })
    assert.equal(0, code, out)
    assert.matches("^ok\n?$", out)
    code, out = helpers.run({ helpers.bin(), "check", "--config=" .. path }, { timeout = 10 })
    assert.equal(0, code, out)
  end)

  it("check reports a Lua syntax error as FILE:LINE: message and exits 1", function()
    local path = write_config(dir, "syntax.lua", SYNTAX_ERROR)
    local code, out = helpers.run({ helpers.bin(), "check", "-c", path }, { timeout = 10 })
    assert.equal(1, code, out)
    assert.matches("syntax%.lua:3: %S", out)
    assert.is_nil(out:match("^ok"), out)
  end)

  it("check reports an unknown provider by its option path and exits 1", function()
    local path = write_config(dir, "unknown.lua", UNKNOWN_PROVIDER)
    local code, out = helpers.run({ helpers.bin(), "check", "-c", path }, { timeout = 10 })
    assert.equal(1, code, out)
    assert.matches("backends.chat.groups[1].targets[1].provider: ", out, 1, true)
    assert.matches("opnai", out, 1, true)
    assert.is_nil(out:match("^ok"), out)
  end)

  it("refuses to start with a syntax error: prints it, exits 1, never listens", function()
    local port = helpers.free_port()
    local path = write_config(dir, "syntax-run.lua", SYNTAX_ERROR, port)
    local code, out = helpers.run({ helpers.bin(), "-c", path }, { timeout = 10 })
    assert.equal(1, code, out)
    assert.matches("syntax%-run%.lua:3: %S", out)
    assert.is_nil(out:find("listening", 1, true), out)
    assert.is_true(refused(port))
  end)

  it("refuses to start with an unknown provider: prints it, exits 1, never listens", function()
    local port = helpers.free_port()
    local path = write_config(dir, "unknown-run.lua", UNKNOWN_PROVIDER, port)
    local code, out = helpers.run({ helpers.bin(), "-c", path }, { timeout = 10 })
    assert.equal(1, code, out)
    assert.matches("backends.chat.groups[1].targets[1].provider: ", out, 1, true)
    assert.is_nil(out:find("listening", 1, true), out)
    assert.is_true(refused(port))
  end)

  it("refuses to start with a provider's ca_file it cannot read (check opens no such file)", function()
    local port = helpers.free_port()
    local path = write_config(dir, "ca-run.lua", [[
listen = { "127.0.0.1:${PORT}" }
admin = { listen = false }
providers = { p = { type = "openai", base_url = "https://example.invalid/v1", ca_file = "no-such-ca.pem" } }
backends = { chat = { provider = "p" } }
routes = { { match = { path_prefix = "/v1" }, backend = "chat" } }
]], port)
    local code, out = helpers.run({ helpers.bin(), "-c", path }, { timeout = 10 })
    assert.equal(1, code, out)
    assert.matches("providers.p.ca_file: cannot read .*no%-such%-ca%.pem", out)
    assert.is_true(refused(port))
    code, out = helpers.run({ helpers.bin(), "check", "-c", path }, { timeout = 10 })
    assert.equal(0, code, out)
  end)

  it("refuses to start when its listen address is taken: prints it, exits 1", function()
    local socket = require "socket"
    local holder = assert(socket.bind("127.0.0.1", 0))
    local _, port = holder:getsockname()
    local path = write_config(dir, "taken.lua", GOOD, port)
    local code, out = helpers.run({ helpers.bin(), "-c", path }, { timeout = 10 })
    holder:close()
    assert.equal(1, code, out)
    assert.matches("127.0.0.1:" .. port, out, 1, true)
  end)

  it("refuses to start when its admin address is taken: prints it, exits 1", function()
    local socket = require "socket"
    local holder = assert(socket.bind("127.0.0.1", 0))
    local _, admin_port = holder:getsockname()
    local port = helpers.free_port()
    local path = write_config(dir, "admin-taken.lua",
      GOOD .. 'admin = { listen = "127.0.0.1:' .. admin_port .. '" }\n', port)
    local code, out = helpers.run({ helpers.bin(), "-c", path }, { timeout = 10 })
    holder:close()
    assert.equal(1, code, out)
    assert.matches("127.0.0.1:" .. admin_port, out, 1, true)
    assert.is_true(refused(port))
  end)

  it("check reports a missing config file and exits 1", function()
    local code, out = helpers.run({ helpers.bin(), "check", "-c", dir .. "/does-not-exist.lua" },
                                  { timeout = 10 })
    assert.equal(1, code, out)
    assert.matches("does%-not%-exist%.lua", out)
    -- the path once: "cannot read FILE: No such file or directory"
    assert.equal(1, select(2, out:gsub("does%-not%-exist%.lua", "")), out)
    assert.matches("No such file or directory", out, 1, true)
  end)

  it("says a config path that is a folder is one (not 'nil'), and exits 1", function()
    local code, out = helpers.run({ helpers.bin(), "check", "-c", dir }, { timeout = 10 })
    assert.equal(1, code, out)
    assert.matches("it is a folder, not a file", out, 1, true)
  end)

  it("says that -c needs a file, and exits 2", function()
    local code, out = helpers.run({ helpers.bin(), "-c" }, { timeout = 10 })
    assert.equal(2, code, out)
    assert.matches("-c needs a file", out, 1, true)
  end)

  it("prints moongate mock's help and exits 0 (it used to go on running)", function()
    for _, flag in ipairs({ "--help", "-h" }) do
      local code, out = helpers.run({ helpers.bin(), "mock", flag }, { timeout = 10 })
      assert.equal(0, code, out)
      assert.matches("usage: moongate mock", out, 1, true)
    end
  end)

  describe("mock", function()
    local port, proc

    lazy_setup(function()
      port = helpers.free_port()
      proc = helpers.spawn({ helpers.bin(), "mock", "--listen", "127.0.0.1:" .. port,
                             "--latency", "1" }, { log = dir .. "/mock.log" })
      helpers.wait_until(function()
        assert(proc:alive(), "moongate mock exited: " .. (helpers.read_file(dir .. "/mock.log") or ""))
        local c = helpers.connect(port, 1)
        c:close()
        return true
      end, 10, "moongate mock listening")
    end)

    lazy_teardown(function()
      proc:kill()
      local code = proc:wait(10)
      assert(code == 0, "moongate mock exit code on SIGTERM: " .. tostring(code) .. "\n"
                        .. (helpers.read_file(dir .. "/mock.log") or ""))
    end)

    local function post(path, body)
      return helpers.http(port, { method = "POST", path = path, body = body,
                                  headers = { ["Content-Type"] = "application/json" } })
    end

    it("serves a chat completion", function()
      local res = post("/v1/chat/completions",
                       '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}')
      assert.equal(200, res.status)
      local body = helpers.json(res)
      assert.equal("chat.completion", body.object)
      assert.equal("gpt-4o-mini", body.model)
      assert.equal("assistant", body.choices[1].message.role)
      assert.is_string(body.choices[1].message.content)
      assert.truthy(#body.choices[1].message.content > 0)
      assert.is_number(body.usage.prompt_tokens)
      assert.is_number(body.usage.completion_tokens)
    end)

    it("streams a chat completion", function()
      local s = helpers.stream(port, {
        method = "POST", path = "/v1/chat/completions",
        headers = { ["Content-Type"] = "application/json" },
        body = '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}',
      })
      assert.equal(200, s.status)
      assert.matches("text/event-stream", s.headers["content-type"], 1, true)
      local events, reason = s:read_all(10)
      assert.equal("eof", reason)
      assert.truthy(#events >= 2)
      assert.equal("[DONE]", helpers.parse_sse(events[#events]).data)
      local first = cjson.decode(helpers.parse_sse(events[1]).data)
      assert.equal("chat.completion.chunk", first.object)
    end)

    it("serves Anthropic messages", function()
      local res = post("/v1/messages",
        '{"model":"claude-3-5-haiku-latest","max_tokens":20,"messages":[{"role":"user","content":"hi"}]}')
      assert.equal(200, res.status)
      local body = helpers.json(res)
      assert.equal("message", body.type)
      assert.equal("assistant", body.role)
      assert.equal("text", body.content[1].type)
      assert.is_number(body.usage.input_tokens)
    end)

    it("lists models", function()
      local res = helpers.http(port, { path = "/v1/models" })
      assert.equal(200, res.status)
      local body = helpers.json(res)
      assert.equal("list", body.object)
      assert.truthy(#body.data > 0)
      assert.is_string(body.data[1].id)
    end)
  end)
end)
