-- moongate.expr — the expression compiler (SPEC §4; reference: docs/expressions.md).
--
--   local fn, err = expr.compile(src)   -- err is "column N: message"; the caller prefixes the path
--   local value = fn(vars)              -- never throws, whatever vars holds
--   if expr.truthy(value) then ... end
--
-- CEL-style source is parsed once (recursive descent, one token of look-ahead) into an AST, the AST
-- is turned into Lua source text, and that text is loaded with an empty environment: the generated
-- code can reach only the runtime helpers below, passed in as upvalues. User text reaches the
-- generated code only as string literals written with %q (and numbers written with %.17g); variable
-- and field names are emitted as quoted index strings (`get(get(v, "request"), "path")`), never as
-- Lua identifiers. Compiled regular expressions and constant lists travel in a constant table K.
--
-- Run-time safety comes from the helpers: they index only tables, compare only values of the same
-- primitive type (tables by identity or element by element, never through metamethods), do
-- arithmetic only on numbers and concatenation only on strings, so no evaluation needs a pcall.
-- Metamethods on tables inside vars are honoured when indexing (the runtime may build fields
-- lazily with __index); such a metamethod must not throw.
--
-- Limits: 4096 bytes of source and 64 levels of nesting (parentheses, brackets, call arguments,
-- unary operators, conditional branches). Long chains (`a || b || ...`, `a + b + ...`, `a.b.c...`)
-- are not nesting; to keep the generated Lua inside LuaJIT's parser limits (200 syntax levels, 250
-- registers) deep generated code is split into helper functions (F[i]) at a fixed budget.

local regex = require("moongate.regex")

local type = type
local pcall = pcall
local error = error
local next = next
local rawget = rawget
local rawequal = rawequal
local setfenv = setfenv
local loadstring = loadstring
local tostring = tostring
local tonumber = tonumber
local ipairs = ipairs
local unpack = unpack
local setmetatable = setmetatable
local format = string.format
local byte = string.byte
local sub = string.sub
local find = string.find
local gsub = string.gsub
local concat = table.concat
local fmod = math.fmod
local HUGE = math.huge
local rawlen = rawlen or function(t) return #t end -- luacheck: ignore (LuaJIT without 5.2 compat)

local _M = { _VERSION = "0.1" }

local MAX_LENGTH = 4096
local MAX_DEPTH = 64
local HOIST_BUDGET = 100 -- estimated Lua syntax levels / registers before code moves to a helper function
local REGEX_CACHE_SIZE = 64

local ROOTS = {
    request = true, response = true, error = true, target = true,
    attempt = true, latency_ms = true, consumer = true,
}
-- method name -> number of arguments
local METHODS = { contains = 1, startsWith = 1, endsWith = 1, matches = 1, size = 0 }
-- global function name -> number of arguments
local FUNCTIONS = { size = 1 }
local KEYWORDS = { ["true"] = true, ["false"] = false, ["null"] = "null" }

-- ============================ run-time helpers ============================
-- Every helper takes any Lua values and never throws.

-- NK: private key holding the length of a list built by a list literal (its elements may be null).
local NK = setmetatable({}, { __tostring = function() return "moongate.expr.length" end })
-- Boxes for the conditional operator: `c and box(a) or b` needs a truthy stand-in for nil/false.
local BOX_NIL, BOX_FALSE = {}, {}

local function truthy(x)
    local t = type(x)
    if t == "boolean" then
        return x
    end
    return t ~= "nil"
end

local function box(x)
    if x == nil then
        return BOX_NIL
    elseif x == false then
        return BOX_FALSE
    end
    return x
end

local function unbox(x)
    if rawequal(x, BOX_NIL) then
        return nil
    elseif rawequal(x, BOX_FALSE) then
        return false
    end
    return x
end

local function get(t, k)
    if type(t) == "table" then
        return t[k]
    end
    return nil
end

-- idx: `a[k]` with a computed key; numbers index lists from 0 as CEL does.
local function idx(t, k)
    if type(t) == "table" then
        if type(k) == "number" then
            return t[k + 1]
        end
        return t[k]
    end
    return nil
end

local function len(t)
    return rawget(t, NK) or rawlen(t)
end

local function empty(t)
    local k = next(t)
    if rawequal(k, NK) then
        k = next(t, k)
    end
    return k == nil
end

-- Equality of scalars; tables only by identity.
local function eq0(a, b)
    local ta = type(a)
    if ta ~= type(b) then
        return false
    end
    if ta == "number" or ta == "string" or ta == "boolean" then
        return a == b
    end
    if ta == "nil" then
        return true
    end
    return rawequal(a, b)
end

-- eq: null == null; lists compare element by element (one level), maps by identity.
local function eq(a, b)
    local ta = type(a)
    if ta ~= type(b) then
        return false
    end
    if ta == "table" then
        if rawequal(a, b) then
            return true
        end
        local n = len(a)
        if n ~= len(b) then
            return false
        end
        if n == 0 then
            return empty(a) and empty(b)
        end
        for i = 1, n do
            if not eq0(a[i], b[i]) then
                return false
            end
        end
        return true
    end
    return eq0(a, b)
end

local function ne(a, b)
    return not eq(a, b)
end

local function ordered(a, b)
    local ta = type(a)
    return (ta == "number" or ta == "string") and ta == type(b)
end

local function lt(a, b) return ordered(a, b) and a < b end
local function le(a, b) return ordered(a, b) and a <= b end
local function gt(a, b) return ordered(a, b) and a > b end
local function ge(a, b) return ordered(a, b) and a >= b end

local function add(a, b)
    local ta = type(a)
    if ta == type(b) then
        if ta == "number" then
            return a + b
        elseif ta == "string" then
            return a .. b
        end
    end
    return nil
end

local function sub_(a, b)
    if type(a) == "number" and type(b) == "number" then
        return a - b
    end
    return nil
end

local function mul(a, b)
    if type(a) == "number" and type(b) == "number" then
        return a * b
    end
    return nil
end

local function div(a, b)
    if type(a) == "number" and type(b) == "number" and b ~= 0 then
        return a / b
    end
    return nil
end

local function mod(a, b)
    if type(a) == "number" and type(b) == "number" and b ~= 0 then
        return fmod(a, b)
    end
    return nil
end

local function neg(a)
    if type(a) == "number" then
        return -a
    end
    return nil
end

-- member: `x in t` for a list value (element) or a map value (string key).
local function member(x, t)
    if type(t) ~= "table" then
        return false
    end
    for i = 1, len(t) do
        if eq(x, t[i]) then
            return true
        end
    end
    if type(x) == "string" and t[x] ~= nil then
        return true
    end
    return false
end

-- inset: `x in [constants]`, the list turned into a set at compile time (null stored under NK).
local function inset(x, set)
    local t = type(x)
    if t == "nil" then
        return set[NK] == true
    elseif t == "number" or t == "string" or t == "boolean" then
        return set[x] == true
    end
    return false
end

local function contains(s, x)
    return type(s) == "string" and type(x) == "string" and find(s, x, 1, true) ~= nil
end

local function starts(s, p)
    return type(s) == "string" and type(p) == "string" and #p <= #s and sub(s, 1, #p) == p
end

local function ends(s, p)
    return type(s) == "string" and type(p) == "string" and #p <= #s and sub(s, #s - #p + 1) == p
end

local function size(x)
    local t = type(x)
    if t == "string" then
        return #x
    elseif t == "table" then
        local n = len(x)
        if n > 0 then
            return n
        end
        for k in next, x do
            if not rawequal(k, NK) then
                n = n + 1
            end
        end
        return n
    end
    return nil
end

-- rmatch: `s.matches('literal')`, the pattern compiled with the expression.
local function rmatch(re, s)
    return type(s) == "string" and re:find(s)
end

-- dmatch: `s.matches(computed)`; patterns cached (bounded); a bad pattern is false.
local rcache, rcached = {}, 0
local function dmatch(s, p)
    if type(s) ~= "string" or type(p) ~= "string" then
        return false
    end
    local re = rcache[p]
    if re == nil then
        re = regex.compile(p) or false
        if rcached >= REGEX_CACHE_SIZE then
            rcache, rcached = {}, 0
        end
        rcache[p] = re
        rcached = rcached + 1
    end
    return re ~= false and re:find(s)
end

-- The helpers as the generated chunk receives them (its `...`), in this order.
local HELPER_NAMES = {
    "T", "box", "unbox", "get", "idx", "eq", "ne", "lt", "le", "gt", "ge", "add", "sub", "mul", "div",
    "mod", "neg", "member", "inset", "contains", "starts", "ends", "size", "rmatch", "dmatch", "NK",
}
local HELPERS = {
    truthy, box, unbox, get, idx, eq, ne, lt, le, gt, ge, add, sub_, mul, div,
    mod, neg, member, inset, contains, starts, ends, size, rmatch, dmatch, NK,
}
local CHUNK_HEAD = "local " .. concat(HELPER_NAMES, ", ") .. ", K, F = ...\n"

-- ================================ lexer =================================

local function show(text)
    if #text > 40 then
        text = sub(text, 1, 40) .. "..."
    end
    return '"' .. gsub(text, '[%c"\\\128-\255]', function(c)
        if c == '"' or c == "\\" then
            return "\\" .. c
        end
        return format("\\x%02x", byte(c))
    end) .. '"'
end

local function fail(col, msg)
    error({ col = col, msg = msg }, 0)
end

local ESCAPES = { ["\\"] = "\\", ["'"] = "'", ['"'] = '"', n = "\n", t = "\t", r = "\r" }
local TWO = { ["=="] = true, ["!="] = true, ["<="] = true, [">="] = true, ["&&"] = true, ["||"] = true }
local ONE = {
    ["<"] = true, [">"] = true, ["!"] = true, ["("] = true, [")"] = true, ["["] = true, ["]"] = true,
    [","] = true, ["."] = true, ["+"] = true, ["-"] = true, ["*"] = true, ["/"] = true, ["%"] = true,
    ["?"] = true, [":"] = true,
}
local HINTS = { ["="] = ' (use "==" to compare)', ["&"] = ' (use "&&")', ["|"] = ' (use "||")' }

-- Reads the token at byte i: { t = "num"|"str"|"id"|"op"|"eof", v = value, col = i, text = source }.
-- Throws { col, msg } on bad input.
local function read_token(src, i)
    i = find(src, "[^ \t\r\n]", i) or #src + 1
    if i > #src then
        return { t = "eof", col = i, text = "" }, i
    end
    local c = sub(src, i, i)
    local s, e = find(src, "^[%a_][%w_]*", i)
    if s then
        local text = sub(src, s, e)
        return { t = "id", v = text, col = i, text = text }, e + 1
    end
    s, e = find(src, "^%d+", i)
    if s then
        local _, e2 = find(src, "^%.%d+", e + 1)
        e = e2 or e
        _, e2 = find(src, "^[eE][+-]?%d+", e + 1)
        e = e2 or e
        local text = sub(src, s, e)
        return { t = "num", v = tonumber(text), col = i, text = text }, e + 1
    end
    if c == "'" or c == '"' then
        local parts, j = {}, i + 1
        while true do
            local k = find(src, c == "'" and "['\\]" or '["\\]', j)
            if not k then
                fail(i, "unterminated string")
            end
            parts[#parts + 1] = sub(src, j, k - 1)
            if sub(src, k, k) == c then
                j = k + 1
                break
            end
            local esc = sub(src, k + 1, k + 1)
            local rep = ESCAPES[esc]
            if not rep then
                if esc == "" then
                    fail(i, "unterminated string")
                end
                fail(k, "invalid escape " .. show("\\" .. esc) .. " in string")
            end
            parts[#parts + 1] = rep
            j = k + 2
        end
        return { t = "str", v = concat(parts), col = i, text = sub(src, i, j - 1) }, j
    end
    local two = sub(src, i, i + 1)
    if TWO[two] then
        return { t = "op", v = two, col = i, text = two }, i + 2
    end
    if ONE[c] then
        return { t = "op", v = c, col = i, text = c }, i + 1
    end
    if find(c, "^[%c\128-\255]") then
        fail(i, format("unexpected byte 0x%02x", byte(c)))
    end
    fail(i, "unexpected character " .. show(c) .. (HINTS[c] or ""))
end

-- token(src, i): as read_token, but a lexical error comes back as an "err" token, raised only when
-- the parser looks at it, so that an earlier problem (an unknown variable, say) is reported first.
local function token(src, i)
    local ok, t, j = pcall(read_token, src, i)
    if ok then
        return t, j
    end
    if type(t) ~= "table" then
        error(t, 0)
    end
    return { t = "err", col = t.col, msg = t.msg, text = "" }, #src + 1
end

-- ================================ parser ================================
-- AST nodes: { k = "lit", v = value } (null: v == nil), { k = "list", items }, { k = "root", name },
-- { k = "get", o, key }, { k = "call", f, args, re }, { k = "not", x }, { k = "neg", x },
-- { k = "bin", op, a, b }, { k = "and" | "or", items }, { k = "cond", c, a, b }.
-- `bool` marks nodes that always yield a boolean (no truthy() needed around them).

local RELATIONS = { ["=="] = "eq", ["!="] = "ne", ["<"] = "lt", ["<="] = "le", [">"] = "gt", [">="] = "ge" }
local ADDITIVE = { ["+"] = "add", ["-"] = "sub" }
local MULTIPLICATIVE = { ["*"] = "mul", ["/"] = "div", ["%"] = "mod" }
local BOOL_CALLS = { contains = true, startsWith = true, endsWith = true, matches = true }

local function describe(t)
    if t.t == "eof" then
        return "end of expression"
    end
    return "token " .. show(t.text)
end

local function parse(src)
    local tok, at = token(src, 1)
    local depth = 0

    local function advance()
        local t = tok
        if t.t == "err" then
            fail(t.col, t.msg)
        end
        tok, at = token(src, at)
        return t
    end

    local function is_op(v)
        return tok.t == "op" and tok.v == v
    end

    local function accept(v)
        if tok.t == "op" and tok.v == v then
            return advance()
        end
    end

    local function expect(v)
        if not accept(v) then
            if tok.t == "err" then
                fail(tok.col, tok.msg)
            end
            fail(tok.col, format('expected "%s", found %s', v, describe(tok)))
        end
    end

    local function unexpected(t)
        if t.t == "err" then
            fail(t.col, t.msg)
        elseif t.t == "eof" then
            fail(t.col, "unexpected end of expression")
        end
        fail(t.col, "unexpected " .. describe(t))
    end

    local function enter(t)
        depth = depth + 1
        if depth > MAX_DEPTH then
            fail(t.col, "expression nested deeper than " .. MAX_DEPTH .. " levels")
        end
    end

    local expression

    local function arguments()
        local args = {}
        if accept(")") then
            return args
        end
        while true do
            args[#args + 1] = expression()
            if not accept(",") then
                expect(")")
                return args
            end
        end
    end

    local function call(name, args, recv)
        local want = recv and METHODS[name.v] or FUNCTIONS[name.v]
        local got = #args
        if recv then
            table.insert(args, 1, recv)
        end
        if got ~= want then
            fail(name.col, format('function "%s" takes %d argument%s, got %d', name.v, want,
                want == 1 and "" or "s", got))
        end
        local node = { k = "call", f = name.v, args = args, bool = BOOL_CALLS[name.v] }
        if name.v == "matches" then
            local p = args[2]
            if p.k == "lit" then
                if type(p.v) ~= "string" then
                    fail(p.col, "the pattern of matches must be a string")
                end
                local re, err, off = regex.compile(p.v)
                if not re then
                    fail(p.col, format("invalid regular expression: %s (at offset %d of the pattern)",
                        err, off or 0))
                end
                node.re = re
            end
        end
        return node
    end

    local function primary()
        local t = advance()
        if t.t == "num" or t.t == "str" then
            return { k = "lit", v = t.v, col = t.col }
        elseif t.t == "id" then
            local kw = KEYWORDS[t.v]
            if kw ~= nil then
                if kw == "null" then
                    return { k = "lit", v = nil, col = t.col }
                end
                return { k = "lit", v = kw, col = t.col, bool = true }
            end
            if is_op("(") then
                if not FUNCTIONS[t.v] then
                    fail(t.col, "unknown function " .. show(t.v))
                end
                advance()
                return call(t, arguments())
            end
            if t.v == "in" then
                unexpected(t)
            end
            if not ROOTS[t.v] then
                fail(t.col, "unknown variable " .. show(t.v))
            end
            return { k = "root", name = t.v, col = t.col }
        elseif t.t == "op" and t.v == "(" then
            local n = expression()
            expect(")")
            return n
        elseif t.t == "op" and t.v == "[" then
            local items = {}
            if not accept("]") then
                while true do
                    items[#items + 1] = expression()
                    if accept(",") then
                        if accept("]") then
                            break
                        end
                    else
                        expect("]")
                        break
                    end
                end
            end
            return { k = "list", items = items, col = t.col }
        end
        unexpected(t)
    end

    local function postfix()
        local n = primary()
        while true do
            if is_op(".") then
                advance()
                local name = advance()
                if name.t ~= "id" then
                    fail(name.col, 'expected a field or method name after ".", found ' .. describe(name))
                end
                if is_op("(") then
                    if not METHODS[name.v] then
                        fail(name.col, "unknown function " .. show(name.v))
                    end
                    advance()
                    n = call(name, arguments(), n)
                else
                    n = { k = "get", o = n, key = { k = "lit", v = name.v }, col = name.col }
                end
            elseif is_op("[") then
                local open = advance()
                local key = expression()
                expect("]")
                n = { k = "get", o = n, key = key, col = open.col }
            else
                return n
            end
        end
    end

    local function unary()
        if is_op("!") or is_op("-") then
            local t = advance()
            enter(t)
            local x = unary()
            depth = depth - 1
            if t.v == "!" then
                return { k = "not", x = x, bool = true }
            end
            if x.k == "lit" and type(x.v) == "number" then
                return { k = "lit", v = -x.v, col = t.col }
            end
            return { k = "neg", x = x }
        end
        return postfix()
    end

    local function binary(next_level, ops)
        return function()
            local a = next_level()
            while tok.t == "op" and ops[tok.v] do
                local op = ops[advance().v]
                a = { k = "bin", op = op, a = a, b = next_level() }
            end
            return a
        end
    end

    local multiplicative = binary(unary, MULTIPLICATIVE)
    local additive = binary(multiplicative, ADDITIVE)

    local function relation()
        local a = additive()
        while true do
            if tok.t == "op" and RELATIONS[tok.v] then
                local op = RELATIONS[advance().v]
                a = { k = "bin", op = op, a = a, b = additive(), bool = true }
            elseif tok.t == "id" and tok.v == "in" then
                advance()
                a = { k = "bin", op = "in", a = a, b = additive(), bool = true }
            else
                return a
            end
        end
    end

    local function chain(next_level, op, kind)
        return function()
            local a = next_level()
            if not is_op(op) then
                return a
            end
            local items = { a }
            while accept(op) do
                items[#items + 1] = next_level()
            end
            return { k = kind, items = items, bool = true }
        end
    end

    local conjunction = chain(relation, "&&", "and")
    local disjunction = chain(conjunction, "||", "or")

    expression = function()
        enter(tok)
        local c = disjunction()
        if is_op("?") then
            advance()
            local a = expression()
            expect(":")
            local b = expression()
            c = { k = "cond", c = c, a = a, b = b }
        end
        depth = depth - 1
        return c
    end

    if tok.t == "eof" then
        fail(1, "empty expression")
    elseif tok.t == "err" then
        fail(tok.col, tok.msg)
    end
    local ast = expression()
    if tok.t ~= "eof" then
        unexpected(tok)
    end
    return ast
end

-- =============================== codegen ================================

local function number(n)
    if n ~= n then
        return "(0/0)"
    elseif n == HUGE then
        return "(1/0)"
    elseif n == -HUGE then
        return "(-1/0)"
    end
    return format("(%.17g)", n)
end

local function literal(v)
    if v == nil then
        return "nil"
    elseif type(v) == "number" then
        return number(v)
    elseif type(v) == "string" then
        return format("%q", v)
    end
    return tostring(v) -- true / false
end

local function constant_list(node)
    for _, item in ipairs(node.items) do
        if item.k ~= "lit" then
            return false
        end
    end
    return true
end

local BINARY_HELPER = {
    eq = "eq", ne = "ne", lt = "lt", le = "le", gt = "gt", ge = "ge",
    add = "add", sub = "sub", mul = "mul", div = "div", mod = "mod",
}
local CALL_HELPER = { contains = "contains", startsWith = "starts", endsWith = "ends", size = "size" }

local function generate(ast)
    local K, funcs = {}, {}

    local function const(v)
        K[#K + 1] = v
        return "K[" .. #K .. "]"
    end

    local gen

    local function cond(node, cost)
        local code = gen(node, cost + 2)
        if node.bool then
            return code
        end
        return "T(" .. code .. ")"
    end

    -- cost: an estimate of the Lua syntax levels and registers the enclosing code already uses.
    gen = function(node, cost)
        if cost > HOIST_BUDGET then
            local code = gen(node, 0) -- first: it may add functions of its own
            funcs[#funcs + 1] = code
            return "F[" .. #funcs .. "](v)"
        end
        local k = node.k
        if k == "lit" then
            return literal(node.v)
        elseif k == "root" then
            return format("get(v, %q)", node.name)
        elseif k == "list" then
            local items = node.items
            if constant_list(node) then
                local list = { [NK] = #items }
                for i, item in ipairs(items) do
                    list[i] = item.v
                end
                return const(list)
            end
            local out = { "{[NK]=", tostring(#items) }
            for i, item in ipairs(items) do
                out[#out + 1] = ", "
                out[#out + 1] = gen(item, cost + 3 + (i % 50))
            end
            out[#out + 1] = "}"
            return concat(out)
        elseif k == "get" then
            local key = node.key
            local o = gen(node.o, cost + 2)
            if key.k == "lit" and type(key.v) == "number" then
                return format("get(%s, %s)", o, number(key.v + 1))
            elseif key.k == "lit" then
                return format("get(%s, %s)", o, literal(key.v))
            end
            return format("idx(%s, %s)", o, gen(key, cost + 3))
        elseif k == "call" then
            local args = node.args
            if node.f == "matches" then
                local s = gen(args[1], cost + 3)
                if node.re then
                    return format("rmatch(%s, %s)", const(node.re), s)
                end
                return format("dmatch(%s, %s)", s, gen(args[2], cost + 4))
            end
            if #args == 1 then
                return format("%s(%s)", CALL_HELPER[node.f], gen(args[1], cost + 2))
            end
            return format("%s(%s, %s)", CALL_HELPER[node.f], gen(args[1], cost + 2), gen(args[2], cost + 3))
        elseif k == "not" then
            return "(not " .. cond(node.x, cost + 1) .. ")"
        elseif k == "neg" then
            return "neg(" .. gen(node.x, cost + 2) .. ")"
        elseif k == "bin" then
            local a = gen(node.a, cost + 2)
            if node.op == "in" then
                local b = node.b
                if b.k == "list" and constant_list(b) then
                    local set = {}
                    for _, item in ipairs(b.items) do
                        if item.v == nil then
                            set[NK] = true
                        elseif item.v == item.v then -- NaN is in no set
                            set[item.v] = true
                        end
                    end
                    return format("inset(%s, %s)", a, const(set))
                end
                return format("member(%s, %s)", a, gen(b, cost + 3))
            end
            return format("%s(%s, %s)", BINARY_HELPER[node.op], a, gen(node.b, cost + 3))
        elseif k == "and" or k == "or" then
            local out = {}
            for i, item in ipairs(node.items) do
                out[i] = cond(item, cost + 1)
            end
            return "(" .. concat(out, k == "and" and " and " or " or ") .. ")"
        elseif k == "cond" then
            return format("unbox(%s and box(%s) or %s)", cond(node.c, cost + 2), gen(node.a, cost + 4),
                gen(node.b, cost + 3))
        end
        error("expr: unknown node " .. tostring(k))
    end

    local main = gen(ast, 0)
    local out = { CHUNK_HEAD }
    for i, code in ipairs(funcs) do
        out[#out + 1] = format("F[%d] = function(v) return %s end\n", i, code)
    end
    out[#out + 1] = "return function(v) return " .. main .. " end\n"
    return concat(out), K
end

-- ================================== API =================================

local function translate(src)
    if #src > MAX_LENGTH then
        return nil, format("column %d: expression longer than %d bytes", MAX_LENGTH + 1, MAX_LENGTH)
    end
    local ok, ast = pcall(parse, src)
    if not ok then
        if type(ast) == "table" then
            return nil, format("column %d: %s", ast.col, ast.msg)
        end
        return nil, "column 1: internal error: " .. tostring(ast)
    end
    local ok2, lua, K = pcall(generate, ast)
    if not ok2 then
        return nil, "column 1: internal error: " .. tostring(lua)
    end
    return lua, K
end

-- lua_source(src) -> lua_text | nil, err: the generated Lua, for tests and debugging.
function _M.lua_source(src)
    if type(src) ~= "string" then
        return nil, "expected an expression (a string), got a " .. type(src)
    end
    return translate(src)
end

-- The root variables a parsed expression reads, into set.
local function collect_roots(node, set)
    if node.k == "root" then
        set[node.name] = true
    end
    for _, v in pairs(node) do
        if type(v) == "table" then
            collect_roots(v, set)
        end
    end
    return set
end

-- roots(src) -> { name = true } for each root variable (request, response, ...) the expression
-- reads, or nil when that is not known (a Lua function, or text that does not parse). A caller
-- may then leave the other variables out of what it passes: an expression reaches a variable
-- only by its name.
function _M.roots(src)
    if type(src) ~= "string" or #src > MAX_LENGTH then
        return nil
    end
    local ok, ast = pcall(parse, src)
    if not ok or type(ast) ~= "table" then
        return nil
    end
    return collect_roots(ast, {})
end

-- compile(src) -> fn | nil, err. src is the expression text; a Lua function is returned unchanged.
function _M.compile(src)
    if type(src) == "function" then
        return src
    end
    if type(src) ~= "string" then
        return nil, "expected an expression (a string), got a " .. type(src)
    end
    local lua, K = translate(src)
    if not lua then
        return nil, K
    end
    local chunk, err = loadstring(lua, "=expression")
    if not chunk then
        return nil, "column 1: expression too complex (" .. tostring(err) .. ")"
    end
    setfenv(chunk, {})
    local n = #HELPERS
    local args = {}
    for i = 1, n do
        args[i] = HELPERS[i]
    end
    args[n + 1] = K
    args[n + 2] = {}
    local ok, fn = pcall(chunk, unpack(args, 1, n + 2))
    if not ok or type(fn) ~= "function" then
        return nil, "column 1: internal error: " .. tostring(fn)
    end
    return fn
end

-- truthy(v): how a condition reads a value: null and false are false, everything else is true.
_M.truthy = truthy

return _M
