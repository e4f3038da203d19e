-- Stream forwarding latency: how long an SSE event takes from the provider's
-- write to the client's read, through moongate and directly, on 127.0.0.1.
--
--   luajit bench/stream_latency.lua PROVIDER_PORT [GATEWAY_PORT] [EVENTS]
--
-- Plays the provider itself on PROVIDER_PORT (one streamed chat completion per
-- connection: an event every 20 ms, each carrying the time it was written)
-- and is the client too, in one select loop, so both ends read one clock. With
-- GATEWAY_PORT the client goes through the gateway (whose provider must point
-- at PROVIDER_PORT), else straight to the provider. Prints the median and p99
-- of write→read over EVENTS events (default 200). bench/streams.sh runs both.
local socket = require("socket")
local pport, gport, n = tonumber(arg[1]), tonumber(arg[2]), tonumber(arg[3]) or 200
local srv = assert(socket.bind("127.0.0.1", pport))
srv:settimeout(0)
local body = '{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'
local cli = assert(socket.connect("127.0.0.1", gport or pport))
cli:send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" ..
  "Content-Length: " .. #body .. "\r\n\r\n" .. body)
cli:settimeout(0)
local up, sent, next_at, buf, lat = nil, 0, nil, "", {}
while #lat < n do
  local r = { srv, cli }
  if up then r[3] = up end
  local ready = socket.select(r, nil, 0.002)
  for _, s in ipairs(ready) do
    if s == srv then
      up = srv:accept()
      if up then
        up:settimeout(0)
        up:send("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        next_at = socket.gettime()
      end
    elseif s == up then
      up:receive(65536)   -- the request; ignored
    else
      local data, err, part = cli:receive(65536)
      buf = buf .. (data or part or "")
      for t in buf:gmatch('"t":(%d+%.%d+)') do lat[#lat + 1] = socket.gettime() - tonumber(t) end
      buf = buf:match('.*"t":%d+%.%d+(.*)$') or buf
      if err == "closed" then error("the stream closed early") end
    end
  end
  if up and next_at and socket.gettime() >= next_at and sent < n + 5 then
    local ev = string.format('data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"x"}}],"t":%.6f}\n\n',
      socket.gettime())
    up:send(string.format("%x\r\n%s\r\n", #ev, ev))
    sent = sent + 1
    next_at = next_at + 0.02
  end
end
table.sort(lat)
print(string.format("%s: %d events, median %.0f us, p99 %.0f us", gport and "through moongate" or "direct",
  #lat, lat[math.floor(#lat / 2)] * 1e6, lat[math.floor(#lat * 0.99)] * 1e6))
