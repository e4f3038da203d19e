local schema = require("moongate.schema")

local validate = schema.validate

describe("schema.validate", function()
    describe("type", function()
        it("accepts the right type and says which one was expected", function()
            assert.equal(3, validate(3, { type = "number" }, "x"))
            local v, errs = validate("3", { type = "number" }, "x")
            assert.is_nil(v)
            assert.same({ "x: expected number" }, errs)
        end)

        it("tells integers from other numbers", function()
            assert.equal(2, validate(2, { type = "integer" }, "n"))
            local _, errs = validate(2.5, { type = "integer" }, "n")
            assert.same({ "n: expected integer" }, errs)
        end)

        it("takes a list of types", function()
            local s = { type = { "string", "function" } }
            assert.equal("a", validate("a", s, "w"))
            local f = function() end
            assert.equal(f, validate(f, s, "w"))
            local _, errs = validate(1, s, "w")
            assert.same({ "w: expected string or function" }, errs)
        end)

        it("refuses a table with named keys where an array is expected", function()
            local _, errs = validate({ a = 1 }, { type = "array" }, "list")
            assert.same({ "list: expected array" }, errs)
        end)

        it("refuses a list where an object is expected", function()
            local _, errs = validate({ 1, 2 }, { type = "object", properties = {} }, "obj")
            assert.same({ "obj: expected object" }, errs)
        end)

        it("accepts an empty table as array and as object", function()
            assert.same({}, validate({}, { type = "array" }, "a"))
            assert.same({}, validate({}, { type = "object" }, "o"))
        end)

        it("refuses NaN as a number", function()
            local _, errs = validate(0 / 0, { type = "number" }, "n")
            assert.same({ "n: expected number" }, errs)
        end)
    end)

    describe("properties", function()
        local s = {
            type = "object",
            properties = {
                limit = { type = "number", minimum = 1, maximum = 10 },
                mode = { type = "string", enum = { "a", "b" } },
                name = { type = "string", default = "x" },
            },
            required = { "limit" },
        }

        it("reports each bad field with its path", function()
            local v, errs = validate({ limit = "many", mode = "c" }, s, "plugins[2]")
            assert.is_nil(v)
            assert.same({ 'plugins[2].limit: expected number', 'plugins[2].mode: must be one of "a", "b"' }, errs)
        end)

        it("reports a missing required field", function()
            local _, errs = validate({}, s, "conf")
            assert.same({ "conf.limit: required" }, errs)
        end)

        it("also takes required = true on the field", function()
            local _, errs = validate({}, { type = "object", properties = { k = { type = "string", required = true } } }, "c")
            assert.same({ "c.k: required" }, errs)
        end)

        it("checks minimum and maximum", function()
            local _, errs = validate({ limit = 0 }, s, "c")
            assert.same({ "c.limit: must be >= 1" }, errs)
            _, errs = validate({ limit = 11 }, s, "c")
            assert.same({ "c.limit: must be <= 10" }, errs)
        end)

        it("refuses unknown options by default", function()
            local _, errs = validate({ limit = 1, lmit = 2 }, s, "c")
            assert.same({ "c.lmit: unknown option" }, errs)
        end)

        it("keeps unknown options with additionalProperties = true", function()
            local open = { type = "object", properties = { a = { type = "number" } }, additionalProperties = true }
            assert.same({ a = 1, b = "x" }, validate({ a = 1, b = "x" }, open, "c"))
        end)

        it("checks every value of a map against additionalProperties", function()
            local map = { type = "object", additionalProperties = { type = "string" } }
            local _, errs = validate({ a = "x", ["b.c"] = 2 }, map, "headers")
            assert.same({ 'headers["b.c"]: expected string' }, errs)
        end)

        it("refuses non-string keys unless keys has a schema", function()
            local _, errs = validate({ a = 1, [5] = 2 }, { type = "object", properties = { a = { type = "number" } } }, "t")
            assert.same({ "t[5]: unknown option" }, errs)
            local fail = { type = "object", keys = { type = "integer", minimum = 100 },
                           additionalProperties = { type = "number" } }
            assert.same({ [429] = 0.1 }, validate({ [429] = 0.1 }, fail, "fail"))
            local _, errs2 = validate({ [42] = 0.1 }, fail, "fail")
            assert.same({ "fail[42]: must be >= 100" }, errs2)
        end)
    end)

    describe("defaults", function()
        local s = {
            type = "object",
            properties = {
                limits = {
                    type = "object", default = {},
                    properties = { max_body = { type = "size", default = "10MB" },
                                   list = { type = "array", default = { 1 } } },
                },
            },
        }

        it("fills in defaults, converted like user values", function()
            local v = validate({}, s)
            assert.same({ limits = { max_body = 10 * 1024 * 1024, list = { 1 } } }, v)
        end)

        it("never shares a default table between results", function()
            local a = validate({}, s)
            local b = validate({}, s)
            a.limits.list[1] = 99
            assert.equal(1, b.limits.list[1])
        end)

        it("does not change the caller's table", function()
            local input = { limits = { max_body = "1KB" } }
            local v = validate(input, s)
            assert.equal("1KB", input.limits.max_body)
            assert.is_nil(input.limits.list)
            assert.equal(1024, v.limits.max_body)
            assert.are_not.equal(input, v)
        end)
    end)

    describe("items", function()
        it("checks every item with its index in the path", function()
            local s = { type = "array", items = { type = "object", properties = { provider = { type = "string", required = true } } } }
            local _, errs = validate({ { provider = "a" }, {} }, s, "targets")
            assert.same({ "targets[2].provider: required" }, errs)
        end)

        it("checks minItems", function()
            local _, errs = validate({}, { type = "array", minItems = 1 }, "listen")
            assert.same({ "listen: must have at least 1 item" }, errs)
        end)

        it("builds nested paths the way SPEC writes them", function()
            local target = { type = "object", properties = { provider = { type = "number" } } }
            local s = { type = "object", properties = { backends = { type = "object", additionalProperties = {
                type = "object", properties = { groups = { type = "array", items = {
                    type = "object", properties = { targets = { type = "array", items = target } } } } } } } } }
            local _, errs = validate({ backends = { chat = { groups = { {}, { targets = { { provider = "x" } } } } } } }, s)
            assert.same({ "backends.chat.groups[2].targets[1].provider: expected number" }, errs)
        end)
    end)

    describe("converting types", function()
        it("converts durations, sizes, periods and addresses", function()
            local s = { type = "object", properties = {
                d = { type = "duration" }, z = { type = "size" }, p = { type = "period" }, a = { type = "address" } } }
            local v = validate({ d = "250ms", z = "64KB", p = "1mo", a = "[::1]:8080" }, s)
            assert.same({ d = 0.25, z = 65536, p = { months = 1 }, a = { host = "::1", port = 8080, address = "[::1]:8080" } }, v)
        end)

        it("reports the unit's own message", function()
            local _, errs = validate("soon", { type = "duration" }, "timeout")
            assert.same({ 'timeout: invalid duration "soon" (use e.g. "250ms", "10s", "5m")' }, errs)
        end)

        it("reports a converting type's message inside a type list when the user meant it", function()
            local s = { type = { "address", "boolean" } }
            assert.equal(false, validate(false, s, "admin.listen"))
            local _, errs = validate("nowhere", s, "admin.listen")
            assert.matches('^admin%.listen: invalid address "nowhere"', errs[1])
        end)

        it("makes relative paths absolute against base_dir", function()
            local s = { type = "object", properties = { f = { type = "path" }, g = { type = "path" } } }
            local v = validate({ f = "certs/../key.pem", g = "/etc/x.pem" }, s, "", { base_dir = "/srv/gw" })
            assert.same({ f = "/srv/gw/key.pem", g = "/etc/x.pem" }, v)
        end)
    end)

    describe("hooks", function()
        it("runs check on the converted value", function()
            local s = { type = "duration", check = function(v) if v > 60 then return nil, "at most a minute" end return true end }
            assert.equal(30, validate("30s", s, "t"))
            local _, errs = validate("2m", s, "t")
            assert.same({ "t: at most a minute" }, errs)
        end)

        it("coerces shorthands before checking", function()
            local s = { type = "array", items = { type = "string" },
                        coerce = function(v) if type(v) == "string" then return { v } end return v end }
            assert.same({ "GET" }, validate("GET", s, "method"))
        end)

        it("selects a schema from the value", function()
            local a = { type = "object", properties = { kind = { type = "string" }, x = { type = "number" } } }
            local b = { type = "object", properties = { kind = { type = "string" } } }
            local s = { select = function(v) return v.kind == "a" and a or b end }
            assert.same({ kind = "a", x = 1 }, validate({ kind = "a", x = 1 }, s, "p"))
            local _, errs = validate({ kind = "b", x = 1 }, s, "p")
            assert.same({ "p.x: unknown option" }, errs)
        end)
    end)

    it("collects every error, not just the first", function()
        local s = { type = "object", properties = { a = { type = "number" }, b = { type = "string" } } }
        local _, errs = validate({ a = "x", b = 1, c = true }, s, "o")
        assert.same({ "o.a: expected number", "o.b: expected string", "o.c: unknown option" }, errs)
    end)

    it("raises on a schema that names an unknown type", function()
        assert.has_error(function() validate(1, { type = "nmber" }, "x") end)
    end)
end)
