-- moongate.upstream — one attempt at a provider, as seen from a request's
-- coroutine. Two kinds share one interface: a real transfer through the C
-- runtime (libcurl, or its own HTTP/1.1 client for http://), and the
-- in-process mock provider (type = "mock").
--
--   att = upstream.start(ctx, spec)         spec: method, url, headers (table),
--                                            body, timeout, connect_timeout,
--                                            ca_file, insecure | mock (provider)
--   status, headers = att:wait_headers()    or nil, kind, message
--   att:pipe()      body straight to the client (no Lua per chunk)
--   att:stream()    body through Lua: att:read() -> data | nil, kind, message
--   att:relay(fmt, pending)  (real transfers, in stream mode) a same-format SSE stream: plain
--                   events from C, the rest as att:read(); att:relayed() -> their text characters
--   ok, kind, message = att:wait_done()
--   att:close()
--
-- kind is one of "connect-failure", "timeout", "reset", "tls", "malformed",
-- "client-closed", "error" (SPEC §4 error.kind).
local ffi = require("ffi")
local gw = require("gw")
local mgffi = require("moongate.ffi")
local mock = require("moongate.mock")

local C = mgffi.C
local co_yield = coroutine.yield
local pairs, tostring, type = pairs, tostring, type
local raw_next = require("moongate.iter").raw_next   -- hot loops (lua/moongate/iter.lua)
local ffi_string = ffi.string

local _M = { _VERSION = "0.1" }

local EV_UP_HEADERS, EV_UP_DATA, EV_UP_DONE = 2, 3, 4

-- ====================== real transfers ======================

local Real = {}
Real.__index = Real

-- one buffer for every serialisation (a request's headers are serialised whole, never interleaved)
local hbuf = require("string.buffer").new(1024)
local function serialize_headers(h)
  hbuf:reset()
  for k, v in raw_next, h do
    if v ~= nil and v ~= false then
      if type(v) ~= "string" then v = tostring(v) end
      hbuf:put(k, ": ", v, "\r\n")
    end
  end
  return hbuf:tostring()
end
_M.serialize_headers = serialize_headers

local tnew = require("table.new")
local function up_headers(u)
  local nh = C.mg_up_header_count(u)
  local h = tnew(0, nh)
  local np, nl, vp, vl = mgffi.cp1, mgffi.sz1, mgffi.cp2, mgffi.sz2
  for i = 0, nh - 1 do
    C.mg_up_header(u, i, np, nl, vp, vl)
    local name = ffi_string(np[0], nl[0])
    local val = ffi_string(vp[0], vl[0])
    local old = h[name]
    h[name] = old and (old .. ", " .. val) or val
  end
  return h
end

-- Yields until the next event for this transfer; events for others are not
-- expected (a request has one transfer at a time).
local function next_event(self)
  while true do
    local kind, ptr, arg, data = co_yield()
    if kind == EV_UP_DONE or kind == EV_UP_HEADERS or kind == EV_UP_DATA then
      return kind, arg, data
    end
  end
end

function _M.start_real(ctx, spec, waiter, req)
  local headers = serialize_headers(spec.headers)
  local body = spec.body or ""
  local err = mgffi.errbuf
  local u = C.mg_up_start(req, waiter, spec.method, spec.url, headers, #headers, body, #body,
                          spec.connect_timeout or 0, spec.timeout or 0, spec.idle_timeout or 0, spec.ca_file,
                          spec.insecure and 1 or 0, err, 256)
  if u == nil then return nil, "error", ffi_string(err) end
  return setmetatable({ u = u, ctx = ctx }, Real)
end

function Real:wait_headers()
  local kind, arg, data = next_event(self)
  if kind == EV_UP_HEADERS then
    self.status = arg
    self.ttfb = C.mg_up_ttfb(self.u)
    return arg, up_headers(self.u)
  end
  self.finished = true
  return nil, data or "error", ffi_string(C.mg_up_errmsg(self.u))
end

function Real:pipe()
  C.mg_up_pipe(self.u)
end

function Real:stream()
  C.mg_up_stream(self.u)
end

-- relay(fmt, pending) -> true when C took the stream over (mg_up_relay): its plain events go to
-- the client from C, starting with pending (the start of an event the decoder held, now C's),
-- until one Lua must see; read() then gives the bytes from that event on, or the end. false when
-- the transfer is over (or not streaming): pending stays the decoder's, read() goes on as before.
-- relayed() -> the text characters of the events the relay passed on since it was last asked.
function Real:relay(fmt, pending)
  if self.finished then return false end
  return C.mg_up_relay(self.u, fmt, pending, #pending) == 0
end

function Real:relayed()
  if self.u == nil then return 0 end
  return tonumber(C.mg_up_relayed(self.u))
end

function Real:read()
  if self.finished then return nil, self.done_kind, self.done_msg end
  local kind, arg, data = next_event(self)
  if kind == EV_UP_DATA then return data end
  self.finished = true
  if arg ~= 0 then
    self.done_kind, self.done_msg = data, ffi_string(C.mg_up_errmsg(self.u))
    return nil, self.done_kind, self.done_msg
  end
  return nil
end

function Real:wait_done()
  while not self.finished do
    local kind, arg, data = next_event(self)
    if kind == EV_UP_DONE then
      self.finished = true
      if arg ~= 0 then
        self.done_kind, self.done_msg = data, ffi_string(C.mg_up_errmsg(self.u))
      end
    end
  end
  if self.done_kind then return nil, self.done_kind, self.done_msg end
  return true
end

function Real:close()
  if self.u ~= nil then
    C.mg_up_free(self.u)
    self.u = nil
  end
end

-- ====================== the in-process mock provider ======================

local Mock = {}
Mock.__index = Mock

function _M.start_mock(ctx, spec)
  local p = spec.mock
  local resp = mock.respond({
    latency = p.latency, interval = p.interval, chunks = p.chunks, text = p.text,
    fail = p.fail, model = nil,
  }, { method = spec.method, path = spec.path, headers = spec.headers, body = spec.body or "" })
  return setmetatable({ ctx = ctx, resp = resp, i = 0, first_byte = spec.first_byte }, Mock)
end

-- sleeps d seconds in slices, so that a client gone meanwhile (or a shutdown that closed its
-- connection) ends the wait within 100 ms, as an aborted real transfer would
local function mock_sleep(self, d)
  local req = self.ctx._req
  local done = C.mg_monotonic() + d
  while true do
    local left = done - C.mg_monotonic()
    if left <= 0 then return end
    gw.sleep(left < 0.1 and left or 0.1)
    if req ~= nil and C.mg_req_alive(req) ~= 1 then return end
  end
end

function Mock:wait_headers()
  local r = self.resp
  -- a latency beyond the attempt's first-byte deadline is a timeout, as a
  -- real provider's silence would be
  if r.delay and self.first_byte and r.delay > self.first_byte then
    gw.sleep(self.first_byte)
    self.finished = true
    return nil, "timeout", string.format("no first byte after %.3f s", self.first_byte)
  end
  if r.delay and r.delay > 0 then mock_sleep(self, r.delay) end
  if C.mg_req_alive(self.ctx._req) ~= 1 then
    self.finished = true
    return nil, "client-closed", "the client went away"
  end
  self.ttfb = r.delay or 0
  self.status = r.status
  local h = {}
  for k, v in pairs(r.headers) do h[k] = v end
  if r.body then h["content-length"] = tostring(#r.body) end
  return r.status, h
end

function Mock:pipe()
  self.piping = true
end

function Mock:stream()
  self.streaming = true
end

function Mock:read()
  local r = self.resp
  if r.body then
    if self.i > 0 then return nil end
    self.i = 1
    return r.body
  end
  local i = self.i + 1
  local ev = r.events[i]
  if not ev then return nil end
  if i > 1 and r.interval and r.interval > 0 then mock_sleep(self, r.interval) end
  -- a long stream to a slow reader waits for it (as a real provider is paused) rather than
  -- queueing every event at once; outside a request (unit specs) there is no client to wait for
  local req = self.ctx._req
  if i > 1 and req ~= nil and not gw._drained(req) then
    return nil, "client-closed", "the client went away"
  end
  -- a real provider's events arrive through the event loop; a socket that takes every event
  -- at once would let this loop run on and starve the worker's other requests: after 2 ms of
  -- events in a row, the loop gets its turn (gw.sleep(0) lets it poll the sockets)
  if req ~= nil then
    local now = C.mg_monotonic()
    if not self.slice then
      self.slice = now
    elseif now - self.slice > 0.002 then
      gw.sleep(0)
      self.slice = C.mg_monotonic()
    end
  end
  if C.mg_req_alive(req) ~= 1 then return nil, "client-closed", "the client went away" end
  self.i = i
  return ev
end

-- In pipe mode the mock writes to the client itself.
function Mock:wait_done()
  if self.piping then
    while true do
      local data, kind, msg = self:read()
      if not data then
        if kind then return nil, kind, msg end
        return true
      end
      local r = self.ctx._req
      C.mg_resp_write(r, data, #data)
      -- a long answer to a slow reader: wait for it rather than queue it all
      if not gw._drained(r) then return nil, "client-closed", "the client went away" end
    end
  end
  return true
end

function Mock:close() end

return _M
