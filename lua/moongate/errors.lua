-- moongate.errors — errors made by the gateway, in the client's own format
-- (SPEC §3): OpenAI's {"error":{"message","type","code"}} on OpenAI paths,
-- Anthropic's {"type":"error","error":{"type","message"}} on /v1/messages.
local gw = require("gw")
local quote = require("moongate.json_splice").quote

local pairs, tostring, type = pairs, tostring, type

local _M = { _VERSION = "0.1" }

local openai_types = {
  [400] = "invalid_request_error", [401] = "authentication_error", [403] = "permission_error",
  [404] = "invalid_request_error", [409] = "invalid_request_error", [413] = "invalid_request_error",
  [429] = "rate_limit_error", [431] = "invalid_request_error",
}
local anthropic_types = {
  [400] = "invalid_request_error", [401] = "authentication_error", [403] = "permission_error",
  [404] = "not_found_error", [413] = "request_too_large", [429] = "rate_limit_error",
  [500] = "api_error", [502] = "api_error", [503] = "overloaded_error", [504] = "api_error",
  [529] = "overloaded_error",
}

-- The wire format a client speaks, from the path it asked for; on the paths both SDKs use
-- (/v1/models and what lies below it), from the anthropic-version header the Anthropic SDK sends.
function _M.format_of(path, headers)
  if string.find(path, "/v1/messages", 1, true) == 1 then return "anthropic" end
  if headers and headers["anthropic-version"] and string.find(path, "/v1/models", 1, true) == 1 then
    return "anthropic"
  end
  return "openai"
end

-- body(format, status, message, code) -> JSON text, members in the order the
-- providers' own errors use (built by hand: cjson's order changes per process)
function _M.body(format, status, message, code)
  if format == "anthropic" then
    return '{"type":"error","error":{"type":"' ..
      (anthropic_types[status] or (status >= 500 and "api_error" or "invalid_request_error")) ..
      '","message":' .. quote(tostring(message)) .. '}}'
  end
  return '{"error":{"message":' .. quote(tostring(message)) .. ',"type":"' ..
    (openai_types[status] or (status >= 500 and "server_error" or "invalid_request_error")) ..
    '","code":' .. (code and quote(tostring(code)) or "null") .. '}}'
end

-- respond(ctx, status, message, code, headers) -> a gw.respond value
function _M.respond(ctx, status, message, code, headers)
  local h = {}
  for k, v in pairs(headers or {}) do h[k] = v end
  h["content-type"] = "application/json"
  return gw.respond(status, _M.body(ctx.format or "openai", status, message, code), h)
end

-- An SSE error event that ends a stream which failed after its first event. status (default
-- 502) picks the error's type: a provider's own error carries the status its type stands for.
function _M.stream_event(format, message, status, code)
  status = status or 502
  if format == "anthropic" then
    return "event: error\ndata: " .. _M.body("anthropic", status, message) .. "\n\n"
  end
  return "data: " .. _M.body("openai", status, message, code or "upstream_error") .. "\n\n"
end

-- The status a provider's error object stands for (Anthropic's types, OpenAI's types and codes),
-- 502 when it says nothing known: what a translated error event is typed by.
local ERROR_STATUS = {
  invalid_request_error = 400, authentication_error = 401, permission_error = 403,
  not_found_error = 404, request_too_large = 413, rate_limit_error = 429,
  rate_limit_exceeded = 429, insufficient_quota = 429, api_error = 500, server_error = 500,
  overloaded_error = 529,
}
function _M.provider_status(e)
  if type(e) ~= "table" then return 502 end
  return ERROR_STATUS[e.type] or ERROR_STATUS[e.code] or 502
end

return _M
