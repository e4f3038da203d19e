-- moongate.regex — PCRE2 (8-bit) regular expressions through the LuaJIT FFI.
--
--   local re, err, offset = regex.compile(pattern)   -- nil, PCRE2's message, byte offset (0-based)
--   re:find(subject)                                 -- true | false, never throws
--
-- Patterns are compiled in UTF mode with PCRE2_MATCH_INVALID_UTF (a subject that is not valid UTF-8
-- simply does not match across the bad bytes) and \C forbidden, then JIT-compiled when the library
-- supports it. Each compiled pattern keeps one match data block that every find reuses: the gateway
-- runs one Lua state per thread, so no locking is needed. Codes and match data are freed by ffi.gc.
-- A match that hits PCRE2's limits (match limit, JIT stack, heap) counts as no match.

local ffi = require("ffi")

local type = type
local pcall = pcall
local setmetatable = setmetatable
local tostring = tostring
local tonumber = tonumber
local ffi_gc = ffi.gc
local ffi_new = ffi.new
local ffi_string = ffi.string
local C_NULL = nil

local _M = { _VERSION = "0.1" }

-- Declared in a pcall: another module loaded earlier may already have declared the same names.
pcall(ffi.cdef, [[
typedef struct pcre2_real_code_8 pcre2_code_8;
typedef struct pcre2_real_match_data_8 pcre2_match_data_8;
typedef struct pcre2_real_compile_context_8 pcre2_compile_context_8;
typedef struct pcre2_real_match_context_8 pcre2_match_context_8;
typedef struct pcre2_real_general_context_8 pcre2_general_context_8;

pcre2_code_8 *pcre2_compile_8(const char *pattern, size_t length, uint32_t options,
                              int *errorcode, size_t *erroroffset, pcre2_compile_context_8 *ccontext);
void pcre2_code_free_8(pcre2_code_8 *code);
int pcre2_jit_compile_8(pcre2_code_8 *code, uint32_t options);
pcre2_match_data_8 *pcre2_match_data_create_from_pattern_8(const pcre2_code_8 *code,
                                                           pcre2_general_context_8 *gcontext);
void pcre2_match_data_free_8(pcre2_match_data_8 *match_data);
int pcre2_match_8(const pcre2_code_8 *code, const char *subject, size_t length, size_t startoffset,
                  uint32_t options, pcre2_match_data_8 *match_data, pcre2_match_context_8 *mcontext);
int pcre2_get_error_message_8(int errorcode, unsigned char *buffer, size_t bufflen);
]])

local PCRE2_UTF = 0x00080000
local PCRE2_NEVER_BACKSLASH_C = 0x00100000
local PCRE2_MATCH_INVALID_UTF = 0x04000000
local PCRE2_JIT_COMPLETE = 0x00000001
local COMPILE_OPTIONS = PCRE2_UTF + PCRE2_NEVER_BACKSLASH_C + PCRE2_MATCH_INVALID_UTF

local lib, load_err
do
    local ok, l = pcall(ffi.load, "libpcre2-8.so.0")
    if not ok then
        ok, l = pcall(ffi.load, "pcre2-8")
    end
    if ok then
        -- The library must outlive every compiled pattern: ffi.gc finalizers call into it, and a
        -- reloaded module (busted between spec files) would otherwise let the old library be
        -- unloaded while patterns it compiled still wait for their finalizer. The registry is
        -- never collected.
        local reg = debug.getregistry()
        reg["moongate.regex.pcre2"] = reg["moongate.regex.pcre2"] or l
        lib = reg["moongate.regex.pcre2"]
    else
        load_err = tostring(l)
    end
end

-- available: false when libpcre2-8 could not be loaded (compile then always fails, saying why).
_M.available = lib ~= nil

local errcode = ffi_new("int[1]")
local erroffset = ffi_new("size_t[1]")
local msgbuf = ffi_new("unsigned char[256]")

local function message(code)
    local n = lib.pcre2_get_error_message_8(code, msgbuf, 256)
    if n < 0 then
        return "PCRE2 error " .. tostring(code)
    end
    return ffi_string(msgbuf, n)
end

local Regex = {}
Regex.__index = Regex

-- re:find(subject) -> boolean. A non-string subject is no match.
function Regex:find(subject)
    if type(subject) ~= "string" then
        return false
    end
    local rc = lib.pcre2_match_8(self.code, subject, #subject, 0, 0, self.md, C_NULL)
    -- rc == 0 means the ovector was too small, which is still a match.
    return rc >= 0
end

-- compile(pattern) -> re | nil, err, offset
function _M.compile(pattern)
    if type(pattern) ~= "string" then
        return nil, "pattern must be a string", 0
    end
    if not lib then
        return nil, "PCRE2 is not available (" .. load_err .. ")", 0
    end
    local code = lib.pcre2_compile_8(pattern, #pattern, COMPILE_OPTIONS, errcode, erroffset, C_NULL)
    if code == C_NULL then
        return nil, message(errcode[0]), tonumber(erroffset[0])
    end
    code = ffi_gc(code, lib.pcre2_code_free_8)
    lib.pcre2_jit_compile_8(code, PCRE2_JIT_COMPLETE) -- best effort: the interpreter works without it
    local md = lib.pcre2_match_data_create_from_pattern_8(code, C_NULL)
    if md == C_NULL then
        return nil, "out of memory", 0
    end
    md = ffi_gc(md, lib.pcre2_match_data_free_8)
    return setmetatable({ code = code, md = md, pattern = pattern }, Regex)
end

return _M
