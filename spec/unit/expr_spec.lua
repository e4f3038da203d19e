local expr = require("moongate.expr")
local regex = require("moongate.regex")

local VARS = {
    request = {
        method = "POST",
        path = "/v1/chat/completions",
        headers = { ["x-model-tier"] = "fast", ["x-tags"] = "a, b", accept = "text/event-stream" },
        model = "gpt-4o",
        stream = false,
        list = { "x", "y" },
    },
    response = { code = 429, headers = { ["retry-after"] = "3" } },
    error = { kind = "timeout" },
    target = { name = "openai-east", provider = "openai", model = "gpt-4o-2024" },
    attempt = 2,
    latency_ms = 1250.5,
    consumer = { name = "alice", team = "ml" },
}

local function eval(src, vars)
    local fn, err = expr.compile(src)
    assert(fn, err)
    return fn(vars == nil and VARS or vars)
end

local function compile_error(src)
    local fn, err = expr.compile(src)
    assert.is_nil(fn, src)
    assert.is_string(err, src)
    return err
end

describe("expr.compile evaluates", function()
    -- { source, expected } against VARS; NULL stands for an expected nil.
    local NULL = {}
    local cases = {
        -- the SPEC examples
        { "response.code == 404 || response.code == 429", true },
        { "request.headers['x-model-tier'] == 'quality'", false },
        { "request.headers['x-model-tier'] == 'fast'", true },
        { "error.kind == 'timeout'", true },
        { "target.name.startsWith('openai')", true },
        -- literals
        { "1", 1 }, { "42", 42 }, { "1.5", 1.5 }, { "2e3", 2000 }, { "1.5E-1", 0.15 },
        { "'single'", "single" }, { '"double"', "double" }, { "''", "" },
        { [['a\'b']], "a'b" }, { [["a\"b"]], 'a"b' }, { [['a\\b']], "a\\b" },
        { [['a\nb\tc']], "a\nb\tc" }, { [["it's"]], "it's" }, { [['say "hi"']], 'say "hi"' },
        { "true", true }, { "false", false }, { "null", NULL },
        { "[1, 'a', true][1]", "a" }, { "[1, 2,][1]", 2 }, { "size([])", 0 },
        -- equality and ordering
        { "1 == 1", true }, { "1 == 1.0", true }, { "1 != 1", false }, { "'a' == 'a'", true },
        { "'a' != 'b'", true }, { "true == true", true }, { "true != false", true },
        { "1 < 2", true }, { "2 < 1", false }, { "1 <= 1", true }, { "2 > 1", true }, { "1 >= 2", false },
        { "'a' < 'b'", true }, { "'b' >= 'a'", true }, { "'abc' > 'abd'", false },
        { "[1, 2] == [1, 2]", true }, { "[1, 2] == [2, 1]", false }, { "[] == []", true },
        { "[1, 2] != [1]", true },
        -- mismatched types: false, never an error
        { "'1' == 1", false }, { "'1' != 1", true }, { "'a' < 1", false }, { "1 >= 'a'", false },
        { "true < false", false }, { "[1] < [2]", false }, { "request.headers > 1", false },
        -- null
        { "request.headers['nope'] == 'x'", false }, { "request.headers['nope'] != 'x'", true },
        { "request.headers['nope'] < 1", false }, { "request.headers['nope'] >= 1", false },
        { "request.headers['nope'] == null", true }, { "request.headers['accept'] == null", false },
        { "request.headers['accept'] != null", true }, { "null == 0", false }, { "null == ''", false },
        { "null == false", false }, { "request.nope.deeper.still", NULL },
        { "request.headers['nope'].contains('x')", false }, { "request.nope.startsWith('x')", false },
        { "request.nope.endsWith('x')", false }, { "request.nope.matches('x')", false },
        { "size(request.nope)", NULL },
        -- logic and short-circuit values
        { "true && true", true }, { "true && false", false }, { "false || true", true },
        { "false || false", false }, { "!true", false }, { "!false", true }, { "!!true", true },
        { "!null", true }, { "!request.headers['nope']", true }, { "!request.headers['accept']", false },
        { "1 && 'x'", true }, { "null || false", false },
        -- precedence
        { "true || true && false", true }, -- && binds tighter: true || (true && false)
        { "(true || true) && false", false },
        { "false && true || true", true },
        { "!true == false", true }, -- (!true) == false
        { "!(true == false)", true },
        { "1 + 2 * 3", 7 }, { "(1 + 2) * 3", 9 }, { "10 - 4 - 3", 3 }, { "2 * 3 == 6", true },
        { "1 + 1 == 2 && 2 < 3", true }, { "-2 * 3", -6 }, { "--2", 2 }, { "-(1 + 2)", -3 },
        { "1 < 2 == true", true }, { "'a' in ['a'] == true", true },
        -- arithmetic
        { "7 / 2", 3.5 }, { "7 % 3", 1 }, { "-7 % 3", -1 }, { "1 / 0", NULL }, { "1 % 0", NULL },
        { "'a' + 'b'", "ab" }, { "request.method + ' ' + request.path", "POST /v1/chat/completions" },
        { "'a' + 1", NULL }, { "1 - 'a'", NULL }, { "'a' * 2", NULL }, { "-'a'", NULL },
        { "latency_ms > 1000", true }, { "attempt + 1", 3 }, { "attempt * 2 == 4", true },
        -- in
        { "response.code in [429, 500, 502]", true }, { "response.code in [500, 502]", false },
        { "request.method in ['GET', 'POST']", true }, { "'y' in request.list", true },
        { "'z' in request.list", false }, { "'x-tags' in request.headers", true },
        { "'nope' in request.headers", false }, { "null in [null]", true }, { "null in [1]", false },
        { "1 in [attempt, 1]", true }, { "attempt in [1, attempt]", true }, { "3 in [attempt, 1]", false },
        { "request.headers['nope'] in ['a']", false }, { "'a' in 'abc'", false }, { "1 in null", false },
        { "[1] in [[1]]", true }, { "[1] in [[2]]", false }, { "-1 in [-1, 2]", true }, { "true in [true]", true },
        { "1 in [1.0]", true }, { "'1' in [1]", false },
        -- member access and index
        { "request.path", "/v1/chat/completions" }, { "request['path']", "/v1/chat/completions" },
        { "request.headers['x-model-tier']", "fast" }, { "request.list[0]", "x" },
        { "request.list[1]", "y" }, { "request.list[2]", NULL }, { "request.list[attempt - 1]", "y" },
        { "request.path.size()", 20 }, { "request.path[0]", NULL }, { "attempt.x", NULL },
        { "request.stream", false }, { "response.headers['retry-after'] == '3'", true },
        { "consumer.team == 'ml'", true }, { "target.provider == 'openai'", true },
        { "request['list'][0]", "x" }, { "request.null", NULL }, { "request.in", NULL },
        -- methods and size
        { "request.headers['x-tags'].contains('b')", true }, -- a repeated header, joined by ", "
        { "request.headers['x-tags'] == 'a, b'", true },
        { "request.headers['x-tags'].contains('c')", false }, { "'abc'.contains('')", true },
        { "'abc'.contains(1)", false }, { "'a.c'.contains('.')", true }, { "'abc'.contains('.')", false },
        { "request.path.startsWith('/v1/')", true }, { "request.path.startsWith('/v2/')", false },
        { "request.path.endsWith('completions')", true }, { "'a'.endsWith('ba')", false },
        { "''.endsWith('')", true }, { "'%d'.startsWith('%')", true },
        { "request.model.matches('^gpt-4(o|-turbo)?$')", true }, { "request.model.matches('^claude')", false },
        { "request.path.matches('chat')", true }, { "'ABC'.matches('(?i)abc')", true },
        { "'x1'.matches('\\\\d')", true },
        { "request.model.matches(target.provider)", false }, { "target.name.matches(target.provider)", true },
        { "size('abc')", 3 }, { "'abc'.size()", 3 }, { "size(request.list)", 2 },
        { "size(request.headers)", 3 }, { "size([1, null, 3])", 3 }, { "size(1)", NULL },
        { "size(request.path) > 10", true },
        -- conditional
        { "true ? 'a' : 'b'", "a" }, { "false ? 'a' : 'b'", "b" }, { "true ? null : 'b'", NULL },
        { "true ? false : true", false }, { "null ? 1 : 2", 2 }, { "false ? 1 : true ? 2 : 3", 2 },
        { "attempt > 1 ? 'retry' : 'first'", "retry" }, { "1 == 1 ? 2 : 3", 2 },
        { "false || true ? 'y' : 'n'", "y" },
    }

    for _, case in ipairs(cases) do
        local src, want = case[1], case[2]
        it(src, function()
            local got = eval(src)
            if want == NULL then
                assert.is_nil(got)
            else
                assert.same(want, got)
            end
        end)
    end

    it("lists are values", function()
        assert.same({ 1, 2 }, { unpack(eval("[1, 2]"), 1, 2) })
        assert.equal(2, eval("size([1, 2])"))
        local t = eval("[attempt, 'x']")
        assert.equal(2, t[1])
        assert.equal("x", t[2])
    end)

    it("returns a Lua function unchanged", function()
        local f = function() return true end
        assert.equal(f, expr.compile(f))
    end)

    it("refuses what is not an expression", function()
        local fn, err = expr.compile(42)
        assert.is_nil(fn)
        assert.equal("expected an expression (a string), got a number", err)
        assert.is_nil((expr.compile(nil)))
        assert.is_nil((expr.compile({})))
    end)

    it("truthy reads null and false as false", function()
        assert.is_false(expr.truthy(nil))
        assert.is_false(expr.truthy(false))
        assert.is_true(expr.truthy(true))
        assert.is_true(expr.truthy(0))
        assert.is_true(expr.truthy(""))
        assert.is_true(expr.truthy({}))
    end)

    it("tolerates missing roots and a missing vars table", function()
        local fn = assert(expr.compile("response.code == 429 || request.headers['x'].contains('y')"))
        assert.is_false(fn({}))
        assert.is_false(fn(nil))
        assert.is_false(fn())
        assert.is_false(fn("a string"))
        assert.is_false(fn({ response = "oops", request = { headers = 7 } }))
        assert.is_false(fn({ response = { code = "429" } }))
    end)

    it("never compares through metamethods", function()
        local mt = { __eq = function() error("__eq") end, __lt = function() error("__lt") end,
            __le = function() error("__le") end, __concat = function() error("__concat") end,
            __len = function() error("__len") end, __unm = function() error("__unm") end,
            __add = function() error("__add") end, __call = function() error("__call") end }
        local a, b = setmetatable({}, mt), setmetatable({}, mt)
        local vars = { request = { a = a, b = b }, response = { a = a } }
        for _, src in ipairs({ "request.a == request.b", "request.a != request.b", "request.a < request.b",
            "request.a <= request.b", "request.a + request.b", "-request.a", "size(request.a)",
            "request.a in [request.b]", "request.a == response.a", "request.a.contains('x')",
            "request.a in request.b", "request.a + 'x'" }) do
            local fn = assert(expr.compile(src))
            assert.has_no.errors(function() fn(vars) end, src)
        end
        assert.is_true(eval("request.a == response.a", vars))
    end)

    it("handles cdata, functions and coroutines in vars", function()
        local ffi = require("ffi")
        local vars = {
            request = { path = ffi.new("int64_t", 5), headers = function() error("called") end,
                model = coroutine.create(function() end), method = ffi.new("char[4]") },
            response = { code = ffi.new("struct { int x; }") },
        }
        for _, src in ipairs({ "request.path == 5", "request.path < 6", "request.path + 1", "-request.path",
            "request.headers['x']", "request.headers == request.headers", "request.model.contains('x')",
            "request.method.matches('x')", "response.code.x", "response.code == null", "!response.code",
            "size(request.path)", "request.path in [5]", "request.path ? 1 : 2", "response.code[0]" }) do
            local fn = assert(expr.compile(src))
            assert.has_no.errors(function() fn(vars) end, src)
        end
    end)

    it("honours __index on vars tables (fields may be built lazily)", function()
        local vars = setmetatable({}, { __index = function(_, k)
            if k == "response" then
                return { code = 429 }
            end
        end })
        assert.is_true(eval("response.code == 429", vars))
    end)
end)

describe("short-circuit", function()
    -- A vars table that records which roots were read.
    local function spy()
        local seen = {}
        local vars = setmetatable({}, { __index = function(_, k)
            seen[k] = true
            return { x = "(", code = 1 }
        end })
        return vars, seen
    end

    it("&& does not evaluate its right side after false", function()
        local vars, seen = spy()
        assert.is_false(eval("false && target.x.matches(target.x)", vars))
        assert.is_nil(seen.target)
        assert.is_false(eval("response.code == 2 && target.x == 'a'", vars))
        assert.is_true(seen.response)
        assert.is_nil(seen.target)
    end)

    it("|| does not evaluate its right side after true", function()
        local vars, seen = spy()
        assert.is_true(eval("true || target.x.matches(target.x)", vars))
        assert.is_true(eval("response.code == 1 || target.x == 'a' || consumer.name == 'b'", vars))
        assert.is_nil(seen.target)
        assert.is_nil(seen.consumer)
    end)

    it("the conditional evaluates one branch", function()
        local vars, seen = spy()
        assert.equal(1, eval("true ? 1 : target.code", vars))
        assert.equal(1, eval("false ? consumer.code : response.code", vars))
        assert.is_nil(seen.target)
        assert.is_nil(seen.consumer)
    end)

    it("a bad computed pattern is false, not an error", function()
        assert.is_false(eval("request.path.matches(request.headers['x-model-tier'] + '(')"))
        assert.is_false(eval("request.path.matches(attempt)"))
    end)
end)

describe("compile errors", function()
    it("name the column", function()
        assert.equal('column 1: unknown variable "respons"', compile_error("respons.code == 429"))
        assert.equal('column 16: unknown variable "respons"', compile_error("attempt > 1 || respons.code == 429"))
        assert.equal('column 6: unexpected token ")"', compile_error("1 == )"))
        assert.equal('column 3: unexpected token "2"', compile_error("1 2"))
        assert.equal("column 6: unexpected end of expression", compile_error("1 == "))
        assert.equal("column 6: unterminated string", compile_error("1 == 'abc"))
        assert.equal("column 1: unterminated string", compile_error("'abc\\"))
        assert.equal('column 3: invalid escape "\\\\q" in string', compile_error("'a\\q'"))
        assert.equal("column 22: invalid regular expression: missing closing parenthesis "
            .. "(at offset 1 of the pattern)", compile_error("request.path.matches('(')"))
        assert.equal('column 14: unknown function "rep"', compile_error("request.path.rep(3)"))
        assert.equal('column 1: unknown function "load"', compile_error("load('x')"))
        assert.equal('column 7: expected ")", found end of expression', compile_error("(1 + 2"))
        assert.equal('column 7: expected "]", found token "3"', compile_error("[1, 2 3]"))
        assert.equal('column 9: expected ":", found end of expression', compile_error("true ? 1"))
        assert.equal('column 9: unexpected character "=" (use "==" to compare)', compile_error("attempt = 1"))
        assert.equal('column 1: unknown variable "a"', compile_error("a = 1"))
        assert.equal('column 9: unexpected character "&" (use "&&")', compile_error("attempt & 1"))
        assert.equal('column 3: unexpected character "@"', compile_error("1 @ 2"))
        assert.equal("column 2: unexpected byte 0xff", compile_error("1\255"))
        assert.equal("column 1: empty expression", compile_error(""))
        assert.equal("column 1: empty expression", compile_error("  \n\t"))
        assert.equal('column 1: unexpected token "in"', compile_error("in [1]"))
        assert.equal('column 9: expected a field or method name after ".", found token "1"',
            compile_error("request.1"))
        assert.equal('column 14: function "contains" takes 1 argument, got 2',
            compile_error("request.path.contains('a', 'b')"))
        assert.equal('column 1: function "size" takes 1 argument, got 0', compile_error("size()"))
        assert.equal('column 14: function "size" takes 0 arguments, got 1', compile_error("request.path.size(1)"))
        assert.equal("column 22: the pattern of matches must be a string", compile_error("request.path.matches(1)"))
    end)

    it("refuse long expressions", function()
        local src = string.rep("1 + ", 1100) .. "1"
        assert.equal("column 4097: expression longer than 4096 bytes", compile_error(src))
        assert.truthy(expr.compile(string.rep(" ", 4095) .. "1"))
        assert.equal("column 4097: expression longer than 4096 bytes", compile_error(string.rep(" ", 4096) .. "1"))
    end)

    it("refuse nesting deeper than 64 levels", function()
        local function nest(n, open, close, core)
            return string.rep(open, n) .. core .. string.rep(close, n)
        end
        -- the whole expression is one level
        assert.equal(1, eval(nest(63, "(", ")", "1")))
        assert.equal("column 65: expression nested deeper than 64 levels", compile_error(nest(64, "(", ")", "1")))
        assert.truthy(expr.compile(nest(63, "[", "]", "1")))
        assert.equal("column 65: expression nested deeper than 64 levels", compile_error(nest(64, "[", "]", "1")))
        assert.is_true(eval(string.rep("!", 62) .. "true"))
        assert.equal("column 64: expression nested deeper than 64 levels",
            compile_error(string.rep("!", 64) .. "true"))
        for _, shape in ipairs({
            { "size(", ")", "'a'" }, { "request.path.contains(", ")", "'a'" }, { "request[", "]", "'a'" },
            { "attempt + (", ")", "1" }, { "true && (", ")", "true" }, { "attempt in [", "]", "1" },
            { "attempt ? 1 : ", "", "2" }, { "-", "", "attempt" }, { "[1, 2, attempt, ", "]", "1" },
        }) do
            local ok = nest(63, shape[1], shape[2], shape[3])
            local fn, err = expr.compile(ok)
            assert(fn, err)
            assert.has_no.errors(function() fn(VARS) end)
            assert.matches("^column %d+: expression nested deeper than 64 levels$",
                compile_error(nest(64, shape[1], shape[2], shape[3])))
        end
    end)

    it("accept long chains (they are not nesting)", function()
        for _, src in ipairs({
            string.rep("attempt == 1 || ", 250) .. "true",
            string.rep("attempt != 1 && ", 250) .. "true",
            string.rep("attempt + ", 400) .. "1",
            string.rep("1 + ", 1000) .. "1",
            string.rep("1 == ", 800) .. "1",
            "request" .. string.rep(".a", 2000),
            "request" .. string.rep("[0]", 1300),
            "[" .. string.rep("attempt,", 500) .. "1]",
            "attempt in [" .. string.rep("1,", 2000) .. "1]",
            "attempt in [" .. string.rep("attempt,", 500) .. "1]",
        }) do
            local fn, err = expr.compile(src)
            assert(fn, err)
            assert.has_no.errors(function() fn(VARS) end)
        end
        assert.equal(1001, eval(string.rep("1 + ", 1000) .. "1"))
    end)
end)

describe("hostile input", function()
    local function harmless(src)
        local ok, fn, err = pcall(expr.compile, src)
        assert.is_true(ok, "compile threw for " .. src)
        if fn then
            local ok2, v = pcall(fn, VARS)
            assert.is_true(ok2, "evaluation threw for " .. src)
            assert.is_true(type(v) ~= "function" and type(v) ~= "userdata", src)
            return v
        end
        assert.matches("^column %d+: ", err)
        return nil, err
    end

    it("cannot reach Lua globals", function()
        for _, src in ipairs({ "os.execute('x')", "_G", "_G.os", "load('x')", "require('os')", "getmetatable('')",
            "setmetatable(request, null)", "io.open('/etc/passwd')", "string.rep('x', 10)", "print(1)", "debug",
            "rawget(request, 'path')", "loadstring('x')", "dofile('x')", "pcall(size)", "_ENV", "self", "v", "K",
            "F", "T", "get", "eq", "box", "NK", "unbox('x')", "dmatch('a', 'b')" }) do
            local v, err = harmless(src)
            assert.is_nil(v, src)
            assert.matches("unknown %a+ ", err, src)
        end
    end)

    it("member access on strings and odd names reads nothing", function()
        for _, src in ipairs({ "request.__index", "request.__metatable", "('a').rep", "'x'.len", "request.path.sub",
            "request.path['rep']", "request.path.__index", "request['__index']", "attempt.__index",
            "request.headers.__newindex", "request[null]", "request[0/0 == 1]" }) do
            assert.is_nil(harmless(src), src)
        end
    end)

    it("cannot call string methods", function()
        for _, src in ipairs({ "'x'.rep(1e9)", "('a').rep(10)", "request.path.rep(1e9)", "'x'.format('%s')",
            "'x'.len()", "request.path.gsub('a', 'b')", "request.path['rep'](3)", "(request.path.rep)(3)",
            "request.path.rep (3)" }) do
            local v, err = harmless(src)
            assert.is_nil(v, src)
            assert.is_string(err, src)
        end
    end)

    it("code injection through strings stays a string", function()
        for _, case in ipairs({
            { [['") os.exit(1) --']], '") os.exit(1) --' },
            { [["\") os.exit(1) --"]], '") os.exit(1) --' },
            { [['\\" .. os.exit(1) .. "']], '\\" .. os.exit(1) .. "' },
            { "'a\\nend os.exit(1) --'", "a\nend os.exit(1) --" },
            { "']] os.exit(1) --[['", "]] os.exit(1) --[[" },
            { "'line\nbreak' + \"\\\\\"", "line\nbreak\\" },
            { "'\0\1\127\255'", "\0\1\127\255" },
        }) do
            assert.equal(case[2], harmless(case[1]), case[1])
        end
        assert.is_false(harmless("request.headers[']=os.exit(1)--'] == 'x'"))
        assert.is_nil(harmless("request[']'][\"]]\"]"))
    end)

    it("big, deep or strange inputs are refused or harmless", function()
        harmless(string.rep("a", 100 * 1024))
        harmless(string.rep("(", 10000) .. "1" .. string.rep(")", 10000))
        harmless(string.rep("[", 10000) .. string.rep("]", 10000))
        harmless(string.rep("[", 2000))
        harmless(string.rep("!", 4096))
        harmless(string.rep("-", 4096))
        harmless(string.rep("request.path.contains(", 200))
        harmless(string.rep("true ? ", 2000))
        harmless(string.rep("'", 4096))
        harmless(string.rep("\\", 4096))
        harmless("'" .. string.rep("\\\\", 2000) .. "'")
        harmless("1e999 > 1")
        assert.is_true(harmless("1e999 == 1e999"))
        harmless(string.rep("9", 4000))
        harmless("\0")
        harmless("'\0' == '\0'")
        harmless("request.path.matches('" .. string.rep("(a+)+", 200) .. "$')")
        assert.is_false(harmless("'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab'.matches('^(a+)+$')"))
    end)

    it("generated code holds no user identifiers", function()
        local src = assert(expr.lua_source("request.headers.os == 'x' && request.execute['_G'] in [1, 2]"))
        assert.truthy(src:find('"os"', 1, true))
        assert.falsy(src:find("[^\"]os[^\"]"))
        assert.falsy(src:find("_G[^\"]"))
    end)
end)

describe("randomised", function()
    local SEED = 20240517
    local rng -- a small LCG of its own, so the cases do not depend on math.random's implementation
    local function random(n)
        rng = (rng * 1103515245 + 12345) % 2147483648
        return rng % n + 1
    end

    local TOKENS = {
        "request", "response", "error", "target", "attempt", "latency_ms", "consumer",
        "method", "path", "headers", "model", "stream", "code", "kind", "name", "provider", "team",
        ".", ".", ".", "[", "]", "(", ")", ",", "==", "!=", "<", "<=", ">", ">=", "&&", "||", "!", "-", "+",
        "*", "/", "%", "?", ":", "in", "true", "false", "null", "0", "1", "429", "1.5", "2e3", "'x'",
        "'x-model-tier'", "'a, b'", "''", "\"q\"", "contains", "startsWith", "endsWith", "matches", "size",
        "'('", "'^a.*'", "'[a-z]+'", "os", "_G", "rep", "'\\n'", "[1, 2]", "['a', null]",
    }

    local function soup()
        local out = {}
        for i = 1, random(25) do
            out[i] = TOKENS[random(#TOKENS)]
        end
        return table.concat(out, random(3) == 1 and "" or " ")
    end

    local ROOT_NAMES = { "request", "response", "error", "target", "attempt", "latency_ms", "consumer" }
    local FIELDS = { "method", "path", "headers", "model", "stream", "code", "kind", "name", "x" }
    local LITERALS = { "0", "1", "-1", "429", "1.5", "'x'", "''", "'a, b'", "'('", "true", "false", "null",
        "[]", "[1, 'x', null]" }
    local BINOPS = { "==", "!=", "<", "<=", ">", ">=", "&&", "||", "in", "+", "-", "*", "/", "%" }
    local METHOD_NAMES = { "contains", "startsWith", "endsWith", "matches" }

    -- A random expression from the grammar (it may still not compile: e.g. a literal bad pattern).
    local function gen(depth)
        local r = depth > 4 and random(2) or random(9)
        if r == 1 then
            return LITERALS[random(#LITERALS)]
        elseif r == 2 then
            local out = ROOT_NAMES[random(#ROOT_NAMES)]
            for _ = 1, random(3) - 1 do
                out = out .. (random(2) == 1 and "." .. FIELDS[random(#FIELDS)] or "['x-model-tier']")
            end
            return out
        elseif r <= 5 then
            return gen(depth + 1) .. " " .. BINOPS[random(#BINOPS)] .. " " .. gen(depth + 1)
        elseif r == 6 then
            return (random(2) == 1 and "!" or "-") .. gen(depth + 1)
        elseif r == 7 then
            return "(" .. gen(depth + 1) .. ")." .. METHOD_NAMES[random(#METHOD_NAMES)] .. "(" .. gen(depth + 1) .. ")"
        elseif r == 8 then
            return random(2) == 1 and "size(" .. gen(depth + 1) .. ")" or "[" .. gen(depth + 1) .. ", " .. gen(depth + 1) .. "]"
        end
        return gen(depth + 1) .. " ? " .. gen(depth + 1) .. " : " .. gen(depth + 1)
    end

    local function bytes()
        local out = {}
        for i = 1, random(60) do
            out[i] = string.char(random(256) - 1)
        end
        return table.concat(out)
    end

    local function value(depth)
        local r = random(12)
        if r == 1 then
            return nil
        elseif r == 2 then
            return random(1000) - 500
        elseif r == 3 then
            return random(2) == 1
        elseif r == 4 then
            return ({ "", "x", "a, b", "(", "gpt-4o", string.rep("z", 10000) })[random(6)]
        elseif r == 5 then
            return 0 / 0
        elseif r == 6 then
            return function() error("called") end
        elseif r == 7 and depth < 3 then
            return { value(depth + 1), value(depth + 1), value(depth + 1) }
        elseif r <= 10 and depth < 3 then
            local t = {}
            for _, k in ipairs({ "method", "path", "headers", "model", "code", "kind", "name", "x-model-tier",
                "a, b", "x" }) do
                if random(2) == 1 then
                    t[k] = value(depth + 1)
                end
            end
            if random(5) == 1 then
                t.self = t
            end
            return t
        end
        return math.huge
    end

    local function vars()
        local v = {}
        for _, root in ipairs({ "request", "response", "error", "target", "attempt", "latency_ms", "consumer" }) do
            v[root] = value(0)
        end
        return v
    end

    it("compile never throws and compiled functions never throw", function()
        rng = SEED
        print("expr randomised spec seed: " .. SEED)
        local VARSETS = { {}, VARS }
        for i = 3, 8 do
            VARSETS[i] = vars()
        end
        local compiled = 0
        for case = 1, 2000 do
            local kind = case % 4
            local src = kind == 0 and bytes() or kind == 1 and soup() or gen(0)
            local ok, fn, err = pcall(expr.compile, src)
            assert(ok, "compile threw on case " .. case .. ": " .. tostring(fn))
            if fn then
                assert.is_function(fn)
                compiled = compiled + 1
                for _, v in ipairs(VARSETS) do
                    local ok2, e2 = pcall(fn, v)
                    assert(ok2, ("case %d %q threw: %s"):format(case, src, tostring(e2)))
                end
                assert.has_no.errors(function() fn(nil) end)
            else
                assert.is_string(err)
                assert.matches("^column %d+: ", err, src)
            end
        end
        assert.is_true(compiled > 800, "too few random cases compiled: " .. compiled)
    end)
end)

describe("regex", function()
    it("matches with PCRE2 syntax", function()
        local re = assert(regex.compile("^gpt-4(o|-turbo)?$"))
        assert.is_true(re:find("gpt-4o"))
        assert.is_true(re:find("gpt-4"))
        assert.is_false(re:find("gpt-3.5"))
        assert.is_true(assert(regex.compile("(?i)^HELLO\\s+\\w+")):find("hello   world"))
        assert.is_true(assert(regex.compile("a\\d{2,}b")):find("xxa123b"))
        assert.is_true(assert(regex.compile("(?<=x)y")):find("xy"))
    end)

    it("reuses a compiled pattern", function()
        local re = assert(regex.compile("b+"))
        for _ = 1, 1000 do
            assert.is_true(re:find("abbbc"))
            assert.is_false(re:find("ac"))
        end
    end)

    it("treats non-strings and invalid UTF-8 subjects as no match", function()
        local re = assert(regex.compile("."))
        assert.is_false(re:find(nil))
        assert.is_false(re:find(1))
        assert.is_false(re:find(""))
        assert.is_true(re:find("\255\254a"))
        assert.is_true(assert(regex.compile("é")):find("café"))
    end)

    it("handles NUL bytes in pattern and subject", function()
        local re = assert(regex.compile("a\0b"))
        assert.is_true(re:find("xa\0by"))
        assert.is_false(re:find("ab"))
    end)

    it("reports a bad pattern with PCRE2's message and offset", function()
        local re, err, off = regex.compile("(")
        assert.is_nil(re)
        assert.equal("missing closing parenthesis", err)
        assert.equal(1, off)
        re, err = regex.compile("a{2,1}")
        assert.is_nil(re)
        assert.is_string(err)
        assert.is_nil((regex.compile("\\C")))
        assert.is_nil((regex.compile(nil)))
    end)

    it("gives up on catastrophic backtracking instead of hanging", function()
        local re = assert(regex.compile("^(a+)+$"))
        assert.is_false(re:find(string.rep("a", 40) .. "b"))
    end)
end)

describe("expr.roots", function()
    it("names the variables an expression reads, and only those", function()
        assert.same({ response = true }, expr.roots("response.code == 404 || response.code == 429"))
        assert.same({ request = true, consumer = true },
            expr.roots('request.headers["x-tier"] == "gold" && consumer.team in ["a", "b"]'))
        assert.same({ error = true, attempt = true, latency_ms = true },
            expr.roots('error.kind == "timeout" || (attempt > 1 && latency_ms > 500)'))
        assert.same({ target = true }, expr.roots('size(target.name) > 0 && "request".contains("q")'))
        assert.same({}, expr.roots("1 == 1"))
    end)

    it("says nothing of what it cannot read", function()
        assert.is_nil(expr.roots(function() return true end))
        assert.is_nil(expr.roots("response.code =="))
        assert.is_nil(expr.roots(string.rep("a", 5000)))
    end)
end)
