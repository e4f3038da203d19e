-- moongate.codec.anthropic — Anthropic's Messages API, to and from the hub
-- (OpenAI chat): requests, responses, streams (message_start ...
-- message_stop), errors, usage and model lists.
--
-- Values are codec.json values, so numbers keep their digits and empty
-- arrays stay arrays. Request translators take a common.policy, through
-- which a field the other side cannot honour is refused (400) or dropped.
local J = require("moongate.codec.json")
local common = require("moongate.codec.common")
local errors = require("moongate.errors")
local oa = require("moongate.codec.openai")
local sse = require("moongate.codec.sse")
local usage = require("moongate.codec.usage")

local absent, str, list, obj = common.absent, common.str, common.list, common.obj
local concat = table.concat
local format = string.format
local ipairs, os_time, tostring, type = ipairs, os.time, tostring, type

local _M = { _VERSION = "0.1" }

_M.VERSION_HEADER = "2023-06-01"

-- ====================== finish and stop reasons ======================

local STOP_TO_FINISH = {
  end_turn = "stop", stop_sequence = "stop", max_tokens = "length", tool_use = "tool_calls",
  pause_turn = "stop", refusal = "content_filter", model_context_window_exceeded = "length",
}
local FINISH_TO_STOP = {
  stop = "end_turn", length = "max_tokens", tool_calls = "tool_use", function_call = "tool_use",
  content_filter = "refusal",
}
_M.STOP_TO_FINISH, _M.FINISH_TO_STOP = STOP_TO_FINISH, FINISH_TO_STOP

-- ====================== usage ======================

-- usage(u) -> normalised usage | nil. Anthropic's input_tokens leaves out
-- the tokens read from or written to the prompt cache; the hub's
-- prompt_tokens counts them all, cached_tokens the ones read.
function _M.usage(u)
  u = obj(u)
  if not u then return nil end
  local input = usage.count(u.input_tokens)
  local read = usage.count(u.cache_read_input_tokens)
  local created = usage.count(u.cache_creation_input_tokens)
  local out = { completion_tokens = usage.count(u.output_tokens), cached_tokens = read }
  if input then out.prompt_tokens = input + (read or 0) + (created or 0) end
  if not out.prompt_tokens and not out.completion_tokens then return nil end
  return out
end

-- usage_object(u) -> an Anthropic usage object from normalised usage
function _M.usage_object(u)
  local cached = u.cached_tokens or 0
  local input = (u.prompt_tokens or 0) - cached
  if input < 0 then input = 0 end
  return J.object("input_tokens", input, "cache_creation_input_tokens", 0,
    "cache_read_input_tokens", cached, "output_tokens", u.completion_tokens or 0)
end

-- ====================== errors ======================

-- error_info(text) -> { message, type } from {"type":"error","error":{...}}
function _M.error_info(text)
  local doc = obj(J.decode(text or ""))
  if not doc then return nil end
  local e = obj(doc.error)
  if not e or not str(e.message) then return nil end
  return { message = e.message, type = str(e.type), code = str(e.type) }
end

-- error_body(status, info) -> an Anthropic error body
function _M.error_body(status, info)
  return errors.body("anthropic", status, info.message)
end

-- ====================== requests: hub (OpenAI) -> Anthropic ======================

-- text of an OpenAI content value that must be text only (system, tool results)
local function text_of(content, field, policy)
  if type(content) == "string" then return content end
  if absent(content) then return "" end
  local parts = list(content)
  if not parts then policy:bad(field, "expected a string or a list of content parts") end
  local out = {}
  for i, p in ipairs(parts) do
    p = obj(p)
    if not p then policy:bad(field .. "[" .. (i - 1) .. "]", "expected a content part") end
    if p.type == "text" and str(p.text) then
      out[#out + 1] = p.text
    else
      policy:unsupported(field .. "[" .. (i - 1) .. "]", "only text parts can go here")
    end
  end
  return concat(out, "\n\n")
end

local function image_block(url, field, policy)
  if type(url) ~= "string" then policy:bad(field, "expected image_url.url") end
  local mt, data = common.data_url(url)
  if mt then
    return J.object("type", "image", "source", J.object("type", "base64", "media_type", mt, "data", data))
  end
  if url:match("^data:") then policy:bad(field, "a data: URL must be base64") end
  return J.object("type", "image", "source", J.object("type", "url", "url", url))
end

-- OpenAI content (string or parts) -> list of Anthropic blocks
local function blocks_of(content, field, policy)
  local out = J.array()
  if type(content) == "string" then
    if content ~= "" then out[1] = J.object("type", "text", "text", content) end
    return out
  end
  if absent(content) then return out end
  local parts = list(content)
  if not parts then policy:bad(field, "expected a string or a list of content parts") end
  for i, p in ipairs(parts) do
    local f = field .. "[" .. (i - 1) .. "]"
    p = obj(p)
    if not p then policy:bad(f, "expected a content part") end
    local t = p.type
    if t == "text" then
      if not str(p.text) then policy:bad(f .. ".text", "expected a string") end
      if p.text ~= "" then out[#out + 1] = J.object("type", "text", "text", p.text) end
    elseif t == "image_url" then
      local iu = p.image_url
      local url = type(iu) == "string" and iu or (obj(iu) and iu.url)
      out[#out + 1] = image_block(url, f .. ".image_url.url", policy)
    elseif t == "file" and obj(p.file) and common.data_url(p.file.file_data) then
      local mt, data = common.data_url(p.file.file_data)
      out[#out + 1] = J.object("type", "document", "source",
        J.object("type", "base64", "media_type", mt, "data", data))
    elseif t == "refusal" and str(p.refusal) then
      out[#out + 1] = J.object("type", "text", "text", p.refusal)
    else
      policy:unsupported(f, "content parts of type " .. tostring(t) .. " cannot be sent to provider type " ..
        policy.type)
    end
  end
  return out
end

local function tool_use_blocks(calls, field, policy, out)
  local l = list(calls)
  if not l then policy:bad(field, "expected a list") end
  for i, tc in ipairs(l) do
    local f = field .. "[" .. (i - 1) .. "]"
    tc = obj(tc)
    local fn = tc and obj(tc["function"])
    if not fn or not str(fn.name) then policy:bad(f, "expected a function tool call with a name") end
    local input = J.object()
    local args = fn.arguments
    if type(args) == "string" and args:find("%S") then
      input = obj(J.decode(args))
      if not input then policy:bad(f .. ".function.arguments", "is not a JSON object") end
    elseif obj(args) then
      input = args
    end
    out[#out + 1] = J.object("type", "tool_use", "id", str(tc.id) or ("toolu_" .. i), "name", fn.name,
      "input", input)
  end
end

-- OpenAI messages -> system, Anthropic messages (consecutive turns of one role merged)
local function messages_from_hub(msgs, policy)
  local l = list(msgs)
  if not l then policy:bad("messages", "expected a list of messages") end
  local system, out = {}, J.array()
  local last_role, last
  local function push(role, blocks)
    if #blocks == 0 then return end
    if last_role == role then
      for _, b in ipairs(blocks) do last.content[#last.content + 1] = b end
      return
    end
    last = J.object("role", role, "content", blocks)
    last_role = role
    out[#out + 1] = last
  end
  for i, m in ipairs(l) do
    local f = "messages[" .. (i - 1) .. "]"
    m = obj(m)
    if not m then policy:bad(f, "expected a message object") end
    local role = m.role
    if role == "system" or role == "developer" then
      system[#system + 1] = text_of(m.content, f .. ".content", policy)
    elseif role == "user" then
      push("user", blocks_of(m.content, f .. ".content", policy))
    elseif role == "assistant" then
      local blocks = blocks_of(m.content, f .. ".content", policy)
      if not absent(m.tool_calls) then tool_use_blocks(m.tool_calls, f .. ".tool_calls", policy, blocks) end
      if not absent(m.function_call) then policy:unsupported(f .. ".function_call", "use tool_calls") end
      push("assistant", blocks)
    elseif role == "tool" then
      if not str(m.tool_call_id) then policy:bad(f .. ".tool_call_id", "required for a tool message") end
      local content = m.content
      local c
      if type(content) == "string" then
        c = content
      else
        c = text_of(content, f .. ".content", policy)
      end
      push("user", J.array({ J.object("type", "tool_result", "tool_use_id", m.tool_call_id, "content", c) }))
    else
      policy:bad(f .. ".role", "unknown role " .. tostring(role))
    end
  end
  return system, out
end

local function tools_from_hub(tools, policy)
  local l = list(tools)
  if not l then policy:bad("tools", "expected a list") end
  local out = J.array()
  for i, t in ipairs(l) do
    local f = "tools[" .. (i - 1) .. "]"
    t = obj(t)
    if not t then policy:bad(f, "expected a tool object") end
    if t.type ~= "function" then
      policy:unsupported(f .. ".type", "only function tools can be sent to provider type " .. policy.type)
    else
      local fn = obj(t["function"])
      if not fn or not str(fn.name) then policy:bad(f .. ".function.name", "required") end
      local schema = obj(fn.parameters) or J.object("type", "object", "properties", J.object())
      out[#out + 1] = J.object("name", fn.name, "description", str(fn.description), "input_schema", schema)
    end
  end
  return out
end

local function tool_choice_from_hub(tc, parallel, policy)
  local out
  if tc == "auto" then out = J.object("type", "auto")
  elseif tc == "none" then out = J.object("type", "none")
  elseif tc == "required" then out = J.object("type", "any")
  elseif obj(tc) and obj(tc["function"]) and str(tc["function"].name) then
    out = J.object("type", "tool", "name", tc["function"].name)
  elseif not absent(tc) then
    policy:bad("tool_choice", "expected auto, none, required or a function")
  end
  if parallel == false then
    out = out or J.object("type", "auto")
    if out.type ~= "none" then J.set(out, "disable_parallel_tool_use", true) end
  end
  return out
end

-- Chat request fields and what becomes of them on the way to Anthropic.
-- "ignore": nothing to honour (dropped silently); a function: checked.
local CHAT_FIELDS = {
  model = "ignore", messages = "ignore", stream = "ignore", stream_options = "ignore",
  max_tokens = "ignore", max_completion_tokens = "ignore", temperature = "ignore", top_p = "ignore",
  top_k = "ignore", stop = "ignore", tools = "ignore", tool_choice = "ignore",
  parallel_tool_calls = "ignore", user = "ignore", metadata = "ignore", store = "ignore",
  service_tier = "ignore", response_format = "ignore",
  n = function(v) return J.num(v) == 1 end,
  logprobs = function(v) return v == false end,
  top_logprobs = function(v) return false end,
  presence_penalty = function(v) return J.num(v) == 0 end,
  frequency_penalty = function(v) return J.num(v) == 0 end,
  logit_bias = function(v) return obj(v) ~= nil and #J.keys(v) == 0 end,
}
local WHY = {
  n = "provider type %s returns one choice; n must be 1",
  logprobs = "provider type %s does not return log probabilities",
  top_logprobs = "provider type %s does not return log probabilities",
  presence_penalty = "provider type %s has no presence penalty",
  frequency_penalty = "provider type %s has no frequency penalty",
  logit_bias = "provider type %s has no logit bias",
}

-- request_from_hub(doc, opts) -> an Anthropic request (a codec.json object)
-- doc: the decoded OpenAI chat request; opts: policy, model (the target's, or
-- nil for the client's), max_tokens (the default when the client set none)
-- Raises the policy's refusals (run it under common.run).
function _M.request_from_hub(doc, opts)
  local policy = opts.policy
  if not obj(doc) then policy:bad("body", "expected a JSON object") end
  for _, k in ipairs(J.keys(doc)) do
    local v = doc[k]
    local rule = CHAT_FIELDS[k]
    if not absent(v) then
      if rule == nil then
        policy:unsupported(k, format("not a chat parameter provider type %s can take", policy.type))
      elseif type(rule) == "function" and not rule(v) then
        policy:unsupported(k, format(WHY[k], policy.type))
      end
    end
  end
  local system, messages = messages_from_hub(doc.messages, policy)
  local max_tokens = doc.max_completion_tokens
  if absent(max_tokens) then max_tokens = doc.max_tokens end
  if absent(max_tokens) then
    max_tokens = opts.max_tokens or 4096
  elseif not J.num(max_tokens) then
    policy:bad("max_tokens", "expected a number")
  end
  local temperature = doc.temperature
  if not absent(temperature) then
    local t = J.num(temperature)
    if not t then policy:bad("temperature", "expected a number") end
    if t > 1 then
      policy:unsupported("temperature", format("provider type %s takes 0 to 1", policy.type))
      temperature = nil
    end
  else
    temperature = nil
  end
  local stop = doc.stop
  local stop_sequences
  if type(stop) == "string" then
    stop_sequences = J.array({ stop })
  elseif list(stop) then
    stop_sequences = J.array()
    for i, s in ipairs(stop) do
      if not str(s) then policy:bad("stop[" .. (i - 1) .. "]", "expected a string") end
      stop_sequences[i] = s
    end
    if #stop_sequences == 0 then stop_sequences = nil end
  elseif not absent(stop) then
    policy:bad("stop", "expected a string or a list of strings")
  end
  local rf = obj(doc.response_format)
  if rf and rf.type ~= "text" then
    policy:unsupported("response_format", format("provider type %s has no JSON response format", policy.type))
  end
  local tools, tool_choice
  if not absent(doc.tools) then tools = tools_from_hub(doc.tools, policy) end
  if tools and #tools == 0 then tools = nil end
  tool_choice = tool_choice_from_hub(doc.tool_choice, doc.parallel_tool_calls, policy)
  if tool_choice and not tools and tool_choice.type ~= "none" then tool_choice = nil end
  local metadata
  if str(doc.user) then metadata = J.object("user_id", doc.user) end
  local sys
  if #system == 1 then
    sys = system[1]
  elseif #system > 1 then
    sys = J.array()
    for i, s in ipairs(system) do sys[i] = J.object("type", "text", "text", s) end
  end
  return J.object(
    "model", opts.model or str(doc.model),
    "max_tokens", max_tokens,
    "system", sys,
    "messages", messages,
    "stop_sequences", stop_sequences,
    "temperature", temperature,
    "top_p", (not absent(doc.top_p)) and doc.top_p or nil,
    "top_k", (not absent(doc.top_k)) and doc.top_k or nil,
    "tools", tools,
    "tool_choice", tool_choice,
    "metadata", metadata,
    "stream", doc.stream == true or nil)
end

-- ====================== requests: Anthropic -> hub (OpenAI) ======================

local function image_part(src, field, policy)
  src = obj(src)
  if not src then policy:bad(field .. ".source", "required") end
  if src.type == "base64" and str(src.media_type) and str(src.data) then
    return J.object("type", "image_url", "image_url",
      J.object("url", "data:" .. src.media_type .. ";base64," .. src.data))
  elseif src.type == "url" and str(src.url) then
    return J.object("type", "image_url", "image_url", J.object("url", src.url))
  elseif src.type == "base64" or src.type == "url" then
    policy:bad(field .. ".source", src.type == "url" and "needs url" or "needs media_type and data")
  end
  policy:unsupported(field .. ".source", "image sources of type " .. tostring(src.type) ..
    " cannot be sent to provider type " .. policy.type)
end

local function document_part(b, field, policy)
  local src = obj(b.source)
  if src and src.type == "base64" and str(src.media_type) and str(src.data) then
    return J.object("type", "file", "file", J.object("filename", str(b.title) or "document.pdf",
      "file_data", "data:" .. src.media_type .. ";base64," .. src.data))
  elseif src and src.type == "text" and str(src.data) then
    return J.object("type", "text", "text", src.data)
  end
  policy:unsupported(field .. ".source", "document sources of type " .. tostring(src and src.type) ..
    " cannot be sent to provider type " .. policy.type)
end

-- the text of a tool_result's content (a string or text blocks)
local function tool_result_text(c, field, policy)
  if type(c) == "string" then return c end
  if absent(c) then return "" end
  local l = list(c)
  if not l then policy:bad(field, "expected a string or a list of blocks") end
  local out = {}
  for i, b in ipairs(l) do
    b = obj(b)
    if b and b.type == "text" and str(b.text) then
      out[#out + 1] = b.text
    else
      policy:unsupported(field .. "[" .. (i - 1) .. "]", "only text can go in a tool result for provider type " ..
        policy.type)
    end
  end
  return concat(out, "\n\n")
end

local function system_text(sys, policy)
  if type(sys) == "string" then return sys end
  local l = list(sys)
  if not l then policy:bad("system", "expected a string or a list of text blocks") end
  local out = {}
  for i, b in ipairs(l) do
    b = obj(b)
    if not b or b.type ~= "text" or not str(b.text) then
      policy:bad("system[" .. (i - 1) .. "]", "expected a text block")
    end
    out[#out + 1] = b.text
  end
  return concat(out, "\n\n")
end

local function messages_to_hub(msgs, policy, out)
  local l = list(msgs)
  if not l then policy:bad("messages", "expected a list of messages") end
  for i, m in ipairs(l) do
    local f = "messages[" .. (i - 1) .. "]"
    m = obj(m)
    if not m then policy:bad(f, "expected a message object") end
    local role, content = m.role, m.content
    if role ~= "user" and role ~= "assistant" then policy:bad(f .. ".role", "expected user or assistant") end
    if type(content) == "string" then
      out[#out + 1] = J.object("role", role, "content", content)
    else
      local blocks = list(content)
      if not blocks then policy:bad(f .. ".content", "expected a string or a list of blocks") end
      local parts, texts, calls = J.array(), {}, J.array()
      local only_text = true
      for j, b in ipairs(blocks) do
        local bf = f .. ".content[" .. (j - 1) .. "]"
        b = obj(b)
        if not b then policy:bad(bf, "expected a content block") end
        local t = b.type
        if t == "text" then
          if not str(b.text) then policy:bad(bf .. ".text", "expected a string") end
          parts[#parts + 1] = J.object("type", "text", "text", b.text)
          texts[#texts + 1] = b.text
        elseif t == "image" and role == "user" then
          parts[#parts + 1] = image_part(b.source, bf, policy)
          only_text = false
        elseif t == "document" and role == "user" then
          local p = document_part(b, bf, policy)
          if p then
            parts[#parts + 1] = p
            if p.type ~= "text" then only_text = false else texts[#texts + 1] = p.text end
          end
        elseif t == "tool_result" and role == "user" then
          if not str(b.tool_use_id) then policy:bad(bf .. ".tool_use_id", "required") end
          out[#out + 1] = J.object("role", "tool", "tool_call_id", b.tool_use_id,
            "content", tool_result_text(b.content, bf .. ".content", policy))
        elseif t == "tool_use" and role == "assistant" then
          if not str(b.id) or not str(b.name) then policy:bad(bf, "a tool_use block needs id and name") end
          local input = b.input
          if absent(input) then input = J.object() end
          calls[#calls + 1] = J.object("id", b.id, "type", "function", "function",
            J.object("name", b.name, "arguments", J.encode(input)))
        elseif t == "thinking" or t == "redacted_thinking" then
          -- earlier reasoning: nothing another provider can take back in
        else
          policy:unsupported(bf .. ".type", "blocks of type " .. tostring(t) ..
            " cannot be sent to provider type " .. policy.type)
        end
      end
      if role == "assistant" then
        local text = concat(texts)
        out[#out + 1] = J.object("role", "assistant", "content", (#texts > 0) and text or J.null,
          "tool_calls", #calls > 0 and calls or nil)
      elseif #parts > 0 then
        local c = parts
        if only_text and #texts == 1 then c = texts[1] end
        out[#out + 1] = J.object("role", "user", "content", c)
      end
    end
  end
end

local function tools_to_hub(tools, policy)
  local l = list(tools)
  if not l then policy:bad("tools", "expected a list") end
  local out = J.array()
  for i, t in ipairs(l) do
    local f = "tools[" .. (i - 1) .. "]"
    t = obj(t)
    if not t then policy:bad(f, "expected a tool object") end
    if not absent(t.type) and t.type ~= "custom" then
      policy:unsupported(f .. ".type", "server tools (" .. tostring(t.type) .. ") run only on Anthropic")
    else
      if not str(t.name) then policy:bad(f .. ".name", "required") end
      out[#out + 1] = J.object("type", "function", "function", J.object("name", t.name,
        "description", str(t.description),
        "parameters", obj(t.input_schema) or J.object("type", "object", "properties", J.object())))
    end
  end
  return out
end

local MESSAGES_FIELDS = {
  model = true, messages = true, system = true, max_tokens = true, stop_sequences = true,
  stream = true, temperature = true, top_p = true, top_k = true, tools = true, tool_choice = true,
  metadata = true, service_tier = true, thinking = true,
}

-- request_to_hub(doc, opts) -> an OpenAI chat request (a codec.json object)
-- opts: policy, model, max_tokens_field ("max_tokens" or
-- "max_completion_tokens"), top_k (the target takes top_k), stream_usage
-- (ask for usage on streams; default true)
function _M.request_to_hub(doc, opts)
  local policy = opts.policy
  if not obj(doc) then policy:bad("body", "expected a JSON object") end
  for _, k in ipairs(J.keys(doc)) do
    if not MESSAGES_FIELDS[k] and not absent(doc[k]) then
      policy:unsupported(k, format("not a Messages parameter provider type %s can take", policy.type))
    end
  end
  local th = obj(doc.thinking)
  if th and th.type ~= "disabled" then
    policy:unsupported("thinking", format("provider type %s has no extended thinking", policy.type))
  end
  local messages = J.array()
  if not absent(doc.system) then
    messages[1] = J.object("role", "system", "content", system_text(doc.system, policy))
  end
  messages_to_hub(doc.messages, policy, messages)
  if absent(doc.max_tokens) then policy:bad("max_tokens", "Field required") end
  if not J.num(doc.max_tokens) then policy:bad("max_tokens", "expected a number") end
  local top_k = doc.top_k
  if not absent(top_k) and not opts.top_k then
    policy:unsupported("top_k", format("provider type %s has no top_k", policy.type))
    top_k = nil
  end
  if absent(top_k) then top_k = nil end
  local tools, tool_choice, parallel
  if not absent(doc.tools) then tools = tools_to_hub(doc.tools, policy) end
  if tools and #tools == 0 then tools = nil end
  local tc = obj(doc.tool_choice)
  if tc then
    if tc.type == "auto" then tool_choice = "auto"
    elseif tc.type == "any" then tool_choice = "required"
    elseif tc.type == "none" then tool_choice = "none"
    elseif tc.type == "tool" and str(tc.name) then
      tool_choice = J.object("type", "function", "function", J.object("name", tc.name))
    else
      policy:bad("tool_choice", "expected auto, any, none or tool")
    end
    if tc.disable_parallel_tool_use == true then parallel = false end
  end
  if not tools then tool_choice, parallel = nil, nil end
  local stop
  if list(doc.stop_sequences) and #doc.stop_sequences > 0 then stop = doc.stop_sequences end
  local user
  local md = obj(doc.metadata)
  if md and str(md.user_id) then user = md.user_id end
  local stream = doc.stream == true
  local field = opts.max_tokens_field or "max_tokens"
  return J.object(
    "model", opts.model or str(doc.model),
    "messages", messages,
    field, doc.max_tokens,
    "stop", stop,
    "temperature", (not absent(doc.temperature)) and doc.temperature or nil,
    "top_p", (not absent(doc.top_p)) and doc.top_p or nil,
    "top_k", top_k,
    "tools", tools,
    "tool_choice", tool_choice,
    "parallel_tool_calls", parallel,
    "user", user,
    "stream", stream or nil,
    "stream_options", (stream and opts.stream_usage ~= false) and J.object("include_usage", true) or nil)
end

-- ====================== responses ======================

local function new_id(prefix)
  return prefix .. format("%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
end

-- response_to_hub(doc) -> chat.completion | nil, err
function _M.response_to_hub(doc)
  doc = obj(doc)
  if not doc or doc.type ~= "message" or not list(doc.content) then
    return nil, "the provider's answer is not an Anthropic message"
  end
  local texts, calls = {}, J.array()
  for _, b in ipairs(doc.content) do
    b = obj(b)
    if b and b.type == "text" and str(b.text) then
      texts[#texts + 1] = b.text
    elseif b and b.type == "tool_use" then
      local input = b.input
      if absent(input) then input = J.object() end
      calls[#calls + 1] = J.object("id", str(b.id) or new_id("call_"), "type", "function",
        "function", J.object("name", str(b.name) or "", "arguments", J.encode(input)))
    end
  end
  local message = J.object("role", "assistant", "content", #texts > 0 and concat(texts) or J.null,
    "refusal", J.null, "tool_calls", #calls > 0 and calls or nil)
  local u = _M.usage(doc.usage)
  return J.object("id", str(doc.id) or new_id("msg_"), "object", "chat.completion", "created", os_time(),
    "model", str(doc.model) or "",
    "choices", J.array({ J.object("index", 0, "message", message, "logprobs", J.null,
      "finish_reason", STOP_TO_FINISH[doc.stop_reason] or "stop") }),
    "usage", u and oa.usage_object(u) or nil), u
end

-- response_from_hub(doc, u) -> an Anthropic message | nil, err
-- doc: a chat.completion; u: the normalised usage to report
function _M.response_from_hub(doc, u)
  doc = obj(doc)
  local choice = doc and list(doc.choices) and obj(doc.choices[1])
  local msg = choice and obj(choice.message)
  if not msg then return nil, "the provider's answer is not a chat completion" end
  local content = J.array()
  local refused = false
  if type(msg.content) == "string" and msg.content ~= "" then
    content[1] = J.object("type", "text", "text", msg.content)
  elseif list(msg.content) then
    for _, p in ipairs(msg.content) do
      if obj(p) and str(p.text) then content[#content + 1] = J.object("type", "text", "text", p.text) end
    end
  end
  -- a refusal (OpenAI's message.refusal) is the answer's text, with stop_reason "refusal"
  if #content == 0 and str(msg.refusal) and msg.refusal ~= "" then
    content[1] = J.object("type", "text", "text", msg.refusal)
    refused = true
  end
  for _, tc in ipairs(list(msg.tool_calls) or {}) do
    local fn = obj(tc) and obj(tc["function"])
    if fn then
      local input = type(fn.arguments) == "string" and obj(J.decode(fn.arguments)) or J.object()
      content[#content + 1] = J.object("type", "tool_use", "id", str(tc.id) or new_id("toolu_"),
        "name", str(fn.name) or "", "input", input)
    end
  end
  return J.object("id", str(doc.id) or new_id("msg_"), "type", "message", "role", "assistant",
    "model", str(doc.model) or "", "content", content,
    "stop_reason", (refused and choice.finish_reason == "stop") and "refusal"
      or FINISH_TO_STOP[choice.finish_reason] or "end_turn", "stop_sequence", J.null,
    "usage", _M.usage_object(u or {}))
end

-- ====================== streams: Anthropic events -> hub chunks ======================

local In = {}
In.__index = In

-- stream_to_hub(tracker) -> t; t:event(ev) -> list of hub items | nil, err;
-- t:finish() -> list | nil, err. Usage goes to the tracker as it comes.
function _M.stream_to_hub(tracker)
  return setmetatable({ tracker = tracker, id = "msg", model = "", created = os_time(),
    tools = -1, blocks = {}, args_sent = {} }, In)
end

local function one(state, delta, finish)
  return { oa.chunk(state, { oa.delta_choice(0, delta, finish) }) }
end

function In:event(ev)
  if self.done then return {} end
  local d = obj(J.decode(ev.data or ""))
  if not d then
    if ev.data == nil then return {} end
    return nil, "the provider sent an event that is not JSON"
  end
  local t = d.type
  if t == "message_start" then
    local m = obj(d.message) or J.object()
    self.id, self.model = str(m.id) or self.id, str(m.model) or self.model
    self.tracker:report(_M.usage(m.usage))
    self.started = true
    return one(self, J.object("role", "assistant", "content", ""))
  end
  if not self.started then return nil, "the provider's stream did not begin with message_start" end
  if t == "content_block_start" then
    local b = obj(d.content_block) or J.object()
    local idx = J.num(d.index) or 0
    if b.type == "tool_use" then
      self.tools = self.tools + 1
      self.blocks[idx] = self.tools
      self.tracker:output_text(b.name)
      -- the arguments come as input_json_delta pieces; an input already in the start (not what
      -- Anthropic sends, but valid) is the arguments whole
      local input = obj(b.input)
      local args = ""
      if input and next(input) ~= nil then
        args = J.encode(input)
        self.tracker:output_text(args)
      end
      self.args_sent[idx] = args ~= ""
      return one(self, J.object("tool_calls", J.array({ J.object("index", self.tools, "id", str(b.id) or "",
        "type", "function", "function", J.object("name", str(b.name) or "", "arguments", args)) })))
    elseif b.type == "text" and str(b.text) and b.text ~= "" then
      self.tracker:output_text(b.text)
      return one(self, J.object("content", b.text))
    end
    return {}
  elseif t == "content_block_delta" then
    local delta = obj(d.delta) or J.object()
    if delta.type == "text_delta" and str(delta.text) then
      self.tracker:output_text(delta.text)
      return one(self, J.object("content", delta.text))
    elseif delta.type == "input_json_delta" and str(delta.partial_json) and delta.partial_json ~= "" then
      local idx = J.num(d.index) or 0
      local k = self.blocks[idx]
      if not k then return {} end
      self.args_sent[idx] = true
      self.tracker:output_text(delta.partial_json)
      return one(self, J.object("tool_calls", J.array({ J.object("index", k,
        "function", J.object("arguments", delta.partial_json)) })))
    elseif delta.type == "thinking_delta" and str(delta.thinking) then
      self.tracker:output_text(delta.thinking)
    end
    return {}
  elseif t == "message_delta" then
    self.tracker:report(_M.usage(d.usage))
    local delta = obj(d.delta)
    local reason = delta and str(delta.stop_reason)
    if reason then
      self.finished = true
      return one(self, J.object(), STOP_TO_FINISH[reason] or "stop")
    end
    return {}
  elseif t == "message_stop" then
    self.done = true
    if not self.finished then
      return { oa.chunk(self, { oa.delta_choice(0, J.object(), "stop") }), oa.DONE }
    end
    return { oa.DONE }
  elseif t == "error" then
    local e = obj(d.error)
    local m = tostring(e and str(e.message) or "unknown")
    return nil, "provider error: " .. m, { message = m, status = errors.provider_status(e) }
  elseif t == "content_block_stop" then
    -- a tool called without arguments (input {}, no piece, or only empty ones): OpenAI's
    -- arguments are a JSON object's text, never "" (the OpenAI SDK parses them)
    local idx = J.num(d.index) or 0
    local k = self.blocks[idx]
    if k and not self.args_sent[idx] then
      self.args_sent[idx] = true
      return one(self, J.object("tool_calls", J.array({ J.object("index", k,
        "function", J.object("arguments", "{}")) })))
    end
    return {}
  end
  return {} -- ping and event types added later
end

function In:finish()
  if self.done then return {} end
  return nil, "the provider's stream ended before message_stop"
end

-- ====================== streams: hub chunks -> Anthropic events ======================

local Out = {}
Out.__index = Out

-- emitter(opts) -> e; e:item(hub item) -> SSE text. opts: tracker, model
function _M.emitter(opts)
  return setmetatable({ tracker = opts.tracker, model = opts.model, next_block = 0, open = nil,
    tools = {} }, Out)
end

local function ev(name, o)
  return sse.event(name, J.encode(o))
end

function Out:start(chunk, buf)
  self.started = true
  local u = self.tracker:publish()
  local id = chunk and str(chunk.id) or new_id("msg_")
  local model = (chunk and str(chunk.model)) or self.model or ""
  buf[#buf + 1] = ev("message_start", J.object("type", "message_start", "message", J.object(
    "id", id, "type", "message", "role", "assistant", "model", model, "content", J.array(),
    "stop_reason", J.null, "stop_sequence", J.null,
    "usage", J.object("input_tokens", _M.usage_object(u).input_tokens, "output_tokens", 0))))
end

function Out:close(buf)
  if self.open then
    buf[#buf + 1] = ev("content_block_stop", J.object("type", "content_block_stop", "index", self.open))
    self.open = nil
  end
end

-- The tool calls that began while another tool's block was open: an Anthropic stream has one
-- block open at a time, and some OpenAI-compatible servers interleave the argument pieces of
-- parallel calls. Their pieces are kept and each is written as a block of its own when the open
-- one ends (before text, or at the finish).
function Out:flush_pending(buf)
  local pending = self.pending
  if not pending then return end
  self.pending, self.pending_by = nil, nil
  for _, p in ipairs(pending) do
    local block = self:open_block(J.object("type", "tool_use", "id", p.id, "name", p.name,
      "input", J.object()), buf)
    self.tools[p.key] = block
    if #p.args > 0 then
      buf[#buf + 1] = ev("content_block_delta", J.object("type", "content_block_delta",
        "index", block, "delta", J.object("type", "input_json_delta", "partial_json", concat(p.args))))
    end
    self:close(buf)
  end
end

function Out:open_block(block, buf)
  self:close(buf)
  local i = self.next_block
  self.next_block = i + 1
  self.open = i
  buf[#buf + 1] = ev("content_block_start", J.object("type", "content_block_start", "index", i,
    "content_block", block))
  return i
end

function Out:item(it)
  local buf = {}
  if it == oa.DONE then
    if self.ended then return "" end
    self.ended = true
    if not self.started then self:start(nil, buf) end
    self:close(buf)
    self:flush_pending(buf)
    local u = self.tracker:publish()
    local uo = _M.usage_object(u)
    buf[#buf + 1] = ev("message_delta", J.object("type", "message_delta",
      "delta", J.object("stop_reason", self.stop_reason or "end_turn", "stop_sequence", J.null),
      "usage", J.object("input_tokens", uo.input_tokens, "cache_creation_input_tokens", 0,
        "cache_read_input_tokens", uo.cache_read_input_tokens, "output_tokens", uo.output_tokens)))
    buf[#buf + 1] = ev("message_stop", J.object("type", "message_stop"))
    return concat(buf)
  end
  if not self.started then self:start(it, buf) end
  for _, choice in ipairs(list(it.choices) or {}) do
    choice = obj(choice)
    -- one choice only: an Anthropic message has no others
    if choice and (J.num(choice.index) or 0) == 0 then
      local delta = obj(choice.delta) or J.object()
      -- a refusal (OpenAI's delta.refusal) is the answer's text for an Anthropic client
      local text = delta.content
      if not (str(text) and text ~= "") and str(delta.refusal) and delta.refusal ~= "" then
        text = delta.refusal
        self.refused = true
      end
      if str(text) and text ~= "" then
        if self.open == nil or self.open ~= self.text_block then
          self:close(buf)
          self:flush_pending(buf)
          self.text_block = self:open_block(J.object("type", "text", "text", ""), buf)
        end
        buf[#buf + 1] = ev("content_block_delta", J.object("type", "content_block_delta",
          "index", self.text_block, "delta", J.object("type", "text_delta", "text", text)))
      end
      for _, tc in ipairs(list(delta.tool_calls) or {}) do
        tc = obj(tc)
        if tc then
          local key = J.num(tc.index) or 0
          local fn = obj(tc["function"]) or J.object()
          local args = str(fn.arguments) and fn.arguments ~= "" and fn.arguments or nil
          local block = self.tools[key]
          local pend = self.pending_by and self.pending_by[key]
          if pend then
            if args then pend.args[#pend.args + 1] = args end
          elseif not block and self.open ~= nil and self.open == self.tool_block then
            -- another call while a tool's block is open: kept until that block ends
            pend = { key = key, id = str(tc.id) or new_id("toolu_"), name = str(fn.name) or "",
                     args = { args } }
            self.pending = self.pending or {}
            self.pending_by = self.pending_by or {}
            self.pending[#self.pending + 1] = pend
            self.pending_by[key] = pend
          else
            if not block then
              block = self:open_block(J.object("type", "tool_use", "id", str(tc.id) or new_id("toolu_"),
                "name", str(fn.name) or "", "input", J.object()), buf)
              self.tools[key] = block
              self.tool_block = block
              self.text_block = nil
            end
            -- pieces for a block already ended (a provider interleaving text and a call) have no
            -- block to go to
            if args and self.open == block then
              buf[#buf + 1] = ev("content_block_delta", J.object("type", "content_block_delta",
                "index", block, "delta", J.object("type", "input_json_delta", "partial_json", args)))
            end
          end
        end
      end
      local fr = str(choice.finish_reason)
      if fr then
        self.stop_reason = FINISH_TO_STOP[fr] or "end_turn"
        if self.refused and fr == "stop" then self.stop_reason = "refusal" end
        self:close(buf)
        self:flush_pending(buf)
      end
    end
  end
  return concat(buf)
end

-- ====================== model lists ======================

-- models_to_list(doc) -> normalised list | nil
function _M.models_to_list(doc)
  doc = obj(doc)
  if not doc or not list(doc.data) then return nil end
  local out = {}
  for _, m in ipairs(doc.data) do
    m = obj(m)
    if m and str(m.id) then
      out[#out + 1] = { id = m.id, display_name = str(m.display_name), created_at = str(m.created_at),
        created = common.iso_to_unix(m.created_at), owned_by = "anthropic" }
    end
  end
  return out
end

return _M
