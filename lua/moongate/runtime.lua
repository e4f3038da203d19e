-- moongate.runtime — where C hands over to Lua.
--
-- C calls two functions here: init() once, and event() for every queued event
-- (runtime/lbridge.c). Each client request runs in its own coroutine through
-- the plugin chain (DESIGN.md's pipeline):
--
--   on_route ▶ on_request ▶ per attempt: on_balance ▶ on_upstream_request ▶
--   upstream ▶ on_response / on_error ▶ body (on_chunk) ▶ on_log
--
-- A plugin error anywhere is caught here: a 500 in the client's format if
-- nothing was sent yet (a cut connection otherwise), logged with the plugin's
-- name; the next request is served normally.
local ffi = require("ffi")
local gw = require("gw")
local mgffi = require("moongate.ffi")
local config = require("moongate.config")
local errors = require("moongate.errors")
local metrics = require("moongate.metrics")
local plugins = require("moongate.plugins")
local sse = require("moongate.sse")
local upstream = require("moongate.upstream")
local tls = require("moongate.tls")

local C = mgffi.C
local co_create, co_resume, co_status, co_running = coroutine.create, coroutine.resume,
  coroutine.status, coroutine.running
local ffi_string = ffi.string
-- Tables filled key by key on every request are made at their final size:
-- growing one rehashes it at every power of two (LuaJIT's rehash was the
-- largest single cost of a request in the profile).
local tnew = require("table.new")
local concat, format, getmetatable, ipairs, pairs, pcall, tostring, type =
  table.concat, string.format, getmetatable, ipairs, pairs, pcall, tostring, type
local str_find, str_lower, str_sub = string.find, string.lower, string.sub
local raw_next = require("moongate.iter").raw_next   -- hot loops (lua/moongate/iter.lua)

local _M = { _VERSION = "0.1" }

local EV_REQUEST, EV_WAKE, EV_RELOAD = 1, 7, 8
local APP_GATEWAY, APP_ADMIN, APP_MOCK = 1, 2, 3

local state = {
  mode = nil,          -- "run" (the main thread) | "worker" | "mock" | "check"
  opts = nil,          -- what init() was given: home, config path
  cfg = nil,           -- the running config (run and worker)
  generation = 0,      -- how many reloads it has been through
  mock_opts = nil,     -- mock mode
  ready = false,
}
_M.state = state

-- Requests run in pooled coroutines: creating one per request costs an
-- allocation and GC work on every request. Each job gets a fresh waiter id,
-- so an event left over from an earlier job can never wake a later one.
local waiters = {}     -- waiter id -> coroutine (while it runs a job)
local co_waiter = {}   -- coroutine -> its current waiter id
local co_ctx = {}      -- coroutine -> ctx of its current request (for gw.log)
local pool, npool = {}, 0
local next_waiter = 0
local JOB_DONE = {}

-- A job may wait on something of its own (gw.sleep, gw.http) while events for
-- its main waiter keep coming (a stream being read in on_chunk): it takes a
-- nested waiter id, and events for the main one wait in a backlog until the
-- nested wait is over.
local awaiting = {}    -- coroutine -> the nested waiter id it waits on
local backlog = {}     -- main waiter id -> { {kind, ptr, arg, data}, ... }

gw._waiter_of = function(co) return co_waiter[co] end

function gw._waiter_new(co)
  if not co_waiter[co] then return nil end
  next_waiter = next_waiter + 1
  waiters[next_waiter] = co
  awaiting[co] = next_waiter
  return next_waiter
end

function gw._waiter_done(co, id)
  waiters[id] = nil
  awaiting[co] = nil
end

local function co_main(fn, a, b)
  while true do
    fn(a, b)
    fn, a, b = coroutine.yield(JOB_DONE)
  end
end

-- ====================== coroutines ======================

local function resume(co, ...)
  local prev = gw._current
  gw._current = co_ctx[co]
  local ok, r = co_resume(co, ...)
  gw._current = prev
  if r == JOB_DONE and ok then
    waiters[co_waiter[co]] = nil
    backlog[co_waiter[co]] = nil
    co_waiter[co] = nil
    co_ctx[co] = nil
    npool = npool + 1
    pool[npool] = co
    return
  end
  if not ok then
    -- the pipeline catches plugin errors; reaching here is a runtime bug
    local msg = "runtime error: " .. tostring(r)
    C.mg_log_write(0, msg, #msg)
  end
  if co_status(co) == "dead" then
    waiters[co_waiter[co]] = nil
    backlog[co_waiter[co]] = nil
    co_waiter[co] = nil
    co_ctx[co] = nil
    return
  end
  -- back from a nested wait: hand over what came for the main waiter meanwhile
  local id = co_waiter[co]
  local q = backlog[id]
  if q and not awaiting[co] then
    local e = table.remove(q, 1)
    if #q == 0 then backlog[id] = nil end
    return resume(co, e[1], e[2], e[3], e[4])
  end
end

local function spawn(fn, a, b)
  next_waiter = next_waiter + 1
  local co
  if npool > 0 then
    co = pool[npool]
    pool[npool] = nil
    npool = npool - 1
  else
    co = co_create(co_main)
  end
  waiters[next_waiter] = co
  co_waiter[co] = next_waiter
  resume(co, fn, a, b)
end

-- event(kind, waiter, ptr, arg, data): one queued event from C
function _M.event(kind, waiter, ptr, arg, data)
  if kind == EV_REQUEST then
    return spawn(_M.serve, ffi.cast("mg_req_t *", ptr), arg)  -- ptr: address as a number (JIT-friendly)
  end
  local co = waiters[waiter]
  if not co then
    if kind == EV_RELOAD then return _M.on_reload(arg) end
    return
  end
  local nested = awaiting[co]
  if nested and nested ~= waiter then
    local q = backlog[waiter]
    if not q then
      q = {}
      backlog[waiter] = q
    end
    q[#q + 1] = { kind, ptr, arg, data }
    return
  end
  resume(co, kind, ptr, arg, data)
end
_M.spawn = spawn

-- ====================== the request ======================

local HOP = {  -- never forwarded in either direction (RFC 9110 §7.6.1) or owned by us
  connection = true, ["keep-alive"] = true, ["proxy-connection"] = true, te = true,
  trailer = true, ["transfer-encoding"] = true, upgrade = true, ["content-length"] = true,
  host = true, expect = true,
}
local NOT_UPSTREAM = {  -- the client's credentials and our own framing stay here
  authorization = true, ["x-api-key"] = true, ["api-key"] = true, ["proxy-authorization"] = true,
  ["accept-encoding"] = true, cookie = true,
}
local NOT_DOWNSTREAM = {
  ["content-encoding"] = true, ["set-cookie"] = true, ["x-request-id"] = true, date = true,
  server = true, ["alt-svc"] = true,
}

-- The headers that go to the provider: the client's, less hop-by-hop ones
-- (and those its Connection header names), less its credentials, with the
-- provider's own on top.
local function upstream_headers(client, own)
  local drop = nil
  local conn = client.connection
  if conn then
    drop = {}
    for name in conn:gmatch("[^,%s]+") do drop[str_lower(name)] = true end
  end
  local out = tnew(0, 16)
  for k, v in raw_next, client do
    if not HOP[k] and not NOT_UPSTREAM[k] and not (drop and drop[k]) then out[k] = v end
  end
  for k, v in raw_next, own do out[str_lower(k)] = v end
  return out
end

-- Endpoints whose body must be JSON (SPEC §3: "400 bad JSON" applies there).
local JSON_PATHS = {
  ["/v1/chat/completions"] = true, ["/v1/completions"] = true, ["/v1/embeddings"] = true,
  ["/v1/messages"] = true, ["/v1/messages/count_tokens"] = true,
}

-- ctx.request.json: the body decoded on first use (false when it is not JSON)
local REQUEST_MT = {
  __index = function(t, k)
    if k ~= "json" then return nil end
    local doc = false
    if rawget(t, "is_json") ~= false then
      doc = gw.json.decode(t.body)
      if type(doc) ~= "table" then doc = false end
    end
    rawset(t, "json", doc)
    return doc
  end,
}

local json_info = ffi.new("mg_json_info_t")

local function read_request(r)
  local sz, np, nl, vp, vl = mgffi.sz1, mgffi.cp1, mgffi.sz1, mgffi.cp2, mgffi.sz2
  local method = ffi_string(C.mg_req_method(r, sz), sz[0])
  local target = ffi_string(C.mg_req_target(r, sz), sz[0])
  local nh = C.mg_req_header_count(r)
  local headers = tnew(0, nh)
  for i = 0, nh - 1 do
    C.mg_req_header(r, i, np, nl, vp, vl)
    local name = ffi_string(np[0], nl[0])
    local val = ffi_string(vp[0], vl[0])
    local old = headers[name]
    headers[name] = old and (old .. ", " .. val) or val
  end
  local body = ffi_string(C.mg_req_body(r, sz), sz[0])
  local q = str_find(target, "?", 1, true)
  -- a constructor, not stores into an empty table: its keys come pre-hashed from the template
  -- (the pipeline adds model, stream, model_at, model_end, model_body)
  local req = {
    method = method, target = target,
    path = q and str_sub(target, 1, q - 1) or target,
    query = q and str_sub(target, q + 1) or nil,
    headers = headers, body = body,
    remote = ffi_string(C.mg_req_remote(r)),
    http_minor = C.mg_req_http_minor(r),
    is_json = false,
  }
  return setmetatable(req, REQUEST_MT)
end

-- Writes a whole answer (status, body string, headers table) to the client.
local function send_whole(ctx, status, body, headers)
  local r = ctx._req
  body = body or ""
  local h = headers or {}
  h["x-request-id"] = ctx.id
  -- the Anthropic SDK reads its request id from request-id
  if ctx.format == "anthropic" then h["request-id"] = ctx.id end
  local hs = upstream.serialize_headers(h)
  C.mg_resp_start(r, status, hs, #hs, #body)
  if #body > 0 then C.mg_resp_write(r, body, #body) end
  C.mg_resp_finish(r, 0)
  ctx.response = ctx.response or {}
  ctx.response.status = status
end

local function send_respond(ctx, rv)
  local body, h = rv.body, {}
  for k, v in pairs(rv.headers or {}) do h[str_lower(k)] = v end
  if type(body) == "table" then
    body = gw.json.encode(body)
    h["content-type"] = h["content-type"] or "application/json"
  end
  if ctx.target then h["x-moongate-target"] = h["x-moongate-target"] or ctx.target.name end
  -- a request that reached the attempt loop says how many it made, even none (503 no target)
  if ctx.attempt and (ctx.attempt > 0 or ctx.max_attempts) then
    h["x-moongate-attempts"] = h["x-moongate-attempts"] or tostring(ctx.attempt)
  end
  send_whole(ctx, rv.status, body and tostring(body) or "", h)
end

local function fail(ctx, status, message, code)
  send_respond(ctx, errors.respond(ctx, status, message, code))
end

-- A hook returned something: gw.respond(...) is the answer; gw.retry() is
-- only meaningful in on_response and on_error, so elsewhere it is a plugin bug.
local function answer(ctx, rv, phase)
  if rv == gw.RETRY then
    gw.log("error", "plugin " .. tostring(ctx._last_plugin) .. " returned gw.retry() from " ..
      phase .. "; only on_response and on_error may retry")
    return fail(ctx, 500, "internal error in a plugin", "internal_error")
  end
  return send_respond(ctx, rv)
end

-- One body piece through the on_chunk plugins to the client.
local function emit_chunk(chain, ctx, r, piece)
  local out_chunk = plugins.chunk(chain, ctx, piece)
  if out_chunk and #out_chunk > 0 then C.mg_resp_write(r, out_chunk, #out_chunk) end
end

-- Output of a decoder (or the raw bytes) through on_chunk: whole SSE events
-- on a stream, the bytes as they come otherwise.
local function emit(chain, ctx, r, splitter, data, plain)
  if not data or data == "" then return end
  if plain then
    C.mg_resp_write(r, data, #data)
  elseif splitter then
    local events = splitter:feed(data)
    for i = 1, #events do emit_chunk(chain, ctx, r, events[i]) end
  else
    emit_chunk(chain, ctx, r, data)
  end
end

local BUFFER_CAP = 32 * 1048576

-- The whole upstream body (for decoders that translate whole answers).
-- -> text | nil, kind, message
local function read_all(att)
  att:stream()
  local first, parts, n, size = nil, nil, 0, 0   -- the usual answer comes in one piece: no table
  while true do
    local data, kind, msg = att:read()
    if not data then
      if kind then return nil, kind, msg end
      if n <= 1 then return first or "" end
      return concat(parts, "", 1, n)
    end
    size = size + #data
    if size > BUFFER_CAP then return nil, "malformed", "answer larger than 32 MB" end
    n = n + 1
    if n == 1 then
      first = data
    else
      if n == 2 then parts = { first } end
      parts[n] = data
    end
  end
end

-- what an absent table option reads as (backend.retry, backend.timeout), never written
local NONE = setmetatable({}, { __newindex = function() error("moongate: NONE is read-only", 2) end })

-- An attempt failed before anything reached the client: on_error judges it.
-- -> what on_error returned (gw.RETRY: try again; nil: give up)
local function attempt_error(ctx, chain, kind, msg)
  ctx.error = { kind = kind, message = msg, target = ctx.target.name }
  local tried = ctx.tried
  if not tried then tried = {}; ctx.tried = tried end
  tried[#tried + 1] = ctx.target.name .. " (" .. tostring(kind) .. ")"
  metrics.add("moongate_attempts_total", metrics.attempt_labels(ctx.target.name, kind), 1)
  gw.log("warn", "attempt", ctx.attempt, "to", ctx.target.name, "failed:", kind, msg)
  return plugins.run(chain, "on_error", ctx, ctx.error)
end

-- Starts the answer to the client: status and headers, once.
local function start_answer(ctx, status, out, length)
  out["x-request-id"] = ctx.id
  if ctx.format == "anthropic" then out["request-id"] = ctx.id end
  out["x-moongate-target"] = ctx.target.name
  out["x-moongate-attempts"] = tostring(ctx.attempt)
  local hs = upstream.serialize_headers(out)
  ctx.response.headers_sent = true
  ctx.response.client_status = status
  return C.mg_resp_start(ctx._req, status, hs, #hs, length) == 0
end

-- The provider failed after bytes reached the client: say so in the
-- stream's own format, then cut the connection (never a clean end).
-- perr: the provider's own error event (the decoder's provider_error): the client gets it as it
-- came when it is in the client's format already (raw), else its message and type translated.
local function fail_midway(ctx, r, sse_out, kind, msg, perr)
  gw.log("warn", "upstream", ctx.target.name, "failed mid-response:", kind, msg)
  ctx.error = { kind = kind, message = msg, target = ctx.target.name, midway = true }
  if sse_out then
    local ev
    if perr and perr.raw then
      ev = perr.raw
    elseif perr then
      ev = errors.stream_event(ctx.format, perr.message, perr.status)
    elseif kind == "timeout" then
      -- silent past stream_idle (or the attempt's timeout): typed as the 504 it would have been
      ev = errors.stream_event(ctx.format, "upstream " .. ctx.target.name .. " timed out mid-stream", 504,
        "upstream_timeout")
    else
      ev = errors.stream_event(ctx.format, "upstream " .. ctx.target.name .. " failed: " .. tostring(kind))
    end
    C.mg_resp_write(r, ev, #ev)
  end
  C.mg_resp_finish(r, 1)
end

-- curl decodes a compressed answer: its Content-Length is not what we send
local function headers_encoded(ctx)
  local h = ctx.response and ctx.response.upstream_headers
  return h and h["content-encoding"] ~= nil
end

local function is_sse(headers)
  return str_find(headers["content-type"] or "", "text/event-stream", 1, true) ~= nil
end

-- Forwards an accepted attempt's answer. Returns "retry" when it failed
-- before any byte reached the client and on_error asked for another
-- attempt, a gw.respond value to send instead, or nil when done.
local function forward(ctx, chain, att, status, out)
  local r = ctx._req
  local dec = ctx.upstream.decoder
  local cstatus = status
  local up_length = tonumber(out["content-length"])
  out["content-length"] = nil   -- ours to set, from what we send
  if dec then cstatus = dec:head(status, out) or status end

  -- a decoder that needs the whole answer: nothing is sent before it is in
  if dec and dec.buffer then
    local text, kind, msg = read_all(att)
    local body, derr
    if text then
      body, derr = dec:body(text)
      if not body then kind, msg = "malformed", tostring(derr or "the provider's answer could not be read") end
    end
    if not body then
      if kind == "client-closed" then return end
      local rv = attempt_error(ctx, chain, kind, msg)
      if rv == gw.RETRY then return "retry" end
      return rv
    end
    -- on_chunk sees the whole body before the headers go out, so it may add headers
    if #chain.on_chunk > 0 then
      body = plugins.chunk(chain, ctx, body) or ""
    end
    if not start_answer(ctx, cstatus, out, #body) then return end
    if #body > 0 then C.mg_resp_write(r, body, #body) end
    C.mg_resp_finish(r, 0)
    return
  end

  local stream_in = is_sse(out)
  local through_lua = dec ~= nil or #chain.on_chunk > 0
  local first, kind, msg
  if stream_in or through_lua then
    -- hold the headers until the first bytes: a stream that dies before
    -- its first event fails over like any other attempt
    att:stream()
    first, kind, msg = att:read()
    if not first and kind then
      if kind == "client-closed" then return end
      local rv = attempt_error(ctx, chain, kind, msg)
      if rv == gw.RETRY then return "retry" end
      if rv then return rv end
      if ctx.error and ctx.error.kind ~= nil then kind = ctx.error.kind end   -- as on_error classified it
      -- nothing left to try: the client learns it with a status, not a cut stream
      return errors.respond(ctx, kind == "timeout" and 504 or 502, "upstream " .. ctx.target.name ..
        (kind == "timeout" and " timed out" or (" failed: " .. tostring(kind))),
        kind == "timeout" and "upstream_timeout" or "upstream_error")
    end
  end

  local sse_out = is_sse(out)
  local length = -1
  if not through_lua and not stream_in and not headers_encoded(ctx) and up_length then
    length = up_length
  end
  if not start_answer(ctx, cstatus, out, length) then
    att:close()
    return
  end

  local ok
  if not through_lua then
    if first then C.mg_resp_write(r, first, #first) end
    if first ~= nil or not stream_in then
      att:pipe()
      ok, kind, msg = att:wait_done()
    else
      ok = true   -- the stream ended before any byte
    end
  else
    -- plain: no on_chunk plugin wants this answer's chunks (they go to the client as they come)
    local plain = #chain.on_chunk == 0 or not plugins.wants_chunks(chain, ctx)
    local splitter = sse_out and not plain and sse.new() or nil
    -- with on_chunk plugins the decoder takes the provider's events one at a time: what a plugin
    -- sees of ctx.usage for an event is what was learnt up to it, not the rest of the read (a
    -- hard budget would otherwise cut the events before the one that crossed it)
    local by_event = splitter and dec and stream_in and sse.new() or nil
    -- a same-format stream nobody but the decoder reads: between the events Lua must see, the
    -- text deltas go to the client from C (att:relay, runtime/sse.c)
    local relay = plain and dec ~= nil and att.relay ~= nil
    local data = first
    local res = ctx.response
    while data do
      if by_event then
        local evs = by_event:feed(data)
        for i = 1, #evs do
          emit(chain, ctx, r, splitter, dec:chunk(evs[i]), plain)
          if res.abort or dec.failed then break end
        end
        data = nil
      elseif dec then
        data = dec:chunk(data)
      end
      emit(chain, ctx, r, splitter, data, plain)
      -- a plugin ended the answer (a hard budget crossed): it wrote its own
      -- last words; the provider is stopped and the connection cut
      if res.abort then
        att:close()
        C.mg_resp_finish(r, 1)
        return
      end
      -- the provider's error event, or garbage: nothing after it is read or sent on
      if dec and dec.failed then break end
      local fmt, pending
      if relay then fmt, pending = dec:relay() end
      local relaying = fmt ~= nil and att:relay(fmt, pending)
      if relaying then dec:relay_taken() end
      data, kind, msg = att:read()
      if relaying then dec:relayed(att:relayed()) end
    end
    if dec and dec.failed then
      att:close()
      ok, msg = false, tostring(dec.failed)
      kind = dec.provider_error and "provider-error" or "malformed"
    else
      ok = not kind
      local left = ok and by_event and by_event:finish()
      if left then emit(chain, ctx, r, splitter, dec:chunk(left), plain) end
      if ok and dec and dec.failed then
        ok, kind, msg = false, dec.provider_error and "provider-error" or "malformed", tostring(dec.failed)
      elseif ok and dec then
        local tail, ferr = dec:finish()
        emit(chain, ctx, r, splitter, tail, plain)
        if ferr then
          ok, kind, msg = false, dec.provider_error and "provider-error" or "malformed", tostring(ferr)
        end
      end
      local rest = splitter and splitter:finish()
      if rest then emit_chunk(chain, ctx, r, rest) end
    end
  end
  if ok then
    C.mg_resp_finish(r, 0)
  elseif kind ~= "client-closed" then
    fail_midway(ctx, r, sse_out, kind, msg, dec and dec.provider_error)
  end
end

-- The attempt loop: balance, build the upstream request, try, judge, forward.
-- Attempts count across all groups; timeout.total bounds the time until an
-- answer starts, over every attempt.
local function proxy(ctx, chain)
  local backend = ctx.backend
  local retry = backend and backend.retry or NONE
  local btimeout = backend and backend.timeout or NONE
  local ntargets = 0
  local groups = backend and backend.groups or NONE
  for i = 1, #groups do ntargets = ntargets + #groups[i].targets end
  local max_attempts = retry.attempts or (ntargets < 5 and ntargets or 5)
  if max_attempts < 1 then max_attempts = 1 end
  ctx.max_attempts = max_attempts
  ctx.tried = nil   -- "target (outcome)" per failed attempt, for the final error (made on the first)
  local deadline = btimeout.total and (ctx.timings.start + btimeout.total) or nil
  -- for plugins (the backoff): the same moment on the wall clock of gw.now()
  ctx.deadline = deadline and (gw.now() + (deadline - C.mg_monotonic())) or nil
  local last_err
  -- a retryable answer stays open (its body waits in the transfer, unread) until the next
  -- attempt has a target: when none is left, that answer is what the client gets (SPEC §3:
  -- the last attempt's upstream status and error), not a made-up 502
  local held

  while ctx.attempt < max_attempts do
    if deadline and ctx.attempt > 0 and C.mg_monotonic() >= deadline then
      last_err = { kind = "timeout", target = last_err and last_err.target or "", total = true }
      break
    end
    local last_target, last_provider = ctx.target, ctx.provider
    ctx.attempt = ctx.attempt + 1
    ctx.target, ctx.provider, ctx.response, ctx.error = nil, nil, nil, nil
    local rv = plugins.run(chain, "on_balance", ctx)
    local alive = C.mg_req_alive(ctx._req) == 1
    if held and (rv or ctx.target or not alive) then
      held.att:close()
      held = nil
    end
    if rv then return answer(ctx, rv, "on_balance") end
    -- a client that left while the request waited (a retry's backoff, the backend's queue) gets
    -- no attempt: nothing is sent upstream for nobody, and the logs say 499 for the last target
    -- tried (the balancer's hold on the new one is released in its on_log)
    if not alive then
      ctx.attempt = ctx.attempt - 1
      ctx.target, ctx.provider = last_target or ctx.target, last_provider or ctx.provider
      return
    end
    if not ctx.target then
      ctx.attempt = ctx.attempt - 1
      if held then
        ctx.target, ctx.provider, ctx.upstream, ctx.response = held.target, held.provider, held.upstream,
          held.response
        local att = held.att
        held = nil
        local res = forward(ctx, chain, att, ctx.response.status, ctx.response.headers)
        att:close()
        if res == "retry" then
          last_err = ctx.error
          break
        end
        if res then return answer(ctx, res, "on_error") end
        return
      end
      if last_err then break end
      return fail(ctx, 503, ctx.vars.no_target_reason or ("no target is available for backend " ..
        tostring(backend and backend.name)), "no_target")
    end

    local req = ctx.request
    -- ctx.upstream.headers holds what the provider adds (credentials, its
    -- own headers); the client's headers are merged under them afterwards,
    -- so plugins may change either in on_upstream_request
    local up = tnew(0, 16)   -- the provider plugin adds url, timeouts, decoder, ...
    up.method, up.path, up.query, up.body = req.method, req.path, req.query, req.body
    up.headers = tnew(0, 8)
    ctx.upstream = up
    rv = plugins.run(chain, "on_upstream_request", ctx)
    if rv then return answer(ctx, rv, "on_upstream_request") end
    local spec = ctx.upstream
    spec.headers = upstream_headers(req.headers, spec.headers)
    -- what is left of timeout.total bounds this attempt until its first byte
    local first_byte = btimeout.ttfb
    if deadline then
      local left = deadline - C.mg_monotonic()
      if left < 0.001 then left = 0.001 end
      if not first_byte or left < first_byte then first_byte = left end
      if spec.timeout and spec.timeout > left and not req.stream then spec.timeout = left end
    end
    spec.first_byte = first_byte

    local att, kind, msg
    if spec.mock then
      att = upstream.start_mock(ctx, spec)
    elseif spec.url then
      att, kind, msg = upstream.start_real(ctx, spec, ctx._waiter, ctx._req)
      if att and (first_byte or (req.stream and btimeout.stream_idle)) then
        C.mg_up_watch(att.u, first_byte or 0, req.stream and btimeout.stream_idle or 0)
      end
    else
      return fail(ctx, 502, "target " .. ctx.target.name .. " has no upstream URL", "bad_target")
    end

    local status, headers
    if att then
      status, kind, msg = att:wait_headers()
      if status then headers = kind end
      ctx.timings.ttfb = att.ttfb
    end
    if not status then
      if att then att:close() end
      if kind == "client-closed" then return end
      last_err = { kind = kind, message = msg, target = ctx.target.name }
      rv = attempt_error(ctx, chain, kind, msg)
      -- on_error may classify: the kind it left is what the client's status says (504 for a timeout)
      if ctx.error and ctx.error.kind ~= nil then last_err.kind = ctx.error.kind end
      if rv == gw.RETRY then goto continue end
      if rv then return answer(ctx, rv, "on_error") end
      break
    end

    do
      local out = tnew(0, 16)   -- a provider's usual 5-10 headers and our own 3-4
      for k, v in raw_next, headers do
        if not HOP[k] and not NOT_DOWNSTREAM[k] then out[k] = v end
      end
      if headers["content-length"] then out["content-length"] = headers["content-length"] end
      local resp = tnew(0, 8)
      resp.status, resp.headers, resp.upstream_headers = status, out, headers
      ctx.response = resp
      metrics.add("moongate_attempts_total", metrics.attempt_labels(ctx.target.name, status), 1)
      rv = plugins.run(chain, "on_response", ctx)
      if rv == gw.RETRY and ctx.attempt < max_attempts and
         not (deadline and C.mg_monotonic() >= deadline) then
        if held then held.att:close() end
        held = { att = att, target = ctx.target, provider = ctx.provider, upstream = ctx.upstream,
                 response = ctx.response }
        last_err = { kind = "status", status = status, target = ctx.target.name }
        if not ctx.tried then ctx.tried = {} end
        ctx.tried[#ctx.tried + 1] = ctx.target.name .. " (" .. status .. ")"
        goto continue
      end
      if rv and rv ~= gw.RETRY then
        att:close()
        return answer(ctx, rv, "on_response")
      end

      -- the answer goes to the client from here on (a stream: from its first byte)
      local res = forward(ctx, chain, att, status, out)
      att:close()
      if res == "retry" then
        last_err = ctx.error
        goto continue
      end
      if res then return answer(ctx, res, "on_error") end
      return
    end
    ::continue::
  end

  if held then held.att:close() end
  -- every attempt failed: the client learns which targets failed and how;
  -- libcurl's own messages (addresses of internal providers) stay in the log
  local e = last_err or {}
  local tried = ctx.tried and #ctx.tried > 1 and ("; tried " .. concat(ctx.tried, ", ")) or ""
  if e.kind == "timeout" then
    return fail(ctx, 504, (e.total and ("timeout.total of backend " .. tostring(backend.name) ..
      " ran out after " .. ctx.attempt .. " attempt(s)") or
      ("upstream " .. tostring(e.target) .. " timed out")) .. tried, "upstream_timeout")
  end
  return fail(ctx, 502, "upstream " .. tostring(e.target) .. " failed: " .. tostring(e.kind) .. tried,
    "upstream_error")
end

local ledger = require("moongate.ledger")
local record = require("moongate.record")

local rec = ffi.new("mg_record_t")   -- filled afresh for every request (one coroutine at a time)

local function write_records(ctx, status, wall, dur, r)
  record.fill(rec, ctx, status, wall, dur, C.mg_resp_bytes(r))
  ledger.record(rec, ctx.config)
  if state.access_log then C.mg_record_access(rec) end
end

local function log_request(ctx)
  local r = ctx._req
  local status = C.mg_resp_status(r)
  -- nginx's convention: 499 for a client that left before its answer began
  if status == 0 then status = 499 end
  local now = ctx.timings.done or C.mg_monotonic()
  local dur = now - ctx.timings.start
  ctx.timings.done = now
  local route = ctx.route and ctx.route.name or ""
  local backend = ctx.backend and ctx.backend.name or ""
  local target = ctx.target and ctx.target.name or ""
  metrics.add("moongate_requests_total", metrics.request_labels(route, backend, target, status), 1)
  metrics.observe("moongate_request_duration_seconds", "", dur)
  if ctx.timings.ttfb then metrics.observe("moongate_upstream_ttfb_seconds", "", ctx.timings.ttfb) end
  -- one ledger record and one access log line, both JSON (moongate.record, runtime/record.c);
  -- an error here must not keep the request from being released
  local ok, err = pcall(write_records, ctx, status, C.mg_now(), dur, r)
  if not ok then gw.log("error", "ledger/access log: " .. tostring(err)) end
end

local function pipeline(ctx)
  local cfg = ctx.config
  local req = ctx.request
  -- Validate a JSON body and read its model and stream before routing (routes
  -- match on the model); ctx.request.json is decoded only if a plugin reads it,
  -- and the raw text is what goes upstream.
  local must_be_json = JSON_PATHS[req.path] and req.method == "POST"
  if req.method == "POST" then
    local body = req.body
    local scan = C.mg_json_scan(body, #body, json_info)
    if scan == 0 then
      req.is_json = true
      if json_info.escaped_keys ~= 0 then
        local doc = req.json   -- a key written with escapes may be "model": decode
        if type(doc.model) == "string" then req.model = doc.model end
        req.stream = doc.stream == true
      else
        local off = tonumber(json_info.model_off)
        if off >= 0 then
          local stop = off + tonumber(json_info.model_len)
          local model = str_sub(body, off + 1, stop)
          -- where the value sits (1-based positions of its two quotes): the
          -- provider's model replacement splices there without a second scan
          req.model_at, req.model_end = off, stop + 1
          req.model_body = body   -- the text those positions are in (a plugin may replace the body)
          if json_info.model_escaped ~= 0 then model = gw.json.decode('"' .. model .. '"') end
          req.model = model
        end
        req.stream = json_info.stream ~= 0
      end
    elseif must_be_json then
      return fail(ctx, 400, scan == -2 and "request body nests deeper than 512 levels" or
        "request body is not valid JSON", "invalid_json")
    end
  end
  local chain = plugins.global(cfg)
  local rv = plugins.run(chain, "on_route", ctx)
  if rv then return answer(ctx, rv, "on_route") end
  if not ctx.route then
    return fail(ctx, 404, "no route for " .. req.method .. " " .. req.path, "no_route")
  end
  -- a rewrite may have made this a JSON endpoint (e.g. /openai -> /v1/chat/completions)
  if not req.is_json and JSON_PATHS[req.path] and req.method == "POST" then
    return fail(ctx, 400, "request body is not valid JSON", "invalid_json")
  end
  chain = plugins.chain_for(cfg, ctx.route, ctx.backend)
  ctx._chain = chain
  rv = plugins.run(chain, "on_request", ctx)
  if rv then return answer(ctx, rv, "on_request") end
  if not ctx.backend then
    return fail(ctx, 404, "route " .. ctx.route.name .. " has no backend for this request", "no_backend")
  end
  return proxy(ctx, chain)
end

local idbuf = ffi.new("char[33]")

local function serve_gateway(r, waiter)
  local req = read_request(r)
  local rid = req.headers["x-request-id"]
  if not rid or rid == "" or #rid > 200 then
    C.mg_request_id(idbuf)
    rid = ffi_string(idbuf, 32)
  end
  local ctx = tnew(0, 32)   -- ~21 keys on a plain request (the attempt loop and plugins add most)
  ctx.id, ctx.request, ctx.format, ctx.attempt = rid, req, errors.format_of(req.path, req.headers), 0
  local timings = tnew(0, 4)
  timings.start = C.mg_req_start(r)
  ctx.timings, ctx.vars, ctx.config = timings, tnew(0, 8), state.cfg
  ctx._req, ctx._waiter = r, waiter
  co_ctx[co_running()] = ctx
  gw._current = ctx
  metrics.add("moongate_inflight", "", 1)

  local ok, err = pcall(pipeline, ctx)
  if not ok then
    local who = ctx._plugin and ("plugin " .. ctx._plugin) or "the gateway"
    gw.log("error", who .. " failed: " .. tostring(err))
    if C.mg_resp_status(r) == 0 then
      send_whole(ctx, 500, errors.body(ctx.format, 500, "internal error in " ..
        (ctx._plugin and "a plugin" or "the gateway"), "internal_error"),
        { ["content-type"] = "application/json" })
    else
      C.mg_resp_finish(r, 1)
    end
  elseif C.mg_resp_status(r) == 0 and C.mg_req_alive(r) == 1 then
    fail(ctx, 500, "no response was produced", "internal_error")
  end
  metrics.add("moongate_inflight", "", -1)
  ctx._plugin = nil
  ctx.timings.done = C.mg_monotonic()   -- for on_log (docs/plugins.md)
  local chain = ctx._chain or plugins.global(ctx.config)
  if #chain.on_log > 0 then
    local lok, lerr = pcall(plugins.run, chain, "on_log", ctx)
    if not lok then gw.log("error", "plugin " .. tostring(ctx._plugin) .. " failed in on_log: " .. tostring(lerr)) end
  end
  log_request(ctx)
  C.mg_req_release(r)
end

-- ====================== admin listener ======================

-- the admin token compared in time that depends only on its length (runtime/crypto.c)
local function constant_time_eq(a, b)
  return #a == #b and C.mg_const_eq(a, b, #a) == 1
end

local function admin_authorized(req, token)
  local auth = req.headers["authorization"] or ""
  local given = auth:match("^[Bb]earer%s+(.+)$")
  return given ~= nil and token ~= nil and constant_time_eq(given, token)
end

-- (gw.json writes an empty list marked with gw.json.array_mt as [])
local function admin_json(ctx, status, doc)
  send_whole(ctx, status, assert(gw.json.encode(doc)), { ["content-type"] = "application/json" })
end

-- /admin/* endpoints: path -> method -> handler(ctx, req)
local ADMIN = {
  ["/admin/config"] = {
    GET = function(ctx)
      local redact = require("moongate.redact")
      admin_json(ctx, 200, { generation = state.generation, config = redact.config(state.cfg) })
    end,
  },
  ["/admin/reload"] = {
    POST = function(ctx)
      local ok, status, errs = _M.reload("POST /admin/reload")
      if ok then
        setmetatable(status, gw.json.array_mt)
        return admin_json(ctx, 200, { status = "reloaded", generation = state.generation,
          restart_required = status })
      end
      -- in the error log too, as a failed SIGHUP reload is
      gw.log("error", "POST /admin/reload: config not reloaded (" .. status .. "); the running config is " ..
        "unchanged:\n  " .. concat(errs, "\n  "))
      admin_json(ctx, status, { error = {
        message = status == 400 and ("config not reloaded: " .. #errs .. " error(s); the running config is unchanged")
          or (status == 500 and "config reloaded on some workers only" or errs[1]),
        errors = setmetatable(errs, gw.json.array_mt) } })
    end,
  },
}

-- moongate_target_healthy is read from gw.shared when scraped: evictions
-- end by themselves, with nobody to tell the registry.
local function health_gauges(cfg)
  if not cfg or not cfg.backends then return end
  local health = require("moongate.health")
  local now = gw.now()
  metrics.hide_all("moongate_target_healthy")   -- a target a reload removed goes with it
  for bname, b in pairs(cfg.backends) do
    local pol = health.policy(b)
    for _, g in ipairs(b.groups) do
      for _, t in ipairs(g.targets) do
        local evicted = health.state(bname, t, now, pol)
        metrics.set("moongate_target_healthy", metrics.labels({ "backend", bname, "target", t.name }),
          evicted and 0 or 1)
      end
    end
  end
end

local function admin_handle(r, req, ctx)
  local cfg = state.cfg
  local admin = cfg and cfg.admin or {}
  local path = req.path
  if path == "/health" then
    admin_json(ctx, 200, { status = "ok" })
  elseif path == "/ready" then
    if state.ready and C.mg_stopping() == 0 then admin_json(ctx, 200, { status = "ready" })
    else admin_json(ctx, 503, { status = "not ready" }) end
  elseif path == "/metrics" then
    if admin.protect_metrics and not admin_authorized(req, admin.token) then
      admin_json(ctx, 401, { error = { message = "admin token required" } })
    else
      health_gauges(cfg)
      send_whole(ctx, 200, metrics.text(), { ["content-type"] = "text/plain; version=0.0.4" })
    end
  elseif str_sub(path, 1, 7) == "/admin/" or path == "/admin" then
    if not admin.token then
      admin_json(ctx, 404, { error = { message = "the admin API is off: set admin.token" } })
    elseif not admin_authorized(req, admin.token) then
      admin_json(ctx, 401, { error = { message = "missing or wrong admin token" } })
    else
      local h = ADMIN[path]
      local allow
      if h and h[req.method] then return h[req.method](ctx, req) end
      if h then
        allow = {}
        for m in pairs(h) do allow[#allow + 1] = m end
        table.sort(allow)
        allow = concat(allow, ", ")
      else
        local admin_routes = require("moongate.admin")
        admin_routes.load()
        local fn, params = admin_routes.match(req.method, path)
        if fn then
          local status, doc, headers = fn(req, params, cfg)
          if type(doc) == "string" then   -- JSON the handler encoded itself (exact decimals)
            headers = headers or {}
            headers["content-type"] = headers["content-type"] or "application/json"
            return send_whole(ctx, status, doc, headers)
          end
          if headers then
            local body = assert(gw.json.encode(doc))
            headers["content-type"] = headers["content-type"] or "application/json"
            return send_whole(ctx, status, body, headers)
          end
          return admin_json(ctx, status, doc)
        end
        allow = params
      end
      if not allow then
        admin_json(ctx, 404, { error = { message = "no admin endpoint " .. req.method .. " " .. path } })
      else
        send_whole(ctx, 405, gw.json.encode({ error = { message = req.method .. " " .. path ..
          " is not allowed; use " .. allow } }), { ["content-type"] = "application/json", allow = allow })
      end
    end
  else
    admin_json(ctx, 404, { error = { message = "not found" } })
  end
end

-- An admin request: an error in a handler is a 500 and a log line, never a
-- hung connection.
local function serve_admin(r)
  local req = read_request(r)
  req.is_json = nil   -- req.json decodes the body on first use
  C.mg_request_id(idbuf)
  local ctx = { id = ffi_string(idbuf, 32), request = req, _req = r }
  co_ctx[co_running()] = ctx
  local ok, err = pcall(admin_handle, r, req, ctx)
  if not ok then
    gw.log("error", "admin " .. req.method .. " " .. req.path .. " failed: " .. tostring(err))
    if C.mg_resp_status(r) == 0 then
      admin_json(ctx, 500, { error = { message = "internal error" } })
    end
  end
  C.mg_req_release(r)
end

-- ====================== mock provider server ======================

local function serve_mock(r, waiter)
  local mock = require("moongate.mock")
  local req = read_request(r)
  local ctx = { id = "mock", request = req, _req = r }
  co_ctx[co_running()] = ctx
  local ok, err = pcall(function()
    local resp = mock.respond(state.mock_opts, { method = req.method, path = req.target,
      headers = req.headers, body = req.body })
    if resp.delay and resp.delay > 0 then gw.sleep(resp.delay) end
    if C.mg_req_alive(r) ~= 1 then return end
    if resp.body then
      local hs = upstream.serialize_headers(resp.headers)
      C.mg_resp_start(r, resp.status, hs, #hs, #resp.body)
      C.mg_resp_write(r, resp.body, #resp.body)
      C.mg_resp_finish(r, 0)
      return
    end
    local hs = upstream.serialize_headers(resp.headers)
    C.mg_resp_start(r, resp.status, hs, #hs, -1)
    for i, ev in ipairs(resp.events) do
      if i > 1 and resp.interval and resp.interval > 0 then gw.sleep(resp.interval) end
      if C.mg_req_alive(r) ~= 1 then return end
      C.mg_resp_write(r, ev, #ev)
      if not gw._drained(r) then return end
    end
    C.mg_resp_finish(r, 0)
  end)
  if not ok then
    gw.log("error", "mock: " .. tostring(err))
    if C.mg_resp_status(r) == 0 then
      send_whole(ctx, 500, '{"error":{"message":"mock failed","type":"server_error"}}',
        { ["content-type"] = "application/json" })
    end
  end
  C.mg_resp_finish(r, 0)
  C.mg_req_release(r)
end

function _M.serve(r, app)
  local waiter = co_waiter[co_running()]
  if app == APP_GATEWAY then return serve_gateway(r, waiter) end
  if app == APP_ADMIN then return serve_admin(r) end
  return serve_mock(r, waiter)
end

-- ====================== start-up ======================

local function listen(addr, app)
  local err = mgffi.errbuf
  local port = C.mg_listen(addr.host, addr.port, app, err, 256)
  if port < 0 then return nil, ffi_string(err) end
  return port
end

local function plugin_dirs(home)
  return { home .. "/plugins" }
end

-- Expressions (`when`, `unhealthy_condition`) are checked at load: a
-- compile error names the option path and the column. The plugins that use
-- them compile them again from the config's source text (once per config).
local function compile_expr(src, path)
  local expr = require("moongate.expr")
  return expr.compile(src)
end

-- What the config may say but this build cannot do yet: refused at load
-- (by check and at start alike) rather than failing on the first request.
local function unsupported(cfg)
  local errs = {}
  table.sort(errs)
  return errs
end

-- The providers' ca_file, read on every TLS handshake with them: one that cannot be read refuses
-- a start or a reload, as a listener's certificate does (not `moongate check`, which opens no
-- file a config names), instead of failing every request to that provider.
local function unreadable_files(cfg)
  local errs = {}
  for name, p in pairs(cfg.providers or {}) do
    if type(p) == "table" and type(p.ca_file) == "string" then
      local f, err = io.open(p.ca_file, "rb")
      if f then f:close() else errs[#errs + 1] = "providers." .. name .. ".ca_file: cannot read " .. tostring(err) end
    end
  end
  table.sort(errs)
  return errs
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then
    -- io.open's message starts with the path, which the callers print already
    err = tostring(err)
    if err:sub(1, #path + 2) == path .. ": " then err = err:sub(#path + 3) end
    return nil, err
  end
  local src, rerr = f:read("*a")
  f:close()
  -- a folder opens but does not read: say what it is
  if not src then return nil, (rerr and rerr:find("Is a directory", 1, true)) and "it is a folder, not a file" or tostring(rerr) end
  return src
end

-- load_config(source): the config from this text (every worker runs the text
-- main read, so a file edited meanwhile cannot split them).
local function load_config(source)
  local opts = state.opts
  local cfg, errs = config.load(opts.config, { plugin_dirs = plugin_dirs(opts.home),
    compile_expr = compile_expr, source = source })
  if not cfg then return nil, errs end
  errs = unsupported(cfg)
  if #errs > 0 then return nil, errs end
  return cfg
end

-- SPEC §1: these need a restart. A reload that changes one keeps the
-- running value and names it.
local function same(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local function keep_restart_only(old, new)
  local kept = {}
  for _, k in ipairs({ "listen", "workers", "data_dir", "cluster", "shared" }) do
    if not same(old[k], new[k]) then
      kept[#kept + 1] = k
      new[k] = old[k]
    end
  end
  local oa, na = old.admin and old.admin.listen, new.admin and new.admin.listen
  if not same(oa, na) then
    kept[#kept + 1] = "admin.listen"
    new.admin = new.admin or {}
    new.admin.listen = oa
  end
  return kept
end

local function apply_limits(cfg)
  local l = cfg.limits
  C.mg_set_limits(l.max_body, l.max_header, l.max_connections, l.header_timeout,
    l.idle_timeout, cfg.shutdown_timeout)
end

local function config_source()
  local gen, sz = mgffi.int1, mgffi.sz1
  local p = C.mg_config_source(gen, sz)
  if p == nil then return gen[0], nil end
  local src = ffi_string(p, sz[0])
  C.mg_free(p)
  return gen[0], src
end

local function worker_count(cfg)
  if cfg.workers == "auto" then return C.mg_cpus_available() end
  return cfg.workers
end

-- cluster.redis: this thread's Redis client (docs/cluster.md). false when it cannot start.
local function start_redis(cfg)
  if not cfg.cluster.redis then return true end
  local ok, err = require("moongate.redis").start(cfg.cluster)
  if not ok then io.stderr:write("cluster.redis: ", tostring(err), "\n") end
  return ok
end

-- The main thread: load and check the config, open the admin listener and
-- one socket per worker on each listen address, start the workers.
local function init_run(opts)
  local src, rerr = read_file(opts.config)
  if not src then
    io.stderr:write("cannot read ", opts.config, ": ", tostring(rerr), "\n")
    return 1
  end
  local cfg, errs = load_config(src)
  if cfg then errs = unreadable_files(cfg) end
  if not cfg or #errs > 0 then
    for _, e in ipairs(errs) do io.stderr:write(e, "\n") end
    return 1
  end
  apply_limits(cfg)
  if cfg.access_log then
    local rc = C.mg_access_log(cfg.access_log)
    if rc ~= 0 then
      io.stderr:write("access_log: cannot open ", cfg.access_log, "\n")
      return 1
    end
  end
  metrics.init()
  C.mg_shared_init(cfg.shared.max_keys)
  -- cluster.redis: this thread's Redis client, before anything uses gw.shared (docs/cluster.md)
  if not start_redis(cfg) then return 1 end
  -- the cost ledger: a data_dir it cannot write stops the start; its aggregates come from the
  -- last snapshot and the records after it, before any worker appends (moongate.ledger)
  local lok, lerr = ledger.start(cfg)
  if not lok then
    io.stderr:write(lerr, "\n")
    return 1
  end
  -- consumers created at run time (data_dir), in gw.shared before any worker serves; gateway.lua's
  -- must not take their names or keys
  local consumers = require("moongate.consumers")
  consumers.ensure_loaded(cfg.data_dir)
  local clashes = consumers.clashes(cfg)
  if #clashes > 0 then
    for _, e in ipairs(clashes) do io.stderr:write(e, "\n") end
    return 1
  end
  -- budgets' spend in their current periods, from the ledger's totals (SPEC §8)
  for _, e in ipairs(cfg.plugins) do
    if e.name == "budget" and e.plugin and e.plugin.rebuild then
      local n = e.plugin.rebuild(cfg, ledger)
      if n > 0 then gw.log("info", "budget: " .. n .. " budget counter(s) rebuilt from the ledger") end
    end
  end
  state.cfg = cfg
  C.mg_config_set(src, #src)
  if cfg.admin and cfg.admin.listen then
    local port, err = listen(cfg.admin.listen, APP_ADMIN)
    if not port then
      io.stderr:write("admin.listen: ", err, "\n")
      return 1
    end
    gw.log("info", "admin on " .. cfg.admin.listen.host .. ":" .. port)
  end
  local n = worker_count(cfg)
  local err = mgffi.errbuf
  -- TLS certificates: a file that cannot be used refuses the start, naming it
  local certs, cerrs = tls.load(cfg.listen)
  if not certs then
    for _, e in ipairs(cerrs) do io.stderr:write(e, "\n") end
    return 1
  end
  for i, addr in ipairs(cfg.listen) do
    local port = C.mg_listen_prepare(addr.host, addr.port, n, APP_GATEWAY, err, 256)
    if port < 0 then
      io.stderr:write("listen[", i, "]: ", ffi_string(err), "\n")
      return 1
    end
    gw.log("info", "listening on " .. addr.host .. ":" .. port .. (addr.tls and " (TLS)" or ""))
  end
  local tok, terr = tls.attach(certs)
  if not tok then
    io.stderr:write(terr, "\n")
    return 1
  end
  if C.mg_workers_start(n, err, 256) ~= 0 then
    io.stderr:write(ffi_string(err), "\n")
    return 1
  end
  gw.log("info", n .. " worker(s) running")
  state.ready = true
  return 0
end

-- Active health checks run on the first worker only (one prober for all).
local function start_probers(cfg)
  if C.mg_worker_index() ~= 1 then return end
  require("moongate.prober").start(cfg, spawn, function(c)
    return state.cfg == c and C.mg_stopping() == 0
  end)
end

-- A gateway worker: the same config, from the text main read.
local function init_worker()
  local gen, src = config_source()
  local cfg, errs = load_config(src)
  if cfg then errs = unreadable_files(cfg) end
  if not cfg or #errs > 0 then
    for _, e in ipairs(errs) do io.stderr:write(e, "\n") end
    return 1
  end
  apply_limits(cfg)
  state.access_log = cfg.access_log and true or false
  metrics.init()
  if not start_redis(cfg) then return 1 end
  state.cfg, state.generation = cfg, gen
  state.ready = true
  start_probers(cfg)
  return 0
end

-- A worker applies generation `gen`: requests in flight keep the config they
-- started with (ctx.config); new ones get this one.
local function worker_reload(gen)
  local ok, err = pcall(function()
    local g, src = config_source()
    local cfg, errs = load_config(src)
    if not cfg then return concat(errs, "\n") end
    keep_restart_only(state.cfg, cfg)
    apply_limits(cfg)
    state.access_log = cfg.access_log and true or false
    state.cfg, state.generation = cfg, g
    start_probers(cfg)
  end)
  local msg = (not ok and tostring(err)) or err
  if msg then
    gw.log("error", "reload failed on this worker; it keeps its config: " .. msg)
    C.mg_reload_done(gen, 0, msg, #msg)
  else
    C.mg_reload_done(gen, 1, nil, 0)
  end
end

-- main: reload gateway.lua on every worker. Returns true, { kept keys } or
-- nil, status, { errors }. Runs in a coroutine (it waits for the workers).
local function reload(why)
  if state.reloading then return nil, 409, { "a reload is already in progress" } end
  if C.mg_stopping() ~= 0 then return nil, 503, { "the gateway is stopping" } end
  local path = state.opts.config
  local src, rerr = read_file(path)
  if not src then return nil, 400, { "cannot read " .. path .. ": " .. tostring(rerr) } end
  local cfg, errs = load_config(src)
  if not cfg then return nil, 400, errs end
  errs = require("moongate.consumers").clashes(cfg)
  for _, e in ipairs(unreadable_files(cfg)) do errs[#errs + 1] = e end
  if #errs > 0 then return nil, 400, errs end
  local old = state.cfg
  local kept = keep_restart_only(old, cfg)
  -- the running listeners' certificate files, read again: a bad one refuses the reload
  local certs, cerrs = tls.load(cfg.listen)
  if not certs then return nil, 400, cerrs end
  if cfg.access_log ~= old.access_log then
    -- before any worker writes to it
    local rc = C.mg_access_log(cfg.access_log or nil)
    if rc ~= 0 then return nil, 400, { "access_log: cannot open " .. tostring(cfg.access_log) } end
  end
  state.reloading = true
  local co = co_running()
  local id = gw._waiter_new(co)
  C.mg_reload_publish(src, #src, id)
  repeat local kind = coroutine.yield() until kind == EV_WAKE
  gw._waiter_done(co, id)
  state.reloading = false
  tls.attach(certs)   -- new connections get the new certificates
  apply_limits(cfg)
  state.cfg = cfg
  state.generation = state.generation + 1
  local sz = mgffi.sz1
  local failed = ffi_string(C.mg_reload_errors(sz), sz[0])
  if failed ~= "" then
    local lines = {}
    for line in failed:gmatch("[^\n]+") do lines[#lines + 1] = line end
    gw.log("error", why .. ": reload failed on some workers: " .. concat(lines, "; "))
    return nil, 500, lines
  end
  for _, k in ipairs(kept) do
    gw.log("warn", why .. ": " .. k .. " changed; it needs a restart and keeps its running value")
  end
  gw.log("info", why .. ": config reloaded (generation " .. state.generation .. ")")
  return true, kept
end
_M.reload = reload

-- EV_RELOAD: SIGHUP on main (arg 0), or a generation to apply on a worker
function _M.on_reload(gen)
  if state.mode == "worker" then return worker_reload(gen) end
  if state.mode ~= "run" then return end
  spawn(function()
    local ok, status, errs = reload("SIGHUP")
    if not ok then
      gw.log("error", "SIGHUP: config not reloaded (" .. status .. "); the running config is unchanged:\n  " ..
        concat(errs, "\n  "))
    end
  end)
end

local function init_check(opts)
  local src, rerr = read_file(opts.config)
  if not src then
    io.stdout:write("cannot read ", opts.config, ": ", tostring(rerr), "\n")
    return 1
  end
  local cfg, errs = load_config(src)
  if not cfg then
    for _, e in ipairs(errs) do io.stdout:write(e, "\n") end
    return 1
  end
  io.stdout:write("ok\n")
  return 0
end

local function init_mock(opts)
  local mock = require("moongate.mock")
  local mopts, listen_addr = mock.parse_args(opts.argv or {})
  if not mopts then
    io.stderr:write("moongate mock: ", tostring(listen_addr), "\n", mock.usage_text(), "\n")
    return 2
  end
  if mopts.help then
    io.stdout:write(mock.usage_text(), "\n")
    return 3
  end
  math.randomseed(os.time() + math.floor(C.mg_monotonic() * 1000))
  state.mock_opts = mopts
  local units = require("moongate.units")
  local addr, aerr = units.address(listen_addr)
  if not addr then
    io.stderr:write("moongate mock: --listen: ", tostring(aerr), "\n")
    return 2
  end
  C.mg_set_limits(64 * 1048576, 64 * 1024, 10000, 30, 60, 5)
  local port, err = listen(addr, APP_MOCK)
  if not port then
    io.stderr:write("moongate mock: ", err, "\n")
    return 1
  end
  io.stdout:write("moongate mock listening on ", addr.host, ":", port, "\n")
  io.stdout:flush()
  return 0
end

-- init(opts) -> exit code; 0 means "run the loop". opts: home, config, mode, argv
function _M.init(opts)
  state.mode = opts.mode
  state.opts = opts
  -- diagnostics for performance work: MOONGATE_JIT_LOG=FILE logs JIT traces and aborts
  local jitlog = os.getenv("MOONGATE_JIT_LOG")
  if jitlog and jitlog ~= "" then
    local ok, v = pcall(require, "jit.v")
    if ok then v.start(jitlog) end
  end
  -- MOONGATE_JIT_PROFILE="fl,FILE": LuaJIT's sampling profiler (jit.p), for the benchmark
  local prof = os.getenv("MOONGATE_JIT_PROFILE")
  -- LuaJIT's profiler is one per process (one SIGPROF timer): only worker 1 runs it
  if prof and prof ~= "" and opts.mode == "worker" and C.mg_worker_index() == 1 then
    local ok, p = pcall(require, "jit.p")
    if ok then
      local mode, file = prof:match("^([^,]*),(.+)$")
      p.start(mode or prof, file)
      _M.stop_profile = p.stop
    end
  end
  _G.gw = gw
  package.loaded.gw = gw
  if opts.mode == "check" then return init_check(opts) end
  if opts.mode == "mock" then
    return init_mock(opts)   -- 3 (help shown): exit 0 without running the loop (runtime/main.c)
  end
  if opts.mode == "worker" then return init_worker() end
  return init_run(opts)
end

return _M
