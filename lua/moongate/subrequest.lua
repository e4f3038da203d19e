-- moongate.subrequest — gw.http: an HTTP request a plugin makes on its own
-- (a policy service, a webhook, a token exchange), through the worker's curl
-- multi. It yields the request's coroutine until the answer is in; the event
-- loop serves everyone else meanwhile.
--
--   res, err = gw.http(url, {
--     method = "POST",                 -- default GET, or POST when there is a body
--     headers = { ["x-a"] = "b" },
--     body = "text" | { json = "table" },  -- a table is sent as JSON
--     timeout = 10,                    -- seconds (or "500ms", "5s"): the whole exchange
--     connect_timeout = 5,
--     max_body = 10485760,             -- bytes of answer kept (or "1MB"); more is an error
--     ca_file = "ca.pem", insecure = false,
--   })
--   res = { status = 200, headers = { ["content-type"] = "..." }, body = "..." }
--   err = "timeout: ..." | "connect-failure: ..." | "response too large" | ...
local ffi = require("ffi")
local mgffi = require("moongate.ffi")

local C = mgffi.C
local co_running, co_yield = coroutine.running, coroutine.yield
local concat, pairs, tostring, type = table.concat, pairs, tostring, type
local ffi_string = ffi.string

local EV_UP_HEADERS, EV_UP_DATA, EV_UP_DONE = 2, 3, 4

local _M = {}

local function seconds(v, default, what)
  if v == nil then return default end
  if type(v) == "number" and v >= 0 then return v end
  local units = require("moongate.units")
  local d = type(v) == "string" and units.duration(v)
  if not d then error("gw.http: " .. what .. " must be a duration", 3) end
  return d
end

local function bytes(v, default)
  if v == nil then return default end
  if type(v) == "number" and v >= 0 then return v end
  local units = require("moongate.units")
  local n = type(v) == "string" and units.size(v)
  if not n then error("gw.http: max_body must be a size", 3) end
  return n
end

local function read_headers(u)
  local h = {}
  local np, nl, vp, vl = mgffi.cp1, mgffi.sz1, mgffi.cp2, mgffi.sz2
  for i = 0, C.mg_up_header_count(u) - 1 do
    C.mg_up_header(u, i, np, nl, vp, vl)
    local name = ffi_string(np[0], nl[0])
    local val = ffi_string(vp[0], vl[0])
    local old = h[name]
    h[name] = old and (old .. ", " .. val) or val
  end
  return h
end

function _M.request(url, opts)
  local gw = require("gw")
  if type(url) ~= "string" or not url:match("^https?://") then
    error("gw.http: url must be an http:// or https:// URL", 2)
  end
  opts = opts or {}
  if type(opts) ~= "table" then error("gw.http: options must be a table", 2) end
  local co = co_running()
  local id = gw._waiter_new and co and gw._waiter_new(co)
  if not id then error("gw.http: only inside a request (a hook other than init)", 2) end

  local body = opts.body
  local headers = {}
  for k, v in pairs(opts.headers or {}) do headers[k:lower()] = tostring(v) end
  if type(body) == "table" then
    body = gw.json.encode(body)
    headers["content-type"] = headers["content-type"] or "application/json"
  elseif body ~= nil and type(body) ~= "string" then
    gw._waiter_done(co, id)
    error("gw.http: body must be a string or a table", 2)
  end
  local method = (opts.method or (body and "POST" or "GET")):upper()
  local ok, timeout = pcall(seconds, opts.timeout, 10, "timeout")
  local ok2, connect = pcall(seconds, opts.connect_timeout, 5, "connect_timeout")
  local ok3, max_body = pcall(bytes, opts.max_body, 10 * 1048576)
  if not (ok and ok2 and ok3) then
    gw._waiter_done(co, id)
    error(not ok and timeout or not ok2 and connect or max_body, 2)
  end
  local hs = {}
  for k, v in pairs(headers) do hs[#hs + 1] = k .. ": " .. v .. "\r\n" end
  hs = concat(hs)
  body = body or ""

  local err = mgffi.errbuf
  local u = C.mg_up_start(nil, id, method, url, hs, #hs, body, #body, connect, timeout, 0,
    opts.ca_file, opts.insecure and 1 or 0, err, 256)
  if u == nil then
    gw._waiter_done(co, id)
    return nil, "error: " .. ffi_string(err)
  end

  local res, parts, size, failure = nil, {}, 0, nil
  while true do
    local kind, _, arg, data = co_yield()
    if kind == EV_UP_HEADERS then
      res = { status = arg, headers = read_headers(u) }
      C.mg_up_stream(u)
    elseif kind == EV_UP_DATA then
      size = size + #data
      if size > max_body then
        failure = "response too large (max_body " .. max_body .. " bytes)"
        break
      end
      parts[#parts + 1] = data
    elseif kind == EV_UP_DONE then
      if arg ~= 0 then failure = tostring(data) .. ": " .. ffi_string(C.mg_up_errmsg(u)) end
      break
    end
  end
  C.mg_up_free(u)
  gw._waiter_done(co, id)
  if failure then return nil, failure end
  res.body = concat(parts)
  return res
end

return _M
