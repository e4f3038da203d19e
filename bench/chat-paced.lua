-- wrk script: bench/chat.lua's request, each connection waiting before each request (wrk's delay
-- hook) a random time averaging BENCH_DELAY_MS milliseconds (exponential: the connections' requests
-- together arrive as a Poisson stream, not in step), so that the load is a set rate rather than as
-- fast as the proxy goes. bench/run.sh sets it from BENCH_RATE (requests/s over all connections).
local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
dofile(dir .. "/chat.lua")
local mean = tonumber(os.getenv("BENCH_DELAY_MS") or "") or 0
local random, log = math.random, math.log
function init() math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 100000) end
function delay()
  if mean <= 0 then return 0 end
  return math.floor(-log(1 - random()) * mean + 0.5)
end
