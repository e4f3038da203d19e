-- moongate.codec.gemini — Google's Gemini API (generateContent,
-- streamGenerateContent?alt=sse, batchEmbedContents, models), to and from the
-- hub (OpenAI chat). A Gemini stream has no terminating event: it is
-- complete when a candidate said why it finished and the body ended.
local J = require("moongate.codec.json")
local common = require("moongate.codec.common")
local errors = require("moongate.errors")
local oa = require("moongate.codec.openai")
local usage = require("moongate.codec.usage")

local absent, str, list, obj = common.absent, common.str, common.list, common.obj
local concat = table.concat
local format = string.format
local ipairs, os_time, tostring, type = ipairs, os.time, tostring, type

local _M = { _VERSION = "0.1" }

local FINISH = {
  STOP = "stop", MAX_TOKENS = "length", SAFETY = "content_filter", RECITATION = "content_filter",
  BLOCKLIST = "content_filter", PROHIBITED_CONTENT = "content_filter", SPII = "content_filter",
  IMAGE_SAFETY = "content_filter", LANGUAGE = "stop", OTHER = "stop",
  MALFORMED_FUNCTION_CALL = "stop", FINISH_REASON_UNSPECIFIED = "stop",
}
_M.FINISH = FINISH

-- ====================== usage ======================

-- usage(u) -> normalised usage | nil. Gemini leaves zero counts out (proto3
-- JSON): a final chunk with an empty answer has no candidatesTokenCount, and
-- its completion is then estimated (0 characters: 0 tokens).
function _M.usage(u)
  u = obj(u)
  if not u then return nil end
  local prompt = usage.count(u.promptTokenCount)
  local cand = usage.count(u.candidatesTokenCount)
  local thoughts = usage.count(u.thoughtsTokenCount)
  local tool = usage.count(u.toolUsePromptTokenCount)
  local cached = usage.count(u.cachedContentTokenCount)
  if not (prompt or cand or thoughts) then return nil end
  -- a stream's early chunks carry the prompt only: the completion is not known yet
  local completion
  if cand or thoughts then completion = (cand or 0) + (thoughts or 0) end
  return {
    prompt_tokens = prompt and (prompt + (tool or 0)) or nil,
    completion_tokens = completion,
    cached_tokens = cached or 0,
    reasoning_tokens = thoughts,
  }
end

-- ====================== errors ======================

-- error_info(text) -> { message, type, code } from {"error":{"code","message","status"}}
function _M.error_info(text)
  local doc = J.decode(text or "")
  if J.is_array(doc) then doc = doc[1] end
  doc = obj(doc)
  local e = doc and obj(doc.error)
  if not e or not str(e.message) then return nil end
  return { message = e.message, type = str(e.status), code = str(e.status) }
end

-- ====================== requests: hub (OpenAI) -> Gemini ======================

local function parts_of(content, field, policy, out)
  if type(content) == "string" then
    if content ~= "" then out[#out + 1] = J.object("text", content) end
    return out
  end
  if absent(content) then return out end
  local l = list(content)
  if not l then policy:bad(field, "expected a string or a list of content parts") end
  for i, p in ipairs(l) do
    local f = field .. "[" .. (i - 1) .. "]"
    p = obj(p)
    if not p then policy:bad(f, "expected a content part") end
    local t = p.type
    if t == "text" then
      if not str(p.text) then policy:bad(f .. ".text", "expected a string") end
      out[#out + 1] = J.object("text", p.text)
    elseif t == "image_url" then
      local iu = p.image_url
      local url = type(iu) == "string" and iu or (obj(iu) and str(iu.url))
      if not url then policy:bad(f .. ".image_url.url", "required") end
      local mt, data = common.data_url(url)
      if mt then
        out[#out + 1] = J.object("inlineData", J.object("mimeType", mt, "data", data))
      else
        out[#out + 1] = J.object("fileData", J.object("mimeType", common.mime_of(url), "fileUri", url))
      end
    elseif t == "input_audio" and obj(p.input_audio) and str(p.input_audio.data) then
      out[#out + 1] = J.object("inlineData", J.object("mimeType", "audio/" .. (str(p.input_audio.format) or "wav"),
        "data", p.input_audio.data))
    elseif t == "file" and obj(p.file) and common.data_url(p.file.file_data) then
      local mt, data = common.data_url(p.file.file_data)
      out[#out + 1] = J.object("inlineData", J.object("mimeType", mt, "data", data))
    else
      policy:unsupported(f, "content parts of type " .. tostring(t) .. " cannot be sent to provider type " ..
        policy.type)
    end
  end
  return out
end

-- the tool result as the object Gemini wants: the content itself when it is
-- a JSON object, else { content = text }
local function function_response(content, field, policy)
  local text = content
  if type(content) ~= "string" then
    local parts = parts_of(content, field, policy, {})
    local t = {}
    for _, p in ipairs(parts) do t[#t + 1] = str(p.text) or "" end
    text = concat(t, "\n\n")
  end
  local doc = obj(J.decode(text))
  if doc and J.is_object(doc) then return doc end
  return J.object("content", text)
end

local function contents_from_hub(msgs, policy)
  local l = list(msgs)
  if not l then policy:bad("messages", "expected a list of messages") end
  local system, contents = {}, J.array()
  local names = {}  -- tool call id -> function name (a tool message carries only the id)
  local last
  local function push(role, parts)
    if #parts == 0 then return end
    if last and last.role == role then
      for _, p in ipairs(parts) do last.parts[#last.parts + 1] = p end
      return
    end
    last = J.object("role", role, "parts", J.array(parts))
    contents[#contents + 1] = last
  end
  for i, m in ipairs(l) do
    local f = "messages[" .. (i - 1) .. "]"
    m = obj(m)
    if not m then policy:bad(f, "expected a message object") end
    local role = m.role
    if role == "system" or role == "developer" then
      parts_of(m.content, f .. ".content", policy, system)
    elseif role == "user" then
      push("user", parts_of(m.content, f .. ".content", policy, {}))
    elseif role == "assistant" then
      local parts = parts_of(m.content, f .. ".content", policy, {})
      for j, tc in ipairs(list(m.tool_calls) or {}) do
        local tf = f .. ".tool_calls[" .. (j - 1) .. "]"
        local fn = obj(tc) and obj(tc["function"])
        if not fn or not str(fn.name) then policy:bad(tf, "expected a function tool call with a name") end
        local args = J.object()
        if type(fn.arguments) == "string" and fn.arguments:find("%S") then
          args = obj(J.decode(fn.arguments))
          if not args then policy:bad(tf .. ".function.arguments", "is not a JSON object") end
        end
        if str(tc.id) then names[tc.id] = fn.name end
        parts[#parts + 1] = J.object("functionCall", J.object("name", fn.name, "args", args))
      end
      push("model", parts)
    elseif role == "tool" then
      local id = str(m.tool_call_id)
      if not id then policy:bad(f .. ".tool_call_id", "required for a tool message") end
      push("user", { J.object("functionResponse", J.object("name", names[id] or id,
        "response", function_response(m.content, f .. ".content", policy))) })
    else
      policy:bad(f .. ".role", "unknown role " .. tostring(role))
    end
  end
  return system, contents
end

local CHAT_FIELDS = {
  model = true, messages = true, stream = true, stream_options = true, max_tokens = true,
  max_completion_tokens = true, temperature = true, top_p = true, top_k = true, stop = true, n = true,
  presence_penalty = true, frequency_penalty = true, seed = true, response_format = true, tools = true,
  tool_choice = true, parallel_tool_calls = true, user = true, metadata = true, store = true,
  service_tier = true,
  logprobs = function(v) return v == false end,
  logit_bias = function(v) return obj(v) ~= nil and #J.keys(v) == 0 end,
}

local function val(v) if absent(v) then return nil end return v end

-- request_from_hub(doc, opts) -> a generateContent request (codec.json)
-- opts: policy
function _M.request_from_hub(doc, opts)
  local policy = opts.policy
  if not obj(doc) then policy:bad("body", "expected a JSON object") end
  for _, k in ipairs(J.keys(doc)) do
    local rule = CHAT_FIELDS[k]
    if not absent(doc[k]) and (rule == nil or (type(rule) == "function" and not rule(doc[k]))) then
      policy:unsupported(k, format("not a chat parameter provider type %s can take", policy.type))
    end
  end
  local system, contents = contents_from_hub(doc.messages, policy)
  local stop = doc.stop
  if type(stop) == "string" then
    stop = J.array({ stop })
  elseif list(stop) and #stop > 0 then
    for i, v in ipairs(stop) do
      if not str(v) then policy:bad("stop[" .. (i - 1) .. "]", "expected a string") end
    end
  elseif not absent(stop) and not list(stop) then
    policy:bad("stop", "expected a string or a list of strings")
  else
    stop = nil
  end
  local max = val(doc.max_completion_tokens) or val(doc.max_tokens)
  if max and not J.num(max) then policy:bad("max_tokens", "expected a number") end
  local mime, schema
  local rf = obj(doc.response_format)
  if rf then
    if rf.type == "json_object" then
      mime = "application/json"
    elseif rf.type == "json_schema" then
      mime = "application/json"
      local js = obj(rf.json_schema)
      schema = js and obj(js.schema)
    elseif rf.type ~= "text" then
      policy:bad("response_format.type", "expected text, json_object or json_schema")
    end
  end
  local gen = J.object(
    "candidateCount", val(doc.n),
    "maxOutputTokens", max,
    "temperature", val(doc.temperature),
    "topP", val(doc.top_p),
    "topK", val(doc.top_k),
    "stopSequences", stop,
    "presencePenalty", val(doc.presence_penalty),
    "frequencyPenalty", val(doc.frequency_penalty),
    "seed", val(doc.seed),
    "responseMimeType", mime,
    "responseJsonSchema", schema)
  local tools, tool_config
  local tl = list(doc.tools)
  if tl and #tl > 0 then
    local decls = J.array()
    for i, t in ipairs(tl) do
      local f = "tools[" .. (i - 1) .. "]"
      t = obj(t)
      if not t or t.type ~= "function" then
        policy:unsupported(f .. ".type", "only function tools can be sent to provider type " .. policy.type)
      else
        local fn = obj(t["function"])
        if not fn or not str(fn.name) then policy:bad(f .. ".function.name", "required") end
        decls[#decls + 1] = J.object("name", fn.name, "description", str(fn.description),
          "parametersJsonSchema", obj(fn.parameters))
      end
    end
    if #decls > 0 then tools = J.array({ J.object("functionDeclarations", decls) }) end
  end
  local tc = doc.tool_choice
  if tools and not absent(tc) then
    local mode, allowed
    if tc == "auto" then mode = "AUTO"
    elseif tc == "none" then mode = "NONE"
    elseif tc == "required" then mode = "ANY"
    elseif obj(tc) and obj(tc["function"]) and str(tc["function"].name) then
      mode, allowed = "ANY", J.array({ tc["function"].name })
    else
      policy:bad("tool_choice", "expected auto, none, required or a function")
    end
    tool_config = J.object("functionCallingConfig", J.object("mode", mode, "allowedFunctionNames", allowed))
  end
  return J.object(
    "contents", contents,
    "systemInstruction", #system > 0 and J.object("parts", J.array(system)) or nil,
    "tools", tools,
    "toolConfig", tool_config,
    "generationConfig", #J.keys(gen) > 0 and gen or nil)
end

-- ====================== responses ======================

local seq = 0
local function call_id()
  seq = seq + 1
  return format("call_%x%04x", os_time(), seq % 0x10000)
end

-- the text and tool calls of one candidate's parts; tracker counts output
local function read_parts(parts, tracker)
  local texts, calls = {}, {}
  for _, p in ipairs(list(parts) or {}) do
    p = obj(p)
    if p then
      if str(p.text) and p.thought ~= true then
        texts[#texts + 1] = p.text
        if tracker then tracker:output_text(p.text) end
      elseif str(p.text) and tracker then
        tracker:output_text(p.text)
      end
      local fc = obj(p.functionCall)
      if fc and str(fc.name) then
        local args = J.encode(obj(fc.args) or J.object())
        if tracker then tracker:output_text(fc.name); tracker:output_text(args) end
        calls[#calls + 1] = { id = str(fc.id) or call_id(), name = fc.name, arguments = args }
      end
    end
  end
  return texts, calls
end

local function finish_of(reason, has_calls)
  if not str(reason) then return nil end
  if has_calls and (reason == "STOP" or reason == "FINISH_REASON_UNSPECIFIED") then return "tool_calls" end
  return FINISH[reason] or "stop"
end

-- response_to_hub(doc, model) -> chat.completion, usage | nil, err
function _M.response_to_hub(doc, model, tracker)
  doc = obj(doc)
  if not doc or (absent(doc.candidates) and not obj(doc.promptFeedback) and not obj(doc.usageMetadata)) then
    return nil, "the provider's answer is not a Gemini response"
  end
  local choices = J.array()
  for i, c in ipairs(list(doc.candidates) or {}) do
    c = obj(c)
    if c then
      local content = obj(c.content) or J.object()
      local texts, calls = read_parts(content.parts, tracker)
      local tcs
      if #calls > 0 then
        tcs = J.array()
        for k, tc in ipairs(calls) do
          tcs[k] = J.object("id", tc.id, "type", "function",
            "function", J.object("name", tc.name, "arguments", tc.arguments))
        end
      end
      choices[#choices + 1] = J.object("index", J.num(c.index) or (i - 1),
        "message", J.object("role", "assistant", "content", #texts > 0 and concat(texts) or J.null,
          "refusal", J.null, "tool_calls", tcs),
        "logprobs", J.null, "finish_reason", finish_of(c.finishReason, #calls > 0) or "stop")
    end
  end
  if #choices == 0 then
    -- the prompt itself was blocked
    choices[1] = J.object("index", 0, "message", J.object("role", "assistant", "content", J.null,
      "refusal", J.null), "logprobs", J.null, "finish_reason", "content_filter")
  end
  local u = _M.usage(doc.usageMetadata)
  return J.object("id", str(doc.responseId) or call_id():gsub("^call_", "gen-"), "object", "chat.completion",
    "created", os_time(), "model", str(doc.modelVersion) or model or "", "choices", choices,
    "usage", u and oa.usage_object(u) or nil), u
end

-- ====================== streams: Gemini chunks -> hub chunks ======================

local In = {}
In.__index = In

-- stream_to_hub(tracker, model) -> t (as codec.anthropic's)
function _M.stream_to_hub(tracker, model)
  return setmetatable({ tracker = tracker, id = nil, model = model or "", created = os_time(),
    roles = {}, tools = {}, finished = false }, In)
end

function In:event(ev)
  if ev.data == nil then return {} end
  local d = J.decode(ev.data)
  if J.is_array(d) then d = d[1] end
  d = obj(d)
  if not d then return nil, "the provider sent an event that is not JSON" end
  if obj(d.error) then
    local m = tostring(str(d.error.message) or "unknown")
    local code = tonumber(d.error.code)
    return nil, "provider error: " .. m,
      { message = m, status = code and code >= 400 and code < 600 and code or 502 }
  end
  self.id = self.id or str(d.responseId) or call_id():gsub("^call_", "gen-")
  if str(d.modelVersion) then self.model = d.modelVersion end
  self.tracker:report(_M.usage(d.usageMetadata))
  self.seen = true
  local choices = {}
  for i, c in ipairs(list(d.candidates) or {}) do
    c = obj(c)
    if c then
      local idx = J.num(c.index) or (i - 1)
      local content = obj(c.content) or J.object()
      local texts, calls = read_parts(content.parts, self.tracker)
      local delta = J.object()
      if not self.roles[idx] then
        self.roles[idx] = true
        J.set(delta, "role", "assistant")
      end
      if #texts > 0 then J.set(delta, "content", concat(texts)) end
      if #calls > 0 then
        local tcs = J.array()
        for _, tc in ipairs(calls) do
          local n = (self.tools[idx] or -1) + 1
          self.tools[idx] = n
          tcs[#tcs + 1] = J.object("index", n, "id", tc.id, "type", "function",
            "function", J.object("name", tc.name, "arguments", tc.arguments))
        end
        J.set(delta, "tool_calls", tcs)
      end
      local fr = finish_of(c.finishReason, (self.tools[idx] or -1) >= 0)
      if fr then self.finished = true end
      if #J.keys(delta) > 0 or fr then choices[#choices + 1] = oa.delta_choice(idx, delta, fr) end
    end
  end
  if list(d.candidates) == nil and obj(d.promptFeedback) and str(d.promptFeedback.blockReason) then
    self.finished = true
    choices[1] = oa.delta_choice(0, J.object("role", "assistant"), "content_filter")
  end
  if #choices == 0 then return {} end
  return { oa.chunk(self, choices) }
end

function In:finish()
  if not self.finished then
    return nil, self.seen and "the provider's stream ended before a finish reason" or
      "the provider's stream ended without any event"
  end
  return { oa.DONE }
end

-- ====================== embeddings ======================

-- embeddings_from_hub(doc, opts) -> a batchEmbedContents request
-- opts: policy, model (without "models/")
function _M.embeddings_from_hub(doc, opts)
  local policy = opts.policy
  if not obj(doc) then policy:bad("body", "expected a JSON object") end
  local inputs = doc.input
  if type(inputs) == "string" then inputs = { inputs } end
  if not list(inputs) or #inputs == 0 then policy:bad("input", "expected a string or a list of strings") end
  for _, k in ipairs(J.keys(doc)) do
    if k ~= "model" and k ~= "input" and k ~= "dimensions" and k ~= "encoding_format" and k ~= "user"
      and not absent(doc[k]) then
      policy:unsupported(k, format("not an embeddings parameter provider type %s can take", policy.type))
    end
  end
  local reqs = J.array()
  for i, s in ipairs(inputs) do
    if not str(s) then
      policy:unsupported("input[" .. (i - 1) .. "]", format("provider type %s embeds text, not token ids",
        policy.type))
    end
    reqs[i] = J.object("model", "models/" .. opts.model, "content", J.object("parts", J.array({
      J.object("text", s) })), "outputDimensionality", val(doc.dimensions))
  end
  return J.object("requests", reqs)
end

local function float32_base64(values)
  local ffi = require("ffi")
  local n = #values
  local buf = ffi.new("float[?]", n)
  for i = 1, n do buf[i - 1] = J.num(values[i]) or 0 end
  local s = ffi.string(buf, n * 4)
  local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1, c2, c3, c4 = math.floor(v / 262144) % 64, math.floor(v / 4096) % 64,
      math.floor(v / 64) % 64, v % 64
    out[#out + 1] = B64:sub(c1 + 1, c1 + 1) .. B64:sub(c2 + 1, c2 + 1) ..
      (b and B64:sub(c3 + 1, c3 + 1) or "=") .. (c and B64:sub(c4 + 1, c4 + 1) or "=")
  end
  return concat(out)
end

-- embeddings_to_hub(doc, model, base64) -> an OpenAI embedding list | nil, err
function _M.embeddings_to_hub(doc, model, as_base64, prompt_tokens)
  doc = obj(doc)
  if not doc or not list(doc.embeddings) then return nil, "the provider's answer is not a Gemini embedding list" end
  local data = J.array()
  for i, e in ipairs(doc.embeddings) do
    e = obj(e)
    if not e or not list(e.values) then return nil, "the provider's embedding has no values" end
    data[i] = J.object("object", "embedding", "index", i - 1,
      "embedding", as_base64 and float32_base64(e.values) or J.array(e.values))
  end
  local p = prompt_tokens or 0
  return J.object("object", "list", "data", data, "model", model,
    "usage", J.object("prompt_tokens", p, "total_tokens", p))
end

-- ====================== model lists ======================

function _M.models_to_list(doc)
  doc = obj(doc)
  if not doc or not list(doc.models) then return nil end
  local out = {}
  for _, m in ipairs(doc.models) do
    m = obj(m)
    if m and str(m.name) then
      out[#out + 1] = { id = (m.name:gsub("^models/", "")), display_name = str(m.displayName),
        owned_by = "google" }
    end
  end
  return out
end

return _M
