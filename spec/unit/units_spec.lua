local units = require("moongate.units")

describe("units.duration", function()
    it("takes numbers as seconds", function()
        assert.equal(0, units.duration(0))
        assert.equal(2.5, units.duration(2.5))
    end)

    it("parses each unit", function()
        assert.equal(0.25, units.duration("250ms"))
        assert.equal(10, units.duration("10s"))
        assert.equal(300, units.duration("5m"))
        assert.equal(3600, units.duration("1h"))
        assert.equal(86400, units.duration("1d"))
        assert.equal(1.5, units.duration("1.5s"))
        assert.equal(0.5, units.duration(".5s"))
    end)

    it("refuses what is not a duration, quoting it", function()
        for _, bad in ipairs({ "10", "10 s", "10sec", "1mo", "s", "-1s", "", "1.2.3s", true, {} }) do
            local v, err = units.duration(bad)
            assert.is_nil(v, tostring(bad))
            assert.matches("^invalid duration .* %(use e%.g%. \"250ms\", \"10s\", \"5m\"%)$", err)
        end
        local _, err = units.duration("fast")
        assert.equal('invalid duration "fast" (use e.g. "250ms", "10s", "5m")', err)
    end)

    it("refuses negative and non-finite numbers", function()
        assert.is_nil(units.duration(-1))
        assert.is_nil(units.duration(0 / 0))
        assert.is_nil(units.duration(math.huge))
    end)
end)

describe("units.period", function()
    it("gives calendar months for mo", function()
        assert.same({ months = 1 }, units.period("1mo"))
        assert.same({ months = 3 }, units.period("3mo"))
    end)

    it("gives seconds for durations", function()
        assert.same({ seconds = 86400 }, units.period("1d"))
        assert.same({ seconds = 3600 }, units.period(3600))
    end)

    it("refuses zero, junk and fractional months", function()
        for _, bad in ipairs({ "0mo", "0s", 0, "1.5mo", "month", "1 mo", false }) do
            local v, err = units.period(bad)
            assert.is_nil(v, tostring(bad))
            assert.matches("^invalid period", err)
        end
    end)
end)

describe("units.size", function()
    it("takes numbers as bytes", function()
        assert.equal(1000, units.size(1000))
    end)

    it("uses binary units, any case", function()
        assert.equal(512, units.size("512B"))
        assert.equal(64 * 1024, units.size("64KB"))
        assert.equal(64 * 1024, units.size("64kb"))
        assert.equal(10 * 1024 * 1024, units.size("10MB"))
        assert.equal(1024 ^ 3, units.size("1GB"))
        assert.equal(1536, units.size("1.5KB"))
    end)

    it("refuses junk", function()
        for _, bad in ipairs({ "10", "10 XB", "MB", "-1MB", 1.5, -1, "ten MB" }) do
            local v, err = units.size(bad)
            assert.is_nil(v, tostring(bad))
            assert.matches("^invalid size", err)
        end
        local _, err = units.size("10XB")
        assert.equal('invalid size "10XB" (use e.g. "512B", "64KB", "10MB")', err)
    end)
end)

describe("units.address", function()
    it("parses host:port", function()
        assert.same({ host = "127.0.0.1", port = 8080, address = "127.0.0.1:8080" }, units.address("127.0.0.1:8080"))
        assert.same({ host = "0.0.0.0", port = 8443, address = "0.0.0.0:8443" }, units.address("0.0.0.0:8443"))
        assert.same({ host = "localhost", port = 80, address = "localhost:80" }, units.address("localhost:80"))
    end)

    it("strips IPv6 brackets", function()
        assert.same({ host = "::1", port = 8080, address = "[::1]:8080" }, units.address("[::1]:8080"))
    end)

    it("accepts port 0 (any free port)", function()
        assert.equal(0, units.address("127.0.0.1:0").port)
    end)

    it("refuses bad addresses", function()
        for _, bad in ipairs({ "127.0.0.1", ":8080", "127.0.0.1:65536", "::1:8080", "host:port",
                               "a b:80", "[zz]:80", 8080, "" }) do
            local v, err = units.address(bad)
            assert.is_nil(v, tostring(bad))
            assert.matches("^invalid address", err)
        end
    end)
end)
