-- moongate.json_splice: top-level member edits that keep every other byte.
local splice = require("moongate.json_splice")
local cjson = require("cjson.safe")

local NEW = '"NEW"'

-- replace and check that only the value's byte range changed
local function check_replace(s, old_value, expected)
  local a, b = splice.find(s, "model")
  assert.is_number(a, "model not found in " .. s)
  assert.equal(old_value, s:sub(a, b))
  local out, ok = splice.replace(s, "model", NEW)
  assert.is_true(ok)
  assert.equal(s:sub(1, a - 1), out:sub(1, a - 1))
  assert.equal(s:sub(b + 1), out:sub(a + #NEW))
  if expected then assert.equal(expected, out) end
  return out
end

describe("json_splice.find / replace", function()
  it("replaces the key first, in the middle and last", function()
    check_replace('{"model":"gpt-4o","a":1,"b":[1,2]}', '"gpt-4o"',
      '{"model":"NEW","a":1,"b":[1,2]}')
    check_replace('{"a":1,"model":"gpt-4o","b":[1,2]}', '"gpt-4o"',
      '{"a":1,"model":"NEW","b":[1,2]}')
    check_replace('{"a":1,"b":[1,2],"model":"gpt-4o"}', '"gpt-4o"',
      '{"a":1,"b":[1,2],"model":"NEW"}')
  end)

  it("replaces the only member", function()
    check_replace('{"model":"x"}', '"x"', '{"model":"NEW"}')
  end)

  it("keeps whitespace and newlines around ':' and ','", function()
    local s = '{\n  "a" : 1 ,\n\t"model"\r\n :\n\t "gpt-4o"  \n ,  "b"\n:\n2\n}\n'
    check_replace(s, '"gpt-4o"',
      '{\n  "a" : 1 ,\n\t"model"\r\n :\n\t "NEW"  \n ,  "b"\n:\n2\n}\n')
    check_replace('  \n {  "model"  :  "m"  }  ', '"m"', '  \n {  "model"  :  "NEW"  }  ')
  end)

  it("does not match a nested \"model\" in objects or arrays", function()
    local s = '{"meta":{"model":"inner","deep":{"model":1}},"list":[{"model":"x"},["model"]],' ..
              '"model":"outer"}'
    check_replace(s, '"outer"',
      '{"meta":{"model":"inner","deep":{"model":1}},"list":[{"model":"x"},["model"]],' ..
      '"model":"NEW"}')
    -- only nested occurrences: absent at the top
    local t = '{"meta":{"model":"inner"},"list":[{"model":"x"}]}'
    assert.is_nil(splice.find(t, "model"))
    local out, ok = splice.replace(t, "model", NEW)
    assert.is_false(ok)
    assert.equal(t, out)
  end)

  it("skips strings holding braces, brackets, quotes, escaped quotes and backslashes", function()
    local s = [==[{"a":"}{][","b":"say \"hi\" {\"model\":1}","c":"\\","d":"\\\"","e":{"x":"}}}]]"},]==] ..
              [==["model":"m\"1\\"}]==]
    check_replace(s, [["m\"1\\"]])
    local out = splice.replace(s, "model", NEW)
    local v = cjson.decode(out)
    assert.equal("NEW", v.model)
    assert.equal("}{][", v.a)
    assert.equal('say "hi" {"model":1}', v.b)
    assert.equal("\\", v.c)
    assert.equal('\\"', v.d)
    assert.equal("}}}]]", v.e.x)
  end)

  it("is not fooled by the key text inside a string value", function()
    local s = '{"prompt":"\\"model\\": \\"evil\\"","x":"model","model":"real"}'
    check_replace(s, '"real"', '{"prompt":"\\"model\\": \\"evil\\"","x":"model","model":"NEW"}')
    local t = '{"prompt":"\\"model\\":\\"evil\\""}'
    assert.is_nil(splice.find(t, "model"))
  end)

  it("matches the whole key, not a prefix or a case variant", function()
    local s = '{"models":1,"Model":2,"mode":3,"model_x":4,"model":5}'
    check_replace(s, "5", '{"models":1,"Model":2,"mode":3,"model_x":4,"model":"NEW"}')
  end)

  it("keeps every digit of big numbers and huge exponents elsewhere in the body", function()
    local s = '{"seed":12345678901234567890,"t":1e400,"p":-0.000000000000000000001,' ..
              '"model":"m","n":[12345678901234567890,1E400]}'
    local out = check_replace(s, '"m"')
    assert.truthy(out:find("12345678901234567890,", 1, true))
    assert.truthy(out:find('"t":1e400,', 1, true))
    assert.truthy(out:find("-0.000000000000000000001", 1, true))
    assert.truthy(out:find("[12345678901234567890,1E400]", 1, true))
  end)

  it("finds number values ending at '}' ',' ']' and whitespace", function()
    check_replace('{"model":12345678901234567890}', "12345678901234567890", '{"model":"NEW"}')
    check_replace('{"model":1e400,"a":1}', "1e400", '{"model":"NEW","a":1}')
    check_replace('{"model":-1.5E+3 }', "-1.5E+3", '{"model":"NEW" }')
    check_replace('{"model":7\n}', "7", '{"model":"NEW"\n}')
  end)

  it("keeps empty arrays and objects as they are", function()
    local s = '{"tools":[],"o":{},"model":"m","z":[ ],"y":{ }}'
    check_replace(s, '"m"', '{"tools":[],"o":{},"model":"NEW","z":[ ],"y":{ }}')
  end)

  it("finds values that are objects, arrays, null and booleans", function()
    check_replace('{"model":{"a":{"model":[1,{"b":"}"}]}},"x":1}', '{"a":{"model":[1,{"b":"}"}]}}',
      '{"model":"NEW","x":1}')
    check_replace('{"model":[1,[2,[3]],"]"],"x":1}', '[1,[2,[3]],"]"]', '{"model":"NEW","x":1}')
    check_replace('{"model":null,"x":1}', "null", '{"model":"NEW","x":1}')
    check_replace('{"model":true}', "true", '{"model":"NEW"}')
    check_replace('{"model":false,"x":1}', "false", '{"model":"NEW","x":1}')
  end)

  it("skips other members whose values are objects, arrays, null, booleans", function()
    check_replace('{"a":null,"b":true,"c":false,"d":{},"e":[],"f":{"g":[{}]},"model":"m"}', '"m"')
  end)

  it("puts any JSON value in place", function()
    local s = '{"a":1,"model":"m","b":2}'
    assert.equal('{"a":1,"model":{"x":[1]},"b":2}', (splice.replace(s, "model", '{"x":[1]}')))
    assert.equal('{"a":1,"model":null,"b":2}', (splice.replace(s, "model", "null")))
    assert.equal('{"a":1,"model":[],"b":2}', (splice.replace(s, "model", "[]")))
  end)

  it("edits keys other than model", function()
    local s = '{"model":"m","stream":false}'
    local out, ok = splice.replace(s, "stream", "true")
    assert.is_true(ok)
    assert.equal('{"model":"m","stream":true}', out)
  end)

  it("leaves the text unchanged and returns false when the key is absent", function()
    for _, s in ipairs({ '{}', '{ }', '{"a":1}', '{"a":{"model":1}}', '{"a":"model"}' }) do
      local out, ok = splice.replace(s, "model", NEW)
      assert.is_false(ok, s)
      assert.equal(s, out)
      assert.is_nil(splice.find(s, "model"))
    end
  end)

  it("never raises on input that is not an object", function()
    local inputs = { "", " ", "[]", '[{"model":"x"}]', '"model"', '"{\\"model\\":1}"', "123", "null",
      "true", "garbage", "{", "}", '{"', '{"model', '{"model"', '{"model" 1}', '{model:1}',
      '{"a":1 "model":2', '{"a":"unterminated', '{"a":[1,2', '{"a":{', '{,}', '\0\1\2',
      '{"a":1,,"model":2}', '{"\\', '{"a\\"' }
    for _, s in ipairs(inputs) do
      local ok1, err1 = pcall(splice.find, s, "model")
      assert.is_true(ok1, "find raised on " .. s .. ": " .. tostring(err1))
      local ok2, out = pcall(splice.replace, s, "model", NEW)
      assert.is_true(ok2, "replace raised on " .. s .. ": " .. tostring(out))
    end
    for _, s in ipairs({ "", "[]", '[{"model":"x"}]', '"model"', "123", "null", "garbage" }) do
      local out, ok = splice.replace(s, "model", NEW)
      assert.is_false(ok, s)
      assert.equal(s, out)
    end
  end)

  -- A JSON parser (cjson, Python's json, Go's encoding/json) keeps the LAST of
  -- duplicate members, so replacing only the first one sends the client's
  -- model upstream instead of the target's.
  it("replaces the member a JSON parser would see when a key is duplicated", function()
    local s = '{"model":"a","x":1,"model":"b"}'
    local out, ok = splice.replace(s, "model", NEW)
    assert.is_true(ok)
    assert.equal("NEW", cjson.decode(out).model)
  end)

  -- JSON keys may be written with escapes: "mod\u0065l" is the key model.
  it("matches a key written with escapes", function()
    local s = '{"mod\\u0065l":"client","x":1}'
    assert.equal("client", cjson.decode(s).model)
    local out, ok = splice.replace(s, "model", NEW)
    assert.is_true(ok)
    assert.equal("NEW", cjson.decode(out).model)
  end)
end)

describe("json_splice.quote", function()
  it("quotes plain strings", function()
    assert.equal('"gpt-4o"', splice.quote("gpt-4o"))
    assert.equal('""', splice.quote(""))
    assert.equal('"meta-llama/Llama-3.1-70B-Instruct"', splice.quote("meta-llama/Llama-3.1-70B-Instruct"))
  end)

  it("escapes quotes and backslashes", function()
    assert.equal([["a\"b"]], splice.quote('a"b'))
    assert.equal([["a\\b"]], splice.quote("a\\b"))
    assert.equal([["\\\""]], splice.quote('\\"'))
  end)

  it("escapes control characters", function()
    assert.equal([["\u000a\u000d\u0009\u0000\u001f"]], splice.quote("\n\r\t\0\31"))
  end)

  it("round-trips through a JSON parser, UTF-8 included", function()
    local all = {}
    for c = 0, 127 do all[#all + 1] = string.char(c) end
    local samples = { table.concat(all), "héllo ✓ 日本", 'x"y\\z\n', "\127" }
    for _, s in ipairs(samples) do
      local q = splice.quote(s)
      local v = cjson.decode('{"m":' .. q .. '}')
      assert.is_table(v, "not JSON: " .. q)
      assert.equal(s, v.m)
      assert.is_nil(q:sub(2, -2):find("[%z\1-\31]"), "raw control char in " .. q)
    end
  end)

  it("returns one value (usable inside a call's argument list)", function()
    assert.equal(1, select("#", splice.quote("a")))
  end)
end)

-- ---------------------------------------------------------------------------
-- property test: random objects as text, replace model, compare with cjson
-- ---------------------------------------------------------------------------

local random = math.random

local function pick(t) return t[random(#t)] end

local WS = { "", "", "", " ", "  ", "\n", "\t", "\r\n  ", " \n\t " }
local function ws() return pick(WS) end

local STR_PIECES = { "a", "b", "model", "{", "}", "[", "]", ":", ",", " ", "\\\"", "\\\\", "\\n",
  "\\t", "\\/", "\\u00e9", "\\u0000", "é", "✓", '\\"model\\":', "\\\\\\\"", "}]", "\\r", "\\b", "\\f" }
local function jstring()
  local n = random(0, 6)
  local parts = {}
  for i = 1, n do parts[i] = pick(STR_PIECES) end
  return '"' .. table.concat(parts) .. '"'
end

local NUMBERS = { "0", "-1", "42", "3.14", "-0.5E-3", "1e400", "-1e400", "12345678901234567890",
  "1E+2", "0.000000000000000000001" }
local KEYS = { "model", "Model", "models", "mode", "messages", "x", "y", "tools", "stream", "a b", "m\\\"" }

local gen_value
local function gen_object(depth, keys)
  local n = random(0, 4)
  if n == 0 then return "{" .. ws() .. "}" end
  local parts = {}
  for i = 1, n do
    local k = keys and keys[i] or pick(KEYS)
    parts[i] = ws() .. '"' .. k .. '"' .. ws() .. ":" .. ws() .. gen_value(depth + 1) .. ws()
  end
  return "{" .. table.concat(parts, ",") .. "}"
end
local function gen_array(depth)
  local n = random(0, 4)
  if n == 0 then return "[" .. ws() .. "]" end
  local parts = {}
  for i = 1, n do parts[i] = ws() .. gen_value(depth + 1) .. ws() end
  return "[" .. table.concat(parts, ",") .. "]"
end
function gen_value(depth)
  local r = random(depth >= 4 and 4 or 7)
  if r == 1 then return jstring()
  elseif r == 2 then return pick(NUMBERS)
  elseif r == 3 then return pick({ "true", "false", "null" })
  elseif r == 4 then return jstring()
  elseif r <= 6 then return gen_object(depth)
  else return gen_array(depth) end
end

-- a top-level object with unique keys; returns text, model start, model end
local function gen_top()
  local names = { "messages", "x", "y", "tools", "stream", "Model", "models", "mode", "a b", "m\\\"" }
  local n = random(0, 6)
  local keys = {}
  for i = #names, 2, -1 do
    local j = random(i)
    names[i], names[j] = names[j], names[i]
  end
  for i = 1, n do keys[i] = names[i] end
  local has_model = random() < 0.9
  if has_model then table.insert(keys, random(#keys + 1), "model") end
  local buf = { ws(), "{" }
  local len = #buf[1] + 1
  local a, b
  for i, k in ipairs(keys) do
    local piece = (i > 1 and "," or "") .. ws() .. '"' .. k .. '"' .. ws() .. ":" .. ws()
    buf[#buf + 1] = piece
    len = len + #piece
    local v = gen_value(1)
    if k == "model" then a, b = len + 1, len + #v end
    buf[#buf + 1] = v
    len = len + #v
    local w = ws()
    buf[#buf + 1] = w
    len = len + #w
  end
  if #keys == 0 then buf[#buf + 1] = ws() end
  buf[#buf + 1] = "}" .. ws()
  return table.concat(buf), a, b
end

local function deep_equal(x, y)
  if type(x) ~= type(y) then return false end
  if type(x) ~= "table" then
    if x ~= x and y ~= y then return true end
    return x == y
  end
  for k, v in pairs(x) do
    if not deep_equal(v, y[k]) then return false end
  end
  for k in pairs(y) do
    if x[k] == nil then return false end
  end
  return true
end

describe("json_splice property", function()
  it("changes only the top-level model for random objects", function()
    math.randomseed(20240611)
    local iterations, with_model = 600, 0
    for iter = 1, iterations do
      local s, a, b = gen_top()
      local orig = cjson.decode(s)
      assert.is_table(orig, "generator produced invalid JSON: " .. s)
      local fa, fb = splice.find(s, "model")
      if a then
        with_model = with_model + 1
        assert.equal(a, fa, "iteration " .. iter .. ": start in " .. s)
        assert.equal(b, fb, "iteration " .. iter .. ": end in " .. s)
        local value = splice.quote("target-" .. iter .. '-"\\')
        local out, ok = splice.replace(s, "model", value)
        assert.is_true(ok)
        assert.equal(s:sub(1, a - 1), out:sub(1, a - 1))
        assert.equal(s:sub(b + 1), out:sub(a + #value))
        assert.equal(#s - (b - a + 1) + #value, #out)
        local got = cjson.decode(out)
        assert.is_table(got, "result is not JSON: " .. out)
        assert.equal("target-" .. iter .. '-"\\', got.model)
        got.model = nil
        orig.model = nil
        assert.is_true(deep_equal(orig, got), "other members changed: " .. s .. " -> " .. out)
      else
        assert.is_nil(fa, "found model in " .. s)
        local out, ok = splice.replace(s, "model", '"X"')
        assert.is_false(ok)
        assert.equal(s, out)
      end
    end
    assert.is_true(with_model > iterations / 2)
  end)
end)
