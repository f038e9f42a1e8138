import Foundation
import XCTest
@testable import Checkpoint

final class ConfigJSONTests: XCTestCase {
    let text = """
    {
      "hidden_size": 4096, "float_int": 4.0, "fraction": 4.5, "negative": -3, "huge": 1e30, "big_int": 9223372036854775807,
      "flag": true, "off": false, "name": "llama", "numeric_string": "4", "nothing": null,
      "eos": [1, 2, 3], "empty": [], "mixed": [1, "x"], "fractions": [1.5], "eos_scalar": 7,
      "rope_scaling": {"type": "yarn", "factor": 4.0, "beta_fast": "32", "original_max_position_embeddings": 4096},
      "zero": 0, "one": 1, "eps": 1e-6
    }
    """

    func config() throws -> ConfigJSON { try ConfigJSON(data: Data(text.utf8), source: "/models/x/config.json") }

    func invalid<T>(_ body: @autoclosure () throws -> T, key: String, expected: String, found: String, line: UInt = #line) {
        assertCheckpointError(try body(), {
            if case .invalidConfigValue(key, "/models/x/config.json", _, _) = $0 { return true } else { return false }
        }, mentions: ["/models/x/config.json", "\"\(key)\"", expected, found], line: line)
    }

    func missing<T>(_ body: @autoclosure () throws -> T, key: String, line: UInt = #line) {
        assertCheckpointError(try body(), {
            if case .missingConfigKey(key, "/models/x/config.json") = $0 { return true } else { return false }
        }, mentions: ["/models/x/config.json", "\"\(key)\"", "missing"], line: line)
    }

    func testPresence() throws {
        let c = try config()
        XCTAssertTrue(c.has("hidden_size"))
        XCTAssertTrue(c.has("off"))
        XCTAssertTrue(c.has("zero"))
        XCTAssertFalse(c.has("nothing"), "null counts as missing")
        XCTAssertFalse(c.has("absent"))
        XCTAssertEqual(c.firstKey(["absent", "nothing", "negative", "hidden_size"]), "negative")
        XCTAssertNil(c.firstKey(["absent", "nothing"]))
        XCTAssertNil(c.firstKey([]))
        XCTAssertEqual(c.source, "/models/x/config.json")
        XCTAssertEqual(c.object.count, 20)
    }

    func testInt() throws {
        let c = try config()
        XCTAssertEqual(try c.int("hidden_size"), 4096)
        XCTAssertEqual(try c.int("float_int"), 4)
        XCTAssertEqual(try c.int("negative"), -3)
        XCTAssertEqual(try c.int("big_int"), Int.max)
        XCTAssertEqual(try c.int("absent", default: 7), 7)
        XCTAssertEqual(try c.int("nothing", default: 7), 7)
        XCTAssertEqual(try c.int("hidden_size", default: 7), 4096)
        XCTAssertEqual(try c.optionalInt("hidden_size"), 4096)
        XCTAssertNil(try c.optionalInt("absent"))
        XCTAssertNil(try c.optionalInt("nothing"))
        missing(try c.int("absent"), key: "absent")
        missing(try c.int("nothing"), key: "nothing")
        invalid(try c.int("fraction"), key: "fraction", expected: "an integer", found: "4.5")
        invalid(try c.int("huge"), key: "huge", expected: "an integer", found: "1e+30")
        invalid(try c.int("flag"), key: "flag", expected: "an integer", found: "true")
        invalid(try c.int("off"), key: "off", expected: "an integer", found: "false")
        invalid(try c.int("numeric_string"), key: "numeric_string", expected: "an integer", found: "\"4\"")
        invalid(try c.int("eos"), key: "eos", expected: "an integer", found: "[1, 2, 3]")
        invalid(try c.int("rope_scaling"), key: "rope_scaling", expected: "an integer", found: "an object")
        // A default never hides a wrong type.
        invalid(try c.int("fraction", default: 1), key: "fraction", expected: "an integer", found: "4.5")
        invalid(try c.optionalInt("name"), key: "name", expected: "an integer", found: "\"llama\"")
    }

    func testDouble() throws {
        let c = try config()
        XCTAssertEqual(try c.double("fraction"), 4.5)
        XCTAssertEqual(try c.double("hidden_size"), 4096)
        XCTAssertEqual(try c.double("eps"), 1e-6)
        XCTAssertEqual(try c.double("huge"), 1e30)
        XCTAssertEqual(try c.double("absent", default: 0.25), 0.25)
        XCTAssertEqual(try c.double("nothing", default: 0.25), 0.25)
        XCTAssertEqual(try c.optionalDouble("negative"), -3)
        XCTAssertNil(try c.optionalDouble("nothing"))
        missing(try c.double("absent"), key: "absent")
        invalid(try c.double("flag"), key: "flag", expected: "a number", found: "true")
        invalid(try c.double("numeric_string", default: 1), key: "numeric_string", expected: "a number", found: "\"4\"")
        invalid(try c.optionalDouble("eos"), key: "eos", expected: "a number", found: "[1, 2, 3]")
    }

    func testBool() throws {
        let c = try config()
        XCTAssertEqual(try c.bool("flag", default: false), true)
        XCTAssertEqual(try c.bool("off", default: true), false)
        XCTAssertEqual(try c.bool("absent", default: true), true)
        XCTAssertEqual(try c.bool("nothing", default: true), true)
        XCTAssertEqual(try c.optionalBool("flag"), true)
        XCTAssertNil(try c.optionalBool("absent"))
        invalid(try c.bool("one", default: false), key: "one", expected: "true or false", found: "1")
        invalid(try c.bool("zero", default: false), key: "zero", expected: "true or false", found: "0")
        invalid(try c.optionalBool("name"), key: "name", expected: "true or false", found: "\"llama\"")
    }

    func testString() throws {
        let c = try config()
        XCTAssertEqual(try c.string("name"), "llama")
        XCTAssertEqual(try c.optionalString("name"), "llama")
        XCTAssertNil(try c.optionalString("nothing"))
        XCTAssertNil(try c.optionalString("absent"))
        missing(try c.string("nothing"), key: "nothing")
        invalid(try c.string("hidden_size"), key: "hidden_size", expected: "a string", found: "4096")
        invalid(try c.optionalString("flag"), key: "flag", expected: "a string", found: "true")
    }

    func testIntArray() throws {
        let c = try config()
        XCTAssertEqual(try c.intArray("eos", default: [9]), [1, 2, 3])
        XCTAssertEqual(try c.intArray("empty", default: [9]), [])
        XCTAssertEqual(try c.intArray("absent", default: [9]), [9])
        XCTAssertEqual(try c.intArray("nothing", default: []), [])
        invalid(try c.intArray("eos_scalar", default: []), key: "eos_scalar", expected: "an array of integers", found: "7")
        invalid(try c.intArray("mixed", default: []), key: "mixed", expected: "an array of integers", found: "[1, \"x\"]")
        invalid(try c.intArray("fractions", default: []), key: "fractions", expected: "an array of integers", found: "[1.5]")
        invalid(try c.intArray("name", default: []), key: "name", expected: "an array of integers", found: "\"llama\"")
    }

    func testNestedObject() throws {
        let c = try config()
        let r = try XCTUnwrap(try c.object("rope_scaling"))
        XCTAssertEqual(try r.string("type"), "yarn")
        XCTAssertEqual(try r.double("factor"), 4)
        XCTAssertEqual(try r.int("original_max_position_embeddings"), 4096)
        XCTAssertEqual(r.source, c.source)
        XCTAssertNil(try c.object("absent"))
        XCTAssertNil(try c.object("nothing"))
        invalid(try c.object("name"), key: "name", expected: "an object", found: "\"llama\"")
        // Errors inside the nested object name the key path.
        invalid(try r.double("beta_fast"), key: "rope_scaling.beta_fast", expected: "a number", found: "\"32\"")
        missing(try r.double("beta_slow"), key: "rope_scaling.beta_slow")
    }

    func testNotJSON() {
        assertCheckpointError(try ConfigJSON(data: Data("{\"a\": ".utf8), source: "/m/config.json"), {
            if case .invalidConfig("/m/config.json", _) = $0 { return true } else { return false }
        }, mentions: ["/m/config.json", "not valid JSON"])
        assertCheckpointError(try ConfigJSON(data: Data(), source: "/m/config.json"), {
            if case .invalidConfig = $0 { return true } else { return false }
        }, mentions: ["/m/config.json", "not valid JSON"])
    }

    func testNotAnObject() {
        for (text, kind) in [("[1]", "an array"), ("\"s\"", "a string"), ("3", "a number"), ("null", "null"), ("true", "a boolean")] {
            assertCheckpointError(try ConfigJSON(data: Data(text.utf8), source: "/m/config.json"), {
                if case .invalidConfig = $0 { return true } else { return false }
            }, mentions: ["/m/config.json", "expected a JSON object", kind])
        }
    }

    func testContentsOfURL() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cfg-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("config.json")
        assertCheckpointError(try ConfigJSON(contentsOf: url), {
            if case .missingConfig(url) = $0 { return true } else { return false }
        }, mentions: ["config.json", "no such file"])
        try Data(#"{"a": 1}"#.utf8).write(to: url)
        let c = try ConfigJSON(contentsOf: url)
        XCTAssertEqual(try c.int("a"), 1)
        XCTAssertEqual(c.source, url.path)
    }

    /// Objects built in Swift hold native types rather than NSNumber; they read the same way.
    func testNativeSwiftObject() throws {
        let nested: [String: Any] = ["factor": 8.0, "low": Float(1.5)]
        let c = ConfigJSON(object: [
            "i": 4, "i32": Int32(5), "u8": UInt8(6), "d": 2.0, "f": 2.5, "b": true, "s": "x", "a": [1, 2],
            "nested": nested, "optnil": Optional<Int>.none as Any, "optsome": Optional(9) as Any, "null": NSNull(),
            "huge": UInt64.max,
        ], source: "synthetic config")
        XCTAssertEqual(try c.int("i"), 4)
        XCTAssertEqual(try c.int("i32"), 5)
        XCTAssertEqual(try c.int("u8"), 6)
        XCTAssertEqual(try c.int("d"), 2)
        XCTAssertEqual(try c.double("i"), 4)
        XCTAssertEqual(try c.double("f"), 2.5)
        XCTAssertEqual(try c.bool("b", default: false), true)
        XCTAssertEqual(try c.string("s"), "x")
        XCTAssertEqual(try c.intArray("a", default: []), [1, 2])
        XCTAssertEqual(try c.object("nested")?.double("factor"), 8)
        XCTAssertEqual(try c.object("nested")?.double("low"), 1.5)
        XCTAssertFalse(c.has("optnil"))
        XCTAssertEqual(try c.int("optsome"), 9)
        XCTAssertFalse(c.has("null"))
        assertCheckpointError(try c.int("b"), {
            if case .invalidConfigValue("b", "synthetic config", _, _) = $0 { return true } else { return false }
        }, mentions: ["synthetic config", "\"b\"", "an integer", "true"])
        assertCheckpointError(try c.bool("i", default: false), {
            if case .invalidConfigValue("i", _, _, _) = $0 { return true } else { return false }
        }, mentions: ["true or false", "4"])
        assertCheckpointError(try c.int("f"), { if case .invalidConfigValue = $0 { return true } else { return false } },
                              mentions: ["2.5"])
        assertCheckpointError(try c.int("huge"), { if case .invalidConfigValue = $0 { return true } else { return false } },
                              mentions: ["an integer"])
    }
}
