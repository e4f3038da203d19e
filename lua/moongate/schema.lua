-- The JSON-Schema subset of SPEC §5, written as Lua tables, used for gateway.lua and for plugins'
-- `schema`. Validation copies: the caller's table is never changed, and the copy carries defaults
-- and converted values (durations in seconds, sizes in bytes, parsed addresses, absolute paths).
--
-- Keywords: type (a name or a list of names), properties, required (a list on the object, or
-- `required = true` on the field), enum, minimum, maximum, minItems, items, default, description,
-- additionalProperties (false by default when `properties` is given; true or a schema otherwise),
-- and three Lua extensions:
--   keys   = schema           keys of an object that are not strings (e.g. `fail = { [429] = 0.1 }`)
--   coerce = function(v, path) -> v'     shorthand expansion before the type check
--   select = function(v, path) -> schema  pick the schema from the value (e.g. by its `type` field)
--   check  = function(v, path) -> ok | nil, msg   after everything else, on the converted value
-- Types: string, number, integer, boolean, function, table (anything table-shaped, kept as is),
-- object, array, and the converting types duration, size, period, address and path.

local units = require("moongate.units")

local type = type
local pairs = pairs
local ipairs = ipairs
local next = next
local tostring = tostring
local error = error
local format = string.format
local match = string.match
local sub = string.sub
local sort = table.sort
local concat = table.concat

local _M = { _VERSION = "0.1" }

local EMPTY = {}

-- Shows a value in a message the way it is written in Lua.
local function show(v)
    if type(v) == "string" then
        return format("%q", v)
    end
    return tostring(v)
end

-- abspath(p, dir) -> p made absolute against dir (when relative), with "." and ".." resolved.
function _M.abspath(p, dir)
    if sub(p, 1, 1) ~= "/" and dir then
        p = dir .. "/" .. p
    end
    local absolute = sub(p, 1, 1) == "/"
    local parts = {}
    for seg in p:gmatch("[^/]+") do
        if seg == ".." then
            if #parts > 0 and parts[#parts] ~= ".." then
                parts[#parts] = nil
            elseif not absolute then
                parts[#parts + 1] = seg
            end
        elseif seg ~= "." then
            parts[#parts + 1] = seg
        end
    end
    local out = concat(parts, "/")
    if absolute then
        return "/" .. out
    end
    return out ~= "" and out or "."
end

-- Converting types: function(value, opts) -> converted | nil, err. Open for extension.
_M.types = {
    duration = function(v) return units.duration(v) end,
    size = function(v) return units.size(v) end,
    period = function(v) return units.period(v) end,
    address = function(v) return units.address(v) end,
    -- Relative paths are relative to opts.base_dir (the config file's folder).
    path = function(v, opts)
        if type(v) ~= "string" or v == "" then
            return nil, "expected a file path"
        end
        return _M.abspath(v, opts.base_dir)
    end,
}

-- A table is an array when its keys are exactly 1..n; the empty table is both array and object.
local function is_array(t)
    local n = 0
    for k in pairs(t) do
        if type(k) ~= "number" or k < 1 or k % 1 ~= 0 then
            return false
        end
        n = n + 1
    end
    for i = 1, n do
        if t[i] == nil then
            return false
        end
    end
    return true
end

local BASIC = {
    string = function(v) return type(v) == "string" end,
    number = function(v) return type(v) == "number" and v == v end,
    integer = function(v) return type(v) == "number" and v % 1 == 0 end,
    boolean = function(v) return type(v) == "boolean" end,
    ["function"] = function(v) return type(v) == "function" end,
    table = function(v) return type(v) == "table" end,
    array = function(v) return type(v) == "table" and is_array(v) end,
    object = function(v, s)
        -- An object whose keys may be non-strings (s.keys) accepts any table.
        return type(v) == "table" and (s.keys ~= nil or next(v) == nil or not is_array(v))
    end,
}

local function key_less(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then
        if ta == "number" then return true end
        if tb == "number" then return false end
        return ta < tb
    end
    if ta == "number" or ta == "string" then
        return a < b
    end
    return tostring(a) < tostring(b)
end

-- sorted_keys(t) -> keys of t, numbers first, then strings, so errors come out in a stable order.
local function sorted_keys(t)
    local keys = {}
    for k in pairs(t) do
        keys[#keys + 1] = k
    end
    sort(keys, key_less)
    return keys
end
_M.sorted_keys = sorted_keys

-- child(path, key) -> the path of a field: `a.b`, `a[2]`, `a["api.example.com"]`.
local function child(path, k)
    if type(k) == "number" then
        return path .. "[" .. tostring(k) .. "]"
    end
    if type(k) == "string" and match(k, "^[%a_][%w_%-]*$") then
        if path == "" then
            return k
        end
        return path .. "." .. k
    end
    return path .. "[" .. show(k) .. "]"
end
_M.child = child

local function add(errs, path, msg)
    if path == "" then
        errs[#errs + 1] = msg
    else
        errs[#errs + 1] = path .. ": " .. msg
    end
end

local function deepcopy(v)
    if type(v) ~= "table" then
        return v
    end
    local out = {}
    for k, x in pairs(v) do
        out[k] = deepcopy(x)
    end
    return out
end

local function infer_type(s)
    if s.properties or s.keys or type(s.additionalProperties) == "table"
        or type(s.required) == "table" then
        return "object"
    elseif s.items then
        return "array"
    end
    return nil
end

-- fits(v, name, s, opts) -> true, converted | false, err_or_nil
local function fits(v, name, s, opts)
    local basic = BASIC[name]
    if basic then
        if basic(v, s) then
            return true, v
        end
        return false, nil
    end
    local conv = _M.types[name]
    if not conv then
        error("schema: unknown type " .. show(name), 0)
    end
    local out, err = conv(v, opts)
    if out == nil then
        return false, err
    end
    return true, out
end

local walk

local function walk_object(v, s, path, errs, opts)
    local out = {}
    local props = s.properties
    local addl = s.additionalProperties
    if addl == nil then
        addl = props == nil
    end
    local req = {}
    if type(s.required) == "table" then
        for _, k in ipairs(s.required) do
            req[k] = true
        end
    end

    if props then
        for _, k in ipairs(sorted_keys(props)) do
            local ps = props[k]
            local cpath = child(path, k)
            local val = walk(v[k], ps, cpath, errs, opts)
            if val == nil and v[k] == nil and (req[k] or ps.required == true) then
                add(errs, cpath, "required")
            end
            out[k] = val
        end
    end
    for k in pairs(req) do
        if (not props or props[k] == nil) and v[k] == nil then
            add(errs, child(path, k), "required")
        end
    end

    local keys_s = s.keys
    for _, k in ipairs(sorted_keys(v)) do
        if not (props and props[k] ~= nil) then
            local cpath = child(path, k)
            local nk = k
            if keys_s then
                nk = walk(k, keys_s, cpath, errs, opts)
            elseif type(k) ~= "string" then
                add(errs, cpath, "unknown option")
                nk = nil
            end
            if nk ~= nil then
                if addl == true then
                    out[nk] = v[k]
                elseif type(addl) == "table" then
                    out[nk] = walk(v[k], addl, cpath, errs, opts)
                else
                    add(errs, cpath, "unknown option")
                end
            end
        end
    end
    return out
end

local function walk_array(v, s, path, errs, opts)
    local out = {}
    local items = s.items
    for i = 1, #v do
        if items then
            out[i] = walk(v[i], items, path .. "[" .. i .. "]", errs, opts)
        else
            out[i] = v[i]
        end
    end
    return out
end

local function type_names(t)
    if type(t) == "string" then
        return t
    end
    return concat(t, " or ")
end

-- walk(v, s, path, errs, opts) -> converted value, or nil when v is nil (and no default) or
-- when v itself is wrong; errors inside a table leave the rest of the copy in place so that the
-- caller can go on checking (references, names) and report everything at once.
walk = function(v, s, path, errs, opts)
    if s.select then
        s = s.select(v, path) or s
    end
    if v == nil then
        if s.default == nil then
            return nil
        end
        v = deepcopy(s.default)
    end
    if s.coerce then
        v = s.coerce(v, path)
    end

    local t = s.type or infer_type(s)
    local out, chosen = v, nil
    if t ~= nil then
        local list = type(t) == "table" and t or { t }
        local ok, res
        local conv_err
        for _, name in ipairs(list) do
            ok, res = fits(v, name, s, opts)
            if ok then
                out, chosen = res, name
                break
            end
            -- A converting type's own message ("invalid duration ...") says more than
            -- "expected duration" when the user clearly meant that type.
            if res and not conv_err and (#list == 1 or type(v) == "string" or type(v) == "number") then
                conv_err = res
            end
        end
        if not chosen then
            add(errs, path, conv_err or ("expected " .. type_names(t)))
            return nil
        end
        if chosen == "object" then
            out = walk_object(v, s, path, errs, opts)
        elseif chosen == "array" then
            out = walk_array(v, s, path, errs, opts)
        end
    end

    if s.enum then
        local found = false
        for _, e in ipairs(s.enum) do
            if e == out then
                found = true
                break
            end
        end
        if not found then
            local shown = {}
            for i, e in ipairs(s.enum) do
                shown[i] = show(e)
            end
            add(errs, path, "must be one of " .. concat(shown, ", "))
            return nil
        end
    end
    if type(out) == "number" then
        if s.minimum and out < s.minimum then
            add(errs, path, "must be >= " .. tostring(s.minimum))
            return nil
        end
        if s.maximum and out > s.maximum then
            add(errs, path, "must be <= " .. tostring(s.maximum))
            return nil
        end
    end
    if s.minItems and chosen == "array" and #out < s.minItems then
        add(errs, path, "must have at least " .. s.minItems .. (s.minItems == 1 and " item" or " items"))
        return nil
    end
    if s.check then
        local ok, msg = s.check(out, path)
        if not ok then
            add(errs, path, msg or "invalid value")
            return nil
        end
    end
    return out
end

-- validate(value, sch, path, opts) -> copy_with_defaults | nil, errors, partial_copy
-- errors is a list of "<path>: <message>" strings. opts.base_dir anchors relative `path` values.
-- A nil value without a default yields nil and no errors. Raises on a malformed schema (an unknown
-- type name), which is the schema author's bug, not the user's.
function _M.validate(value, sch, path, opts)
    if type(sch) ~= "table" then
        error("schema.validate: schema must be a table", 2)
    end
    local errs = {}
    local out = walk(value, sch, path or "", errs, opts or EMPTY)
    if errs[1] then
        return nil, errs, out
    end
    return out
end

return _M
