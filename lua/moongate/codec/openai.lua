-- moongate.codec.openai — the OpenAI chat format, which is also the hub the
-- other codecs translate through (an Anthropic client reaching Gemini goes
-- anthropic -> openai -> gemini and back).
--
-- Hub values are codec.json values: a request is a decoded chat request, a
-- response a chat.completion object, a stream a sequence of
-- chat.completion.chunk objects ended by the DONE item.
local J = require("moongate.codec.json")
local common = require("moongate.codec.common")
local errors = require("moongate.errors")
local sse = require("moongate.codec.sse")
local usage = require("moongate.codec.usage")

local find, sub = string.find, string.sub
local ipairs, type = ipairs, type

local _M = { _VERSION = "0.1" }

-- The item that ends a hub stream ("data: [DONE]").
_M.DONE = setmetatable({}, { __tostring = function() return "DONE" end })

-- usage(u) -> { prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens } | nil
-- from an OpenAI usage object (Groq's x_groq.usage has the same shape).
function _M.usage(u)
  u = common.obj(u)
  if not u then return nil end
  local out = { prompt_tokens = usage.count(u.prompt_tokens),
    completion_tokens = usage.count(u.completion_tokens) }
  local pd = common.obj(u.prompt_tokens_details)
  if pd then out.cached_tokens = usage.count(pd.cached_tokens) end
  local cd = common.obj(u.completion_tokens_details)
  if cd then out.reasoning_tokens = usage.count(cd.reasoning_tokens) end
  -- embeddings report prompt_tokens and total_tokens only
  if out.prompt_tokens and not out.completion_tokens and u.completion_tokens == nil then
    local total = usage.count(u.total_tokens)
    if total and total >= out.prompt_tokens then out.completion_tokens = total - out.prompt_tokens end
  end
  if not out.prompt_tokens and not out.completion_tokens then return nil end
  return out
end

-- hub_usage(u) -> an OpenAI usage object from normalised usage
function _M.usage_object(u)
  local p, c = u.prompt_tokens or 0, u.completion_tokens or 0
  return J.object("prompt_tokens", p, "completion_tokens", c, "total_tokens", p + c,
    "prompt_tokens_details", J.object("cached_tokens", u.cached_tokens or 0),
    "completion_tokens_details", J.object("reasoning_tokens", u.reasoning_tokens or 0))
end

-- ====================== errors ======================

-- error_info(text) -> { message, type, code } from an OpenAI-style error body
-- (also the bare {"message":..} and {"error":"..."} some compatible servers send)
function _M.error_info(text)
  local doc = J.decode(text or "")
  if type(doc) ~= "table" then return nil end
  if J.is_array(doc) then doc = doc[1] end
  doc = common.obj(doc)
  if not doc then return nil end
  local e = doc.error
  if type(e) == "string" then return { message = e } end
  e = common.obj(e) or doc
  local msg = common.str(e.message)
  if not msg then return nil end
  local code = e.code
  if J.num(code) then code = tostring(J.num(code)) end
  return { message = msg, type = common.str(e.type), code = common.str(code) }
end

-- error_body(status, info) -> an OpenAI error body
function _M.error_body(status, info)
  -- code: the provider's error code or type, else its status (docs/providers.md "Errors")
  return errors.body("openai", status, info.message, info.code or info.type or tostring(status))
end

-- ====================== streams to an OpenAI client ======================

-- A hub stream written for an OpenAI client: each chunk as one event; at
-- DONE the usage chunk (choices: []) when the client asked for it, then
-- [DONE].
local Out = {}
Out.__index = Out

-- emitter(opts) opts: wants_usage, tracker, id, model, created
function _M.emitter(opts)
  return setmetatable({ wants_usage = opts.wants_usage, tracker = opts.tracker }, Out)
end

function Out:item(it)
  if it == _M.DONE then
    local out = ""
    if self.wants_usage and self.tracker then
      local u = self.tracker:publish()
      out = sse.data(J.encode(J.object("id", self.id or "chatcmpl-moongate",
        "object", "chat.completion.chunk", "created", self.created or os.time(),
        "model", self.model or "", "choices", J.array(), "usage", _M.usage_object(u))))
    end
    return out .. "data: [DONE]\n\n"
  end
  self.id, self.model, self.created = it.id, it.model, it.created
  return sse.data(J.encode(it))
end

-- ====================== streams from an OpenAI provider ======================

-- stream usage of one chunk: its usage, or a quirk's place for it (Groq's x_groq.usage)
local function chunk_usage(doc, usage_path)
  local u = _M.usage(doc.usage)
  if u or not usage_path then return u end
  local v = doc
  for _, k in ipairs(usage_path) do
    v = common.obj(v) and v[k]
  end
  return _M.usage(v)
end
_M.chunk_usage = chunk_usage

local In = {}
In.__index = In

-- stream_to_hub(tracker, usage_path) -> t; t:event(ev) -> list of hub items
-- | nil, err; t:finish() -> list | nil, err. The chunks are the provider's
-- own (decoded); usage goes to the tracker.
function _M.stream_to_hub(tracker, usage_path)
  return setmetatable({ tracker = tracker, usage_path = usage_path }, In)
end

function In:event(ev)
  if self.done then return {} end
  local data = ev.data
  if data == nil then return {} end
  if data == "[DONE]" then
    self.done = true
    return { _M.DONE }
  end
  local doc = common.obj(J.decode(data))
  if not doc then return nil, "the provider sent an event that is not JSON" end
  if not common.absent(doc.error) and doc.choices == nil then
    local e = common.obj(doc.error)
    local m = tostring(e and common.str(e.message) or doc.error)
    return nil, "provider error: " .. m, { message = m, status = errors.provider_status(e) }
  end
  self.tracker:report(chunk_usage(doc, self.usage_path))
  self.tracker:output(usage.scan_chars(data))
  local choices = common.list(doc.choices)
  if not choices then return nil, "the provider sent a chunk without choices" end
  for _, c in ipairs(choices) do
    if common.obj(c) and common.str(c.finish_reason) then self.finished = true end
  end
  if #choices == 0 then return {} end
  return { doc }
end

function In:finish()
  if self.done then return {} end
  -- a compatible server that ends without [DONE] after the finish reason
  if self.finished then return { _M.DONE } end
  return nil, "the provider's stream ended before [DONE]"
end

-- ====================== model lists ======================

function _M.models_to_list(doc)
  doc = common.obj(doc)
  if not doc or not common.list(doc.data) then return nil end
  local out = {}
  for _, m in ipairs(doc.data) do
    m = common.obj(m)
    if m and common.str(m.id) then
      out[#out + 1] = { id = m.id, created = usage.count(m.created), owned_by = common.str(m.owned_by) }
    end
  end
  return out
end

-- ====================== building hub chunks ======================

-- chunk(state, choices) -> a chat.completion.chunk; state: id, model, created
function _M.chunk(state, choices)
  return J.object("id", state.id, "object", "chat.completion.chunk", "created", state.created,
    "model", state.model, "choices", J.array(choices))
end

-- delta_choice(index, delta, finish) -> one chunk choice
function _M.delta_choice(index, delta, finish)
  return J.object("index", index, "delta", delta, "logprobs", J.null,
    "finish_reason", finish or J.null)
end

-- ====================== same-format helpers ======================

-- wants_stream_usage(body) -> true when the raw request asks for
-- stream_options.include_usage (read without decoding the whole body)
function _M.wants_stream_usage(body)
  local splice = require("moongate.json_splice")
  local a, b = splice.find(body, "stream_options")
  if not a then return false end
  local so = J.decode(sub(body, a, b))
  return common.obj(so) ~= nil and so.include_usage == true
end

-- with_stream_usage(body) -> the raw body with stream_options.include_usage
-- true, every other byte kept (stream_options is appended, or its value
-- rewritten keeping its other members)
function _M.with_stream_usage(body)
  local splice = require("moongate.json_splice")
  local a, b = splice.find(body, "stream_options")
  if a then
    local so = common.obj(J.decode(sub(body, a, b)))
    local v
    if so then
      J.set(so, "include_usage", true)
      v = J.encode(so)
    else
      v = '{"include_usage":true}'
    end
    return (splice.replace(body, "stream_options", v))
  end
  -- append before the object's closing brace
  local e = #body
  while e > 0 and find(sub(body, e, e), "%s") do e = e - 1 end
  if sub(body, e, e) ~= "}" then return body end
  local j = e - 1
  while j > 0 and find(sub(body, j, j), "%s") do j = j - 1 end
  local sep = sub(body, j, j) == "{" and "" or ","
  return sub(body, 1, e - 1) .. sep .. '"stream_options":{"include_usage":true}' .. sub(body, e)
end

return _M
