-- No two shipped plugins share a priority (STYLE.md: as Kong's spec does), and
-- each has a name matching its file and a schema.
describe("shipped plugins", function()
  local seen = {}
  local files = {}
  for f in io.popen("ls plugins/*.lua"):lines() do files[#files + 1] = f end

  it("exist", function() assert.truthy(#files >= 4) end)

  for _, f in ipairs(files) do
    local name = f:match("plugins/(.-)%.lua$")
    it(name .. " has its own name, a schema and a priority no other shipped plugin has", function()
      local p = dofile(f)
      assert.equal(name, p.name)
      assert.is_table(p.schema)
      assert.is_number(p.priority)
      assert.is_nil(seen[p.priority], name .. " shares priority " .. p.priority .. " with " .. tostring(seen[p.priority]))
      seen[p.priority] = name
    end)
  end
end)
