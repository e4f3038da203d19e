#!/usr/bin/env luajit
-- A standalone fake model provider for the test suite.
--
--   luajit spec/support/fake_upstream.lua [PORT]     (PORT 0 or absent: any free port)
--
-- Prints "listening PORT" as its first stdout line, then serves HTTP/1.1 on
-- 127.0.0.1 until killed. One process, one socket.select loop, one coroutine
-- per connection: a connection held open (a stream waiting for a release, a
-- delayed answer) never stops the others from being served.
--
-- Control surface (never recorded, never counted):
--   GET  /_fake/requests       recorded requests, JSON array of
--                              {method, path, headers (lowercased), body, conn}
--   POST /_fake/reset          forget requests, counters and releases
--   GET  /_fake/stats          {"connections": N, "requests": N, "size_sent": bytes of x-fake-size bodies}
--   POST /_fake/release/NAME   let streams held with x-fake-hold: NAME go on
--
-- Model surface:
--   POST /v1/chat/completions (and any other POST): canned OpenAI completion,
--        or an SSE stream when the JSON body has "stream": true
--   POST /v1/messages: the same in Anthropic's format
--   POST /v1/embeddings: an OpenAI embedding list
--   GET  /v1/models: an OpenAI model list
--   GET  /ready, /health: 200 {"status":"ok"}
--
-- Behaviour switches, as request headers (the gateway forwards headers it does
-- not own, so tests steer the fake through the gateway):
--   x-fake-status: N              answer status N (an OpenAI error body unless x-fake-body)
--   x-fake-retry-after: S         add Retry-After: S
--   x-fake-delay-ms: N            wait N ms before answering
--   x-fake-chunk-delay-ms: N      (stream) wait N ms between events
--   x-fake-hold: NAME             (stream) first event, then wait for /_fake/release/NAME
--   x-fake-first-delay-ms: N      (stream) headers at once, the first event N ms later
--   x-fake-close-before-first: 1  (stream) headers, then close before any event
--   x-fake-close-after-first: 1   (stream) first event, then close without the last chunk;
--                                 the value "reset" closes with a TCP RST instead
--   x-fake-body: TEXT             answer exactly TEXT (content-type x-fake-content-type,
--                                 default application/json)
--   x-fake-no-length: 1           no Content-Length / chunked: the close ends the body
--   x-fake-size: N                answer N bytes of "x" (Content-Length), written 64 KB at a
--                                 time as the reader takes them (for back-pressure tests);
--                                 with x-fake-no-length: 1, no length and the close ends it
--   x-fake-raw: BYTES             answer exactly BYTES, %XX-decoded (status line, headers,
--                                 body: anything, well-formed or not); the connection then
--                                 serves on unless x-fake-raw-close is 1 (close) or reset (RST,
--                                 100 ms after the bytes)
--   x-fake-sse: BYTES             (any POST) answer a text/event-stream whose body is exactly
--                                 BYTES, %XX-decoded, written in pieces of x-fake-sse-piece
--                                 bytes (default: all at once; "event": one event a piece),
--                                 each its own HTTP chunk, with
--                                 x-fake-chunk-delay-ms between them
--   x-fake-sse-repeat: N          (with x-fake-sse) BYTES N times over, then x-fake-sse-tail
--   x-fake-pad-header: N          add X-Pad: N bytes of "p" to the answer's headers
--   x-fake-close-after: 1         answer as usual, as if the connection stayed open, then close
--                                 it (a server dropping an idle keep-alive connection)
--   x-fake-drop: 1                close the connection without an answer and without
--                                 recording the request; "reused": only on a connection
--                                 that served a request before

local socket = require "socket"
local cjson  = require "cjson.safe"

local co_create  = coroutine.create
local co_resume  = coroutine.resume
local co_yield   = coroutine.yield
local co_status  = coroutine.status
local str_find   = string.find
local str_sub    = string.sub
local str_lower  = string.lower
local str_format = string.format
local tonumber   = tonumber
local concat     = table.concat
local now        = socket.gettime

-- Recorded bodies are kept as raw strings (JSON strings in /_fake/requests),
-- so big integers and empty arrays reach the test exactly as they were sent.
-- This cjson (2.1.0) encodes an empty table as {}; the few places that need
-- an empty array patch it in by hand.

local MAX_HEADER = 1024 * 1024

---------------------------------------------------------------------------
-- scheduler
---------------------------------------------------------------------------

-- Coroutines park themselves in one of these and yield; the main loop wakes
-- them. A coroutine is in at most one of them at a time.
local wait_read  = {}   -- socket -> co
local wait_write = {}   -- socket -> co
local sleepers   = {}   -- co -> wake time
local holders    = {}   -- name -> { co, ... }
local runnable   = {}   -- list of co to resume on the next turn

local released   = {}   -- name -> true: releases are sticky until reset

local function run(co, ...)
  local ok, err = co_resume(co, ...)
  if not ok then
    -- A bug in a handler must not take the whole fake down; the connection
    -- is dropped (its socket is closed by the handler's guard).
    io.stderr:write("fake_upstream: coroutine error: ", tostring(err), "\n")
  end
end

local function wait_readable(sock)
  wait_read[sock] = coroutine.running()
  co_yield()
end

local function wait_writable(sock)
  wait_write[sock] = coroutine.running()
  co_yield()
end

local function sleep(seconds)
  sleepers[coroutine.running()] = now() + seconds
  co_yield()
end

local function hold(name)
  if released[name] then return end
  local list = holders[name]
  if not list then list = {}; holders[name] = list end
  list[#list + 1] = coroutine.running()
  co_yield()
end

local function release(name)
  released[name] = true
  local list = holders[name]
  holders[name] = nil
  local n = 0
  if list then
    for i = 1, #list do
      runnable[#runnable + 1] = list[i]
      n = n + 1
    end
  end
  return n
end

---------------------------------------------------------------------------
-- connection I/O (inside a coroutine; the sockets are non-blocking)
---------------------------------------------------------------------------

local Conn = {}
Conn.__index = Conn

-- Read whatever is available, parking until something is. Returns false once
-- the peer has closed (or the socket failed) and nothing more can come.
function Conn:fill()
  if self.eof then return false end
  while true do
    local data, err, partial = self.sock:receive(65536)
    local got = data or partial
    if got and #got > 0 then
      self.buf = self.buf .. got
      if err and err ~= "timeout" then self.eof = true end
      return true
    end
    if err ~= "timeout" then
      self.eof = true
      return false
    end
    wait_readable(self.sock)
  end
end

-- Returns the next CRLF-terminated line (without CRLF) or nil at EOF.
function Conn:read_line(limit)
  while true do
    local s = str_find(self.buf, "\r\n", 1, true)
    if s then
      local line = str_sub(self.buf, 1, s - 1)
      self.buf = str_sub(self.buf, s + 2)
      return line
    end
    if limit and #self.buf > limit then return nil, "too long" end
    if not self:fill() then return nil, "closed" end
  end
end

function Conn:read_bytes(n)
  -- Large bodies arrive in many pieces: collect them in a table rather than
  -- growing one string, which would copy the body over and over.
  if #self.buf < n then
    local parts, have = { self.buf }, #self.buf
    self.buf = ""
    while have < n do
      local ok, err = self:fill()
      if not ok then
        self.buf = concat(parts) .. self.buf
        return nil, err or "closed"
      end
      parts[#parts + 1] = self.buf
      have = have + #self.buf
      self.buf = ""
    end
    self.buf = concat(parts)
  end
  local data = str_sub(self.buf, 1, n)
  self.buf = str_sub(self.buf, n + 1)
  return data
end

function Conn:send(data)
  if self.dead then return nil, "closed" end
  local i = 1
  local n = #data
  while i <= n do
    local last, err, partial_last = self.sock:send(data, i)
    if last then return true end
    if err ~= "timeout" then
      self.dead = true
      return nil, err
    end
    i = partial_last + 1
    if i <= n then wait_writable(self.sock) end
  end
  return true
end

function Conn:close(reset)
  if self.dead and self.closed_done then return end
  self.dead = true
  self.closed_done = true
  wait_read[self.sock] = nil
  wait_write[self.sock] = nil
  if reset then
    -- SO_LINGER with a zero timeout turns close() into a RST.
    self.sock:setoption("linger", { on = true, timeout = 0 })
  end
  self.sock:close()
end

---------------------------------------------------------------------------
-- state
---------------------------------------------------------------------------

local requests      = {}  -- recorded requests
local epoch         = 1   -- bumped by reset, so connections are counted again
local conn_seq      = 0   -- accept order, never reset: identifies a connection
local conn_counted  = 0   -- connections that carried a recorded request since reset
local req_counted   = 0
local size_sent = 0        -- bytes of x-fake-size bodies written so far

---------------------------------------------------------------------------
-- HTTP
---------------------------------------------------------------------------

local REASONS = {
  [100] = "Continue", [200] = "OK", [201] = "Created", [204] = "No Content",
  [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found",
  [408] = "Request Timeout", [409] = "Conflict", [413] = "Payload Too Large",
  [429] = "Too Many Requests", [500] = "Internal Server Error", [502] = "Bad Gateway",
  [503] = "Service Unavailable", [504] = "Gateway Timeout",
}

local function read_request(c)
  local line, err = c:read_line(MAX_HEADER)
  -- Tolerate stray CRLFs between requests (RFC 9112 §2.2).
  while line == "" do line, err = c:read_line(MAX_HEADER) end
  if not line then return nil, err end
  local method, target, version = line:match("^(%S+) (%S+) HTTP/(%d%.%d)$")
  if not method then return nil, "bad request line" end

  local headers, order = {}, {}
  local total = #line
  while true do
    local h, herr = c:read_line(MAX_HEADER)
    if not h then return nil, herr end
    if h == "" then break end
    total = total + #h
    if total > MAX_HEADER then return nil, "header too large" end
    local name, value = h:match("^([^:%s]+):%s*(.-)%s*$")
    if not name then return nil, "bad header line" end
    name = str_lower(name)
    order[#order + 1] = { name, value }
    -- Repeated headers read as their values joined by ", " (as in SPEC §4).
    if headers[name] then
      headers[name] = headers[name] .. ", " .. value
    else
      headers[name] = value
    end
  end

  local req = { method = method, path = target, version = version, headers = headers,
                header_list = order }

  -- libcurl sends Expect: 100-continue for larger bodies and waits for it.
  if headers["expect"] and str_lower(headers["expect"]) == "100-continue" then
    local ok = c:send("HTTP/1.1 100 Continue\r\n\r\n")
    if not ok then return nil, "closed" end
  end

  local te = headers["transfer-encoding"]
  if te and str_find(str_lower(te), "chunked", 1, true) then
    local parts = {}
    while true do
      local size_line, serr = c:read_line(MAX_HEADER)
      if not size_line then return nil, serr end
      local size = tonumber(size_line:match("^%s*(%x+)"), 16)
      if not size then return nil, "bad chunk size" end
      if size == 0 then
        -- trailers, up to the empty line
        while true do
          local t, terr = c:read_line(MAX_HEADER)
          if not t then return nil, terr end
          if t == "" then break end
        end
        break
      end
      local data, derr = c:read_bytes(size)
      if not data then return nil, derr end
      parts[#parts + 1] = data
      local crlf, cerr = c:read_bytes(2)
      if crlf ~= "\r\n" then return nil, cerr or "bad chunk terminator" end
    end
    req.body = concat(parts)
  elseif headers["content-length"] then
    local n = tonumber(headers["content-length"])
    if not n or n < 0 then return nil, "bad content-length" end
    local data, derr = c:read_bytes(n)
    if not data then return nil, derr end
    req.body = data
  else
    req.body = ""
  end

  local conn_hdr = str_lower(headers["connection"] or "")
  if version == "1.0" then
    req.keepalive = str_find(conn_hdr, "keep-alive", 1, true) ~= nil
  else
    req.keepalive = not str_find(conn_hdr, "close", 1, true)
  end
  return req
end

-- Send a complete response. body == nil means headers only (caller streams).
local function send_head(c, status, headers)
  local out = { str_format("HTTP/1.1 %d %s\r\n", status, REASONS[status] or "Status") }
  for i = 1, #headers do
    out[#out + 1] = headers[i][1] .. ": " .. headers[i][2] .. "\r\n"
  end
  out[#out + 1] = "\r\n"
  return c:send(concat(out))
end

local function respond(c, req, status, body, content_type, extra)
  local headers = { { "Content-Type", content_type or "application/json" } }
  if req.headers["x-fake-retry-after"] then
    headers[#headers + 1] = { "Retry-After", req.headers["x-fake-retry-after"] }
  end
  local pad = tonumber(req.headers["x-fake-pad-header"])
  if pad then headers[#headers + 1] = { "X-Pad", string.rep("p", pad) } end
  if extra then
    for i = 1, #extra do headers[#headers + 1] = extra[i] end
  end
  local no_length = req.headers["x-fake-no-length"] == "1"
  if no_length then
    -- The body ends with the close: the connection cannot be reused.
    headers[#headers + 1] = { "Connection", "close" }
    req.keepalive = false
  else
    headers[#headers + 1] = { "Content-Length", tostring(#body) }
    if not req.keepalive then headers[#headers + 1] = { "Connection", "close" } end
  end
  if not send_head(c, status, headers) then return nil end
  if req.method ~= "HEAD" and #body > 0 then return c:send(body) end
  return true
end

local function json_response(c, req, status, obj)
  return respond(c, req, status, cjson.encode(obj))
end

local function openai_error(status, message)
  return {
    error = {
      message = message or ("fake upstream error " .. status),
      type = status == 429 and "rate_limit_error"
             or (status >= 500 and "server_error" or "invalid_request_error"),
      param = cjson.null,
      code = tostring(status),
    }
  }
end

---------------------------------------------------------------------------
-- canned model answers
---------------------------------------------------------------------------

local CREATED = 1700000000

local function completion(model)
  return {
    id = "chatcmpl-fake", object = "chat.completion", created = CREATED, model = model,
    choices = { { index = 0, message = { role = "assistant", content = "fake reply" },
                  finish_reason = "stop" } },
    usage = { prompt_tokens = 3, completion_tokens = 2, total_tokens = 5 },
  }
end

local function completion_chunks(model)
  local function chunk(delta, finish, usage)
    return {
      id = "chatcmpl-fake", object = "chat.completion.chunk", created = CREATED, model = model,
      choices = { { index = 0, delta = delta, finish_reason = finish or cjson.null } },
      usage = usage,
    }
  end
  local events = {
    chunk({ role = "assistant", content = "fake" }),
    chunk({ content = " reply" }),
    chunk({}, "stop", { prompt_tokens = 3, completion_tokens = 2, total_tokens = 5 }),
  }
  local out = {}
  for i = 1, #events do
    out[i] = "data: " .. cjson.encode(events[i]) .. "\n\n"
  end
  out[#out + 1] = "data: [DONE]\n\n"
  return out
end

local function anthropic_message(model)
  return {
    id = "msg_fake", type = "message", role = "assistant", model = model,
    content = { { type = "text", text = "fake reply" } },
    stop_reason = "end_turn", stop_sequence = cjson.null,
    usage = { input_tokens = 3, output_tokens = 2 },
  }
end

local function anthropic_events(model)
  local function ev(name, obj) return "event: " .. name .. "\ndata: " .. cjson.encode(obj) .. "\n\n" end
  local start = anthropic_message(model)
  start.content = {}
  start.stop_reason = cjson.null
  start.usage = { input_tokens = 3, output_tokens = 0 }
  local first = ev("message_start", { type = "message_start", message = start })
                  :gsub('"content":{}', '"content":[]')
              .. ev("content_block_start", { type = "content_block_start", index = 0,
                                             content_block = { type = "text", text = "" } })
  return {
    first,
    ev("content_block_delta", { type = "content_block_delta", index = 0,
                                delta = { type = "text_delta", text = "fake reply" } })
      .. ev("content_block_stop", { type = "content_block_stop", index = 0 }),
    ev("message_delta", { type = "message_delta",
                          delta = { stop_reason = "end_turn", stop_sequence = cjson.null },
                          usage = { output_tokens = 2 } }),
    ev("message_stop", { type = "message_stop" }),
  }
end

local function models_list()
  return {
    object = "list",
    data = {
      { id = "fake-model", object = "model", created = CREATED, owned_by = "fake" },
      { id = "gpt-4o-mini", object = "model", created = CREATED, owned_by = "fake" },
    },
  }
end

---------------------------------------------------------------------------
-- stream writer
---------------------------------------------------------------------------

local function stream(c, req, events)
  local no_length = req.headers["x-fake-no-length"] == "1"
  local headers = {
    { "Content-Type", "text/event-stream" },
    { "Cache-Control", "no-cache" },
  }
  if no_length then
    headers[#headers + 1] = { "Connection", "close" }
    req.keepalive = false
  else
    headers[#headers + 1] = { "Transfer-Encoding", "chunked" }
    if not req.keepalive then headers[#headers + 1] = { "Connection", "close" } end
  end
  if not send_head(c, 200, headers) then return nil end

  local function emit(data)
    if no_length then return c:send(data) end
    return c:send(str_format("%x\r\n%s\r\n", #data, data))
  end

  local close_after_first = req.headers["x-fake-close-after-first"]
  local hold_name = req.headers["x-fake-hold"]
  local gap = tonumber(req.headers["x-fake-chunk-delay-ms"])
  local first_delay = tonumber(req.headers["x-fake-first-delay-ms"])
  if req.headers["x-fake-close-before-first"] then
    c:close(false)
    return nil
  end
  if first_delay and first_delay > 0 then sleep(first_delay / 1000) end
  for i = 1, #events do
    if i > 1 and gap and gap > 0 then sleep(gap / 1000) end
    if not emit(events[i]) then return nil end
    if i == 1 then
      if close_after_first and close_after_first ~= "0" then
        local reset = str_lower(close_after_first) == "reset"
        -- a RST drops what the peer has not read yet: give it time to read the event
        if reset then sleep(0.1) end
        c:close(reset)
        return nil
      end
      if hold_name then hold(hold_name) end
    end
  end
  if no_length then return true end
  return c:send("0\r\n\r\n")
end

---------------------------------------------------------------------------
-- dispatch
---------------------------------------------------------------------------

local function handle_control(c, req, path)
  if path == "/_fake/requests" and req.method == "GET" then
    -- Built by hand: each element must be an object even when empty, and the
    -- list must be an array even when empty.
    local items = {}
    for i = 1, #requests do items[i] = cjson.encode(requests[i]) end
    return respond(c, req, 200, "[" .. concat(items, ",") .. "]")
  elseif path == "/_fake/reset" and req.method == "POST" then
    requests = {}
    conn_counted, req_counted = 0, 0
    -- Streams still held by an earlier test are let go, so their
    -- connections end instead of hanging forever.
    for name in pairs(holders) do release(name) end
    released = {}
    epoch = epoch + 1
    return respond(c, req, 200, '{"reset":true}')
  elseif path == "/_fake/stats" and req.method == "GET" then
    return respond(c, req, 200, str_format('{"connections":%d,"requests":%d,"accepted":%d,"size_sent":%d}',
                                           conn_counted, req_counted, conn_seq, size_sent))
  else
    local name = path:match("^/_fake/release/(.+)$")
    if name and req.method == "POST" then
      local n = release(name)
      return respond(c, req, 200, cjson.encode({ released = name, waiting = n }))
    end
  end
  return json_response(c, req, 404, openai_error(404, "unknown control path " .. path))
end

local function handle(c, req)
  local path = req.path:match("^[^?]*")

  if str_sub(path, 1, 7) == "/_fake/" then
    return handle_control(c, req, path)
  end

  -- Record before any delay or hold, so a test can see the request while the
  -- answer is pending.
  local drop = req.headers["x-fake-drop"]
  if drop == "1" or (drop == "reused" and (c.served or 0) > 0) then
    c:close()
    return nil
  end
  if c.epoch ~= epoch then
    c.epoch = epoch
    conn_counted = conn_counted + 1
  end
  req_counted = req_counted + 1
  local headers = {}
  for k, v in pairs(req.headers) do headers[k] = v end
  requests[#requests + 1] = {
    method = req.method, path = req.path, headers = headers, body = req.body, conn = c.id,
  }

  local h = req.headers
  local delay = tonumber(h["x-fake-delay-ms"])
  if delay and delay > 0 then sleep(delay / 1000) end

  local status = tonumber(h["x-fake-status"]) or 200

  if h["x-fake-raw"] then
    local bytes = h["x-fake-raw"]:gsub("%%(%x%x)", function(x) return string.char(tonumber(x, 16)) end)
    if not c:send(bytes) then return nil end
    local how = h["x-fake-raw-close"]
    if how == "1" or how == "reset" then
      if how == "reset" then sleep(0.1) end   -- as above: the bytes are read before the RST
      c:close(how == "reset")
      return nil
    end
    return true
  end

  if h["x-fake-sse"] then
    local function unpct(v) return (v:gsub("%%(%x%x)", function(x) return string.char(tonumber(x, 16)) end)) end
    local bytes = string.rep(unpct(h["x-fake-sse"]), tonumber(h["x-fake-sse-repeat"]) or 1) ..
      unpct(h["x-fake-sse-tail"] or "")
    local pieces = {}
    if h["x-fake-sse-piece"] == "event" then
      local i = 1
      while i <= #bytes do
        local e = #bytes
        for _, b in ipairs({ "\n\n", "\r\n\r\n", "\r\r" }) do
          local _, be = str_find(bytes, b, i, true)
          if be and be < e then e = be end
        end
        pieces[#pieces + 1] = str_sub(bytes, i, e)
        i = e + 1
      end
    else
      local n = tonumber(h["x-fake-sse-piece"]) or #bytes
      for i = 1, #bytes, n do pieces[#pieces + 1] = str_sub(bytes, i, i + n - 1) end
    end
    return stream(c, req, pieces)
  end

  if h["x-fake-body"] then
    return respond(c, req, status, h["x-fake-body"], h["x-fake-content-type"] or "application/json")
  end

  local size = tonumber(h["x-fake-size"])
  if size then
    local piece = string.rep("x", 65536)
    local framing = { "Content-Length", tostring(size) }
    if h["x-fake-no-length"] == "1" then
      framing = { "Connection", "close" }
      req.keepalive = false
    end
    if not send_head(c, status, { { "Content-Type", "application/octet-stream" }, framing }) then
      return nil
    end
    local left = size
    while left > 0 do
      local n = left < #piece and left or #piece
      if not c:send(n == #piece and piece or piece:sub(1, n)) then return nil end
      left = left - n
      size_sent = size_sent + n
    end
    return true
  end

  if status >= 300 then
    return json_response(c, req, status, openai_error(status))
  end

  if req.method == "GET" then
    if path == "/v1/models" or path == "/models" then
      return json_response(c, req, status, models_list())
    end
    -- Lets the fake stand in for any service probed for liveness.
    if path == "/ready" or path == "/health" then
      return respond(c, req, status, '{"status":"ok"}')
    end
    return json_response(c, req, 404, openai_error(404, "no such path " .. path))
  end

  if req.method ~= "POST" then
    return json_response(c, req, 405, openai_error(405, "method not allowed"))
  end

  local body = cjson.decode(req.body)
  local model = type(body) == "table" and type(body.model) == "string" and body.model
                or "fake-model"
  local streaming = type(body) == "table" and body.stream == true

  if path:match("/messages$") then
    if streaming then return stream(c, req, anthropic_events(model)) end
    return json_response(c, req, status, anthropic_message(model))
  end

  if path:match("/embeddings$") then
    return json_response(c, req, status, {
      object = "list", model = model,
      data = { { object = "embedding", index = 0, embedding = { 0.1, 0.2, 0.3 } } },
      usage = { prompt_tokens = 3, total_tokens = 3 },
    })
  end

  if streaming then return stream(c, req, completion_chunks(model)) end
  return json_response(c, req, status, completion(model))
end

local function serve(c)
  while true do
    local req, err = read_request(c)
    if not req then
      if err ~= "closed" and not c.dead then
        respond(c, { method = "GET", headers = {}, keepalive = false }, 400,
                cjson.encode(openai_error(400, "fake upstream: " .. tostring(err))))
      end
      break
    end
    local ok = handle(c, req)
    c.served = (c.served or 0) + 1
    if req.headers["x-fake-close-after"] == "1" then break end
    if not ok or not req.keepalive or c.dead then break end
  end
  c:close()
end

local function guarded(c)
  return function()
    local ok, err = pcall(serve, c)
    if not ok then
      io.stderr:write("fake_upstream: handler error: ", tostring(err), "\n")
      c:close()
    end
  end
end

---------------------------------------------------------------------------
-- main loop
---------------------------------------------------------------------------

local port = tonumber(arg and arg[1]) or 0
-- socket.bind sets SO_REUSEADDR, so a restart on the same port works at once.
local server = assert(socket.bind("127.0.0.1", port, 512))
server:settimeout(0)
local _, bound_port = server:getsockname()

io.stdout:write("listening ", bound_port, "\n")
io.stdout:flush()

while true do
  -- Resume coroutines released by the previous turn.
  if #runnable > 0 then
    local list = runnable
    runnable = {}
    for i = 1, #list do run(list[i]) end
  end

  local rlist, wlist = { server }, {}
  for s in pairs(wait_read) do rlist[#rlist + 1] = s end
  for s in pairs(wait_write) do wlist[#wlist + 1] = s end

  local timeout = 1
  local t = now()
  for _, wake in pairs(sleepers) do
    local d = wake - t
    if d < timeout then timeout = d end
  end
  if #runnable > 0 or timeout < 0 then timeout = 0 end

  local readable, writable = socket.select(rlist, wlist, timeout)

  for i = 1, #readable do
    local s = readable[i]
    if s == server then
      -- Accept everything that is pending.
      while true do
        local client = server:accept()
        if not client then break end
        client:settimeout(0)
        client:setoption("tcp-nodelay", true)
        conn_seq = conn_seq + 1
        local c = setmetatable({ sock = client, buf = "", id = conn_seq }, Conn)
        run(co_create(guarded(c)))
      end
    else
      local co = wait_read[s]
      if co then
        wait_read[s] = nil
        run(co)
      end
    end
  end

  for i = 1, #writable do
    local s = writable[i]
    local co = wait_write[s]
    if co then
      wait_write[s] = nil
      run(co)
    end
  end

  t = now()
  for co, wake in pairs(sleepers) do
    if wake <= t then
      sleepers[co] = nil
      runnable[#runnable + 1] = co
    end
  end
end
