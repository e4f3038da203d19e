-- moongate.codec.json: numbers keep their digits, arrays stay arrays, objects
-- keep their order, and decode never raises.
local J = require("moongate.codec.json")

describe("codec.json", function()
  local function rt(s) return J.encode(assert(J.decode(s))) end

  it("round-trips numbers digit for digit", function()
    for _, n in ipairs({ "12345678901234567890", "1.0000000000000001", "-0.5e-10", "1E+400", "0", "-0",
                         "3.141592653589793238462643383279", "1e400" }) do
      assert.equal("[" .. n .. "]", rt("[" .. n .. "]"))
    end
  end)

  it("keeps empty arrays and empty objects apart", function()
    assert.equal('{"a":[],"o":{},"n":[[],{}]}', rt('{"a":[],"o":{},"n":[[],{}]}'))
  end)

  it("keeps the order of keys, the last of a duplicate winning in the first one's place", function()
    assert.equal('{"z":1,"a":2,"m":3}', rt('{"z":1,"a":2,"m":3}'))
    assert.equal('{"b":3,"a":2}', rt(' {"b":1, "a":2, "b":3} '))
  end)

  it("keeps null members", function()
    local v = J.decode('{"a":null}')
    assert.equal(J.null, v.a)
    assert.equal('{"a":null}', J.encode(v))
  end)

  it("decodes escapes, surrogate pairs and unpaired surrogates", function()
    local v = J.decode('"caf\\u00e9 a\\/b \\ud83d\\ude00 \\n\\t\\"\\\\ \\ud800"')
    assert.equal('café a/b 😀 \n\t"\\ \239\191\189', v)
  end)

  it("writes strings as JSON with / unescaped and UTF-8 kept", function()
    assert.equal('"a/b \\"q\\" \\\\ \\n é \\u0001"', J.encode('a/b "q" \\ \n é \1'))
  end)

  it("refuses what is not JSON with nil and a message", function()
    for _, s in ipairs({ "", " ", "{", "[1,]", "{\"a\"}", "01", "1.", "1e", "-", "tru", "nul", "\"abc",
                         "{\"a\":1}x", "[\"\1\"]", "\"\\x\"", "\"\\u12G4\"", "{1:2}", "[1 2]" }) do
      local v, err = J.decode(s)
      assert.is_nil(v, s)
      assert.is_string(err, s)
    end
  end)

  it("refuses absurd nesting instead of overflowing the stack", function()
    local v, err = J.decode(string.rep("[", 100000))
    assert.is_nil(v)
    assert.matches("nested too deeply", err)
    assert.is_table(J.decode(string.rep("[", 400) .. string.rep("]", 400)))
  end)

  it("never raises on random bytes (seed printed)", function()
    local seed = 20240605
    print("codec.json fuzz seed " .. seed)
    math.randomseed(seed)
    local alphabet = '{}[]",:0123456789-+.eEtrufalsn \\/u\n\1\200\255abc'
    for _ = 1, 3000 do
      local n = math.random(0, 40)
      local t = {}
      for i = 1, n do
        local k = math.random(1, #alphabet)
        t[i] = alphabet:sub(k, k)
      end
      local s = table.concat(t)
      local ok, v = pcall(J.decode, s)
      assert.is_true(ok, s)
      if v ~= nil then
        -- what decodes re-encodes and decodes to the same text
        local e = J.encode(v)
        assert.equal(e, J.encode(J.decode(e)))
      end
    end
  end)

  it("builds ordered objects, leaving nil members out", function()
    local o = J.object("z", 1, "skip", nil, "a", J.array(), "b", J.object())
    assert.equal('{"z":1,"a":[],"b":{}}', J.encode(o))
    J.set(o, "c", true)
    J.set(o, "z", 2)
    assert.equal('{"z":2,"a":[],"b":{},"c":true}', J.encode(o))
  end)

  it("writes Lua numbers as integers when they are, and plain lists as arrays", function()
    assert.equal('[1,2.5,-3,1e+300]', J.encode({ 1, 2.5, -3, 1e300 }))
    assert.equal('{}', J.encode({}))
    assert.equal('[]', J.encode(J.array()))
  end)

  it("reads numbers as Lua numbers on request", function()
    assert.equal(12, J.num(J.decode("12")))
    assert.equal(0.5, J.num(0.5))
    assert.is_nil(J.num("12"))
    assert.is_nil(J.num(J.null))
  end)
end)
