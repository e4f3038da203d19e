-- moongate.codec.decoder — the object the runtime feeds one attempt's answer
-- through (ctx.upstream.decoder, see plugins/provider.lua): it turns the
-- provider's answer into the client's format and learns the usage.
--
--   d = decoder.new(opts)
--   status = d:head(status, headers)   headers: the client's, changed in place
--   d.buffer == true:  out, err = d:body(text)
--   otherwise:         out = d:chunk(data) ... ; out, err = d:finish()
--
-- opts: ctx; client ("openai" | "anthropic"); wire ("openai" | "anthropic" |
-- "gemini": the format the provider answers in — the mock answers in the
-- client's); endpoint ("chat" | "messages" | "completions" | "embeddings" |
-- "models" | "count_tokens" | "other"); stream; wants_usage (an OpenAI client
-- asked for stream usage); drop_usage_chunk (the gateway asked for it: drop
-- the usage-only chunk); model (reported when the provider names none);
-- request_doc (the client's request, or a function giving it: for
-- estimates); usage_path (a quirk: where else a chunk's usage may sit);
-- models_style ("openai" | "anthropic": the list shape the client wants);
-- owned_by; embeddings_base64.
--
-- Same-format answers (OpenAI to OpenAI, Anthropic to Anthropic) pass byte
-- for byte; only the usage is read, and the usage-only chunk the gateway
-- asked for is dropped. Nothing ever raises: a failure inside is logged and
-- becomes an error return, as garbage from the provider does.
local J = require("moongate.codec.json")
local common = require("moongate.codec.common")
local errors = require("moongate.errors")
local sse = require("moongate.codec.sse")
local usage = require("moongate.codec.usage")
local codecs = {
  openai = require("moongate.codec.openai"),
  anthropic = require("moongate.codec.anthropic"),
  gemini = require("moongate.codec.gemini"),
}
local oa, an, ge = codecs.openai, codecs.anthropic, codecs.gemini
local splice = require("moongate.json_splice")

local concat = table.concat
local byte, find, format, sub = string.byte, string.find, string.format, string.sub
local pcall, tostring, type = pcall, tostring, type

local _M = { _VERSION = "0.1" }

local Decoder = {}
Decoder.__index = Decoder

local tnew = require("table.new")

-- The options above, copied one by one (a pairs loop does not compile, and this runs once per
-- attempt); the decoder's own state goes in the same table.
function _M.new(opts)
  local d = setmetatable(tnew(0, 32), Decoder)
  d.ctx, d.client, d.wire, d.endpoint, d.stream = opts.ctx, opts.client, opts.wire, opts.endpoint, opts.stream
  d.wants_usage, d.drop_usage_chunk, d.model = opts.wants_usage, opts.drop_usage_chunk, opts.model
  d.request_doc, d.usage_path, d.models_style = opts.request_doc, opts.usage_path, opts.models_style
  d.owned_by, d.embeddings_base64 = opts.owned_by, opts.embeddings_base64
  d.same = opts.wire == opts.client
  d.tracker = usage.tracker(opts.ctx, opts.request_doc)
  return d
end

-- ====================== the safety net ======================

local function log_crash(name, err)
  local ok, gw = pcall(require, "gw")
  if ok and gw.log then gw.log("error", "codec: " .. name .. " failed: " .. tostring(err)) end
end

local function guarded(name, fn)
  return function(self, ...)
    local ok, a, b = pcall(fn, self, ...)
    if ok then return a, b end
    self.crashed = tostring(a)
    log_crash(name, a)
    self.failed = self.failed or "the gateway could not translate the provider's answer"
    if name == "head" then
      self.mode, self.buffer = "bad", true
      self.bad = self.failed
      return 502
    end
    return nil, self.failed
  end
end

-- ====================== head ======================

local function is_sse(ct) return find(ct, "text/event-stream", 1, true) ~= nil end

function Decoder:_head(status, headers)
  self.status = status
  local ct = (headers["content-type"] or ""):lower()
  if status < 200 or status >= 300 then
    -- a model list's error goes in the shape of the SDK that asked (GET /v1/models is one path
    -- for both SDKs), like the list itself
    local style, same = self.client, self.same
    if self.endpoint == "models" and self.models_style then
      style = self.models_style
      same = style == self.wire
    end
    if same or status < 400 then
      self.mode, self.buffer = "pass", false
      return status
    end
    self.mode, self.buffer, self.error_style = "error", true, style
    headers["content-type"] = "application/json"
    -- Anthropic's 529 "overloaded" is no status an OpenAI SDK knows
    if status == 529 and style == "openai" then return 503 end
    return status
  end
  if self.endpoint == "models" or self.endpoint == "count_tokens" or self.endpoint == "other" then
    local style = self.models_style or self.client
    if self.endpoint == "models" and style ~= self.wire then
      self.mode, self.buffer = "models", true
      headers["content-type"] = "application/json"
    else
      self.mode, self.buffer = "pass", false
    end
    return status
  end
  if self.stream then
    if not is_sse(ct) then
      self.mode, self.buffer = "bad", true
      self.bad = format("the provider answered a streamed request with %s instead of text/event-stream",
        ct ~= "" and ct or "no content type")
      return 502
    end
    self.reader = sse.reader()
    self.buffer = false
    if self.same then
      self.mode = "same_stream"
    else
      self.mode = "stream"
      if self.wire == "anthropic" then self.up = an.stream_to_hub(self.tracker)
      elseif self.wire == "gemini" then self.up = ge.stream_to_hub(self.tracker, self.model)
      else self.up = oa.stream_to_hub(self.tracker, self.usage_path) end
      if self.client == "anthropic" then
        self.down = an.emitter({ tracker = self.tracker, model = self.model })
      else
        self.down = oa.emitter({ tracker = self.tracker, wants_usage = self.wants_usage })
      end
      headers["content-type"] = "text/event-stream"
    end
    return status
  end
  self.buffer = true
  self.mode = self.same and "same_body" or "body"
  if not self.same then headers["content-type"] = "application/json" end
  return status
end
Decoder.head = guarded("head", Decoder._head)

-- ====================== whole bodies ======================

local function snippet(text)
  text = tostring(text or ""):gsub("%s+", " "):match("^ ?(.-) ?$")
  if #text > 200 then text = sub(text, 1, 200) .. "..." end
  return text
end

-- the provider's error in the client's format
function Decoder:_error(text)
  local info = codecs[self.wire].error_info(text)
  if not info then
    info = { message = format("provider answered %d: %s", self.status, snippet(text)) }
  end
  local status = self.status
  local style = self.error_style or self.client
  if status == 529 and style == "openai" then status = 503 end
  if style == "anthropic" then return an.error_body(status, info) end
  return oa.error_body(status, info)
end

-- looks like one JSON object (checked without decoding the whole body)
local function object_text(text)
  local a = find(text, "%S")
  if not a or sub(text, a, a) ~= "{" then return false end
  local e = #text
  while e > a and find(sub(text, e, e), "%s") do e = e - 1 end
  return sub(text, e, e) == "}"
end

-- The fast path of a same-format answer: only its usage is read — the text itself goes to the
-- client unchanged. In the binary, runtime/json.c's scanner checks the text is one JSON object
-- and says where its top-level "usage" sits, and lua-cjson decodes just that member; outside
-- it (unit specs) cjson decodes the whole text. What cjson loses (digits past 14, [] vs {})
-- does not matter here.
local cjson_decode = require("cjson.safe").new().decode
local mgffi = require("moongate.ffi")
local ffi = require("ffi")
local scan_info = mgffi.available and ffi.new("mg_json_info_t") or nil

-- The scanner's counts (the plain case, runtime/json.c) as the table cjson would have made of
-- the member, with only the keys oa.usage and an.usage read.
local USAGE_TOP = { "prompt_tokens", "completion_tokens", "total_tokens", "input_tokens",
                    "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens" }
local function plain_usage(info)
  local n = info.usage
  local u = tnew(0, 8)
  for i = 1, 7 do
    local v = n[i - 1]
    if v >= 0 then u[USAGE_TOP[i]] = v end
  end
  if n[7] >= 0 then u.prompt_tokens_details = { cached_tokens = n[7] } end
  if n[8] >= 0 then u.completion_tokens_details = { reasoning_tokens = n[8] } end
  return u
end

local function usage_member(text)
  if scan_info then
    if mgffi.C.mg_json_scan(text, #text, scan_info) ~= 0 then return nil end
    local off = tonumber(scan_info.usage_off)
    if off < 0 then return nil end
    if scan_info.usage_plain ~= 0 then return plain_usage(scan_info) end
    local u = cjson_decode(sub(text, off + 1, off + tonumber(scan_info.usage_len)))
    return type(u) == "table" and u or nil
  end
  local doc = cjson_decode(text)
  if type(doc) ~= "table" or doc[1] ~= nil then return nil end
  return type(doc.usage) == "table" and doc.usage or nil
end

function Decoder:_same_body_fast(text)
  local u = usage_member(text)
  local reported = u and (self.client == "anthropic" and an.usage(u) or oa.usage(u))
  -- a partial usage needs the text scan below for its estimate
  if not reported or not reported.prompt_tokens
     or not (reported.completion_tokens or self.endpoint == "embeddings") then
    return false
  end
  self.tracker:report(reported)
  if self.endpoint == "embeddings" then self.tracker:report({ completion_tokens = 0 }) end
  self.tracker:publish()
  return true
end

function Decoder:_same_body(text)
  if self:_same_body_fast(text) then return text end
  if not object_text(text) then
    return nil, "the provider's answer is not a JSON object: " .. snippet(text)
  end
  local a, b = splice.find(text, "usage")
  if a then
    local u = J.decode(sub(text, a, b))
    if self.client == "anthropic" then self.tracker:report(an.usage(u))
    else self.tracker:report(oa.usage(u)) end
  end
  if self.endpoint == "embeddings" then
    self.tracker:report({ completion_tokens = 0 })
  else
    self.tracker:output(usage.scan_chars(text))
  end
  self.tracker:publish()
  return text
end

function Decoder:_translate_body(text)
  local doc, err = J.decode(text)
  if doc == nil then return nil, "the provider's answer is not JSON: " .. tostring(err) end
  local t = self.tracker
  if self.endpoint == "embeddings" then
    -- Gemini reports no usage for embeddings: the prompt is estimated
    t:report({ completion_tokens = 0 })
    local u = t:publish()
    local out, e2 = ge.embeddings_to_hub(doc, self.model, self.embeddings_base64, u.prompt_tokens)
    if not out then return nil, e2 end
    return J.encode(out)
  end
  local hub, u
  if self.wire == "anthropic" then
    hub, u = an.response_to_hub(doc)
    if hub then t:output(usage.scan_chars(text)) end
  elseif self.wire == "gemini" then
    hub, u = ge.response_to_hub(doc, self.model, t)
  else
    hub = common.obj(doc)
    if not hub or not common.list(hub.choices) then
      return nil, "the provider's answer is not a chat completion"
    end
    u = oa.usage(hub.usage)
    t:output(usage.scan_chars(text))
  end
  if not hub then return nil, u end
  t:report(u)
  local nu = t:publish()
  if self.client == "anthropic" then
    local msg, e3 = an.response_from_hub(hub, nu)
    if not msg then return nil, e3 end
    return J.encode(msg)
  end
  J.set(hub, "usage", oa.usage_object(nu))
  return J.encode(hub)
end

function Decoder:_models(text)
  local doc = J.decode(text)
  local list = doc and codecs[self.wire].models_to_list(doc)
  if not list then return nil, "the provider's model list is not in its format" end
  if (self.models_style or self.client) == "anthropic" then return common.models_anthropic(list) end
  return common.models_openai(list, self.owned_by)
end

function Decoder:_body(text)
  local m = self.mode
  if m == "error" then return self:_error(text) end
  if m == "bad" then return nil, self.bad end
  if m == "same_body" then return self:_same_body(text) end
  if m == "body" then return self:_translate_body(text) end
  if m == "models" then return self:_models(text) end
  return text
end
Decoder.body = guarded("body", Decoder._body)

-- ====================== streams ======================

-- '"key"%s*:%s*X' anywhere in s, and '^%s*{%s*"key"': in C in the gateway (the same matches,
-- runtime/json.c), patterns outside it
local has_member, first_key_is, json_object
if scan_info then
  local C = mgffi.C
  has_member = function(s, key, nxt) return C.mg_json_has_member(s, #s, key, #key, byte(nxt)) ~= 0 end
  first_key_is = function(s, key) return C.mg_json_first_key_is(s, #s, key, #key) ~= 0 end
  json_object = function(s) return C.mg_json_scan(s, #s, scan_info) == 0 end
else
  has_member = function(s, key, nxt) return find(s, '"' .. key .. '"%s*:%s*' .. nxt) ~= nil end
  first_key_is = function(s, key) return find(s, '^%s*{%s*"' .. key .. '"') ~= nil end
  json_object = function(s)
    return type(cjson_decode(s)) == "table" and not find(s, "^%s*%[")
  end
end

-- one same-format event: usage read, the gateway's usage chunk dropped,
-- the provider's error kept back for finish()
function Decoder:_same_event(ev)
  local data = ev.data
  if self.client == "anthropic" then
    if data and not json_object(data) then
      self.failed = "the provider sent an event that is not JSON"
      return ""
    end
    local name = ev.event
    if not name and data then
      local d = common.obj(J.decode(data))
      name = d and common.str(d.type)
    end
    if name == "message_start" or name == "message_delta" then
      local d = common.obj(J.decode(data or ""))
      if d then
        local u = name == "message_start" and common.obj(d.message) and d.message.usage or d.usage
        self.tracker:report(an.usage(u))
      end
    elseif name == "message_stop" then
      self.complete = true
    elseif name == "error" then
      local d = common.obj(J.decode(data or ""))
      local e = d and common.obj(d.error)
      local m = tostring(e and common.str(e.message) or "unknown")
      self.failed = "provider error: " .. m
      -- already in the client's format: the runtime sends it as it came, then cuts the stream
      self.provider_error = { message = m, status = errors.provider_status(e), raw = d and ev.raw or nil }
      return ""
    elseif name == "content_block_delta" or name == "content_block_start" then
      self.tracker:output(usage.scan_chars(data))
    end
    return ev.raw
  end
  if data == nil then return ev.raw end
  if data == "[DONE]" then
    self.complete = true
    return ev.raw
  end
  -- what is not JSON would break the client's SDK (it parses every event): never passed on
  if not json_object(data) then
    self.failed = "the provider sent an event that is not JSON"
    return ""
  end
  if first_key_is(data, "error") then
    local d = common.obj(J.decode(data))
    if d and not common.absent(d.error) and d.choices == nil then
      local e = common.obj(d.error)
      local m = tostring(e and common.str(e.message) or d.error)
      self.failed = "provider error: " .. m
      self.provider_error = { message = m, status = errors.provider_status(e), raw = ev.raw }
      return ""
    end
  end
  if has_member(data, "usage", "{") then
    local d = common.obj(J.decode(data))
    if d then
      self.tracker:report(oa.chunk_usage(d, self.usage_path))
      if self.drop_usage_chunk and common.list(d.choices) and #d.choices == 0 then return "" end
    end
  end
  if has_member(data, "finish_reason", '"') then self.finished = true end
  self.tracker:output(usage.scan_chars(data))
  return ev.raw
end

function Decoder:_events(events, out)
  for i = 1, #events do
    if self.failed then return end
    local ev = events[i]
    if self.mode == "same_stream" then
      out[#out + 1] = self:_same_event(ev)
    else
      local items, err, perr = self.up:event(ev)
      if not items then
        self.failed = err
        self.provider_error = perr   -- the provider's own error: translated by the runtime
        return
      end
      for k = 1, #items do out[#out + 1] = self.down:item(items[k]) end
    end
  end
end

function Decoder:_chunk(data)
  if self.mode == "pass" then return data end
  if self.failed or not self.reader then return nil end
  local out = {}
  self:_events(self.reader:feed(data), out)
  self.tracker:publish()
  return concat(out)
end
Decoder.chunk = guarded("chunk", Decoder._chunk)

-- relay() -> 1 (OpenAI) or 2 (Anthropic), and the start of an event the reader holds, when the
-- runtime may hand this answer's next events to the C relay (runtime/sse.c passes on the text
-- deltas this decoder would only count, and leaves every other event to it, from its first byte);
-- nil otherwise. relay_taken(): the relay took them, and the reader starts afresh where it stops.
local RELAY = { openai = 1, anthropic = 2 }
local RELAY_MAX = 65536   -- runtime/upstream_int.h MG_UP_RELAY_MAX: a longer one stays here
function Decoder:relay()
  if self.mode ~= "same_stream" or self.failed or not self.reader then return nil end
  local pending = self.reader.split.buf
  if #pending > RELAY_MAX then return nil end
  return RELAY[self.client], pending
end

function Decoder:relay_taken()
  self.reader.split.buf = ""
end

-- tracks_usage() -> true when every piece through chunk() updates ctx.usage (a streamed answer)
function Decoder:tracks_usage()
  return self.mode == "same_stream" or self.mode == "stream"
end

-- relayed(nchars): the text the relay passed on, counted as _same_event counts it
function Decoder:relayed(nchars)
  if nchars > 0 then self.tracker:output(nchars) end
  self.tracker:publish()
end

function Decoder:_finish()
  if self.mode == "pass" then return nil end
  if not self.reader then return nil end
  local out = {}
  if not self.failed then
    local rest = self.reader:finish()
    self:_events(rest, out)
    -- a last event the provider left without its blank line ("data: [DONE]\n", then the close):
    -- a client's SSE parser would drop it, so it goes out ended
    local last = rest[1] and rest[1].raw
    if self.mode == "same_stream" and last and out[#out] == last and last ~= "" then
      local tail = sub(last, -2)
      out[#out] = last .. ((tail == "\r\n" and "\r\n") or (sub(tail, -1) == "\n" and "\n")
        or (sub(tail, -1) == "\r" and "\r") or "\n\n")
    end
  end
  if not self.failed then
    if self.mode == "same_stream" then
      if not self.complete and self.client == "openai" and self.finished then
        -- a compatible server that ends after the finish reason without [DONE]
        out[#out + 1] = "data: [DONE]\n\n"
        self.complete = true
      end
      if not self.complete then
        self.failed = self.client == "anthropic" and "the provider's stream ended before message_stop"
          or "the provider's stream ended before [DONE]"
      end
    else
      local items, err = self.up:finish()
      if not items then
        self.failed = err
      else
        for k = 1, #items do out[#out + 1] = self.down:item(items[k]) end
      end
    end
  end
  self.tracker:publish()
  local text = concat(out)
  if self.failed then return text ~= "" and text or nil, self.failed end
  return text
end
Decoder.finish = guarded("finish", Decoder._finish)

return _M
