-- moongate.mock: the answers of the fake OpenAI- and Anthropic-compatible provider.
--
-- Pure Lua, no I/O: the C runtime (for `moongate mock`) or the gateway (for providers of
-- `type = "mock"`) hands over a request and writes out whatever `respond` returns, honouring its
-- `delay` before the first byte and `interval` between streamed events.
--
-- Everything a test may want to vary per request is a header, so tests stay deterministic:
--   x-mock-fail: 503       answer with that status (400..599) and an error body in the path's format
--   x-mock-latency: 250    milliseconds before the first byte (overrides opts.latency)
--   x-mock-text: ...       the answer text
--   x-mock-chunks: N       number of content events when streaming
--   x-mock-no-usage: 1     leave usage out of the answer (to exercise usage estimation)

local cjson = require("cjson")
local bit = require("bit")
local ffi = require("ffi")

local type = type
local pairs = pairs
local ipairs = ipairs
local tonumber = tonumber
local tostring = tostring
local pcall = pcall
local math_random = math.random
local math_floor = math.floor
local math_ceil = math.ceil
local math_sqrt = math.sqrt
local math_huge = math.huge
local os_time = os.time
local str_byte = string.byte
local str_sub = string.sub
local str_find = string.find
local str_match = string.match
local str_gsub = string.gsub
local str_gmatch = string.gmatch
local str_format = string.format
local tbl_concat = table.concat
local tbl_sort = table.sort
local bxor = bit.bxor
local lshift = bit.lshift
local rshift = bit.rshift
local tobit = bit.tobit

local _M = { _VERSION = "0.1" }

local DEFAULT_TEXT = "Hello! This is the moongate mock provider."
local DEFAULT_CHUNKS = 5
local DEFAULT_LISTEN = "127.0.0.1:8000"
local EMBEDDING_DIMS = 8
local MAX_DIMS = 4096

-- Our own instance, so the decoder settings of other modules never leak into ours.
local json = cjson.new()
local json_null = json.null
local json_decode = json.decode
local raw_encode = json.encode

-- lua-cjson 2.1.0 escapes "/" as "\/" and cannot be told not to. Undoing it is safe: a literal
-- backslash is always written as "\\", and the scan is left to right, so the only "\/" pairs
-- left to match are the escapes of "/".
local function encode(v)
    return (str_gsub(raw_encode(v), "\\/", "/"))
end

-- cjson writes an empty table as {} and has no empty-array sentinel, so the few places where
-- the official APIs send an empty array (`"choices": []`, `"content": []`) splice it in by hand:
-- encode the object without that key and insert `"key":[]` right after its opening brace.
local function encode_with_empty_array(obj, key)
    local s = encode(obj)
    if s == "{}" then
        return '{"' .. key .. '":[]}'
    end
    return '{"' .. key .. '":[],' .. str_sub(s, 2)
end

-- Response ids only need to be distinct within a process; a counter is also easy to read in logs.
local seq = 0
local function next_id()
    seq = seq + 1
    return seq
end


--------------------------------------------------------------------------------------------------
-- Text and token counting
--------------------------------------------------------------------------------------------------

-- Number of UTF-8 characters: every byte that is not a continuation byte (10xxxxxx) starts one.
local function utf8_len(s)
    local _, cont = str_gsub(s, "[\128-\191]", "")
    return #s - cont
end

-- Splits s into exactly n pieces of (almost) equal numbers of characters, never cutting a UTF-8
-- sequence in two (a cut one would reach clients as invalid JSON strings). The longer pieces
-- come first, so when s has fewer characters than n only the trailing pieces are empty.
local function split_text(s, n)
    local chars, count = {}, 0
    for ch in str_gmatch(s, "[^\128-\191][\128-\191]*") do
        count = count + 1
        chars[count] = ch
    end
    local pieces = {}
    local base, extra = math_floor(count / n), count % n
    local pos = 1
    for i = 1, n do
        local size = base + (i <= extra and 1 or 0)
        pieces[i] = tbl_concat(chars, "", pos, pos + size - 1)
        pos = pos + size
    end
    return pieces
end

local function count_words(s)
    local n = 0
    for _ in str_gmatch(s, "%S+") do
        n = n + 1
    end
    return n
end

-- Completion tokens: one per whitespace-separated word, at least 1 (a real model always emits
-- at least its stop token), so usage-based tests can predict the number from the text.
local function completion_tokens(text)
    local n = count_words(text)
    return n > 0 and n or 1
end

-- Prompt tokens: a quarter of the characters, rounded up, at least 1 (the usual rule of thumb
-- for English text with GPT tokenizers).
local function prompt_tokens(chars)
    local n = math_ceil(chars / 4)
    return n > 0 and n or 1
end

-- Characters of text in a message `content` (or Anthropic `system`): a string, or a list of
-- parts whose `text` counts; tool results nest their own content, so recurse into it.
local function content_chars(c)
    if type(c) == "string" then
        return utf8_len(c)
    end
    if type(c) ~= "table" then
        return 0
    end
    local n = 0
    for _, part in ipairs(c) do
        if type(part) == "string" then
            n = n + utf8_len(part)
        elseif type(part) == "table" then
            if type(part.text) == "string" then
                n = n + utf8_len(part.text)
            end
            if part.content ~= nil then
                n = n + content_chars(part.content)
            end
        end
    end
    return n
end

local function messages_chars(messages)
    local n = 0
    if type(messages) == "table" then
        for _, m in ipairs(messages) do
            if type(m) == "table" then
                n = n + content_chars(m.content)
            end
        end
    end
    return n
end


--------------------------------------------------------------------------------------------------
-- Errors in the two formats
--------------------------------------------------------------------------------------------------

-- [status] = { openai type, openai code, anthropic type, message }
local ERRORS = {
    [400] = { "invalid_request_error", json_null, "invalid_request_error", "Bad request" },
    [401] = { "authentication_error", "invalid_api_key", "authentication_error", "Invalid API key" },
    [403] = { "permission_error", json_null, "permission_error", "Permission denied" },
    [404] = { "invalid_request_error", "not_found", "not_found_error", "Not found" },
    [413] = { "invalid_request_error", json_null, "request_too_large", "Request too large" },
    [429] = { "rate_limit_exceeded", "rate_limit_exceeded", "rate_limit_error",
              "Rate limit reached (mock)" },
    [500] = { "server_error", json_null, "api_error", "The server had an error (mock)" },
    [503] = { "server_error", json_null, "overloaded_error", "The server is overloaded (mock)" },
    [529] = { "server_error", json_null, "overloaded_error", "The server is overloaded (mock)" },
}

local function error_kind(status)
    local e = ERRORS[status]
    if e then
        return e
    end
    if status >= 500 then
        return { "server_error", json_null, "api_error", "The server had an error (mock)" }
    end
    return { "invalid_request_error", json_null, "invalid_request_error",
             "Request failed with status " .. status .. " (mock)" }
end

-- fmt is "openai" or "anthropic"; message, oa_code and param override the defaults of the status.
local function error_response(fmt, status, message, oa_code, param)
    local kind = error_kind(status)
    local body
    if fmt == "anthropic" then
        body = encode({ type = "error",
                        error = { type = kind[3], message = message or kind[4] } })
    else
        body = encode({ error = { message = message or kind[4], type = kind[1],
                                  param = param or json_null, code = oa_code or kind[2] } })
    end
    local headers = { ["content-type"] = "application/json" }
    if status == 429 then
        headers["retry-after"] = "1"
    end
    return { status = status, headers = headers, body = body }
end

local function json_response(body)
    return { status = 200, headers = { ["content-type"] = "application/json" }, body = body }
end

local function stream_response(events)
    return { status = 200,
             headers = { ["content-type"] = "text/event-stream", ["cache-control"] = "no-cache" },
             events = events }
end

local function sse_data(s)
    return "data: " .. s .. "\n\n"
end

local function sse_event(name, s)
    return "event: " .. name .. "\ndata: " .. s .. "\n\n"
end


--------------------------------------------------------------------------------------------------
-- Endpoints. Each takes (ctx, body) where ctx carries the settled per-request settings:
-- text, chunks, model, usage (bool), headers; and returns a response (without delay/interval).
--------------------------------------------------------------------------------------------------

local function openai_usage(ptok, ctok)
    return { prompt_tokens = ptok, completion_tokens = ctok, total_tokens = ptok + ctok,
             prompt_tokens_details = { cached_tokens = 0 },
             completion_tokens_details = { reasoning_tokens = 0 } }
end

local function wants_stream_usage(body)
    return type(body.stream_options) == "table" and body.stream_options.include_usage == true
end

local function chat_completions(ctx, body)
    if type(body.messages) ~= "table" then
        return error_response("openai", 400, "Missing required parameter: 'messages'.",
                              "missing_required_parameter", "messages")
    end
    local id = "chatcmpl-mock-" .. next_id()
    local created = os_time()
    local ptok = prompt_tokens(messages_chars(body.messages))
    local ctok = completion_tokens(ctx.text)

    if body.stream ~= true then
        local obj = {
            id = id, object = "chat.completion", created = created, model = ctx.model,
            system_fingerprint = json_null,
            choices = { { index = 0, logprobs = json_null, finish_reason = "stop",
                          message = { role = "assistant", content = ctx.text,
                                      refusal = json_null } } },
        }
        if ctx.usage then
            obj.usage = openai_usage(ptok, ctok)
        end
        return json_response(encode(obj))
    end

    -- With include_usage the official API puts "usage": null on every chunk but the last.
    local include_usage = wants_stream_usage(body) and ctx.usage
    local usage_field = include_usage and json_null or nil
    local function chunk(delta, finish)
        return sse_data(encode({
            id = id, object = "chat.completion.chunk", created = created, model = ctx.model,
            system_fingerprint = json_null, usage = usage_field,
            choices = { { index = 0, delta = delta, logprobs = json_null,
                          finish_reason = finish or json_null } },
        }))
    end

    local events = { chunk({ role = "assistant", content = "" }) }
    for _, piece in ipairs(split_text(ctx.text, ctx.chunks)) do
        events[#events + 1] = chunk({ content = piece })
    end
    events[#events + 1] = chunk({}, "stop")   -- {} is exactly the empty delta OpenAI sends
    if include_usage then
        events[#events + 1] = sse_data(encode_with_empty_array({
            id = id, object = "chat.completion.chunk", created = created, model = ctx.model,
            system_fingerprint = json_null, usage = openai_usage(ptok, ctok),
        }, "choices"))
    end
    events[#events + 1] = "data: [DONE]\n\n"
    return stream_response(events)
end

local function completions(ctx, body)
    local chars = 0
    local prompt = body.prompt
    if type(prompt) == "string" then
        chars = utf8_len(prompt)
    elseif type(prompt) == "table" then
        for _, p in ipairs(prompt) do
            if type(p) == "string" then
                chars = chars + utf8_len(p)
            end
        end
    end
    local id = "cmpl-mock-" .. next_id()
    local created = os_time()
    local ptok = prompt_tokens(chars)
    local ctok = completion_tokens(ctx.text)

    if body.stream ~= true then
        local obj = {
            id = id, object = "text_completion", created = created, model = ctx.model,
            system_fingerprint = json_null,
            choices = { { text = ctx.text, index = 0, logprobs = json_null,
                          finish_reason = "stop" } },
        }
        if ctx.usage then
            obj.usage = { prompt_tokens = ptok, completion_tokens = ctok,
                          total_tokens = ptok + ctok }
        end
        return json_response(encode(obj))
    end

    local include_usage = wants_stream_usage(body) and ctx.usage
    local usage_field = include_usage and json_null or nil
    local function chunk(text, finish)
        return sse_data(encode({
            id = id, object = "text_completion", created = created, model = ctx.model,
            system_fingerprint = json_null, usage = usage_field,
            choices = { { text = text, index = 0, logprobs = json_null,
                          finish_reason = finish or json_null } },
        }))
    end

    local events = {}
    for _, piece in ipairs(split_text(ctx.text, ctx.chunks)) do
        events[#events + 1] = chunk(piece)
    end
    events[#events + 1] = chunk("", "stop")
    if include_usage then
        events[#events + 1] = sse_data(encode_with_empty_array({
            id = id, object = "text_completion", created = created, model = ctx.model,
            system_fingerprint = json_null,
            usage = { prompt_tokens = ptok, completion_tokens = ctok, total_tokens = ptok + ctok },
        }, "choices"))
    end
    events[#events + 1] = "data: [DONE]\n\n"
    return stream_response(events)
end

-- 32-bit FNV-1a. The prime is 2^24 + 403; multiplying in two parts keeps every intermediate
-- below 2^53, where doubles are still exact.
local function fnv1a(s)
    local h = tobit(2166136261)
    for i = 1, #s do
        h = bxor(h, str_byte(s, i))
        h = tobit(h * 403 + lshift(h, 24))
    end
    return h
end

-- A unit-length vector of `dims` floats in [-1, 1], a pure function of the text, so equal
-- inputs embed equally and tests (or semantic caches) can rely on it.
local function embed(text, dims)
    local x = fnv1a(text)
    if x == 0 then
        x = 1                                  -- xorshift never leaves 0
    end
    local v, norm = {}, 0
    for i = 1, dims do
        x = bxor(x, lshift(x, 13))
        x = bxor(x, rshift(x, 17))
        x = bxor(x, lshift(x, 5))
        local f = (x % 4294967296) / 2147483648 - 1
        v[i] = f
        norm = norm + f * f
    end
    norm = math_sqrt(norm)
    if norm > 0 then
        for i = 1, dims do
            v[i] = v[i] / norm
        end
    end
    return v
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(s)
    local out = {}
    for i = 1, #s, 3 do
        local a, b, c = str_byte(s, i, i + 2)
        local n = a * 65536 + (b or 0) * 256 + (c or 0)
        local c1 = rshift(n, 18) % 64
        local c2 = rshift(n, 12) % 64
        local c3 = rshift(n, 6) % 64
        local c4 = n % 64
        out[#out + 1] = str_sub(B64, c1 + 1, c1 + 1) .. str_sub(B64, c2 + 1, c2 + 1)
            .. (b and str_sub(B64, c3 + 1, c3 + 1) or "=")
            .. (c and str_sub(B64, c4 + 1, c4 + 1) or "=")
    end
    return tbl_concat(out)
end

-- encoding_format "base64" is what the official Python SDK asks for by default: the floats as
-- little-endian float32, base64-encoded (x86 and arm64 are little-endian, so native order is).
local function float32_base64(v)
    local n = #v
    local buf = ffi.new("float[?]", n)
    for i = 1, n do
        buf[i - 1] = v[i]
    end
    return base64(ffi.string(buf, n * 4))
end

local function embeddings(ctx, body)
    local input = body.input
    -- Inputs are texts; pre-tokenized inputs (lists of token ids) are embedded from their
    -- decimal form and counted one token per id.
    local texts, chars, tokens = {}, 0, 0
    if type(input) == "string" then
        texts[1] = input
        chars = utf8_len(input)
    elseif type(input) == "table" and input[1] ~= nil then
        if type(input[1]) == "number" then
            input = { input }
        end
        for i, item in ipairs(input) do
            if type(item) == "string" then
                texts[i] = item
                chars = chars + utf8_len(item)
            elseif type(item) == "table" then
                local ids = {}
                for j, t in ipairs(item) do
                    ids[j] = tostring(t)
                end
                texts[i] = tbl_concat(ids, " ")
                tokens = tokens + #ids
            else
                return error_response("openai", 400, "'input' must be a string or a list of "
                                      .. "strings", json_null, "input")
            end
        end
    end
    if #texts == 0 then
        return error_response("openai", 400, "Missing required parameter: 'input'.",
                              "missing_required_parameter", "input")
    end

    local dims = EMBEDDING_DIMS
    if body.dimensions ~= nil then
        dims = body.dimensions
        if type(dims) ~= "number" or dims ~= math_floor(dims) or dims < 1 or dims > MAX_DIMS then
            return error_response("openai", 400, "'dimensions' must be an integer from 1 to "
                                  .. MAX_DIMS, json_null, "dimensions")
        end
    end
    local as_base64 = body.encoding_format == "base64"

    local data = {}
    for i, text in ipairs(texts) do
        local v = embed(text, dims)
        data[i] = { object = "embedding", index = i - 1,
                    embedding = as_base64 and float32_base64(v) or v }
    end
    local obj = { object = "list", data = data, model = ctx.model }
    if ctx.usage then
        local ptok = tokens + (chars > 0 and math_ceil(chars / 4) or 0)
        if ptok < 1 then
            ptok = 1
        end
        obj.usage = { prompt_tokens = ptok, total_tokens = ptok }
    end
    return json_response(encode(obj))
end

-- Fixed `created` dates so the list is the same on every call.
local MODELS = {
    { id = "gpt-4o", created = 1715367049, owned_by = "system", display = "GPT-4o",
      date = "2024-05-13T00:00:00Z" },
    { id = "gpt-4o-mini", created = 1721172741, owned_by = "system", display = "GPT-4o mini",
      date = "2024-07-18T00:00:00Z" },
    { id = "text-embedding-3-small", created = 1705948997, owned_by = "system",
      display = "text-embedding-3-small", date = "2024-01-22T00:00:00Z" },
    { id = "claude-3-5-haiku-latest", created = 1729555200, owned_by = "anthropic",
      display = "Claude Haiku 3.5", date = "2024-10-22T00:00:00Z" },
    { id = "mock", created = 1704067200, owned_by = "moongate", display = "moongate mock",
      date = "2024-01-01T00:00:00Z" },
}

local function model_list(ctx, req_headers)
    local list = {}
    local seen = {}
    for i, m in ipairs(MODELS) do
        list[i] = m
        seen[m.id] = true
    end
    if ctx.opts_model and not seen[ctx.opts_model] then
        list[#list + 1] = { id = ctx.opts_model, created = 1704067200, owned_by = "moongate",
                            display = ctx.opts_model, date = "2024-01-01T00:00:00Z" }
    end

    -- The Anthropic SDK always sends anthropic-version; answer it in its own format, as the
    -- real API would, so the same mock can stand in for either vendor.
    if req_headers["anthropic-version"] then
        local data = {}
        for i, m in ipairs(list) do
            data[i] = { type = "model", id = m.id, display_name = m.display, created_at = m.date }
        end
        return json_response(encode({ data = data, has_more = false,
                                      first_id = list[1].id, last_id = list[#list].id }))
    end
    local data = {}
    for i, m in ipairs(list) do
        data[i] = { id = m.id, object = "model", created = m.created, owned_by = m.owned_by }
    end
    return json_response(encode({ object = "list", data = data }))
end

local function anthropic_input_tokens(body)
    return prompt_tokens(content_chars(body.system) + messages_chars(body.messages))
end

local function anthropic_usage(itok, otok)
    return { input_tokens = itok, output_tokens = otok,
             cache_creation_input_tokens = 0, cache_read_input_tokens = 0 }
end

local function messages(ctx, body)
    -- Field checks in the order and wording of the real API.
    if body.max_tokens == nil then
        return error_response("anthropic", 400, "max_tokens: Field required")
    end
    if type(body.messages) ~= "table" then
        return error_response("anthropic", 400, "messages: Field required")
    end
    local id = "msg_mock_" .. next_id()
    local itok = anthropic_input_tokens(body)
    local otok = completion_tokens(ctx.text)

    if body.stream ~= true then
        local obj = {
            id = id, type = "message", role = "assistant", model = ctx.model,
            content = { { type = "text", text = ctx.text } },
            stop_reason = "end_turn", stop_sequence = json_null,
        }
        if ctx.usage then
            obj.usage = anthropic_usage(itok, otok)
        end
        return json_response(encode(obj))
    end

    local start = {
        id = id, type = "message", role = "assistant", model = ctx.model,
        stop_reason = json_null, stop_sequence = json_null,
        -- message_start reports the input tokens and the first output token, like the real API.
        usage = ctx.usage and anthropic_usage(itok, 1) or nil,
    }
    local events = {
        sse_event("message_start", '{"type":"message_start","message":'
                  .. encode_with_empty_array(start, "content") .. "}"),
        sse_event("content_block_start", encode({ type = "content_block_start", index = 0,
                                                  content_block = { type = "text", text = "" } })),
        sse_event("ping", encode({ type = "ping" })),
    }
    for _, piece in ipairs(split_text(ctx.text, ctx.chunks)) do
        events[#events + 1] = sse_event("content_block_delta", encode({
            type = "content_block_delta", index = 0,
            delta = { type = "text_delta", text = piece } }))
    end
    events[#events + 1] = sse_event("content_block_stop",
                                    encode({ type = "content_block_stop", index = 0 }))
    events[#events + 1] = sse_event("message_delta", encode({
        type = "message_delta",
        delta = { stop_reason = "end_turn", stop_sequence = json_null },
        usage = ctx.usage and { output_tokens = otok } or nil }))
    events[#events + 1] = sse_event("message_stop", encode({ type = "message_stop" }))
    return stream_response(events)
end

local function count_tokens(_, body)
    if type(body.messages) ~= "table" then
        return error_response("anthropic", 400, "messages: Field required")
    end
    return json_response(encode({ input_tokens = anthropic_input_tokens(body) }))
end

-- [path] = { method, error format, handler, takes a JSON body }
local ROUTES = {
    ["/v1/chat/completions"] = { "POST", "openai", chat_completions, true },
    ["/v1/completions"] = { "POST", "openai", completions, true },
    ["/v1/embeddings"] = { "POST", "openai", embeddings, true },
    ["/v1/models"] = { "GET", "openai", model_list, false },
    ["/v1/messages"] = { "POST", "anthropic", messages, true },
    ["/v1/messages/count_tokens"] = { "POST", "anthropic", count_tokens, true },
}


--------------------------------------------------------------------------------------------------
-- respond
--------------------------------------------------------------------------------------------------

local function header(headers, name)
    local v = headers[name]
    if type(v) == "table" then
        v = v[1]
    end
    return v
end

-- Draws at most one failure status for this request with a single rand() call: the statuses,
-- in ascending order, take consecutive slices of [0, 1) as wide as their rates, so each status
-- comes up at exactly its configured rate (as long as the rates add up to 1 or less).
local function draw_failure(fail, rand)
    if type(fail) ~= "table" then
        return nil
    end
    local statuses = {}
    for status, rate in pairs(fail) do
        local s, r = tonumber(status), tonumber(rate)
        if s and r and r > 0 then
            statuses[#statuses + 1] = { s, r }
        end
    end
    if #statuses == 0 then
        return nil
    end
    tbl_sort(statuses, function(a, b) return a[1] < b[1] end)
    local x = rand()
    local acc = 0
    for _, sr in ipairs(statuses) do
        acc = acc + sr[2]
        if x < acc then
            return sr[1]
        end
    end
    return nil
end

local function non_negative_ms(v)
    local n = tonumber(v)
    if n and n >= 0 and n < math_huge then
        return n / 1000
    end
    return nil
end

-- Decides the answer to one request.
--   opts: { latency, interval, chunks, text, fail = { [status] = rate }, model, rand }
--   req:  { method, path (query string allowed), headers = { [lowercase name] = value }, body }
-- Returns { status, headers, body = string } or, for a stream, { status = 200, headers,
-- events = { complete SSE events } }; always with `delay` (seconds before the first byte) and
-- `interval` (seconds between events). Never fails: a bad request gets an error response.
function _M.respond(opts, req)
    opts = opts or {}
    local headers = req.headers or {}
    local path = req.path or "/"
    local q = str_find(path, "?", 1, true)
    if q then
        path = str_sub(path, 1, q - 1)
    end
    local method = req.method or "GET"

    local delay = tonumber(opts.latency) or 0
    local interval = tonumber(opts.interval) or 0
    local function finish(resp)
        resp.delay = delay
        resp.interval = interval
        return resp
    end

    local route = ROUTES[path]
    local fmt = (path == "/v1/messages" or str_sub(path, 1, 13) == "/v1/messages/")
        and "anthropic" or "openai"

    -- The latency header is honoured even on errors: a slow failing upstream is a case to test.
    local lat = header(headers, "x-mock-latency")
    if lat ~= nil then
        local d = non_negative_ms(lat)
        if not d then
            return finish(error_response(fmt, 400,
                "x-mock-latency must be a number of milliseconds, got " .. tostring(lat)))
        end
        delay = d
    end

    if not route or route[1] ~= method then
        return finish(error_response(fmt, 404,
            str_format("Invalid URL (%s %s)", tostring(method), path)))
    end

    -- Failures come before the body is read: an overloaded server does not look at it either.
    local forced = header(headers, "x-mock-fail")
    if forced ~= nil then
        local s = tonumber(forced)
        if not s or s ~= math_floor(s) or s < 400 or s > 599 then
            return finish(error_response(fmt, 400,
                "x-mock-fail must be an HTTP status from 400 to 599, got " .. tostring(forced)))
        end
        return finish(error_response(fmt, s))
    end
    local drawn = draw_failure(opts.fail, opts.rand or math_random)
    if drawn then
        return finish(error_response(fmt, drawn))
    end

    local chunks = tonumber(opts.chunks) or DEFAULT_CHUNKS
    local hc = header(headers, "x-mock-chunks")
    if hc ~= nil then
        chunks = tonumber(hc)
        if not chunks or chunks ~= math_floor(chunks) or chunks < 1 then
            return finish(error_response(fmt, 400,
                "x-mock-chunks must be a positive integer, got " .. tostring(hc)))
        end
    end
    if chunks < 1 then
        chunks = 1
    end

    local body = {}
    if route[4] then
        local ok, decoded = pcall(json_decode, req.body or "")
        if not ok or type(decoded) ~= "table" or (decoded[1] ~= nil) then
            local msg = fmt == "anthropic"
                and "There was an error parsing the body of your request: the body is not valid JSON"
                or "We could not parse the JSON body of your request: the body is not valid JSON"
            return finish(error_response(fmt, 400, msg))
        end
        body = decoded
    end

    local text = header(headers, "x-mock-text") or opts.text or DEFAULT_TEXT
    local model = body.model
    if type(model) ~= "string" or model == "" then
        model = opts.model or "mock"
    end
    local no_usage = header(headers, "x-mock-no-usage")

    local ctx = {
        text = tostring(text),
        chunks = chunks,
        model = model,
        opts_model = opts.model,
        usage = not (no_usage ~= nil and no_usage ~= "0" and no_usage ~= "false"),
    }
    if route[4] then
        return finish(route[3](ctx, body))
    end
    return finish(route[3](ctx, headers))
end


--------------------------------------------------------------------------------------------------
-- Command line
--------------------------------------------------------------------------------------------------

local USAGE = [[
usage: moongate mock [options]

A fake OpenAI- and Anthropic-compatible provider for trying the gateway offline and for tests.

  --listen ADDR       address to listen on (default 127.0.0.1:8000; a bare PORT means 127.0.0.1)
  --latency MS        milliseconds before the first byte of every answer (default 0)
  --interval MS       milliseconds between streamed events (default 0)
  --chunks N          content events per streamed answer (default 5)
  --text STR          the answer text
  --model NAME        model reported when a request names none (also added to /v1/models)
  --fail CODE:RATE    answer CODE (400-599) to a share RATE (0-1) of requests; may repeat
  -h, --help          show this text

Request headers: x-mock-fail: CODE, x-mock-latency: MS, x-mock-text: STR, x-mock-chunks: N,
x-mock-no-usage: 1.
]]

function _M.usage_text()
    return USAGE
end

local function parse_listen(v)
    if str_match(v, "^%d+$") then
        v = "127.0.0.1:" .. v
    end
    local host, port = str_match(v, "^(.+):(%d+)$")
    port = tonumber(port)
    if not host or not port or port > 65535 then
        return nil
    end
    -- An IPv6 literal must be bracketed, otherwise its colons make the port ambiguous.
    if str_find(host, ":", 1, true) and not str_match(host, "^%[.+%]$") then
        return nil
    end
    return v
end

-- Parses the words after `moongate mock`.
-- Returns opts (as taken by respond; opts.help = true when help was asked for) and the listen
-- address, or nil and a message naming the offending flag.
function _M.parse_args(argv)
    local opts = { latency = 0, interval = 0, chunks = DEFAULT_CHUNKS, text = DEFAULT_TEXT }
    local listen = DEFAULT_LISTEN
    local fail
    local i, n = 1, #argv

    while i <= n do
        local arg = argv[i]
        local flag, value = str_match(arg, "^(%-%-[%w%-]+)=(.*)$")
        if not flag then
            flag = arg
        end

        if flag == "-h" or flag == "--help" then
            opts.help = true
            i = i + 1
        elseif flag == "--listen" or flag == "--latency" or flag == "--interval"
            or flag == "--chunks" or flag == "--text" or flag == "--fail" or flag == "--model" then
            if value == nil then
                value = argv[i + 1]
                if value == nil then
                    return nil, flag .. " needs a value"
                end
                i = i + 2
            else
                i = i + 1
            end

            if flag == "--listen" then
                listen = parse_listen(value)
                if not listen then
                    return nil, "--listen: expected HOST:PORT, got '" .. value .. "'"
                end
            elseif flag == "--latency" or flag == "--interval" then
                local s = non_negative_ms(value)
                if not s then
                    return nil, flag .. ": expected milliseconds (a number >= 0), got '"
                        .. value .. "'"
                end
                opts[str_sub(flag, 3)] = s
            elseif flag == "--chunks" then
                local c = tonumber(value)
                if not c or c ~= math_floor(c) or c < 1 then
                    return nil, "--chunks: expected a positive integer, got '" .. value .. "'"
                end
                opts.chunks = c
            elseif flag == "--text" then
                opts.text = value
            elseif flag == "--model" then
                if value == "" then
                    return nil, "--model: expected a model name"
                end
                opts.model = value
            else -- --fail
                local code, rate = str_match(value, "^(%d+):([%d%.eE%-+]+)$")
                code, rate = tonumber(code), tonumber(rate)
                if not code or code < 400 or code > 599 then
                    return nil, "--fail: expected CODE:RATE with CODE from 400 to 599, got '"
                        .. value .. "'"
                end
                if not rate or rate < 0 or rate > 1 then
                    return nil, "--fail: expected CODE:RATE with RATE from 0 to 1, got '"
                        .. value .. "'"
                end
                fail = fail or {}
                fail[code] = rate
            end
        elseif str_sub(arg, 1, 1) == "-" then
            return nil, "unknown flag " .. flag
        else
            return nil, "unexpected argument '" .. arg .. "'"
        end
    end

    if fail then
        local total = 0
        for _, r in pairs(fail) do
            total = total + r
        end
        if total > 1 + 1e-9 then
            return nil, "--fail: the rates add up to more than 1"
        end
        opts.fail = fail
    end
    return opts, listen
end

return _M
