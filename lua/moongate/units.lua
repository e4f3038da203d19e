-- Units used in gateway.lua: durations, budget periods, sizes and listen addresses.
-- Every parser takes what the user wrote and returns the normalised value, or nil and a message
-- that quotes the bad value and shows the accepted forms (the caller prefixes the option path).

local type = type
local tonumber = tonumber
local tostring = tostring
local floor = math.floor
local format = string.format
local match = string.match
local lower = string.lower

local _M = { _VERSION = "0.1" }

local HUGE = math.huge

local DURATION_UNITS = { ms = 0.001, s = 1, m = 60, h = 3600, d = 86400 }
local SIZE_UNITS = { b = 1, kb = 1024, mb = 1024 ^ 2, gb = 1024 ^ 3, tb = 1024 ^ 4 }

local DURATION_HINT = '(use e.g. "250ms", "10s", "5m")'
local PERIOD_HINT = '(use e.g. "1h", "1d", "1mo")'
local SIZE_HINT = '(use e.g. "512B", "64KB", "10MB")'
local ADDRESS_HINT = '(use host:port, e.g. "127.0.0.1:8080" or "[::1]:8080")'

-- Renders a bad value the way the user wrote it: strings quoted, tables named by type.
local function show(v)
    local t = type(v)
    if t == "string" then
        return format("%q", v)
    elseif t == "number" or t == "boolean" or t == "nil" then
        return tostring(v)
    end
    return "(a " .. t .. ")"
end

local function finite(n)
    return n == n and n ~= HUGE and n ~= -HUGE
end

-- Splits "1.5s" into 1.5 and "s"; nil when the text is not a plain decimal followed by letters.
local function split(s)
    local num, unit = match(s, "^(%d+%.?%d*)(%a+)$")
    if not num then
        num, unit = match(s, "^(%.%d+)(%a+)$")
    end
    if not num then
        return nil
    end
    return tonumber(num), unit
end

-- duration(v) -> seconds | nil, err
-- A number is seconds (>= 0); a string is a decimal with one of ms, s, m, h, d.
function _M.duration(v)
    if type(v) == "number" then
        if finite(v) and v >= 0 then
            return v
        end
    elseif type(v) == "string" then
        local n, unit = split(v)
        local mult = n and DURATION_UNITS[unit]
        if mult then
            return n * mult
        end
    end
    return nil, "invalid duration " .. show(v) .. " " .. DURATION_HINT
end

-- period(v) -> { seconds = N } | { months = N } | nil, err
-- Like a duration (but > 0), plus "<N>mo": N calendar months, counted in UTC by whoever uses it.
function _M.period(v)
    if type(v) == "string" then
        local months = match(v, "^(%d+)mo$")
        if months then
            months = tonumber(months)
            if months >= 1 then
                return { months = months }
            end
            return nil, "invalid period " .. show(v) .. " " .. PERIOD_HINT
        end
    end
    local secs = _M.duration(v)
    if secs and secs > 0 then
        return { seconds = secs }
    end
    return nil, "invalid period " .. show(v) .. " " .. PERIOD_HINT
end

-- size(v) -> bytes (integer) | nil, err
-- A number is bytes; a string is a decimal with B, KB, MB, GB or TB in any case (1KB = 1024 bytes).
function _M.size(v)
    if type(v) == "number" then
        if finite(v) and v >= 0 and v % 1 == 0 then
            return v
        end
    elseif type(v) == "string" then
        local n, unit = split(v)
        local mult = n and SIZE_UNITS[lower(unit)]
        if mult then
            return floor(n * mult)
        end
    end
    return nil, "invalid size " .. show(v) .. " " .. SIZE_HINT
end

-- address(s) -> { host =, port =, address = s } | nil, err
-- "host:port" or "[ipv6]:port"; the host is returned without brackets. Port 0 means "any free
-- port" (tests use it), so the accepted range is 0..65535.
function _M.address(s)
    if type(s) ~= "string" then
        return nil, "invalid address " .. show(s) .. " " .. ADDRESS_HINT
    end
    local host, port = match(s, "^%[([%x%.]*:[%x:%.]*)%]:(%d+)$")
    if not host then
        host, port = match(s, "^([%w%.%-_]+):(%d+)$")
    end
    port = port and tonumber(port)
    if not host or port > 65535 then
        return nil, "invalid address " .. show(s) .. " " .. ADDRESS_HINT
    end
    return { host = host, port = port, address = s }
end

-- days_from_civil(y, m, d) -> days since 1970-01-01 of a proleptic Gregorian date, UTC (Howard
-- Hinnant's algorithm: no os.time, whose local zone would leak in). The one copy: the ledger's
-- buckets, budget periods, Retry-After dates and the codecs' ISO times all use it.
function _M.days_from_civil(y, m, d)
    if m <= 2 then
        y = y - 1
    end
    local era = floor(y / 400)
    local yoe = y - era * 400
    local mp = (m + 9) % 12
    local doy = floor((153 * mp + 2) / 5) + d - 1
    local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
    return era * 146097 + doe - 719468
end

return _M
