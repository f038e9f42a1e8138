import Foundation

/// A decoded JSON value classified by kind. `JSONSerialization` hands back `NSNumber` for
/// numbers *and* booleans (and `Any` dictionaries built in Swift hold native `Int`, `Double`,
/// `Bool`), so every typed read goes through here to tell them apart reliably.
public enum JSONValue {
    case null
    case bool(Bool)
    /// A number with no fractional part written as an integer (or a native Swift integer).
    case integer(Int)
    /// Any other number: written with a fraction or exponent, or too large for `Int`.
    case number(Double)
    case string(String)
    case array([Any])
    case object([String: Any])
    case other(Any)

    private static let booleanClass: AnyClass = type(of: NSNumber(value: true))

    public init(_ value: Any?) {
        guard let v = value else { self = .null; return }
        if v is NSNull { self = .null; return }
        // An Optional stored in an `Any` (e.g. a `[String: Any?]` value): look through it.
        if let o = v as? AnyOptional { self = JSONValue(o.wrappedValue); return }
        if type(of: v) == Bool.self, let b = v as? Bool { self = .bool(b); return }
        if let s = v as? String { self = .string(s); return }
        if let i = v as? any BinaryInteger {
            if let exact = Int(exactly: i) { self = .integer(exact) } else { self = .number(Double(i)) }
            return
        }
        if type(of: v) == Double.self, let d = v as? Double { self = .number(d); return }
        if type(of: v) == Float.self, let f = v as? Float { self = .number(Double(f)); return }
        if let n = v as? NSNumber {
            if type(of: n) == JSONValue.booleanClass { self = .bool(n.boolValue); return }
            if n is NSDecimalNumber { self = .number(n.doubleValue); return }
            switch String(cString: n.objCType) {
            case "f", "d": self = .number(n.doubleValue)
            case "Q", "L", "I", "S", "C":
                let u = n.uint64Value
                if let exact = Int(exactly: u) { self = .integer(exact) } else { self = .number(Double(u)) }
            default: self = .integer(Int(truncatingIfNeeded: n.int64Value))
            }
            return
        }
        if let a = v as? [Any] { self = .array(a); return }
        if let o = v as? [String: Any] { self = .object(o); return }
        self = .other(v)
    }

    /// The value as an exact `Int`: integers, and numbers with no fractional part in range.
    public var exactInt: Int? {
        switch self {
        case .integer(let i): return i
        case .number(let d): return d.isFinite && d.rounded(.towardZero) == d ? Int(exactly: d) : nil
        default: return nil
        }
    }

    /// The value as a `Double` (any number).
    public var double: Double? {
        switch self {
        case .integer(let i): return Double(i)
        case .number(let d): return d
        default: return nil
        }
    }

    /// A short rendering for error messages: `"text"`, `4.5`, `true`, `null`, `[1, 2]`, `an object`.
    public var brief: String {
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .integer(let i): return String(i)
        case .number(let d):
            if d.isFinite, d.rounded(.towardZero) == d, abs(d) < 1e16 { return String(format: "%.1f", d) }
            return "\(d)"
        case .string(let s):
            let shown = s.count > 60 ? String(s.prefix(57)) + "..." : s
            return "\"\(shown)\""
        case .array(let a):
            let items = a.prefix(8).map { JSONValue($0).brief }
            return "[" + items.joined(separator: ", ") + (a.count > 8 ? ", ... (\(a.count) items)" : "") + "]"
        case .object: return "an object"
        case .other(let v): return "a value of type \(type(of: v))"
        }
    }

    /// What kind of value this is, for "expected X, found Y" messages.
    public var kindName: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .integer, .number: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        case .other: return "an unsupported value"
        }
    }
}

private protocol AnyOptional { var wrappedValue: Any? { get } }
extension Optional: AnyOptional {
    fileprivate var wrappedValue: Any? { map { $0 as Any } }
}

/// The reason JSONSerialization gave for rejecting input, without the NSError boilerplate.
public func jsonFailureReason(_ error: Error) -> String {
    let ns = error as NSError
    if let d = ns.userInfo["NSDebugDescription"] as? String { return d }
    return ns.localizedDescription
}
