-- moongate.codec.usage — token usage, normalised for every provider, and
-- estimated when the provider reports none.
--
-- ctx.usage = { prompt_tokens, completion_tokens, cached_tokens,
--               reasoning_tokens (only when reported), estimated = bool }
--
-- The codecs turn each provider's own usage object into that shape
-- (codec.openai.usage, codec.anthropic.usage, codec.gemini.usage) and hand it
-- to a tracker, which a decoder keeps for one attempt. A count the provider
-- did not report (or reported as garbage) is estimated at ~4 characters per
-- token: of the request's text for the prompt, of the answer's text for the
-- completion; estimated is then true.
local J = require("moongate.codec.json")

local ceil, floor = math.ceil, math.floor
local find, gsub, sub, byte = string.find, string.gsub, string.sub, string.byte
local ipairs, type = ipairs, type

local _M = { _VERSION = "0.1" }

local CHARS_PER_TOKEN = 4
_M.CHARS_PER_TOKEN = CHARS_PER_TOKEN

-- count(v) -> v as a token count (a non-negative integer), or nil
function _M.count(v)
  if type(v) == "number" then   -- the common case: lua-cjson's numbers
    if v >= 0 and v == floor(v) and v < 9007199254740992 then return v end
    return nil
  end
  local n = J.num(v)
  if n and n >= 0 and n == floor(n) and n < 9007199254740992 then return n end
  return nil
end

-- In the gateway the two text scans below run in C (runtime/json.c), which counts exactly what
-- these patterns count; outside it (unit specs) the patterns do.
local mgffi = require("moongate.ffi")
local C = mgffi.available and mgffi.C or nil

-- chars(s) -> number of UTF-8 characters in s
function _M.chars(s)
  if type(s) ~= "string" then return 0 end
  if C then return tonumber(C.mg_utf8_chars(s, #s)) end
  local _, cont = gsub(s, "[\128-\191]", "")
  return #s - cont
end
local chars = _M.chars

function _M.tokens(nchars)
  return ceil(nchars / CHARS_PER_TOKEN)
end

-- Characters of text in a content value of either format: a string, or a
-- list of parts whose text counts (tool results nest their own content).
local function content_chars(c, depth)
  if type(c) == "string" then return chars(c) end
  if type(c) ~= "table" or depth > 8 then return 0 end
  local n = 0
  for _, part in ipairs(c) do
    if type(part) == "string" then
      n = n + chars(part)
    elseif type(part) == "table" then
      if type(part.text) == "string" then n = n + chars(part.text) end
      if part.content ~= nil then n = n + content_chars(part.content, depth + 1) end
    end
  end
  return n
end

-- request_chars(doc) -> characters of prompt text in a client request of
-- either format (chat, messages, completions, embeddings, count_tokens)
function _M.request_chars(doc)
  if type(doc) ~= "table" then return 0 end
  local n = 0
  if type(doc.messages) == "table" then
    for _, m in ipairs(doc.messages) do
      if type(m) == "table" then
        n = n + content_chars(m.content, 0)
        if type(m.tool_calls) == "table" then
          for _, tc in ipairs(m.tool_calls) do
            local f = type(tc) == "table" and tc["function"]
            if type(f) == "table" then n = n + chars(f.name) + chars(f.arguments) end
          end
        end
      end
    end
  end
  n = n + content_chars(doc.system, 0)
  if type(doc.prompt) == "string" then n = n + chars(doc.prompt) end
  if type(doc.prompt) == "table" then n = n + content_chars(doc.prompt, 0) end
  if type(doc.input) == "string" then n = n + chars(doc.input) end
  if type(doc.input) == "table" then n = n + content_chars(doc.input, 0) end
  if type(doc.tools) == "table" then
    for _, t in ipairs(doc.tools) do
      if type(t) == "table" then
        local f = type(t["function"]) == "table" and t["function"] or t
        n = n + chars(f.name) + chars(f.description)
      end
    end
  end
  return n
end

-- prompt_tokens(doc) -> the estimate for a request (at least 1)
function _M.prompt_tokens(doc)
  local t = _M.tokens(_M.request_chars(doc))
  return t > 0 and t or 1
end

-- The keys whose string values are answer text, in either format.
local TEXT_KEYS = { content = true, text = true, arguments = true, partial_json = true,
  reasoning_content = true, thinking = true, refusal = true }

-- scan_chars(json_text) -> characters of answer text in a provider's JSON (a
-- body or an event) without decoding it: for estimating the completion of an
-- answer passed through unchanged.
function _M.scan_chars(s)
  if type(s) ~= "string" then return 0 end
  if C then return tonumber(C.mg_text_chars(s, #s)) end
  local n, i = 0, 1
  while true do
    local a, b, key = find(s, '"([%w_]+)"%s*:%s*"', i)
    if not a then return n end
    -- b is the value's opening quote: find the closing one
    local j = b + 1
    local stop
    while true do
      local q = find(s, '["\\]', j)
      if not q then stop = #s + 1; break end
      if byte(s, q) == 34 then stop = q; break end
      j = q + 2
    end
    if TEXT_KEYS[key] then n = n + chars(sub(s, b + 1, stop - 1)) end
    i = stop + 1
  end
end

-- ====================== the tracker ======================

local Tracker = {}
Tracker.__index = Tracker

-- tracker(ctx, request_doc) -> t; request_doc: the client's request (any
-- table with its messages), or a function returning it (read only when the
-- prompt must be estimated); nil: ctx.request.json
function _M.tracker(ctx, request_doc)
  return setmetatable({ ctx = ctx, doc = request_doc, out = 0 }, Tracker)
end

-- report(u): what the provider said (a codec's normalised usage; absent or
-- invalid members are left as they were)
local REPORTED = { "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens" }
function Tracker:report(u)
  if type(u) ~= "table" then return end
  for i = 1, #REPORTED do
    local k = REPORTED[i]
    local v = _M.count(u[k])
    if v then self[k] = v end
  end
  self.reported = true
end

-- output(nchars): answer text seen (for the completion estimate)
function Tracker:output(nchars)
  self.out = self.out + nchars
end

function Tracker:output_text(s)
  if type(s) == "string" then self.out = self.out + chars(s) end
end

-- publish() -> the usage, also set as ctx.usage
function Tracker:publish()
  local estimated = false
  local prompt = self.prompt_tokens
  if not prompt then
    if not self.prompt_estimate then
      local doc = self.doc
      if type(doc) == "function" then doc = doc() end
      -- none given: the client's request, decoded now (ctx.request.json decodes on first use)
      if doc == nil and self.ctx and self.ctx.request then doc = self.ctx.request.json end
      self.prompt_estimate = _M.prompt_tokens(doc)
    end
    prompt, estimated = self.prompt_estimate, true
  end
  local completion = self.completion_tokens
  if not completion then
    completion, estimated = _M.tokens(self.out), true
  end
  local u = { prompt_tokens = prompt, completion_tokens = completion,
    cached_tokens = self.cached_tokens or 0, reasoning_tokens = self.reasoning_tokens,
    estimated = estimated }
  if self.ctx then self.ctx.usage = u end
  return u
end

return _M
