-- moongate.iter — loaded into every Lua state before anything else (runtime/lbridge.c).
--
-- Debian 12's LuaJIT (2.1.0~beta3+git20220320) has the JIT bug of LuaJIT issue #827 (fixed
-- upstream after that snapshot): a `for k, v in pairs(t)` loop that the parser specialised
-- (bytecode ITERN) and the JIT later blacklists is despecialised in the middle of its
-- iterations, and goes on from a wrong position: it stops early, skips keys, or hands out a value
-- as the key. Under load this made the balancer pick "a number" as its target (a 500 during a
-- reload), and it would hit any plugin's pairs loop.
--
-- The specialisation is only used when the loop's iterator is LuaJIT's own `next`. So the
-- global `pairs` and `next` are replaced by ones that hand out a Lua function calling it:
-- every such loop is despecialised once, before its first iteration (the plain, long-standing
-- path), and never in the middle of one. Traces still compile `next` inside the function.
-- Behaviour and error messages are the built-ins' ("bad argument #1 to 'pairs'").
local pairs, next = pairs, next

local function safe_next(t, k)
  return next(t, k)
end

local function safe_pairs(t)
  local f, s, c = pairs(t)
  if f == next then f = safe_next end
  return f, s, c
end

if rawget(_G, "pairs") == pairs then
  _G.pairs = safe_pairs
  _G.next = safe_next
end

-- raw_next is the built-in next, for moongate's own hot loops: `for k, v in raw_next, t do`.
-- The parser specialises a loop by the iterator's *name* (pairs, next), so under another name the
-- loop takes the plain path too, without safe_next's extra call.
return { pairs = safe_pairs, next = safe_next, raw_next = next }
