-- Test helpers: processes, the fake upstream, the gateway, and a small
-- HTTP/1.1 client over luasocket. Everything talks to 127.0.0.1 only and
-- every wait is bounded.
--
-- Every spec that starts processes or makes temporary directories must end
-- with
--
--     teardown(function() helpers.cleanup() end)
--
-- Children are also killed when the test process exits (a finaliser on this
-- module) and when it dies (PR_SET_PDEATHSIG in each child), so a failing or
-- crashing spec leaves nothing running.
--
-- Transport failures before a response head (refused, timeout, closed) raise
-- errors with a message naming the port and request; use pcall to expect them.

local socket = require "socket"
local cjson  = require "cjson.safe"
local ffi    = require "ffi"
local unistd = require "posix.unistd"
local wait_  = require "posix.sys.wait"
local signal = require "posix.signal"
local stdlib = require "posix.stdlib"
local fcntl  = require "posix.fcntl"
local pstat  = require "posix.sys.stat"

local gettime    = socket.gettime
local sleep      = socket.sleep
local str_find   = string.find
local str_sub    = string.sub
local str_lower  = string.lower
local str_format = string.format
local concat     = table.concat
local tonumber   = tonumber
local tostring   = tostring
local error      = error

local _M = {}

---------------------------------------------------------------------------
-- paths
---------------------------------------------------------------------------

local function dirname(p) return (p:gsub("/+[^/]*$", "")) end

local function absolute(p)
  if str_sub(p, 1, 1) == "/" then return p end
  local cwd = unistd.getcwd()
  p = p:gsub("^%./", "")
  return cwd .. "/" .. p
end

-- This file is <root>/spec/support/helpers.lua.
local this_file = absolute((debug.getinfo(1, "S").source:gsub("^@", "")))
_M.root = dirname(dirname(dirname(this_file)))
if _M.root == "" then _M.root = "/" end

local TMP_ROOT = _M.root .. "/spec/tmp"

-- Resolved at call time so a spec may set MOONGATE_BIN itself; a relative
-- path is taken from the repository root (scripts/test.sh passes build/...).
function _M.bin()
  local b = os.getenv("MOONGATE_BIN")
  if b and b ~= "" then
    if str_sub(b, 1, 1) ~= "/" then b = _M.root .. "/" .. b:gsub("^%./", "") end
    return b
  end
  return _M.root .. "/build/moongate"
end

-- The interpreter running the specs, used for the fake upstream.
local LUAJIT = os.getenv("LUAJIT") or "luajit"

---------------------------------------------------------------------------
-- small utilities
---------------------------------------------------------------------------

function _M.wait_until(fn, timeout, msg)
  timeout = timeout or 10
  local deadline = gettime() + timeout
  local last_err
  while true do
    local ok, res = pcall(fn)
    if ok and res then return res end
    if not ok then last_err = res end
    if gettime() >= deadline then
      error(str_format("wait_until: %s (not true after %gs)%s", msg or "condition",
                       timeout, last_err and ("; last error: " .. tostring(last_err)) or ""), 2)
    end
    sleep(0.02)
  end
end

function _M.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

function _M.write_file(path, text)
  local f = assert(io.open(path, "wb"))
  assert(f:write(text))
  f:close()
end

-- A port nothing listens on. The kernel may hand the same ephemeral port out again right after
-- it was closed (listen and admin_port came out equal once, under ASan), so a port already
-- given in this process is never given again.
local given_ports = {}
function _M.free_port()
  for _ = 1, 100 do
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    port = tonumber(port)
    if not given_ports[port] then
      given_ports[port] = true
      return port
    end
  end
  error("free_port: no new port in 100 tries")
end

local tmpdirs = {}

function _M.tmpdir()
  pstat.mkdir(TMP_ROOT)  -- fails harmlessly when it exists
  local dir, err = stdlib.mkdtemp(TMP_ROOT .. "/t-XXXXXX")
  if not dir then error("tmpdir: " .. tostring(err), 2) end
  tmpdirs[#tmpdirs + 1] = dir
  return dir
end

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

---------------------------------------------------------------------------
-- processes
---------------------------------------------------------------------------

ffi.cdef [[
int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5);
]]
local PR_SET_PDEATHSIG = 1

local procs = {}   -- every child spawned and not yet reaped

local Proc = {}
Proc.__index = Proc

-- Polls waitpid(WNOHANG) until the deadline. Returns the exit code (128 + N
-- for a death by signal N, as a shell reports it, plus "killed", N), or nil
-- when still running at the deadline.
function Proc:wait(timeout)
  if self.code then return self.code, self.how, self.signal end
  local deadline = gettime() + (timeout or 0)
  while true do
    local pid, how, status = wait_.wait(self.pid, wait_.WNOHANG)
    if pid == self.pid and (how == "exited" or how == "killed") then
      self.how = how
      if how == "exited" then
        self.code = status
      else
        self.code, self.signal = 128 + status, status
      end
      procs[self.pid] = nil
      return self.code, self.how, self.signal
    elseif pid == nil then
      -- ECHILD: someone else reaped it; nothing more to learn.
      self.code, self.how = -1, "lost"
      procs[self.pid] = nil
      return self.code, self.how
    end
    if gettime() >= deadline then return nil end
    sleep(0.01)
  end
end

function Proc:alive()
  return self:wait(0) == nil
end

function Proc:kill(sig)
  if self.code then return false end
  return signal.kill(self.pid, sig or signal.SIGTERM) == 0
end

-- argv[1] is looked up on PATH. opts: log (file, stdout+stderr appended),
-- env {K = V | false}, cwd.
function _M.spawn(argv, opts)
  opts = opts or {}
  assert(type(argv) == "table" and argv[1], "spawn: argv must be a non-empty list")
  local log = opts.log or "/dev/null"
  local parent = unistd.getpid()

  io.stdout:flush()
  io.stderr:flush()
  local pid, err = unistd.fork()
  if not pid then error("spawn: fork failed: " .. tostring(err), 2) end

  if pid == 0 then
    -- Child: nothing here may return into the test runner.
    local ok, why = pcall(function()
      ffi.C.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
      -- The parent may have died before prctl took effect.
      if unistd.getppid() ~= parent then unistd._exit(127) end
      -- Own process group, so cleanup can also reach the child's children.
      unistd.setpid("p", 0, 0)
      local fd = fcntl.open(log, fcntl.O_WRONLY + fcntl.O_CREAT + fcntl.O_APPEND, 420)
      if not fd then error("cannot open log " .. log) end
      local nul = fcntl.open("/dev/null", fcntl.O_RDONLY)
      if nul then unistd.dup2(nul, 0) end
      unistd.dup2(fd, 1)
      unistd.dup2(fd, 2)
      -- Do not leak the test's sockets into the child: a client connection
      -- the test closes must really close.
      for i = 3, 1023 do unistd.close(i) end
      if opts.env then
        for k, v in pairs(opts.env) do
          if v == false then stdlib.setenv(k, nil) else stdlib.setenv(k, tostring(v)) end
        end
      end
      if opts.cwd then assert(unistd.chdir(opts.cwd)) end
      local args = {}
      for i = 2, #argv do args[i - 1] = tostring(argv[i]) end
      args[0] = argv[1]
      local _, e = unistd.execp(argv[1], args)
      io.stderr:write("spawn: exec ", tostring(argv[1]), " failed: ", tostring(e), "\n")
    end)
    if not ok then io.stderr:write("spawn: ", tostring(why), "\n") end
    unistd._exit(127)
  end

  local p = setmetatable({ pid = pid, argv = argv, log_path = opts.log }, Proc)
  procs[pid] = p
  return p
end

local function stop_proc(p, grace)
  if p.code then return p.code end
  p:kill(signal.SIGTERM)
  local code = p:wait(grace or 5)
  if not code then
    signal.kill(-p.pid, signal.SIGKILL)   -- the whole group
    signal.kill(p.pid, signal.SIGKILL)
    code = p:wait(5)
  end
  -- Anything the child left in its group goes too.
  signal.kill(-p.pid, signal.SIGKILL)
  return code
end

-- Runs argv to completion; returns exit code and combined stdout+stderr.
-- On timeout (default 30 s) the command is killed and nil is returned.
function _M.run(argv, opts)
  opts = opts or {}
  local dir = opts.dir or _M.tmpdir()
  local out = dir .. str_format("/run-%d-%d.log", unistd.getpid(), math.random(1e9))
  local p = _M.spawn(argv, { log = out, env = opts.env, cwd = opts.cwd })
  local code = p:wait(opts.timeout or 30)
  local timed_out = false
  if not code then
    timed_out = true
    stop_proc(p, 1)
  end
  local output = _M.read_file(out) or ""
  os.remove(out)
  if timed_out then
    return nil, output .. str_format("\n[helpers.run: killed after %gs]", opts.timeout or 30)
  end
  return code, output
end

---------------------------------------------------------------------------
-- HTTP client
---------------------------------------------------------------------------

local Conn = {}
Conn.__index = Conn

function _M.connect(port, timeout)
  local sock = socket.tcp()
  sock:settimeout(timeout or 10)
  local ok, err = sock:connect("127.0.0.1", port)
  if not ok then
    sock:close()
    error(str_format("connect 127.0.0.1:%s: %s", tostring(port), tostring(err)), 2)
  end
  sock:setoption("tcp-nodelay", true)
  return setmetatable({ sock = sock, buf = "", port = port }, Conn)
end

-- Reads whatever is available before the deadline into the buffer.
-- Returns true on new data, nil, "closed" | "timeout" otherwise.
function Conn:fill(deadline)
  if self.eof then return nil, "closed" end
  local sock = self.sock
  while true do
    sock:settimeout(0)
    local data, err, partial = sock:receive(65536)
    local got = data or partial
    if got and #got > 0 then
      self.buf = self.buf .. got
      if err and err ~= "timeout" then self.eof = true end
      return true
    end
    if err ~= "timeout" then
      self.eof = true
      return nil, "closed"
    end
    local remaining = deadline - gettime()
    if remaining <= 0 then return nil, "timeout" end
    socket.select({ sock }, nil, remaining)
  end
end

function Conn:read_line(deadline)
  while true do
    local s = str_find(self.buf, "\n", 1, true)
    if s then
      local line = str_sub(self.buf, 1, s - 1):gsub("\r$", "")
      self.buf = str_sub(self.buf, s + 1)
      return line
    end
    local ok, err = self:fill(deadline)
    if not ok then return nil, err end
  end
end

function Conn:read_bytes(n, deadline)
  -- Large bodies arrive in many pieces: collect them in a table rather than
  -- growing one string, which would copy the body over and over.
  if #self.buf < n then
    local parts, have = { self.buf }, #self.buf
    self.buf = ""
    while have < n do
      local ok, err = self:fill(deadline)
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

-- Sends bytes as given; deadline is absolute (gettime()), default now + 10 s.
function Conn:send(data, deadline)
  if self.is_closed then return nil, "closed" end
  deadline = deadline or gettime() + 10
  local remaining = deadline - gettime()
  if remaining <= 0 then return nil, "timeout" end
  self.sock:settimeout(remaining)
  local ok, err = self.sock:send(data)
  if not ok then return nil, err end
  return true
end

function Conn:close()
  if not self.is_closed then
    self.is_closed = true
    self.eof = true
    self.sock:close()
  end
end

-- True when the peer has closed (or reset) the connection. Waits up to
-- `timeout` seconds (default 0: a single non-blocking read) for that to
-- happen. Bytes that arrive meanwhile are kept for the next response.
function Conn:closed(timeout)
  if self.is_closed then return true end
  local deadline = gettime() + (timeout or 0)
  while true do
    local ok, err = self:fill(deadline)
    if not ok then
      if err == "closed" then return true end
      return false
    end
  end
end

local function build_request(port, req)
  local method = req.method or "GET"
  local path = req.path or "/"
  local headers = req.headers or {}
  local lines = { method .. " " .. path .. " HTTP/1.1" }
  local have = {}
  local names = {}
  for k in pairs(headers) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do
    local v = headers[k]
    have[str_lower(k)] = true
    if type(v) == "table" then
      for _, one in ipairs(v) do lines[#lines + 1] = k .. ": " .. tostring(one) end
    elseif v ~= false then
      lines[#lines + 1] = k .. ": " .. tostring(v)
    end
  end
  if not have["host"] then lines[#lines + 1] = "Host: 127.0.0.1:" .. tostring(port) end
  local body = req.body
  if body and not have["content-length"] and not have["transfer-encoding"] then
    lines[#lines + 1] = "Content-Length: " .. #body
  elseif not body and (method == "POST" or method == "PUT" or method == "PATCH")
         and not have["content-length"] and not have["transfer-encoding"] then
    lines[#lines + 1] = "Content-Length: 0"
  end
  return concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")
end

-- Reads a status line and headers, skipping 1xx interim responses.
local function read_head(conn, deadline)
  while true do
    local status_line, err = conn:read_line(deadline)
    -- Tolerate stray empty lines before a status line.
    while status_line == "" do status_line, err = conn:read_line(deadline) end
    if not status_line then return nil, err end
    local version, status = status_line:match("^HTTP/(%d%.%d) (%d%d%d)")
    if not status then return nil, "bad status line: " .. status_line end
    local raw = { status_line }
    local headers, list = {}, {}
    while true do
      local line, herr = conn:read_line(deadline)
      if not line then return nil, herr end
      if line == "" then break end
      raw[#raw + 1] = line
      local name, value = line:match("^([^:]+):%s*(.-)%s*$")
      if name then
        name = str_lower(name)
        list[#list + 1] = { name, value }
        headers[name] = headers[name] and (headers[name] .. ", " .. value) or value
      end
    end
    status = tonumber(status)
    if status >= 200 or status == 101 then
      return {
        status = status, version = version, headers = headers, header_list = list,
        raw_headers = concat(raw, "\r\n") .. "\r\n\r\n",
      }
    end
  end
end

-- A body reader: next_piece(deadline) -> string | nil, "eof" | "closed" | "timeout".
-- "eof" is a clean end of the body; "closed" a connection lost mid-body.
local function body_reader(conn, res, method)
  local status = res.status
  local h = res.headers
  if method == "HEAD" or status == 204 or status == 304 or status == 101 then
    return function() return nil, "eof" end, "none"
  end
  local te = h["transfer-encoding"]
  if te and str_find(str_lower(te), "chunked", 1, true) then
    local done = false
    return function(deadline)
      if done then return nil, "eof" end
      local line, err = conn:read_line(deadline)
      if not line then return nil, err end
      local size = tonumber(line:match("^%s*(%x+)"), 16)
      if not size then return nil, "bad chunk size line: " .. line end
      if size == 0 then
        while true do
          local t, terr = conn:read_line(deadline)
          if not t then return nil, terr end
          if t == "" then break end
        end
        done = true
        return nil, "eof"
      end
      local data, derr = conn:read_bytes(size, deadline)
      if not data then return nil, derr end
      local crlf, cerr = conn:read_bytes(2, deadline)
      if not crlf then return nil, cerr end
      if crlf ~= "\r\n" then return nil, "bad chunk terminator" end
      return data
    end, "chunked"
  end
  local cl = h["content-length"]
  if cl then
    local left = tonumber(cl) or 0
    return function(deadline)
      if left <= 0 then return nil, "eof" end
      if #conn.buf == 0 then
        local ok, err = conn:fill(deadline)
        if not ok then return nil, err end
      end
      local n = math.min(left, #conn.buf)
      local data = str_sub(conn.buf, 1, n)
      conn.buf = str_sub(conn.buf, n + 1)
      left = left - n
      return data
    end, "length"
  end
  -- Close-delimited.
  return function(deadline)
    if #conn.buf == 0 then
      local ok, err = conn:fill(deadline)
      if not ok then
        if err == "closed" then return nil, "eof" end
        return nil, err
      end
    end
    local data = conn.buf
    conn.buf = ""
    return data
  end, "close"
end

local function keep_alive(res)
  local c = str_lower(res.headers["connection"] or "")
  if str_find(c, "close", 1, true) then return false end
  if res.version == "1.0" and not str_find(c, "keep-alive", 1, true) then return false end
  return res.framing ~= "close"
end

local function open_request(port, req, what)
  local timeout = req.timeout or 10
  local deadline = gettime() + timeout
  local conn = req.conn
  local own = conn == nil
  if own then conn = _M.connect(port, timeout) end
  port = port or conn.port
  local desc = str_format("%s 127.0.0.1:%s %s %s", what, tostring(port),
                          req.method or "GET", req.path or "/")
  local ok, err = conn:send(build_request(port, req), deadline)
  if not ok then
    if own then conn:close() end
    error(desc .. ": send failed: " .. tostring(err), 3)
  end
  local res, herr = read_head(conn, deadline)
  if not res then
    if own then conn:close() end
    error(desc .. ": no response head: " .. tostring(herr), 3)
  end
  res.conn = conn
  return res, conn, own, deadline
end

local function read_body(res, conn, method, deadline)
  local next_piece, framing = body_reader(conn, res, method)
  res.framing = framing
  local parts = {}
  while true do
    local piece, err = next_piece(deadline)
    if not piece then
      if err ~= "eof" then res.incomplete = err end
      break
    end
    parts[#parts + 1] = piece
  end
  res.body = concat(parts)
  if res.incomplete or not keep_alive(res) then conn:close() end
  return res
end

-- req = { method, path, headers, body, timeout = 10, conn, keepalive }
-- Header values may be lists (the header is repeated) or false (not sent).
-- Host and Content-Length are added unless given.
-- Without req.conn a connection is opened and closed after the response
-- (unless req.keepalive); with it, the connection is reused and stays open
-- when the response allows. A body cut short is returned as far as it got,
-- with res.incomplete = "closed" | "timeout" | <framing error>.
function _M.http(port, req)
  req = req or {}
  local res, conn, own, deadline = open_request(port, req, "http")
  read_body(res, conn, req.method or "GET", deadline)
  if own and not req.keepalive then conn:close() end
  return res
end

-- Reads one response from conn without sending anything (for requests
-- written with conn:send, e.g. pipelined or hand-framed ones).
-- opts: timeout (10), method (the request's, for HEAD).
function _M.read_response(conn, opts)
  opts = opts or {}
  local deadline = gettime() + (opts.timeout or 10)
  local res, err = read_head(conn, deadline)
  if not res then
    error(str_format("read_response 127.0.0.1:%s: no response head: %s",
                     tostring(conn.port), tostring(err)), 2)
  end
  res.conn = conn
  return read_body(res, conn, opts.method or "GET", deadline)
end

-- Decodes res.body as JSON; errors with the body in the message otherwise.
function _M.json(res)
  local obj, err = cjson.decode(res.body)
  if obj == nil then
    error(str_format("not JSON (%s), status %s: %s", tostring(err), tostring(res.status),
                     str_sub(tostring(res.body), 1, 2000)), 2)
  end
  return obj
end

---------------------------------------------------------------------------
-- SSE streams
---------------------------------------------------------------------------

local Stream = {}
Stream.__index = Stream

-- Returns the next complete event (its lines, without the blank line that
-- ends it) as soon as it has arrived; nil, "eof" at a clean end of the body
-- (terminating chunk, or Content-Length reached, or close for a
-- close-delimited body); nil, "closed" when the connection was lost before
-- the end of the body; nil, "timeout".
-- A partial event left at the end is in s.leftover.
function Stream:read_event(timeout)
  local deadline = gettime() + (timeout or 10)
  while true do
    -- Normalise line ends as SSE allows \r\n, \n and \r.
    local buf = self.sse_buf
    local s, e = str_find(buf, "\r?\n\r?\n")
    if s then
      local ev = str_sub(buf, 1, s - 1)
      self.sse_buf = str_sub(buf, e + 1)
      ev = ev:gsub("\r\n", "\n")
      self.events = self.events + 1
      return ev
    end
    if self.ended then
      self.leftover = self.sse_buf ~= "" and self.sse_buf or nil
      return nil, self.ended
    end
    local piece, err = self.next_piece(deadline)
    if piece then
      self.sse_buf = self.sse_buf .. piece
    elseif err == "timeout" then
      return nil, "timeout"
    else
      self.ended = err == "eof" and "eof" or "closed"
      if err ~= "eof" and err ~= "closed" then self.framing_error = err end
      self.conn:close()
    end
  end
end

-- All remaining events until the end of the body: events, end_reason.
function Stream:read_all(timeout)
  local deadline = gettime() + (timeout or 10)
  local list = {}
  while true do
    local ev, err = self:read_event(math.max(0, deadline - gettime()))
    if not ev then return list, err end
    list[#list + 1] = ev
  end
end

-- The rest of the body as one string (for non-SSE answers such as errors).
function Stream:read_body(timeout)
  local deadline = gettime() + (timeout or 10)
  local parts = { self.sse_buf }
  self.sse_buf = ""
  while not self.ended do
    local piece, err = self.next_piece(deadline)
    if piece then
      parts[#parts + 1] = piece
    elseif err == "timeout" then
      return concat(parts), "timeout"
    else
      self.ended = err == "eof" and "eof" or "closed"
      self.conn:close()
    end
  end
  return concat(parts), self.ended
end

function Stream:close()
  self.conn:close()
end

-- Sends the request, reads status and headers (errors if none arrive), and
-- returns the stream: s.status, s.headers, s.raw_headers, s.conn.
function _M.stream(port, req)
  req = req or {}
  local res, conn = open_request(port, req, "stream")
  local s = setmetatable(res, Stream)
  s.next_piece, s.framing = body_reader(conn, res, req.method or "GET")
  s.sse_buf = ""
  s.events = 0
  return s
end

-- Splits an event into its fields: { event = name?, data = joined data lines,
-- id = id?, comments = {..} }.
function _M.parse_sse(ev)
  local out = { comments = {} }
  local data = {}
  for line in (ev .. "\n"):gmatch("(.-)\r?\n") do
    if str_sub(line, 1, 1) == ":" then
      out.comments[#out.comments + 1] = str_sub(line, 2)
    else
      local field, value = line:match("^([^:]*):? ?(.*)$")
      if field == "data" then data[#data + 1] = value
      elseif field == "event" then out.event = value
      elseif field == "id" then out.id = value
      elseif field == "retry" then out.retry = tonumber(value)
      end
    end
  end
  out.data = #data > 0 and concat(data, "\n") or nil
  return out
end

---------------------------------------------------------------------------
-- raw bytes
---------------------------------------------------------------------------

-- Sends bytes as given (a string, or a list of strings sent opts.pause
-- seconds apart) and reads until the peer closes, opts.timeout (default 5 s)
-- passes, or the received bytes match opts.until_pattern.
-- Returns response_bytes, closed (true when the peer closed or reset).
function _M.raw(port, bytes, opts)
  opts = opts or {}
  local timeout = opts.timeout or 5
  local deadline = gettime() + timeout
  local conn = _M.connect(port, timeout)
  local pieces = type(bytes) == "table" and bytes or { bytes }
  for i, piece in ipairs(pieces) do
    if i > 1 and opts.pause then sleep(opts.pause) end
    local ok = conn:send(piece, deadline)
    if not ok then break end   -- the peer may have answered and closed already
  end
  local closed = false
  while true do
    if opts.until_pattern and str_find(conn.buf, opts.until_pattern) then break end
    local ok, err = conn:fill(deadline)
    if not ok then
      closed = err == "closed"
      break
    end
  end
  local out = conn.buf
  conn:close()
  return out, closed
end

---------------------------------------------------------------------------
-- fake upstream
---------------------------------------------------------------------------

local Upstream = {}
Upstream.__index = Upstream

function Upstream:get_json(method, path)
  local res = _M.http(self.port, { method = method, path = path, timeout = 10 })
  if res.status ~= 200 then
    error(str_format("fake upstream %s %s: status %d: %s", method, path, res.status, res.body), 3)
  end
  return _M.json(res)
end

function Upstream:requests() return self:get_json("GET", "/_fake/requests") end
function Upstream:reset() return self:get_json("POST", "/_fake/reset") end
function Upstream:stats() return self:get_json("GET", "/_fake/stats") end
function Upstream:release(name) return self:get_json("POST", "/_fake/release/" .. name) end

function Upstream:stop()
  return stop_proc(self.proc, 5)
end

function Upstream:log() return _M.read_file(self.log_path) or "" end

-- Starts spec/support/fake_upstream.lua on a free port (opts.port to pick one;
-- opts.script for another fake with the same "listening PORT" line and
-- /_fake/ control paths, e.g. "spec/support/fake_providers.lua").
-- up.port, up.url ("http://127.0.0.1:PORT"), up.base_url (url .. "/v1").
function _M.start_fake_upstream(opts)
  opts = opts or {}
  local dir = opts.dir or _M.tmpdir()
  local log = dir .. "/fake_upstream-" .. tostring(#tmpdirs) .. "-" .. math.random(1e9) .. ".log"
  local proc = _M.spawn({ LUAJIT, _M.root .. "/" .. (opts.script or "spec/support/fake_upstream.lua"),
                          tostring(opts.port or 0) }, { log = log })
  local port
  local deadline = gettime() + 10
  while not port do
    local text = _M.read_file(log) or ""
    port = tonumber(text:match("^listening (%d+)\n"))
    if not port then
      if not proc:alive() then
        error("fake upstream exited before listening:\n" .. text, 2)
      end
      if gettime() > deadline then
        stop_proc(proc, 1)
        error("fake upstream did not start within 10s:\n" .. text, 2)
      end
      sleep(0.02)
    end
  end
  local up = setmetatable({ port = port, proc = proc, log_path = log }, Upstream)
  up.url = "http://127.0.0.1:" .. port
  up.base_url = up.url .. "/v1"
  return up
end

---------------------------------------------------------------------------
-- gateway
---------------------------------------------------------------------------

local Gateway = {}
Gateway.__index = Gateway

function Gateway:log() return _M.read_file(self.log_path) or "" end

-- SIGTERM (or sig) and wait up to 20 s: exit code, or nil, message when the
-- gateway did not exit (it is then killed).
function Gateway:stop(sig, timeout)
  if self.proc.code then return self.proc.code end
  self.proc:kill(sig or signal.SIGTERM)
  local code = self.proc:wait(timeout or 20)
  if code then return code end
  stop_proc(self.proc, 0)
  return nil, "gateway did not exit within " .. tostring(timeout or 20) .. "s"
end

function Gateway:substitute(text)
  return (text:gsub("%${([%w_]+)}", function(name)
    local v = self.vars[name]
    if v == nil then error("start_gateway: no value for ${" .. name .. "}", 4) end
    return tostring(v)
  end))
end

-- Rewrites the config file (same placeholders and ports), e.g. before a
-- SIGHUP or POST /admin/reload.
function Gateway:write_config(text)
  _M.write_file(self.config_path, self:substitute(text))
end

function Gateway:url(path) return "http://127.0.0.1:" .. self.port .. (path or "") end

-- Starts <bin> -c <tmpdir>/gateway.lua and waits until it is ready.
-- opts: vars {NAME = value} for ${NAME}; port / admin_port to reuse ports;
-- env; args (extra argv after -c FILE); dir; timeout (readiness, default 15).
-- ${PORT} and ${ADMIN_PORT} get free ports. Readiness is GET /ready == 200 on
-- the admin port when the config mentions ${ADMIN_PORT}, else the main port
-- accepting a connection.
function _M.start_gateway(config_text, opts)
  opts = opts or {}
  local dir = opts.dir or _M.tmpdir()
  local vars = {}
  for k, v in pairs(opts.vars or {}) do vars[k] = v end
  vars.PORT = vars.PORT or opts.port or _M.free_port()
  vars.ADMIN_PORT = vars.ADMIN_PORT or opts.admin_port or _M.free_port()

  local gw = setmetatable({
    dir = dir, vars = vars,
    port = tonumber(vars.PORT), admin_port = tonumber(vars.ADMIN_PORT),
    config_path = dir .. "/gateway.lua", log_path = dir .. "/gateway.log",
  }, Gateway)
  gw:write_config(config_text)

  local has_admin = str_find(config_text, "${ADMIN_PORT}", 1, true) ~= nil
  if not has_admin then gw.admin_port = nil end

  local bin = _M.bin()
  if not pstat.stat(bin) then
    error("gateway binary not found: " .. bin .. " (build it, or set MOONGATE_BIN)", 2)
  end
  local argv = { bin, "-c", gw.config_path }
  for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
  gw.proc = _M.spawn(argv, { log = gw.log_path, env = opts.env, cwd = opts.cwd })

  local timeout = opts.timeout or 15
  local deadline = gettime() + timeout
  while true do
    if not gw.proc:alive() then
      error(str_format("gateway exited (code %s) before becoming ready; log:\n%s",
                       tostring(gw.proc.code), gw:log()), 2)
    end
    local ready = false
    if has_admin then
      local ok, res = pcall(_M.http, gw.admin_port, { path = "/ready", timeout = 1 })
      ready = ok and res.status == 200
    else
      local sock = socket.tcp()
      sock:settimeout(1)
      ready = sock:connect("127.0.0.1", gw.port) and true or false
      sock:close()
    end
    if ready then return gw end
    if gettime() >= deadline then
      stop_proc(gw.proc, 2)
      error(str_format("gateway not ready within %gs; log:\n%s", timeout, gw:log()), 2)
    end
    sleep(0.05)
  end
end

---------------------------------------------------------------------------
-- cleanup
---------------------------------------------------------------------------

-- Stops every child still running (SIGTERM, then SIGKILL after 5 s) and
-- removes the temporary directories (kept when MOONGATE_KEEP_TMP is set, to
-- read logs after a failure).
-- The teardown every integration spec ends with: stop the gateway with
-- SIGTERM, clean up, and fail unless it exited 0 (a sanitizer or valgrind
-- report makes it exit non-zero), showing its log.
function _M.stop_and_check(gw)
  local code, err = gw:stop()
  local log = gw:log()
  _M.cleanup()
  assert(code == 0, "gateway exit code on SIGTERM: " .. tostring(code) .. " "
                    .. tostring(err) .. "\n" .. log)
end

function _M.cleanup()
  for _, p in pairs(procs) do
    if not p.code then p:kill(signal.SIGTERM) end
  end
  for _, p in pairs(procs) do stop_proc(p, 5) end
  procs = {}
  if not os.getenv("MOONGATE_KEEP_TMP") then
    for _, dir in ipairs(tmpdirs) do
      if str_sub(dir, 1, #TMP_ROOT + 1) == TMP_ROOT .. "/" then
        os.execute("rm -rf " .. shell_quote(dir))
      end
    end
  end
  tmpdirs = {}
end

-- Last line of defence when a spec forgot teardown: busted closes the Lua
-- state on exit, which runs this finaliser (only in the process that loaded
-- the module: a forked child that failed to exec must not kill anything).
local owner = unistd.getpid()
local sentinel = newproxy(true)
getmetatable(sentinel).__gc = function()
  if unistd.getpid() == owner then
    for _, p in pairs(procs) do
      if not p.code then
        signal.kill(p.pid, signal.SIGKILL)
        signal.kill(-p.pid, signal.SIGKILL)
        p:wait(1)
      end
    end
    if not os.getenv("MOONGATE_KEEP_TMP") then
      for _, dir in ipairs(tmpdirs) do
        if str_sub(dir, 1, #TMP_ROOT + 1) == TMP_ROOT .. "/" then
          os.execute("rm -rf " .. shell_quote(dir))
        end
      end
    end
  end
end
_M._sentinel = sentinel

math.randomseed(unistd.getpid() + math.floor(gettime() * 1000) % 100000)

return _M
