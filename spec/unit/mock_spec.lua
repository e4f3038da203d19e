-- Unit tests of moongate.mock: what a client of `moongate mock` (or of a `type = "mock"`
-- provider) would receive, checked field by field against the official API shapes.

local mock = require("moongate.mock")
local cjson = require("cjson")
local ffi = require("ffi")

local decode = cjson.decode

local function post(path, body, headers, opts)
    if type(body) == "table" then
        body = cjson.encode(body)
    end
    return mock.respond(opts or {}, { method = "POST", path = path, headers = headers or {},
                                      body = body })
end

local function get(path, headers, opts)
    return mock.respond(opts or {}, { method = "GET", path = path, headers = headers or {} })
end

-- Splits the events of a streamed response into { event = name|nil, data = raw, json = table }.
-- Fails the test if an event is not one complete SSE event.
local function parse_events(resp)
    local out = {}
    for i, ev in ipairs(resp.events) do
        local name, data = ev:match("^event: ([%w_]+)\ndata: ([^\n]*)\n\n$")
        if not name then
            data = ev:match("^data: ([^\n]*)\n\n$")
        end
        assert(data, "event " .. i .. " is not a complete SSE event: " .. ev)
        out[i] = { event = name, data = data,
                   json = data ~= "[DONE]" and decode(data) or nil }
    end
    return out
end

local function chat_body(extra)
    local b = { model = "gpt-4o", messages = { { role = "user", content = "abcdefghi" } } }
    for k, v in pairs(extra or {}) do
        b[k] = v
    end
    return b
end

local function anthropic_body(extra)
    local b = { model = "claude-3-5-haiku-latest", max_tokens = 100,
                messages = { { role = "user", content = "abcdefghi" } } }
    for k, v in pairs(extra or {}) do
        b[k] = v
    end
    return b
end

local DEFAULT_TEXT = "Hello! This is the moongate mock provider."

local function decode_base64(s)
    local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    local bits = {}
    for c in s:gsub("=", ""):gmatch(".") do
        local v = alphabet:find(c, 1, true) - 1
        for b = 5, 0, -1 do
            bits[#bits + 1] = math.floor(v / 2 ^ b) % 2
        end
    end
    local out = {}
    for i = 1, #bits - 7, 8 do
        local byte = 0
        for j = 0, 7 do
            byte = byte * 2 + bits[i + j]
        end
        out[#out + 1] = string.char(byte)
    end
    return table.concat(out)
end

describe("mock.respond", function()

    describe("POST /v1/chat/completions", function()
        it("answers a chat.completion with the text, the request's model and usage", function()
            local resp = post("/v1/chat/completions", chat_body())
            assert.equal(200, resp.status)
            assert.equal("application/json", resp.headers["content-type"])
            local b = decode(resp.body)
            assert.matches("^chatcmpl%-mock%-%d+$", b.id)
            assert.equal("chat.completion", b.object)
            assert.equal("gpt-4o", b.model)
            assert.is_true(math.abs(b.created - os.time()) <= 2)
            assert.equal(1, #b.choices)
            assert.equal(0, b.choices[1].index)
            assert.equal("assistant", b.choices[1].message.role)
            assert.equal(DEFAULT_TEXT, b.choices[1].message.content)
            assert.equal("stop", b.choices[1].finish_reason)
            -- 9 characters -> ceil(9/4) = 3; the default text has 7 words
            assert.equal(3, b.usage.prompt_tokens)
            assert.equal(7, b.usage.completion_tokens)
            assert.equal(10, b.usage.total_tokens)
        end)

        it("gives each answer a new id", function()
            local a = decode(post("/v1/chat/completions", chat_body()).body)
            local b = decode(post("/v1/chat/completions", chat_body()).body)
            assert.not_equal(a.id, b.id)
        end)

        it("falls back to opts.model, then to 'mock', when the request names no model", function()
            local body = { messages = { { role = "user", content = "x" } } }
            assert.equal("my-model",
                decode(post("/v1/chat/completions", body, nil, { model = "my-model" }).body).model)
            assert.equal("mock", decode(post("/v1/chat/completions", body).body).model)
        end)

        it("counts the text of every message, including content parts", function()
            local resp = post("/v1/chat/completions", { model = "m", messages = {
                { role = "system", content = "1234" },
                { role = "user", content = { { type = "text", text = "12345678" },
                                             { type = "image_url",
                                               image_url = { url = "http://x" } } } },
            } }, { ["x-mock-text"] = "one two  three\n" })
            local b = decode(resp.body)
            assert.equal(3, b.usage.prompt_tokens)      -- 12 characters
            assert.equal(3, b.usage.completion_tokens)  -- three words
            assert.equal("one two  three\n", b.choices[1].message.content)
        end)

        it("counts characters, not bytes, and at least one token each way", function()
            -- 4 characters of 2 bytes each: 1 token by characters, 2 by bytes
            local b = decode(post("/v1/chat/completions",
                { model = "m", messages = { { role = "user", content = "éééé" } } },
                { ["x-mock-text"] = "   " }).body)
            assert.equal(1, b.usage.prompt_tokens)
            assert.equal(1, b.usage.completion_tokens)
            b = decode(post("/v1/chat/completions",
                { model = "m", messages = { { role = "user", content = "" } } }).body)
            assert.equal(1, b.usage.prompt_tokens)
        end)

        it("does not escape forward slashes", function()
            local resp = post("/v1/chat/completions", chat_body({ model = "meta-llama/Llama-3" }),
                              { ["x-mock-text"] = "a/b" })
            assert.truthy(resp.body:find('"meta-llama/Llama-3"', 1, true))
            assert.truthy(resp.body:find('"a/b"', 1, true))
        end)

        it("leaves usage out with x-mock-no-usage", function()
            local b = decode(post("/v1/chat/completions", chat_body(),
                                  { ["x-mock-no-usage"] = "1" }).body)
            assert.is_nil(b.usage)
            assert.equal(DEFAULT_TEXT, b.choices[1].message.content)
        end)

        it("answers 400 in OpenAI's format when messages are missing", function()
            local resp = post("/v1/chat/completions", { model = "gpt-4o" })
            assert.equal(400, resp.status)
            local e = decode(resp.body).error
            assert.equal("invalid_request_error", e.type)
            assert.equal("messages", e.param)
        end)
    end)

    describe("streamed chat completions", function()
        it("streams role, content pieces, a stop chunk and [DONE]", function()
            local resp = post("/v1/chat/completions", chat_body({ stream = true }))
            assert.equal(200, resp.status)
            assert.equal("text/event-stream", resp.headers["content-type"])
            assert.is_nil(resp.body)
            local evs = parse_events(resp)
            -- role chunk + 5 content chunks (default) + stop chunk + [DONE]
            assert.equal(8, #evs)
            local id = evs[1].json.id
            assert.matches("^chatcmpl%-mock%-%d+$", id)
            for i = 1, 7 do
                local c = evs[i].json
                assert.is_nil(evs[i].event)
                assert.equal("chat.completion.chunk", c.object)
                assert.equal(id, c.id)
                assert.equal("gpt-4o", c.model)
                assert.equal(1, #c.choices)
                assert.is_nil(c.usage)
            end
            assert.same({ role = "assistant", content = "" }, evs[1].json.choices[1].delta)
            assert.equal(cjson.null, evs[1].json.choices[1].finish_reason)
            local text = {}
            for i = 2, 6 do
                local piece = evs[i].json.choices[1].delta.content
                assert.is_true(#piece > 0, "empty content piece")
                assert.equal(cjson.null, evs[i].json.choices[1].finish_reason)
                text[#text + 1] = piece
            end
            assert.equal(DEFAULT_TEXT, table.concat(text))
            assert.equal("stop", evs[7].json.choices[1].finish_reason)
            assert.truthy(evs[7].data:find('"delta":{}', 1, true))
            assert.equal("data: [DONE]\n\n", resp.events[8])
        end)

        it("adds a usage chunk with an empty choices array when include_usage is set", function()
            local resp = post("/v1/chat/completions", chat_body({
                stream = true, stream_options = { include_usage = true } }))
            local evs = parse_events(resp)
            assert.equal(9, #evs)
            -- like the official API, the other chunks carry "usage": null
            for i = 1, 7 do
                assert.equal(cjson.null, evs[i].json.usage)
            end
            local last = evs[8]
            assert.truthy(last.data:find('"choices":[]', 1, true))
            assert.equal("chat.completion.chunk", last.json.object)
            assert.equal(evs[1].json.id, last.json.id)
            assert.same({ prompt = 3, completion = 7, total = 10 },
                        { prompt = last.json.usage.prompt_tokens,
                          completion = last.json.usage.completion_tokens,
                          total = last.json.usage.total_tokens })
            assert.equal("data: [DONE]\n\n", resp.events[9])
        end)

        it("has no usage chunk with x-mock-no-usage even when include_usage is set", function()
            local resp = post("/v1/chat/completions", chat_body({
                stream = true, stream_options = { include_usage = true } }),
                { ["x-mock-no-usage"] = "1" })
            local evs = parse_events(resp)
            assert.equal(8, #evs)
            for i = 1, 7 do
                assert.is_nil(evs[i].json.usage)
            end
        end)

        it("honours opts.chunks and x-mock-chunks", function()
            local evs = parse_events(post("/v1/chat/completions", chat_body({ stream = true }),
                                          nil, { chunks = 2 }))
            assert.equal(2 + 3, #evs)
            evs = parse_events(post("/v1/chat/completions", chat_body({ stream = true }),
                                    { ["x-mock-chunks"] = "10" }, { chunks = 2 }))
            assert.equal(10 + 3, #evs)
            local text = {}
            for i = 2, 11 do
                local piece = evs[i].json.choices[1].delta.content
                assert.is_true(#piece > 0)
                text[#text + 1] = piece
            end
            assert.equal(DEFAULT_TEXT, table.concat(text))
        end)

        it("keeps the number of events when the text is shorter than chunks", function()
            local evs = parse_events(post("/v1/chat/completions", chat_body({ stream = true }),
                                          { ["x-mock-text"] = "ab", ["x-mock-chunks"] = "4" }))
            assert.equal(4 + 3, #evs)
            local pieces = {}
            for i = 2, 5 do
                pieces[#pieces + 1] = evs[i].json.choices[1].delta.content
            end
            assert.same({ "a", "b", "", "" }, pieces)
        end)

        it("never cuts a UTF-8 character in two", function()
            local text = "héllo wörld — ünïcødé ✓"
            local evs = parse_events(post("/v1/chat/completions", chat_body({ stream = true }),
                                          { ["x-mock-text"] = text, ["x-mock-chunks"] = "7" }))
            local pieces = {}
            for i = 2, 8 do
                local piece = evs[i].json.choices[1].delta.content
                assert.is_nil(piece:find("^[\128-\191]"), "piece starts mid-character")
                assert.is_nil(piece:find("[\192-\255]$"), "piece ends mid-character")
                pieces[#pieces + 1] = piece
            end
            assert.equal(text, table.concat(pieces))
        end)
    end)

    describe("POST /v1/completions", function()
        it("answers a text_completion", function()
            local b = decode(post("/v1/completions",
                                  { model = "gpt-3.5-turbo-instruct", prompt = "12345" }).body)
            assert.matches("^cmpl%-mock%-%d+$", b.id)
            assert.equal("text_completion", b.object)
            assert.equal("gpt-3.5-turbo-instruct", b.model)
            assert.equal(DEFAULT_TEXT, b.choices[1].text)
            assert.equal(0, b.choices[1].index)
            assert.equal("stop", b.choices[1].finish_reason)
            assert.equal(2, b.usage.prompt_tokens)
            assert.equal(7, b.usage.completion_tokens)
            assert.equal(9, b.usage.total_tokens)
        end)

        it("counts every prompt of a list", function()
            local b = decode(post("/v1/completions", { model = "m", prompt = { "1234", "12345" } })
                             .body)
            assert.equal(3, b.usage.prompt_tokens)
        end)

        it("streams text pieces, a stop chunk, a usage chunk and [DONE]", function()
            local resp = post("/v1/completions", { model = "m", prompt = "x", stream = true,
                                                   stream_options = { include_usage = true } })
            local evs = parse_events(resp)
            assert.equal(5 + 3, #evs)
            local text = {}
            for i = 1, 5 do
                assert.equal("text_completion", evs[i].json.object)
                text[#text + 1] = evs[i].json.choices[1].text
            end
            assert.equal(DEFAULT_TEXT, table.concat(text))
            assert.equal("stop", evs[6].json.choices[1].finish_reason)
            assert.truthy(evs[7].data:find('"choices":[]', 1, true))
            assert.equal(7, evs[7].json.usage.completion_tokens)
            assert.equal("data: [DONE]\n\n", resp.events[8])
        end)
    end)

    describe("POST /v1/embeddings", function()
        local function norm(v)
            local s = 0
            for _, x in ipairs(v) do
                s = s + x * x
            end
            return math.sqrt(s)
        end

        it("embeds a string into 8 deterministic floats", function()
            local b = decode(post("/v1/embeddings",
                                  { model = "text-embedding-3-small", input = "hello" }).body)
            assert.equal("list", b.object)
            assert.equal("text-embedding-3-small", b.model)
            assert.equal(1, #b.data)
            assert.equal("embedding", b.data[1].object)
            assert.equal(0, b.data[1].index)
            local v = b.data[1].embedding
            assert.equal(8, #v)
            for _, x in ipairs(v) do
                assert.is_number(x)
                assert.is_true(x >= -1 and x <= 1)
            end
            assert.is_true(math.abs(norm(v) - 1) < 1e-9)
            assert.equal(2, b.usage.prompt_tokens)
            assert.equal(2, b.usage.total_tokens)
            local again = decode(post("/v1/embeddings", { model = "x", input = "hello" }).body)
            assert.same(v, again.data[1].embedding)
        end)

        it("embeds each string of a list, differently for different texts", function()
            local b = decode(post("/v1/embeddings",
                                  { model = "m", input = { "hello", "world", "hello" } }).body)
            assert.equal(3, #b.data)
            for i = 1, 3 do
                assert.equal(i - 1, b.data[i].index)
            end
            assert.not_same(b.data[1].embedding, b.data[2].embedding)
            assert.same(b.data[1].embedding, b.data[3].embedding)
            assert.equal(4, b.usage.prompt_tokens)  -- 15 characters
        end)

        it("answers base64 float32 when asked, as the OpenAI SDKs do", function()
            local floats = decode(post("/v1/embeddings", { model = "m", input = "hello" }).body)
                .data[1].embedding
            local b = decode(post("/v1/embeddings", { model = "m", input = "hello",
                                                      encoding_format = "base64" }).body)
            local raw = decode_base64(b.data[1].embedding)
            assert.equal(32, #raw)
            local f = ffi.new("float[8]")
            ffi.copy(f, raw, 32)
            for i = 1, 8 do
                assert.is_true(math.abs(f[i - 1] - floats[i]) < 1e-6)
            end
        end)

        it("honours dimensions and rejects bad ones", function()
            local b = decode(post("/v1/embeddings", { model = "m", input = "a", dimensions = 3 })
                             .body)
            assert.equal(3, #b.data[1].embedding)
            local resp = post("/v1/embeddings", { model = "m", input = "a", dimensions = 0 })
            assert.equal(400, resp.status)
            assert.equal("dimensions", decode(resp.body).error.param)
        end)

        it("answers 400 without input", function()
            local resp = post("/v1/embeddings", { model = "m" })
            assert.equal(400, resp.status)
            assert.equal("invalid_request_error", decode(resp.body).error.type)
        end)
    end)

    describe("GET /v1/models", function()
        it("lists the well-known models in OpenAI's format", function()
            local resp = get("/v1/models")
            assert.equal(200, resp.status)
            local b = decode(resp.body)
            assert.equal("list", b.object)
            local ids = {}
            for _, m in ipairs(b.data) do
                assert.equal("model", m.object)
                assert.is_number(m.created)
                assert.is_string(m.owned_by)
                ids[m.id] = true
            end
            for _, id in ipairs({ "gpt-4o", "gpt-4o-mini", "claude-3-5-haiku-latest", "mock" }) do
                assert.is_true(ids[id], id)
            end
        end)

        it("adds opts.model and ignores the query string", function()
            local b = decode(get("/v1/models?limit=20", nil, { model = "custom/one" }).body)
            local found = false
            for _, m in ipairs(b.data) do
                found = found or m.id == "custom/one"
            end
            assert.is_true(found)
        end)

        it("answers in Anthropic's format to the Anthropic SDK", function()
            local b = decode(get("/v1/models", { ["anthropic-version"] = "2023-06-01" }).body)
            assert.is_false(b.has_more)
            assert.equal(b.data[1].id, b.first_id)
            assert.equal(b.data[#b.data].id, b.last_id)
            for _, m in ipairs(b.data) do
                assert.equal("model", m.type)
                assert.matches("^%d%d%d%d%-%d%d%-%d%dT", m.created_at)
            end
        end)
    end)

    describe("POST /v1/messages", function()
        it("answers an Anthropic message", function()
            local resp = post("/v1/messages", anthropic_body({
                system = { { type = "text", text = "1234" } } }))
            assert.equal(200, resp.status)
            local b = decode(resp.body)
            assert.matches("^msg_mock_%d+$", b.id)
            assert.equal("message", b.type)
            assert.equal("assistant", b.role)
            assert.equal("claude-3-5-haiku-latest", b.model)
            assert.same({ { type = "text", text = DEFAULT_TEXT } }, b.content)
            assert.equal("end_turn", b.stop_reason)
            assert.equal(cjson.null, b.stop_sequence)
            assert.equal(4, b.usage.input_tokens)   -- 13 characters with the system prompt
            assert.equal(7, b.usage.output_tokens)
        end)

        it("answers Anthropic's 400 without max_tokens", function()
            local body = anthropic_body()
            body.max_tokens = nil
            local resp = post("/v1/messages", body)
            assert.equal(400, resp.status)
            local b = decode(resp.body)
            assert.equal("error", b.type)
            assert.equal("invalid_request_error", b.error.type)
            assert.matches("max_tokens", b.error.message)
        end)

        it("leaves usage out with x-mock-no-usage", function()
            local b = decode(post("/v1/messages", anthropic_body(),
                                  { ["x-mock-no-usage"] = "1" }).body)
            assert.is_nil(b.usage)
        end)

        it("streams Anthropic's events in order", function()
            local resp = post("/v1/messages", anthropic_body({ stream = true }),
                              { ["x-mock-chunks"] = "3" })
            assert.equal("text/event-stream", resp.headers["content-type"])
            local evs = parse_events(resp)
            local names = {}
            for i, ev in ipairs(evs) do
                names[i] = ev.event
                assert.equal(ev.event, ev.json.type)  -- event name and data type agree
            end
            assert.same({ "message_start", "content_block_start", "ping",
                          "content_block_delta", "content_block_delta", "content_block_delta",
                          "content_block_stop", "message_delta", "message_stop" }, names)

            local start = evs[1].json.message
            assert.matches("^msg_mock_%d+$", start.id)
            assert.equal("message", start.type)
            assert.equal("assistant", start.role)
            assert.equal("claude-3-5-haiku-latest", start.model)
            assert.truthy(evs[1].data:find('"content":[]', 1, true))
            assert.equal(cjson.null, start.stop_reason)
            assert.equal(3, start.usage.input_tokens)

            assert.same({ type = "content_block_start", index = 0,
                          content_block = { type = "text", text = "" } }, evs[2].json)
            local text = {}
            for i = 4, 6 do
                assert.equal(0, evs[i].json.index)
                assert.equal("text_delta", evs[i].json.delta.type)
                text[#text + 1] = evs[i].json.delta.text
            end
            assert.equal(DEFAULT_TEXT, table.concat(text))
            assert.same({ type = "content_block_stop", index = 0 }, evs[7].json)
            assert.equal("end_turn", evs[8].json.delta.stop_reason)
            assert.equal(7, evs[8].json.usage.output_tokens)
        end)
    end)

    describe("POST /v1/messages/count_tokens", function()
        it("counts the system prompt and the messages", function()
            local resp = post("/v1/messages/count_tokens", {
                model = "claude-3-5-haiku-latest", system = "12345678",
                messages = { { role = "user", content = { { type = "text", text = "1234" } } } } })
            assert.equal(200, resp.status)
            assert.same({ input_tokens = 3 }, decode(resp.body))
        end)
    end)

    describe("unknown paths", function()
        it("answers 404 in OpenAI's format", function()
            local resp = post("/v1/nope", "{}")
            assert.equal(404, resp.status)
            assert.equal("application/json", resp.headers["content-type"])
            local e = decode(resp.body).error
            assert.equal("invalid_request_error", e.type)
            assert.equal("not_found", e.code)
            assert.matches("/v1/nope", e.message, 1, true)
        end)

        it("answers 404 in Anthropic's format under /v1/messages", function()
            local b = decode(post("/v1/messages/batches", "{}").body)
            assert.equal("error", b.type)
            assert.equal("not_found_error", b.error.type)
        end)

        it("answers 404 to the wrong method", function()
            assert.equal(404, get("/v1/chat/completions").status)
            assert.equal(404, post("/v1/models", "{}").status)
        end)
    end)

    describe("invalid JSON", function()
        it("answers 400 in OpenAI's format", function()
            for _, body in ipairs({ "{", "", "[1,2]", '"text"' }) do
                local resp = post("/v1/chat/completions", body)
                assert.equal(400, resp.status)
                local e = decode(resp.body).error
                assert.equal("invalid_request_error", e.type)
                assert.matches("not valid JSON", e.message)
            end
        end)

        it("answers 400 in Anthropic's format on /v1/messages", function()
            local resp = post("/v1/messages", "{\"model\":")
            assert.equal(400, resp.status)
            local b = decode(resp.body)
            assert.equal("error", b.type)
            assert.equal("invalid_request_error", b.error.type)
            assert.matches("not valid JSON", b.error.message)
        end)
    end)

    describe("failures", function()
        it("x-mock-fail forces the status with an OpenAI error body", function()
            local resp = post("/v1/chat/completions", chat_body(), { ["x-mock-fail"] = "503" })
            assert.equal(503, resp.status)
            assert.equal("application/json", resp.headers["content-type"])
            assert.is_nil(resp.headers["retry-after"])
            assert.equal("server_error", decode(resp.body).error.type)

            resp = post("/v1/chat/completions", chat_body({ stream = true }),
                        { ["x-mock-fail"] = "429" })
            assert.equal(429, resp.status)
            assert.is_nil(resp.events)
            assert.equal("1", resp.headers["retry-after"])
            assert.equal("rate_limit_exceeded", decode(resp.body).error.type)
        end)

        it("x-mock-fail answers in Anthropic's format on /v1/messages", function()
            local cases = { [429] = "rate_limit_error", [503] = "overloaded_error",
                            [529] = "overloaded_error", [500] = "api_error" }
            for status, etype in pairs(cases) do
                local resp = post("/v1/messages", anthropic_body(),
                                  { ["x-mock-fail"] = tostring(status) })
                assert.equal(status, resp.status)
                local b = decode(resp.body)
                assert.equal("error", b.type)
                assert.equal(etype, b.error.type)
                assert.is_string(b.error.message)
            end
        end)

        it("x-mock-fail applies to health probes of /v1/models too", function()
            assert.equal(500, get("/v1/models", { ["x-mock-fail"] = "500" }).status)
        end)

        it("rejects an x-mock-fail that is not an error status", function()
            local resp = post("/v1/chat/completions", chat_body(), { ["x-mock-fail"] = "200" })
            assert.equal(400, resp.status)
            assert.matches("x%-mock%-fail", decode(resp.body).error.message)
        end)

        it("draws failures from opts.fail with opts.rand", function()
            local fail = { [429] = 0.1, [503] = 0.5 }
            local function status_for(r)
                return post("/v1/chat/completions", chat_body(), nil,
                            { fail = fail, rand = function() return r end }).status
            end
            assert.equal(429, status_for(0))
            assert.equal(429, status_for(0.09))
            assert.equal(503, status_for(0.1))   -- 429 takes [0, 0.1), 503 takes [0.1, 0.6)
            assert.equal(503, status_for(0.59))
            assert.equal(200, status_for(0.6))
            assert.equal(200, status_for(0.99))
        end)

        it("answers a drawn 429 with retry-after", function()
            local resp = post("/v1/messages", anthropic_body(), nil,
                              { fail = { [429] = 1 }, rand = function() return 0.5 end })
            assert.equal(429, resp.status)
            assert.equal("1", resp.headers["retry-after"])
            assert.equal("rate_limit_error", decode(resp.body).error.type)
        end)

        it("hits each rate in proportion over many requests", function()
            local n, counts = 1000, {}
            local i = 0
            local opts = { fail = { [429] = 0.1, [503] = 0.5 },
                           rand = function() i = i + 1; return (i - 0.5) / n end }
            for _ = 1, n do
                local s = post("/v1/chat/completions", chat_body(), nil, opts).status
                counts[s] = (counts[s] or 0) + 1
            end
            assert.same({ [429] = 100, [503] = 500, [200] = 400 }, counts)
        end)
    end)

    describe("timing", function()
        it("delays by opts.latency and spaces events by opts.interval", function()
            local resp = post("/v1/chat/completions", chat_body({ stream = true }), nil,
                              { latency = 0.2, interval = 0.05 })
            assert.equal(0.2, resp.delay)
            assert.equal(0.05, resp.interval)
            resp = post("/v1/chat/completions", chat_body())
            assert.equal(0, resp.delay)
            assert.equal(0, resp.interval)
        end)

        it("takes x-mock-latency in milliseconds, also for failures", function()
            local resp = post("/v1/chat/completions", chat_body(),
                              { ["x-mock-latency"] = "250" }, { latency = 1 })
            assert.equal(0.25, resp.delay)
            resp = post("/v1/chat/completions", chat_body(),
                        { ["x-mock-latency"] = "100", ["x-mock-fail"] = "503" })
            assert.equal(503, resp.status)
            assert.equal(0.1, resp.delay)
        end)

        it("rejects a bad x-mock-latency or x-mock-chunks", function()
            assert.equal(400, post("/v1/chat/completions", chat_body(),
                                   { ["x-mock-latency"] = "soon" }).status)
            assert.equal(400, post("/v1/chat/completions", chat_body(),
                                   { ["x-mock-chunks"] = "0" }).status)
        end)
    end)
end)

describe("mock.parse_args", function()
    it("has defaults", function()
        local opts, listen = mock.parse_args({})
        assert.equal("127.0.0.1:8000", listen)
        assert.equal(0, opts.latency)
        assert.equal(0, opts.interval)
        assert.equal(5, opts.chunks)
        assert.equal(DEFAULT_TEXT, opts.text)
        assert.is_nil(opts.fail)
    end)

    it("reads every flag, in both spellings", function()
        local opts, listen = mock.parse_args({
            "--listen", "0.0.0.0:9000", "--latency", "250", "--interval=20", "--chunks", "3",
            "--text", "hi there", "--fail", "429:0.1", "--fail=503:0.25", "--model", "m1" })
        assert.equal("0.0.0.0:9000", listen)
        assert.equal(0.25, opts.latency)
        assert.equal(0.02, opts.interval)
        assert.equal(3, opts.chunks)
        assert.equal("hi there", opts.text)
        assert.equal("m1", opts.model)
        assert.same({ [429] = 0.1, [503] = 0.25 }, opts.fail)
    end)

    it("gives options respond understands", function()
        local opts = assert(mock.parse_args({ "--text", "a b", "--fail", "503:1" }))
        local resp = post("/v1/chat/completions", chat_body(), nil, opts)
        assert.equal(503, resp.status)
        opts.fail = nil
        resp = post("/v1/chat/completions", chat_body(), nil, opts)
        assert.equal("a b", decode(resp.body).choices[1].message.content)
    end)

    it("accepts a bare port and a bracketed IPv6 address", function()
        assert.equal("127.0.0.1:8123", select(2, mock.parse_args({ "--listen", "8123" })))
        assert.equal("[::1]:8000", select(2, mock.parse_args({ "--listen", "[::1]:8000" })))
    end)

    it("flags asking for help", function()
        assert.is_true(mock.parse_args({ "--help" }).help)
        assert.is_true(mock.parse_args({ "-h" }).help)
    end)

    it("refuses bad input with a message naming the flag", function()
        local cases = {
            { { "--latency", "abc" }, "%-%-latency" },
            { { "--latency", "-5" }, "%-%-latency" },
            { { "--interval", "x" }, "%-%-interval" },
            { { "--chunks", "0" }, "%-%-chunks" },
            { { "--chunks", "2.5" }, "%-%-chunks" },
            { { "--fail", "429" }, "%-%-fail" },
            { { "--fail", "200:0.5" }, "%-%-fail" },
            { { "--fail", "503:1.5" }, "%-%-fail" },
            { { "--fail", "429:0.6", "--fail", "503:0.6" }, "%-%-fail" },
            { { "--listen", "localhost" }, "%-%-listen" },
            { { "--listen", "::1:80" }, "%-%-listen" },
            { { "--listen", "h:99999" }, "%-%-listen" },
            { { "--chunks" }, "%-%-chunks" },
            { { "--bogus", "1" }, "%-%-bogus" },
            { { "stray" }, "stray" },
        }
        for _, c in ipairs(cases) do
            local opts, err = mock.parse_args(c[1])
            assert.is_nil(opts, table.concat(c[1], " "))
            assert.matches(c[2], err)
        end
    end)

    it("has a usage text listing the flags", function()
        local u = mock.usage_text()
        for _, flag in ipairs({ "--listen", "--latency", "--interval", "--chunks", "--text",
                                "--fail" }) do
            assert.truthy(u:find(flag, 1, true), flag)
        end
    end)
end)
