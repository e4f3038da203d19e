/* lbridge.c — the worker's LuaJIT state and every entry from C into Lua.
 *
 * C enters Lua in exactly two places: runtime.init() once at start, and
 * runtime.event() for each queued event (mg_worker_drain). Both run under
 * lua_pcall, so a Lua error can never unwind through C; plugin errors are
 * caught nearer to the plugin (lua/moongate/runtime.lua) so that they become a
 * 500 for that request, logged with the plugin's name. Lua calls C through the
 * FFI (ffi.h); those functions never call back. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ffi.h"
#include "log.h"
#include "upstream.h"
#include "worker.h"

int luaopen_cjson(lua_State *L);
int luaopen_cjson_safe(lua_State *L);

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
    return 1;
}

int mg_lua_init(mg_worker_t *w, const char *home, const char *config_path, const char *mode,
                int argc, char **argv)
{
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        fprintf(stderr, "moongate: cannot create a Lua state\n");
        return 1;
    }
    luaL_openlibs(L);
    w->L = L;

    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_cjson);
    lua_setfield(L, -2, "cjson");
    lua_pushcfunction(L, luaopen_cjson_safe);
    lua_setfield(L, -2, "cjson.safe");
    lua_pop(L, 1);
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;%s", home, home, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);

    lua_pushcfunction(L, traceback);
    int tb = lua_gettop(L);
    /* first of all: pairs and next that Debian's LuaJIT cannot mis-iterate (lua/moongate/iter.lua) */
    lua_getglobal(L, "require");
    lua_pushstring(L, "moongate.iter");
    if (lua_pcall(L, 1, 0, tb) != 0) {
        fprintf(stderr, "moongate: %s\n", lua_tostring(L, -1));
        return 1;
    }
    lua_getglobal(L, "require");
    lua_pushstring(L, "moongate.runtime");
    if (lua_pcall(L, 1, 1, tb) != 0) {
        fprintf(stderr, "moongate: %s\n", lua_tostring(L, -1));
        return 1;
    }
    lua_getfield(L, -1, "event");
    w->lua_event_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushcfunction(L, traceback);   /* made once: a C closure per event is garbage per event */
    w->lua_traceback_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "init");
    lua_createtable(L, 0, 6);
    lua_pushstring(L, home);
    lua_setfield(L, -2, "home");
    if (config_path) {
        lua_pushstring(L, config_path);
        lua_setfield(L, -2, "config");
    }
    lua_pushstring(L, mode);
    lua_setfield(L, -2, "mode");
    lua_createtable(L, argc, 0);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "argv");
    if (lua_pcall(L, 1, 1, tb) != 0) {
        fprintf(stderr, "moongate: %s\n", lua_tostring(L, -1));
        return 1;
    }
    /* init returns an exit code: 0 to run the loop, MG_INIT_DONE to exit 0 without
     * running it (`mock --help`), anything else to exit with it */
    int rc = (int)lua_tointeger(L, -1);
    lua_settop(L, 0);
    return rc;
}

void mg_lua_event(mg_worker_t *w, const mg_event_t *ev)
{
    lua_State *L = w->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->lua_traceback_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->lua_event_ref);
    lua_pushinteger(L, ev->kind);
    lua_pushnumber(L, (lua_Number)ev->waiter);
    /* the address as a number: LuaJIT compiles ffi.cast from a number, not
     * from a light userdata (x86-64 addresses fit a double's 53 bits) */
    lua_pushnumber(L, (lua_Number)(uintptr_t)ev->ptr);
    lua_pushinteger(L, ev->arg);
    int nargs = 4;
    if (ev->kind == MG_EV_UP_DATA) {
        size_t len;
        const char *data = mg_up_data(ev->ptr, &len);
        lua_pushlstring(L, data, len);
        nargs++;
    } else if (ev->kind == MG_EV_UP_DONE) {
        lua_pushstring(L, mg_up_result_name(ev->arg));
        nargs++;
    }
    if (lua_pcall(L, nargs, 0, -nargs - 2) != 0) {
        mg_log(MG_LOG_ERROR, "lua: %s", lua_tostring(L, -1));
        if (ev->kind == MG_EV_REQUEST) {
            /* the runtime itself failed before it owned the request */
            mg_req_t *r = ev->ptr;
            static const char body[] = "{\"error\":{\"message\":\"internal error\",\"type\":\"server_error\",\"code\":null}}";
            static const char hdr[] = "content-type: application/json\r\n";
            mg_resp_start(r, 500, hdr, sizeof hdr - 1, sizeof body - 1);
            mg_resp_write(r, body, sizeof body - 1);
            mg_resp_finish(r, 0);
            mg_req_release(r);
        }
    }
    lua_settop(L, 0);
}

void mg_lua_close(mg_worker_t *w)
{
    if (w->L != NULL) lua_close(w->L);
    w->L = NULL;
}

/* ======================== set-up FFI ======================== */

int mg_listen(const char *host, int port, int app, char *err, size_t errlen)
{
    return mg_worker_listen(mg_current, host, port, app, err, errlen);
}

void mg_set_limits(double max_body, double max_header, int max_connections, double header_timeout,
                   double idle_timeout, double shutdown_timeout)
{
    mg_worker_t *w = mg_current;
    w->limits.max_body = (size_t)max_body;
    w->limits.max_header = (size_t)max_header;
    w->limits.max_connections = max_connections;
    w->limits.header_timeout_ms = (uint64_t)(header_timeout * 1000);
    w->limits.idle_timeout_ms = (uint64_t)(idle_timeout * 1000);
    w->shutdown_timeout = shutdown_timeout;
}

int mg_access_log(const char *target)
{
    return mg_access_log_open(target);
}
