-- gw.json: what a plugin decodes and encodes again keeps what SPEC §3 keeps of a body.
local gw = require("gw")

describe("gw.json", function()
  it("keeps empty arrays, empty objects, null and every digit a double holds through a round trip", function()
    local text = '{"tools":[],"meta":{},"stop":null,"seed":1234567890123456,"t":0.1,' ..
      '"n":[1,2.5,-3e-7],"deep":[{"x":[]}]}'
    local doc = assert(gw.json.decode(text))
    assert.equal(1234567890123456, doc.seed)          -- numbers are Lua numbers
    assert.equal(gw.json.null, doc.stop)
    doc.added = true
    local again = assert(gw.json.decode(gw.json.encode(doc)))
    local out = gw.json.encode(doc)
    assert.matches('"tools":[]', out, 1, true)
    assert.matches('"meta":{}', out, 1, true)
    assert.matches('"deep":[{"x":[]}]', out, 1, true)
    assert.matches('"seed":1234567890123456', out, 1, true)
    assert.matches('"n":[1,2.5,-3e-07]', out, 1, true)
    assert.matches('"stop":null', out, 1, true)
    assert.equal(true, again.added)
  end)

  it("writes a table with array_mt as a list, [] when empty, and leaves / unescaped", function()
    assert.equal("[]", gw.json.encode(setmetatable({}, gw.json.array_mt)))
    assert.equal("{}", gw.json.encode({}))
    assert.equal('["a/b"]', gw.json.encode({ "a/b" }))
  end)

  it("never raises: bad text and values it cannot write give nil and a message", function()
    local v, err = gw.json.decode("{not json")
    assert.is_nil(v)
    assert.is_string(err)
    v, err = gw.json.encode({ f = function() end })
    assert.is_nil(v)
    assert.is_string(err)
  end)
end)
