-- /admin/consumers (SPEC §6): virtual keys created at run time (moongate.consumers).
--
--   GET    /admin/consumers          -> 200 { consumers = [ { name, team, models, budget, source,
--                                              key_id, created_at } ] }   (never a key)
--   GET    /admin/consumers/{name}   -> 200 one of those | 404
--   POST   /admin/consumers          body: a consumers entry (name, team, budget, models, key?)
--                                    -> 201 { name, key, key_id }: the only time the key is shown
--                                       400 (bad JSON or field) | 409 (name or key taken)
--   DELETE /admin/consumers/{name}   -> 200 { name, deleted = true } | 404 | 409 (in gateway.lua)
local admin = require("moongate.admin")
local store = require("moongate.consumers")

admin.route("GET", "/admin/consumers", function(req, params, cfg)
  return store.list(cfg)
end)

admin.route("GET", "/admin/consumers/{name}", function(req, params, cfg)
  return store.get(cfg, params.name)
end)

admin.route("POST", "/admin/consumers", function(req, params, cfg)
  local doc = req.json
  if not doc then
    return 400, { error = { message = "the body must be JSON: a consumers entry " ..
      "(name, team, budget, models, key)" } }
  end
  return store.create(cfg, doc)
end)

admin.route("DELETE", "/admin/consumers/{name}", function(req, params, cfg)
  return store.delete(cfg, params.name)
end)

return {}
