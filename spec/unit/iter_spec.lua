-- lua/moongate/iter.lua: pairs and next with the built-ins' results and errors, and a hot
-- nested pairs loop (LuaJIT issue #827's) that visits every key.
local iter = require "moongate.iter"

describe("moongate.iter", function()
  it("is what the globals are once it is loaded", function()
    assert.equal(iter.pairs, pairs)
    assert.equal(iter.next, next)
  end)

  it("visits the same keys and values as the built-in pairs", function()
    local t = { 10, 20, 30, a = "x", b = false, [2.5] = "y" }
    local seen, n = {}, 0
    for k, v in iter.pairs(t) do seen[k] = v; n = n + 1 end
    assert.equal(6, n)
    assert.same(t, seen)
    assert.is_nil(iter.next({}))
    assert.equal(1, (iter.next({ 5 })))
  end)

  it("raises the built-ins' errors", function()
    local ok, err = pcall(function() local f = iter.pairs(nil); return f end)
    assert.is_false(ok)
    assert.matches("bad argument #1 to 'pairs' %(table expected, got nil%)", err)
    ok, err = pcall(function() local k = iter.next("s"); return k end)
    assert.is_false(ok)
    assert.matches("bad argument #1 to 'next' %(table expected, got string%)", err)
  end)

  it("keeps every key in a hot nested loop the JIT gives up on", function()
    local inner = { 1, 2, 3, 4, 5 }
    local tab = { a = inner, b = inner, c = inner, d = inner, e = inner }
    local function reenter(...) for _ = 1, 100 do end end
    local pairs = iter.pairs   -- the name matters: the parser specialises loops over "pairs"
    local bad = 0
    for _ = 1, 100000 do
      reenter()
      local c = 0
      for _, v in pairs(tab) do
        for _ in pairs(v) do end
        c = c + 1
      end
      if c ~= 5 then bad = bad + 1 end
    end
    assert.equal(0, bad)
  end)
end)
