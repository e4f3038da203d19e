-- moongate.pricing — prices, token estimates and the cost of a request, shared by the cost,
-- budget and rate_limit plugins (docs/limits.md).
--
--   pricing.load(file)            -> table | nil, err   a config/pricing.lua-style file, flattened
--   pricing.default()             -> the table from <home>/config/pricing.lua (loaded once)
--   pricing.lookup(tbl, model)    -> entry, matched name | nil
--   pricing.prices(ctx, tbl)      -> entry | nil: the target's `prices`, else its model's, else
--                                    the client's model's
--   pricing.cost(prices, usage)   -> USD
--   pricing.estimate(ctx)         -> prompt, completion: what admission reserves (tokens)
--   pricing.track(ctx, chunk)     -> counts the text of a response chunk (for estimated usage)
--   pricing.usage(ctx)            -> ctx.usage, or an estimate stored there (estimated = true)
--   pricing.compute(ctx, tbl)     -> ctx.cost_usd (computed once per request)
--   pricing.decimal(usd)          -> "0.0003175": a plain decimal, never an exponent
--
-- Usage follows OpenAI's meaning: prompt_tokens includes cached_tokens. Entries are USD per 1M
-- tokens: input, output, cached_input (the input price when absent).
local ceil, floor, min = math.ceil, math.floor, math.min
local byte, find, format, match, sub = string.byte, string.find, string.format, string.match,
  string.sub
local pairs, pcall, tonumber, tostring, type = pairs, pcall, tonumber, tostring, type

local _M = { _VERSION = "0.1" }

-- What admission assumes a request will generate when it sets no max_tokens.
_M.DEFAULT_COMPLETION = 256

---------------------------------------------------------------------------------------------------
-- The price table
---------------------------------------------------------------------------------------------------

local function check_price(v, where)
  if type(v) ~= "table" then return nil, where .. ": expected a table" end
  for _, k in ipairs({ "input", "output", "cached_input" }) do
    local p = v[k]
    if p ~= nil and (type(p) ~= "number" or p ~= p or p < 0) then
      return nil, where .. "." .. k .. ": expected a number >= 0"
    end
  end
  if v.input == nil or v.output == nil then return nil, where .. ": needs input and output" end
  return true
end

-- load(file) -> { [model] = { input, output, cached_input, vendor, source, checked } } | nil, err
function _M.load(file)
  local chunk, err = loadfile(file)
  if not chunk then return nil, err end
  setfenv(chunk, {})
  local ok, doc = pcall(chunk)
  if not ok then return nil, tostring(doc) end
  if type(doc) ~= "table" then return nil, file .. ": must return a table of vendors" end
  local out = {}
  for vendor, sec in pairs(doc) do
    if type(sec) ~= "table" or type(sec.models) ~= "table" then
      return nil, file .. ": " .. tostring(vendor) .. ": expected { source =, checked =, models = {...} }"
    end
    for name, e in pairs(sec.models) do
      local cok, cerr = check_price(e, file .. ": " .. vendor .. ".models[" .. format("%q", name) .. "]")
      if not cok then return nil, cerr end
      out[name] = { input = e.input, output = e.output, cached_input = e.cached_input,
                    vendor = vendor, source = e.source or sec.source, checked = e.checked or sec.checked }
    end
  end
  return out
end

local function home()
  local src = debug.getinfo(1, "S").source
  return match(src, "^@(.*)/lua/moongate/pricing%.lua$") or "."
end

function _M.default_file()
  return home() .. "/config/pricing.lua"
end

local default_table, default_err
function _M.default()
  if default_table == nil and default_err == nil then
    default_table, default_err = _M.load(_M.default_file())
    if not default_table then default_table = false end
  end
  return default_table or nil, default_err
end

local BOUNDARY = { [45] = true, [64] = true, [58] = true }  -- "-", "@", ":"
local memo = setmetatable({}, { __mode = "k" })  -- tbl -> { model -> name | false }

local function longest_prefix(tbl, model)
  local best
  for name in pairs(tbl) do
    if #name < #model and sub(model, 1, #name) == name and BOUNDARY[byte(model, #name + 1)]
       and (not best or #name > #best) then
      best = name
    end
  end
  return best
end

-- lookup(tbl, model) -> entry, the name it was found under | nil
function _M.lookup(tbl, model)
  if type(tbl) ~= "table" or type(model) ~= "string" or model == "" then return nil end
  local e = tbl[model]
  if e then return e, model end
  local m = memo[tbl]
  if not m then
    m = { n = 0 }
    memo[tbl] = m
  end
  local name = m[model]
  if name == nil then
    name = longest_prefix(tbl, model)
    if not name then
      local bare = match(model, "^[^/]+/(.+)$")   -- "openai/gpt-4o" (OpenRouter style)
      if bare then
        if tbl[bare] then name = bare else name = longest_prefix(tbl, bare) end
      end
    end
    if m.n > 1000 then   -- client-chosen names: keep the memo bounded
      m = { n = 0 }
      memo[tbl] = m
    end
    m[model] = name or false
    m.n = m.n + 1
  end
  if name then return tbl[name], name end
  return nil
end

-- prices(ctx, tbl) -> the prices of this request's target: its `prices` override, its model's
-- entry, else the client's model's
function _M.prices(ctx, tbl)
  local t = ctx.target
  if t and t.prices then return t.prices end
  tbl = tbl or _M.default()
  local e = t and type(t.model) == "string" and _M.lookup(tbl, t.model)
  if e then return e end
  return _M.lookup(tbl, ctx.request and ctx.request.model)
end

-- cost(prices, usage) -> USD
function _M.cost(p, u)
  if not p or not u then return 0 end
  local prompt = u.prompt_tokens or 0
  local cached = min(u.cached_tokens or 0, prompt)
  local completion = u.completion_tokens or 0
  return ((prompt - cached) * p.input + cached * (p.cached_input or p.input)
          + completion * p.output) / 1e6
end

-- decimal(x) -> a plain decimal string ("0.0003175", "0", "12.5")
function _M.decimal(x)
  if x ~= x or x == nil then return "0" end
  local s = format("%.12f", x)
  -- less its trailing zeros, then a trailing dot (bytes, not gsub: this runs for every answer
  -- with a cost header, and a pattern anchored at the end is tried at every position)
  local e = #s
  while e > 0 and byte(s, e) == 48 do e = e - 1 end
  if e > 0 and byte(s, e) == 46 then e = e - 1 end
  s = sub(s, 1, e)
  if s == "-0" or s == "" then s = "0" end
  return s
end

---------------------------------------------------------------------------------------------------
-- Tokens
---------------------------------------------------------------------------------------------------

local read_only_decode = require("cjson.safe").new().decode
local NO_COMPLETION = { ["/v1/embeddings"] = true, ["/v1/messages/count_tokens"] = true }

-- estimate(ctx) -> prompt, completion: about a quarter of the body's bytes for the prompt, the
-- request's max_tokens (max_completion_tokens, max_output_tokens) for the completion, or
-- DEFAULT_COMPLETION. Computed once per request.
function _M.estimate(ctx)
  local v = ctx.vars
  local e = v and v._mg_estimate
  if e then return e[1], e[2] end
  local req = ctx.request
  local prompt = ceil(#(req.body or "") / 4)
  local completion = 0
  if not NO_COMPLETION[req.path] then
    -- read only: lua-cjson's decode (C), not ctx.request.json's, which is built for plugins that
    -- write the document back (empty arrays kept) and is several times slower
    local doc = rawget(req, "json")
    if doc == nil and req.is_json ~= false and type(req.body) == "string" then doc = read_only_decode(req.body) end
    local mt = type(doc) == "table" and (doc.max_completion_tokens or doc.max_tokens or doc.max_output_tokens)
    completion = (type(mt) == "number" and mt >= 0) and mt or _M.DEFAULT_COMPLETION
  end
  if v then v._mg_estimate = { prompt, completion } end
  return prompt, completion
end

-- The text fields of OpenAI and Anthropic answers and stream events.
local TEXT_FIELDS = { content = true, text = true, reasoning_content = true, thinking = true,
                      partial_json = true, arguments = true, refusal = true }

-- text_len(s) -> bytes of text in the JSON string values of TEXT_FIELDS found in s (a body or
-- SSE event; escapes counted as written: an estimate). In the gateway the scan runs in C
-- (runtime/json.c, the one usage.scan_chars uses, counting bytes); outside it, this loop.
local mgffi = require("moongate.ffi")
local C = mgffi.available and mgffi.C or nil
function _M.text_len(s)
  if C then return tonumber(C.mg_text_bytes(s, #s)) end
  local n, pos = 0, 1
  while true do
    local _, b, name = find(s, '"([%w_]+)"%s*:%s*"', pos)
    if not b then break end
    local i = b + 1
    local j = i
    while true do
      local q = find(s, '["\\]', j)
      if not q then j = #s + 1 break end
      if byte(s, q) == 92 then j = q + 2 else j = q break end
    end
    if TEXT_FIELDS[name] then n = n + (j - i) end
    pos = j + 1
  end
  return n
end

-- track(ctx, chunk): count the text of a response chunk while the provider has not reported
-- usage. Several plugins may call it on one chunk: it is counted once.
function _M.track(ctx, chunk)
  if ctx.usage or type(chunk) ~= "string" then return end
  local v = ctx.vars
  if v._mg_tracked == chunk then return end
  v._mg_tracked = chunk
  v._mg_text_bytes = (v._mg_text_bytes or 0) + _M.text_len(chunk)
end

local function bytes_sent(ctx)
  local ok, mgffi = pcall(require, "moongate.ffi")
  if ok and mgffi.C and ctx._req then return tonumber(mgffi.C.mg_resp_bytes(ctx._req)) end
  return 0
end

-- usage(ctx) -> the request's usage: ctx.usage as the provider reported it, else (when a provider
-- answered 2xx) an estimate — prompt from the request's size, completion from the text seen in the
-- answer (or the bytes sent, when no plugin read the body) — stored in ctx.usage with
-- estimated = true. nil when no provider answered with a success.
function _M.usage(ctx)
  if ctx.usage then return ctx.usage end
  local resp = ctx.response
  if not ctx.target or not resp or type(resp.status) ~= "number" or resp.status >= 400 then
    return nil
  end
  local prompt = ceil(#(ctx.request.body or "") / 4)
  local tb = ctx.vars and ctx.vars._mg_text_bytes
  local completion = ceil((tb or bytes_sent(ctx)) / 4)
  ctx.usage = { prompt_tokens = prompt, completion_tokens = completion, cached_tokens = 0,
                estimated = true }
  return ctx.usage
end

local unpriced = {}   -- models already warned about (per worker)

-- compute(ctx, tbl) -> ctx.cost_usd | nil (no usage): once per request, whoever asks first
function _M.compute(ctx, tbl)
  if ctx.cost_usd ~= nil then return ctx.cost_usd end
  local u = _M.usage(ctx)
  if not u then return nil end
  local p = _M.prices(ctx, tbl or (ctx.vars and ctx.vars.pricing))
  if not p then
    local model = ctx.target and type(ctx.target.model) == "string" and ctx.target.model
      or (ctx.request and ctx.request.model) or "?"
    if not unpriced[model] then
      unpriced[model] = true
      local ok, gw = pcall(require, "gw")
      if ok then
        gw.log("warn", "cost: no price for model " .. tostring(model) ..
          "; its requests cost 0 (add it to config/pricing.lua or set the target's prices)")
      end
    end
    ctx.cost_usd = 0
    return 0
  end
  ctx.cost_usd = _M.cost(p, u)
  return ctx.cost_usd
end

return _M
