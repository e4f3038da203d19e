-- moongate.codec.sse: events cut out of the byte stream wherever it splits,
-- fields read per the SSE rules, a bounded buffer.
local sse = require("moongate.codec.sse")

local function feed_all(text, sizes)
  local r = sse.reader()
  local out, i, k = {}, 1, 1
  while i <= #text do
    local n = sizes[(k - 1) % #sizes + 1]
    k = k + 1
    for _, ev in ipairs(r:feed(text:sub(i, i + n - 1))) do out[#out + 1] = ev end
    i = i + n
  end
  for _, ev in ipairs(r:finish()) do out[#out + 1] = ev end
  return out
end

describe("codec.sse", function()
  local STREAM = "event: message_start\ndata: {\"a\":1}\n\n: a comment\n\nevent: ping\r\ndata: {}\r\n\r\n" ..
                 "data: line one\ndata: line two\n\ndata:nospace\rid: 7\r\r"

  it("reads event names, data lines and ids", function()
    local evs = feed_all(STREAM, { 1000 })
    assert.equal(4, #evs)
    assert.equal("message_start", evs[1].event)
    assert.equal('{"a":1}', evs[1].data)
    assert.equal("ping", evs[2].event)
    assert.equal("{}", evs[2].data)
    assert.is_nil(evs[3].event)
    assert.equal("line one\nline two", evs[3].data)
    assert.equal("nospace", evs[4].data)
    assert.equal("7", evs[4].id)
  end)

  it("gives the same events for any split of the bytes", function()
    local want = feed_all(STREAM, { 1000 })
    for size = 1, 13 do
      local got = feed_all(STREAM, { size, size + 3, 1 })
      assert.equal(#want, #got, "split " .. size)
      for i = 1, #want do
        assert.equal(want[i].data, got[i].data)
        assert.equal(want[i].event, got[i].event)
        assert.equal(want[i].raw, got[i].raw)
      end
    end
  end)

  it("keeps each event's raw bytes", function()
    local evs = feed_all("data: x\r\n\r\ndata: y\n\n", { 3 })
    assert.equal("data: x\r\n\r\n", evs[1].raw)
    assert.equal("data: y\n\n", evs[2].raw)
  end)

  it("hands over a last event left without its blank line, marked partial", function()
    local evs = feed_all("data: a\n\ndata: b", { 4 })
    assert.equal(2, #evs)
    assert.is_nil(evs[1].partial)
    assert.equal("b", evs[2].data)
    assert.is_true(evs[2].partial)
  end)

  it("bounds its buffer: an event over max comes out in pieces", function()
    local r = sse.reader(64)
    local evs = r:feed("data: " .. string.rep("x", 200))
    assert.equal(1, #evs)
    assert.is_true(#evs[1].raw > 64)
    assert.equal(0, #r:feed(""))
  end)

  it("writes events", function()
    assert.equal("data: {}\n\n", sse.data("{}"))
    assert.equal("event: ping\ndata: {}\n\n", sse.event("ping", "{}"))
  end)
end)
