-- moongate.errors: gateway errors in the client's own format (SPEC §3).
local errors = require("moongate.errors")
local gw = require("gw")
local cjson = require("cjson.safe")

describe("errors.format_of", function()
  it("is anthropic on /v1/messages paths", function()
    assert.equal("anthropic", errors.format_of("/v1/messages"))
    assert.equal("anthropic", errors.format_of("/v1/messages/count_tokens"))
  end)

  it("is openai elsewhere", function()
    for _, p in ipairs({ "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
                         "/openai", "/", "", "/v1/message", "/v2/messages", "/x/v1/messages" }) do
      assert.equal("openai", errors.format_of(p), p)
    end
  end)

  it("is anthropic on /v1/models paths when the Anthropic SDK asks (anthropic-version)", function()
    local sdk = { ["anthropic-version"] = "2023-06-01" }
    assert.equal("anthropic", errors.format_of("/v1/models", sdk))
    assert.equal("anthropic", errors.format_of("/v1/models/claude-3-5-haiku", sdk))
    assert.equal("openai", errors.format_of("/v1/models/gpt-4o", {}))
    assert.equal("openai", errors.format_of("/v1/chat/completions", sdk))
  end)
end)

describe("errors.body (openai)", function()
  local function decode(status, message, code)
    local s = errors.body("openai", status, message, code)
    assert.is_string(s)
    local v = cjson.decode(s)
    assert.is_table(v, s)
    return v, s
  end

  it("has exactly error.{message,type,code}", function()
    local v = decode(404, "no route for /x", "no_route")
    assert.same({ error = { message = "no route for /x", type = "invalid_request_error", code = "no_route" } }, v)
  end)

  it("sends code null when none is given", function()
    local v, s = decode(400, "bad JSON")
    assert.equal(cjson.null, v.error.code)
    assert.truthy(s:find('"code":null', 1, true))
  end)

  it("maps statuses to OpenAI error types", function()
    local want = {
      [400] = "invalid_request_error", [401] = "authentication_error", [403] = "permission_error",
      [404] = "invalid_request_error", [409] = "invalid_request_error", [413] = "invalid_request_error",
      [429] = "rate_limit_error", [431] = "invalid_request_error",
      [500] = "server_error", [501] = "server_error", [502] = "server_error", [503] = "server_error",
      [504] = "server_error", [418] = "invalid_request_error",
    }
    for status, t in pairs(want) do
      assert.equal(t, decode(status, "m").error.type, tostring(status))
    end
  end)

  it("carries insufficient_quota as the code of a 429", function()
    local v = decode(429, "budget exhausted", "insufficient_quota")
    assert.equal("insufficient_quota", v.error.code)
    assert.equal("rate_limit_error", v.error.type)
  end)

  it("escapes the message and keeps '/' unescaped", function()
    local v, s = decode(404, 'no route for "/v1/x"\n\\', nil)
    assert.equal('no route for "/v1/x"\n\\', v.error.message)
    assert.is_nil(s:find("\\/", 1, true))
  end)
end)

describe("errors.body (anthropic)", function()
  local function decode(status, message)
    local s = errors.body("anthropic", status, message)
    local v = cjson.decode(s)
    assert.is_table(v, s)
    return v
  end

  it("has exactly type=error and error.{type,message}", function()
    assert.same({ type = "error", error = { type = "authentication_error", message = "bad key" } },
      decode(401, "bad key"))
  end)

  it("ignores the code argument", function()
    local v = cjson.decode(errors.body("anthropic", 429, "slow down", "rate_limited"))
    assert.same({ type = "error", error = { type = "rate_limit_error", message = "slow down" } }, v)
  end)

  it("maps statuses to Anthropic error types", function()
    local want = {
      [400] = "invalid_request_error", [401] = "authentication_error", [403] = "permission_error",
      [404] = "not_found_error", [413] = "request_too_large", [429] = "rate_limit_error",
      [500] = "api_error", [502] = "api_error", [503] = "overloaded_error", [504] = "api_error",
      [409] = "invalid_request_error", [431] = "invalid_request_error", [501] = "api_error",
    }
    for status, t in pairs(want) do
      assert.equal(t, decode(status, "m").error.type, tostring(status))
    end
  end)
end)

-- The member order of an error body must not depend on the process: tests
-- and clients comparing bodies byte for byte need the shape SPEC §3 writes.
describe("errors.body bytes", function()
  local function in_fresh_process(code)
    local cmd = "luajit -e " .. string.format("%q", "package.path='lua/?.lua;'..package.path " .. code) .. " 2>&1"
    local f = assert(io.popen(cmd))
    local out = f:read("*a")
    f:close()
    return out
  end

  it("is the same in every process, in the documented member order", function()
    local code = [[local e=require('moongate.errors') io.write(e.body('openai',404,'no route','no_route'),'|',e.body('anthropic',404,'no route'))]]
    local want = '{"error":{"message":"no route","type":"invalid_request_error","code":"no_route"}}|' ..
                 '{"type":"error","error":{"type":"not_found_error","message":"no route"}}'
    for _ = 1, 8 do
      local out = in_fresh_process(code)
      assert.equal(want, out)
    end
  end)
end)

describe("errors.respond", function()
  it("returns a gw.respond value in the request's format, with content-type", function()
    local r = errors.respond({ format = "anthropic" }, 404, "no route")
    assert.equal(gw.RESPOND_MT, getmetatable(r))
    assert.equal(404, r.status)
    assert.equal("application/json", r.headers["content-type"])
    assert.same({ type = "error", error = { type = "not_found_error", message = "no route" } },
      cjson.decode(r.body))
  end)

  it("defaults to the openai format", function()
    local r = errors.respond({}, 401, "missing key", "invalid_api_key")
    assert.same({ error = { message = "missing key", type = "authentication_error", code = "invalid_api_key" } },
      cjson.decode(r.body))
  end)

  it("keeps the caller's headers", function()
    local r = errors.respond({ format = "openai" }, 429, "slow down", "rate_limited",
      { ["retry-after"] = "3", ["x-ratelimit-limit-requests"] = "100" })
    assert.equal("3", r.headers["retry-after"])
    assert.equal("100", r.headers["x-ratelimit-limit-requests"])
    assert.equal("application/json", r.headers["content-type"])
    assert.equal(429, r.status)
  end)
end)

describe("errors.stream_event", function()
  it("is an OpenAI data event carrying error", function()
    local ev = errors.stream_event("openai", "upstream reset")
    assert.equal("data: ", ev:sub(1, 6))
    assert.equal("\n\n", ev:sub(-2))
    local v = cjson.decode(ev:sub(7, -3))
    assert.same({ error = { message = "upstream reset", type = "server_error", code = "upstream_error" } }, v)
    assert.is_nil(ev:sub(1, -3):find("\n", 1, true))
  end)

  it("is an Anthropic 'event: error' event", function()
    local ev = errors.stream_event("anthropic", "upstream reset")
    local data = ev:match("^event: error\ndata: (.-)\n\n$")
    assert.is_string(data, ev)
    assert.same({ type = "error", error = { type = "api_error", message = "upstream reset" } },
      cjson.decode(data))
  end)

  it("keeps a message with newlines on one data line", function()
    local ev = errors.stream_event("openai", "line1\nline2")
    assert.is_nil(ev:sub(1, -3):find("\n", 1, true))
    assert.equal("line1\nline2", cjson.decode(ev:sub(7, -3)).error.message)
  end)
end)
