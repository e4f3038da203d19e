#!/usr/bin/env luajit
-- A fake of the providers' native APIs for the integration specs: OpenAI,
-- Azure OpenAI, Anthropic and Gemini, each answering with the fixtures under
-- spec/fixtures/<provider>/ (written from the providers' documentation).
--
--   luajit spec/support/fake_providers.lua [PORT]
--
-- Prints "listening PORT", then serves HTTP/1.1 on 127.0.0.1 until killed
-- (one socket.select loop, one coroutine per connection).
--
-- Routes (the answer's fixture unless the request names another):
--   POST /v1/chat/completions                       openai/chat.json | openai/chat_stream.sse
--   POST /openai/deployments/{dep}/chat/completions  azure/chat.json | azure/chat_stream.sse
--   POST /openai/deployments/{dep}/embeddings        openai/embeddings.json
--   POST /v1/messages                               anthropic/message.json | anthropic/message_stream.sse
--   POST /v1/messages/count_tokens                  {"input_tokens": 42}
--   POST /v1beta/models/{m}:generateContent         gemini/generate.json
--   POST /v1beta/models/{m}:streamGenerateContent   gemini/stream.sse (needs ?alt=sse)
--   POST /v1beta/models/{m}:batchEmbedContents      gemini/embed.json
--   GET  /v1beta/models                             gemini/models.json
--   GET  /v1/models                                 anthropic/models.json with Anthropic's x-api-key,
--                                                   openai/models.json otherwise
--   GET  /openai/models                             openai/models.json
-- A stream's fixture loses its usage-only chunk when an OpenAI-style request
-- did not ask for stream_options.include_usage, as OpenAI's API does.
--
-- Request headers that steer it:
--   x-fixture: provider/file    answer with that fixture (.sse as a stream)
--   x-fixture-status: N         with that status
--   x-fixture-type: TYPE        with that content type
--   x-fixture-cut: N            a stream: close the connection after N events
-- Control: GET /_fake/requests (recorded {method, path, headers, body}), POST /_fake/reset.

local socket = require "socket"
local cjson  = require "cjson.safe"

local str_find, str_lower, str_format = string.find, string.lower, string.format
local concat = table.concat

local ROOT = (debug.getinfo(1, "S").source:gsub("^@", ""):gsub("spec/support/fake_providers%.lua$", ""))
if ROOT == "" then ROOT = "./" end

local function fixture(name)
  local f = io.open(ROOT .. "spec/fixtures/" .. name, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local requests = {}

-- ====================== scheduler ======================

local wait_read, wait_write, runnable = {}, {}, {}

local function run(co, ...)
  local ok, err = coroutine.resume(co, ...)
  if not ok then io.stderr:write("fake_providers: ", tostring(err), "\n") end
end

local Conn = {}
Conn.__index = Conn

function Conn:fill()
  while true do
    local data, err, partial = self.sock:receive(65536)
    local got = data or partial
    if got and #got > 0 then
      self.buf = self.buf .. got
      return true
    end
    if err == "closed" then return nil, "closed" end
    wait_read[self.sock] = coroutine.running()
    coroutine.yield()
  end
end

function Conn:line()
  while true do
    local e = str_find(self.buf, "\r\n", 1, true)
    if e then
      local l = self.buf:sub(1, e - 1)
      self.buf = self.buf:sub(e + 2)
      return l
    end
    if #self.buf > 1048576 then return nil, "line too long" end
    local ok, err = self:fill()
    if not ok then return nil, err end
  end
end

function Conn:bytes(n)
  while #self.buf < n do
    local ok, err = self:fill()
    if not ok then return nil, err end
  end
  local s = self.buf:sub(1, n)
  self.buf = self.buf:sub(n + 1)
  return s
end

function Conn:send(data)
  local i = 1
  while i <= #data do
    local last, err, partial = self.sock:send(data, i)
    if last then
      i = last + 1
    elseif err == "timeout" then
      i = (partial or i - 1) + 1
      wait_write[self.sock] = coroutine.running()
      coroutine.yield()
    else
      return nil
    end
  end
  return true
end

function Conn:close()
  wait_read[self.sock], wait_write[self.sock] = nil, nil
  self.sock:close()
end

-- ====================== HTTP ======================

local function read_request(c)
  local line, err = c:line()
  if not line then return nil, err end
  local method, target = line:match("^(%u+) (%S+) HTTP/1%.%d$")
  if not method then return nil, "bad request line" end
  local headers = {}
  while true do
    local h = c:line()
    if not h then return nil, "closed" end
    if h == "" then break end
    local name, value = h:match("^([^:]+):%s*(.-)%s*$")
    if name then
      name = str_lower(name)
      headers[name] = headers[name] and (headers[name] .. ", " .. value) or value
    end
  end
  if headers["expect"] and str_lower(headers["expect"]) == "100-continue" then
    c:send("HTTP/1.1 100 Continue\r\n\r\n")
  end
  local body = ""
  local te = headers["transfer-encoding"]
  if te and str_find(str_lower(te), "chunked", 1, true) then
    local parts = {}
    while true do
      local size = tonumber((c:line() or ""):match("^%x+"), 16)
      if not size then return nil, "bad chunk" end
      if size == 0 then
        repeat local t = c:line() until not t or t == ""
        break
      end
      parts[#parts + 1] = c:bytes(size)
      c:bytes(2)
    end
    body = concat(parts)
  elseif headers["content-length"] then
    body = c:bytes(tonumber(headers["content-length"])) or ""
  end
  return { method = method, target = target, path = target:match("^[^?]*"), headers = headers, body = body }
end

local function respond(c, status, body, ctype, extra)
  local h = { str_format("HTTP/1.1 %d X\r\n", status), "Content-Type: " .. (ctype or "application/json") .. "\r\n",
              "Content-Length: " .. #body .. "\r\n" }
  for k, v in pairs(extra or {}) do h[#h + 1] = k .. ": " .. v .. "\r\n" end
  h[#h + 1] = "\r\n"
  return c:send(concat(h) .. body)
end

-- the events of an SSE text, each with its blank line
local function split_events(text)
  local out, i = {}, 1
  while i <= #text do
    local a, b = str_find(text, "\r?\n\r?\n", i)
    if not a then
      out[#out + 1] = text:sub(i)
      break
    end
    out[#out + 1] = text:sub(i, b)
    i = b + 1
  end
  return out
end

local function stream(c, status, text, cut)
  if not c:send(str_format("HTTP/1.1 %d X\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n" ..
    "Transfer-Encoding: chunked\r\n\r\n", status)) then return nil end
  for i, ev in ipairs(split_events(text)) do
    if cut and i > cut then return nil end   -- close without the last chunk
    if not c:send(str_format("%x\r\n%s\r\n", #ev, ev)) then return nil end
  end
  return c:send("0\r\n\r\n")
end

-- ====================== the providers ======================

local function wants_usage(body)
  local doc = cjson.decode(body or "")
  return type(doc) == "table" and type(doc.stream_options) == "table" and doc.stream_options.include_usage == true
end

local function without_usage_chunk(text)
  local out = {}
  for _, ev in ipairs(split_events(text)) do
    if not (ev:find('"choices":[]', 1, true) and ev:find('"usage":{', 1, true)) then out[#out + 1] = ev end
  end
  return concat(out)
end

local function route(req)
  local p, m = req.path, req.method
  local streaming = (cjson.decode(req.body or "") or {}).stream == true
  if m == "POST" and p == "/v1/chat/completions" then
    return streaming and "openai/chat_stream.sse" or "openai/chat.json", "openai"
  elseif m == "POST" and p:match("^/openai/deployments/[^/]+/chat/completions$") then
    return streaming and "azure/chat_stream.sse" or "azure/chat.json", "openai"
  elseif m == "POST" and p:match("^/openai/deployments/[^/]+/embeddings$") then
    return "openai/embeddings.json"
  elseif m == "POST" and p == "/v1/messages" then
    return streaming and "anthropic/message_stream.sse" or "anthropic/message.json"
  elseif m == "POST" and p:match("^/v1beta/models/[^/]+:generateContent$") then
    return "gemini/generate.json"
  elseif m == "POST" and p:match("^/v1beta/models/[^/]+:streamGenerateContent$") then
    if not req.target:find("alt=sse", 1, true) then return nil end
    return "gemini/stream.sse"
  elseif m == "POST" and p:match("^/v1beta/models/[^/]+:batchEmbedContents$") then
    return "gemini/embed.json"
  elseif m == "GET" and p == "/v1beta/models" then
    return "gemini/models.json"
  elseif m == "GET" and p == "/v1/models" then
    return req.headers["x-api-key"] and "anthropic/models.json" or "openai/models.json"
  elseif m == "GET" and p == "/openai/models" then
    return "openai/models.json"
  end
end

local function handle(c, req)
  if req.path == "/_fake/requests" then
    local items = {}
    for i, r in ipairs(requests) do items[i] = cjson.encode(r) end
    return respond(c, 200, "[" .. concat(items, ",") .. "]")
  elseif req.path == "/_fake/reset" then
    requests = {}
    return respond(c, 200, '{"reset":true}')
  end
  requests[#requests + 1] = { method = req.method, path = req.target, headers = req.headers, body = req.body }

  if req.method == "POST" and req.path == "/v1/messages/count_tokens" then
    return respond(c, 200, '{"input_tokens":42}')
  end
  local h = req.headers
  local name, style = route(req)
  name = h["x-fixture"] or name
  if not name then return respond(c, 404, '{"error":{"message":"no route ' .. req.method .. " " .. req.path .. '"}}') end
  local text = fixture(name)
  if not text then return respond(c, 500, '{"error":{"message":"no fixture ' .. name .. '"}}') end
  local status = tonumber(h["x-fixture-status"]) or 200
  if name:match("%.sse$") then
    if style == "openai" and not wants_usage(req.body) then text = without_usage_chunk(text) end
    return stream(c, status, text, tonumber(h["x-fixture-cut"]))
  end
  local extra = status == 429 and { ["Retry-After"] = "3" } or nil
  return respond(c, status, text, h["x-fixture-type"] or "application/json", extra)
end

local function serve(c)
  while true do
    local req = read_request(c)
    if not req then break end
    local ok = handle(c, req)
    if not ok then break end
    if str_lower(req.headers["connection"] or "") == "close" then break end
  end
  c:close()
end

-- ====================== main loop ======================

local server = assert(socket.bind("127.0.0.1", tonumber(arg and arg[1]) or 0, 128))
server:settimeout(0)
local _, port = server:getsockname()
io.stdout:write("listening ", port, "\n")
io.stdout:flush()

while true do
  local rl, wl = { server }, {}
  for s in pairs(wait_read) do rl[#rl + 1] = s end
  for s in pairs(wait_write) do wl[#wl + 1] = s end
  local readable, writable = socket.select(rl, wl, 1)
  for _, s in ipairs(readable) do
    if s == server then
      while true do
        local client = server:accept()
        if not client then break end
        client:settimeout(0)
        client:setoption("tcp-nodelay", true)
        local c = setmetatable({ sock = client, buf = "" }, Conn)
        run(coroutine.create(function()
          local ok, err = pcall(serve, c)
          if not ok then
            io.stderr:write("fake_providers: ", tostring(err), "\n")
            c:close()
          end
        end))
      end
    else
      local co = wait_read[s]
      if co then
        wait_read[s] = nil
        run(co)
      end
    end
  end
  for _, s in ipairs(writable) do
    local co = wait_write[s]
    if co then
      wait_write[s] = nil
      run(co)
    end
  end
end
