-- tagger — tags each request from its headers (an example plugin: examples/plugins/README.md).
--
--   plugins = {
--     { name = "tagger", path = "plugins/tagger.lua",
--       tag = "web",                                          -- when no rule matches (optional)
--       rules = {                                             -- the first rule that matches wins
--         { header = "x-client-app", equals = "ios", tag = "mobile" },
--         { header = "user-agent", pattern = "^OpenAI/Python", tag = "python-sdk" },
--         { header = "x-team", pattern = "^(%w+)$", tag = "team-%1" },   -- captures: %1..%9
--         { header = "x-debug", tag = "debug" },              -- neither equals nor pattern: present
--       } },
--   }
--
-- The tag goes to the provider and back to the client as the `header` option (default
-- x-moongate-tag; `upstream = false` / `response = false` keep it on this side), and stays in
-- ctx.vars.tag for the plugins after it. A client's own x-moongate-tag is always replaced (or
-- removed when there is no tag), so a client cannot choose its tag by sending the header.
--
-- As a global plugin it tags in on_route, before the router (priority 3100 > the router's 3000),
-- so routes may match on the tag: `match = { headers = { ["x-moongate-tag"] = "mobile" } }`.
-- Listed on a route or backend it tags in on_request (on_route runs only global plugins).
-- `equals` compares exactly; `pattern` is a Lua pattern (string.find), checked at load.
local gw = require("gw")

local find, gsub, lower, format = string.find, string.gsub, string.lower, string.format
local ipairs, pcall, select, tonumber, tostring, unpack = ipairs, pcall, select, tonumber, tostring, unpack

local _M = {
  name = "tagger",
  priority = 3100,
  schema = {
    type = "object",
    properties = {
      tag = { type = "string", description = "the tag when no rule matches; none when absent" },
      rules = {
        type = "array", default = {},
        description = "tried in order; the first that matches gives the tag",
        items = {
          type = "object",
          properties = {
            header = { type = "string", required = true, description = "the request header read" },
            equals = { type = "string", description = "the value must be exactly this" },
            pattern = { type = "string", description = "a Lua pattern the value must match" },
            tag = { type = "string", required = true, description = "the tag; %1..%9 are pattern captures" },
          },
        },
      },
      header = { type = "string", default = "x-moongate-tag", description = "header carrying the tag" },
      upstream = { type = "boolean", default = true, description = "send the tag to the provider" },
      response = { type = "boolean", default = true, description = "send the tag to the client" },
      log = { type = "boolean", default = false, description = "one info line per request with its tag" },
    },
  },
}

-- init(conf): header names to lower case (ctx.request.headers has lower-case names), every
-- pattern tried once so that a broken one is refused at load rather than failing requests.
function _M.init(conf)
  conf.header = lower(conf.header)
  for i, r in ipairs(conf.rules) do
    r.header = lower(r.header)
    if r.equals and r.pattern then
      return nil, format("rules[%d]: use equals or pattern, not both", i)
    end
    if r.pattern then
      local ok, err = pcall(find, "", r.pattern)
      if not ok then return nil, format("rules[%d].pattern: %s", i, tostring(err)) end
    end
  end
  return true
end

-- tag_of(headers, conf) -> the tag | nil
local function tag_of(headers, conf)
  for _, r in ipairs(conf.rules) do
    local v = headers[r.header]
    if v ~= nil then
      if r.equals then
        if v == r.equals then return r.tag end
      elseif r.pattern then
        local found = { find(v, r.pattern) }
        if found[1] then
          local caps = { select(3, unpack(found)) }
          return (gsub(r.tag, "%%(%d)", function(d) return tostring(caps[tonumber(d)] or "") end))
        end
      else
        return r.tag
      end
    end
  end
  return conf.tag
end
_M.tag_of = tag_of

local function tag(ctx, conf)
  local v = ctx.vars
  if v.tagger_done then return end
  v.tagger_done = true
  local headers = ctx.request.headers
  local t = tag_of(headers, conf)
  v.tag = t
  -- never keep what the client claimed; only what the rules decided (routes may match on it)
  headers[conf.header] = t
end

function _M.on_route(ctx, conf)
  tag(ctx, conf)
end

-- after routing: headers left on ctx.request.headers here go to the provider
function _M.on_request(ctx, conf)
  tag(ctx, conf)
  if not conf.upstream then ctx.request.headers[conf.header] = nil end
end

function _M.on_response(ctx, conf)
  local t = ctx.vars.tag
  if conf.response and t then ctx.response.headers[conf.header] = t end
end

function _M.on_log(ctx, conf)
  if not conf.log then return end
  local status = ctx.response and ctx.response.status
  gw.log("info", "tag=" .. tostring(ctx.vars.tag or "-"), "route=" .. tostring(ctx.route and ctx.route.name or "-"),
    "status=" .. tostring(status or "-"))
end

return _M
