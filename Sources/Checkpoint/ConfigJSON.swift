import Foundation

/// Typed, error-reporting access to a config.json object.
///
/// Every getter names the file and the key when the value is missing or of the wrong type, so a
/// malformed config produces an actionable `CheckpointError` instead of a silent default.
/// "Missing" means absent or JSON `null`; a present value of the wrong type always throws, even
/// when a default was given. Integers accept any integral JSON number (`4` or `4.0`, not `4.5`);
/// booleans and strings are never taken for numbers, nor numbers for booleans.
public struct ConfigJSON: @unchecked Sendable {
    /// The decoded JSON object.
    public let object: [String: Any]
    /// Where the object came from (usually the config.json path), used in error messages.
    public let source: String
    /// Key path of this object inside its root (`"rope_scaling."`), prefixed to keys in messages.
    let keyPrefix: String

    /// Parses `data` as a JSON object. `source` (the file path) names it in error messages.
    public init(data: Data, source: String) throws {
        let json: Any
        do {
            json = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
        } catch {
            throw CheckpointError.invalidConfig(source: source, reason: "not valid JSON (\(jsonFailureReason(error)))")
        }
        guard let object = json as? [String: Any] else {
            throw CheckpointError.invalidConfig(
                source: source, reason: "expected a JSON object at the top level, found \(JSONValue(json).kindName)")
        }
        self.init(object: object, source: source)
    }

    /// Wraps an already-decoded object (e.g. a config built in code). `source` names it in messages.
    public init(object: [String: Any], source: String) {
        self.init(object: object, source: source, keyPrefix: "")
    }

    init(object: [String: Any], source: String, keyPrefix: String) {
        self.object = object
        self.source = source
        self.keyPrefix = keyPrefix
    }

    /// Reads and parses a config.json file; a missing file is `CheckpointError.missingConfig`.
    public init(contentsOf url: URL) throws {
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            if !FileManager.default.fileExists(atPath: url.path) { throw CheckpointError.missingConfig(url) }
            throw CheckpointError.invalidConfig(source: url.path, reason: "cannot read: \(error.localizedDescription)")
        }
        try self.init(data: data, source: url.path)
    }

    // MARK: presence

    /// True when `key` is present and not null.
    public func has(_ key: String) -> Bool {
        if case .null = JSONValue(object[key]) { return false }
        return true
    }

    /// The first of `keys` that is present and not null (for keys with aliases across
    /// architectures, e.g. `["num_experts", "num_local_experts"]`).
    public func firstKey(_ keys: [String]) -> String? {
        keys.first { has($0) }
    }

    // MARK: integers

    /// A required integer.
    public func int(_ key: String) throws -> Int {
        guard let v = try optionalInt(key) else { throw missing(key) }
        return v
    }

    /// An integer, or `default` when the key is missing or null.
    public func int(_ key: String, default value: Int) throws -> Int {
        try optionalInt(key) ?? value
    }

    /// An integer, or nil when the key is missing or null.
    public func optionalInt(_ key: String) throws -> Int? {
        let v = JSONValue(object[key])
        if case .null = v { return nil }
        guard let i = v.exactInt else { throw invalid(key, "an integer", v) }
        return i
    }

    // MARK: floating point

    /// A required number.
    public func double(_ key: String) throws -> Double {
        guard let v = try optionalDouble(key) else { throw missing(key) }
        return v
    }

    /// A number, or `default` when the key is missing or null.
    public func double(_ key: String, default value: Double) throws -> Double {
        try optionalDouble(key) ?? value
    }

    /// A number, or nil when the key is missing or null.
    public func optionalDouble(_ key: String) throws -> Double? {
        let v = JSONValue(object[key])
        if case .null = v { return nil }
        guard let d = v.double else { throw invalid(key, "a number", v) }
        return d
    }

    // MARK: booleans

    /// A boolean, or `default` when the key is missing or null.
    public func bool(_ key: String, default value: Bool) throws -> Bool {
        try optionalBool(key) ?? value
    }

    /// A boolean, or nil when the key is missing or null.
    public func optionalBool(_ key: String) throws -> Bool? {
        let v = JSONValue(object[key])
        switch v {
        case .null: return nil
        case .bool(let b): return b
        default: throw invalid(key, "true or false", v)
        }
    }

    // MARK: strings

    /// A required string.
    public func string(_ key: String) throws -> String {
        guard let s = try optionalString(key) else { throw missing(key) }
        return s
    }

    /// A string, or nil when the key is missing or null.
    public func optionalString(_ key: String) throws -> String? {
        let v = JSONValue(object[key])
        switch v {
        case .null: return nil
        case .string(let s): return s
        default: throw invalid(key, "a string", v)
        }
    }

    // MARK: arrays and objects

    /// An array of integers, or `default` when the key is missing or null. A single integer is
    /// not an array: it throws, so callers can tell `3` from `[3]`.
    public func intArray(_ key: String, default value: [Int]) throws -> [Int] {
        try array(key, "an array of integers") { $0.exactInt } ?? value
    }

    /// An array of strings, or `default` when the key is missing or null.
    public func stringArray(_ key: String, default value: [String]) throws -> [String] {
        try array(key, "an array of strings") { if case .string(let s) = $0 { return s } else { return nil } } ?? value
    }

    /// An array of numbers, or nil when the key is missing or null.
    public func optionalDoubleArray(_ key: String) throws -> [Double]? {
        try array(key, "an array of numbers") { $0.double }
    }

    /// The array at `key` with every item converted by `element`, or nil when the key is missing
    /// or null; throws naming `what` when the value is not an array or an item does not convert.
    private func array<T>(_ key: String, _ what: String, _ element: (JSONValue) -> T?) throws -> [T]? {
        let v = JSONValue(object[key])
        switch v {
        case .null: return nil
        case .array(let items):
            var out: [T] = []
            out.reserveCapacity(items.count)
            for item in items {
                guard let e = element(JSONValue(item)) else { throw invalid(key, what, v) }
                out.append(e)
            }
            return out
        default:
            throw invalid(key, what, v)
        }
    }

    /// A nested object (e.g. `rope_scaling`), or nil when the key is missing or null. Errors from
    /// the nested object's getters name the full key path (`rope_scaling.factor`).
    public func object(_ key: String) throws -> ConfigJSON? {
        let v = JSONValue(object[key])
        switch v {
        case .null: return nil
        case .object(let o): return ConfigJSON(object: o, source: source, keyPrefix: keyPrefix + key + ".")
        default: throw invalid(key, "an object", v)
        }
    }

    // MARK: errors

    private func missing(_ key: String) -> CheckpointError {
        .missingConfigKey(keyPrefix + key, source: source)
    }

    private func invalid(_ key: String, _ expected: String, _ found: JSONValue) -> CheckpointError {
        let shown: String
        switch found {
        case .string, .bool, .integer, .number, .null, .array: shown = "\(found.brief) (\(found.kindName))"
        default: shown = found.kindName
        }
        return .invalidConfigValue(keyPrefix + key, source: source, expected: expected, found: shown)
    }
}
