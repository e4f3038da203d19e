-- testing — what a plugin's unit spec needs, without a running gateway (examples/plugins/README.md):
--
--   local t = dofile("examples/plugins/testing.lua")
--   local plugin, conf = t.load("examples/plugins/tagger.lua", { tag = "blue" })
--   local ctx = t.ctx({ path = "/v1/chat/completions", body = '{"model":"m","messages":[]}' })
--   plugin.on_request(ctx, conf)
--   local rv = t.call(plugin, "on_request", ctx, conf)   -- the same, with gw.respond() unpacked
--
-- Run specs with busted from the repository root (its .busted puts lua/ on the Lua path, so
-- require("gw"), require("moongate.regex") and gw.shared — a plain-Lua copy of the store,
-- lua/moongate/shared_lua.lua — work in plain LuaJIT). gw.sleep and gw.http need a request
-- running in the gateway: test hooks that use them through a real gateway
-- (spec/support/helpers.lua start_gateway; spec/integration/examples_spec.lua does).
local gw = require("gw")
local schema = require("moongate.schema")

local _M = {}

-- load(file, entry) -> plugin, conf: the plugin module and its conf as the gateway builds them —
-- the entry's options checked against the plugin's schema (defaults filled in, durations in
-- seconds), then init(conf). Raises with the loader's message ("plugins[1].tag: expected
-- string") when the gateway would refuse the entry.
function _M.load(file, entry)
  local plugin = assert(dofile(file))
  local conf = {}
  for k, v in pairs(entry or {}) do
    if k ~= "name" and k ~= "path" and k ~= "handler" and k ~= "priority" then conf[k] = v end
  end
  if plugin.schema then
    local out, errs = schema.validate(conf, plugin.schema, "plugins[1]")
    if not out then error(table.concat(errs, "\n"), 2) end
    conf = out
  end
  if plugin.init then
    local ok, err = plugin.init(conf)
    if ok == nil and err then
      err = tostring(err)
      -- as the loader joins them: a message that starts with an option continues the path
      error((err:match("^[%a_][%w_]*[%[%.:]") and "plugins[1]." or "plugins[1]: ") .. err, 2)
    end
  end
  return plugin, conf
end

-- ctx(opts) -> a ctx with the fields hooks read, as the runtime fills them before on_route:
-- opts.method ("POST"), path, target (the path), headers (lower-case names), body (""),
-- is_json (true when body decodes to a JSON object), plus route, backend, target_table, consumer,
-- config, when a test needs them. ctx.request.json decodes the body lazily, as in the gateway.
function _M.ctx(opts)
  opts = opts or {}
  local body = opts.body or ""
  local is_json = opts.is_json
  if is_json == nil then is_json = type(gw.json.decode(body)) == "table" end
  local request = setmetatable({
    method = opts.method or "POST",
    path = opts.path or "/v1/chat/completions",
    target = opts.target or opts.path or "/v1/chat/completions",
    headers = opts.headers or {},
    body = body,
    is_json = is_json,
    remote = "127.0.0.1",
  }, { __index = function(t, k)
    if k ~= "json" then return nil end
    local doc = gw.json.decode(t.body)
    if type(doc) ~= "table" then doc = false end
    rawset(t, "json", doc)
    return doc
  end })
  return {
    id = "test-request", request = request, attempt = 0, vars = {}, timings = { start = 0 },
    route = opts.route, backend = opts.backend, target = opts.target_table, consumer = opts.consumer,
    config = opts.config or { providers = {}, backends = {}, routes = {} },
  }
end

-- upstream(ctx) -> ctx.upstream as the runtime builds it before on_upstream_request
function _M.upstream(ctx)
  local req = ctx.request
  ctx.attempt = ctx.attempt + 1
  ctx.upstream = { method = req.method, path = req.path, query = req.query, body = req.body, headers = {} }
  return ctx.upstream
end

-- response(ctx, status, headers) -> ctx.response as on_response sees it
function _M.response(ctx, status, headers)
  ctx.response = { status = status or 200, headers = headers or {}, upstream_headers = headers or {} }
  return ctx.response
end

-- call(plugin, hook, ctx, conf, arg) -> nil | { status, body, headers, json } for gw.respond(),
-- "retry" for gw.retry(); body is the text the client would get (a table body as JSON)
function _M.call(plugin, hook, ctx, conf, arg)
  local rv = plugin[hook](ctx, conf, arg)
  if rv == nil then return nil end
  if rv == gw.RETRY then return "retry" end
  if getmetatable(rv) == gw.RESPOND_MT then
    local body = rv.body
    if type(body) == "table" then body = gw.json.encode(body) end
    return { status = rv.status, body = body, headers = rv.headers or {}, json = gw.json.decode(body or "") }
  end
  return rv
end

return _M
