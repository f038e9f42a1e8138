import Foundation

/// A runtime value with the Python semantics jinja2 gives it: truthiness, `str()`, `==`, ordering.
indirect enum Value {
    /// jinja2's `Undefined`: renders empty, is falsy and iterable as empty, and fails when called,
    /// indexed or used in arithmetic. `hint` names what was missing, for the error message.
    case undefined(hint: String)
    /// An `Undefined` jinja2's sandbox returns for an unsafe attribute: fails with `SecurityError`.
    case unsafeUndefined(hint: String)
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case list([Value])
    case tuple([Value])
    case dict(Dict)
    case namespace(Namespace)
    case callable(Callable)
    case loop(LoopState)

    init(_ v: TemplateValue) {
        switch v {
        case .null: self = .none
        case .bool(let b): self = .bool(b)
        case .int(let i): self = .int(i)
        case .double(let d): self = .double(d)
        case .string(let s): self = .string(s)
        case .array(let a): self = .list(a.map(Value.init))
        case .object(let o): self = .dict(Dict(keys: o.keys, values: o.values.map(Value.init)))
        }
    }

    var isUndefined: Bool {
        switch self {
        case .undefined, .unsafeUndefined: return true
        default: return false
        }
    }

    /// Python truthiness.
    var truthy: Bool {
        switch self {
        case .undefined, .unsafeUndefined, .none: return false
        case .bool(let b): return b
        case .int(let i): return i != 0
        case .double(let d): return d != 0
        case .string(let s): return !s.isEmpty
        case .list(let a), .tuple(let a): return !a.isEmpty
        case .dict(let d): return !d.keys.isEmpty
        case .namespace, .callable, .loop: return true
        }
    }

    /// The Python type name used in error messages.
    var typeName: String {
        switch self {
        case .undefined, .unsafeUndefined: return "Undefined"
        case .none: return "NoneType"
        case .bool: return "bool"
        case .int: return "int"
        case .double: return "float"
        case .string: return "str"
        case .list: return "list"
        case .tuple: return "tuple"
        case .dict: return "dict"
        case .namespace: return "Namespace"
        case .callable(let c): return c.typeName
        case .loop: return "LoopContext"
        }
    }

    /// The failure jinja2 raises when an undefined value is used.
    func undefinedFailure() -> EvalFailure? {
        switch self {
        case .undefined(let hint): return .undefined(hint)
        case .unsafeUndefined(let hint): return .unsafe(hint)
        default: return nil
        }
    }

    /// Python `str(value)`; undefined renders as "".
    var pyStr: String {
        switch self {
        case .undefined, .unsafeUndefined: return ""
        case .string(let s): return s
        default: return pyRepr
        }
    }

    /// Python `repr(value)`.
    var pyRepr: String {
        switch self {
        case .undefined, .unsafeUndefined: return "Undefined"
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return String(i)
        case .double(let d): return pythonFloatRepr(d)
        case .string(let s): return pythonStringRepr(s)
        case .list(let a): return "[" + a.map(\.pyRepr).joined(separator: ", ") + "]"
        case .tuple(let a):
            if a.count == 1 { return "(" + a[0].pyRepr + ",)" }
            return "(" + a.map(\.pyRepr).joined(separator: ", ") + ")"
        case .dict(let d):
            return "{" + zip(d.keys, d.values).map { pythonStringRepr($0.0) + ": " + $0.1.pyRepr }
                .joined(separator: ", ") + "}"
        case .namespace(let n):
            return "<Namespace " + Value.dict(n.attributes).pyRepr + ">"
        case .callable(let c): return c.repr
        case .loop(let l): return "<LoopContext \(l.index0 + 1)/\(l.length)>"
        }
    }
}

/// A dict a template builds or reads (templates only build string-keyed dicts).
typealias Dict = OrderedStringMap<Value>

/// jinja2's `namespace()`: the one mutable object templates have, shared by reference so that
/// `{% set ns.x = ... %}` inside a loop is visible after it.
final class Namespace {
    var attributes = Dict()
}

/// Loop state behind `loop.index`, `loop.first`, `loop.cycle(...)`...
final class LoopState {
    let items: [Value]
    var index0 = 0
    let depth0: Int
    var length: Int { items.count }

    init(items: [Value], depth0: Int) {
        self.items = items
        self.depth0 = depth0
    }

    func attribute(_ name: String) -> Value? {
        switch name {
        case "index": return .int(index0 + 1)
        case "index0": return .int(index0)
        case "revindex": return .int(length - index0)
        case "revindex0": return .int(length - index0 - 1)
        case "first": return .bool(index0 == 0)
        case "last": return .bool(index0 == length - 1)
        case "length": return .int(length)
        case "depth": return .int(depth0 + 1)
        case "depth0": return .int(depth0)
        case "previtem": return index0 > 0 ? items[index0 - 1] : .undefined(hint: "there is no previous item")
        case "nextitem":
            return index0 + 1 < length ? items[index0 + 1] : .undefined(hint: "there is no next item")
        case "cycle": return .callable(Callable(.loopCycle(self)))
        default: return nil
        }
    }
}

/// Something a template can call: a macro, a global function, a bound method.
final class Callable {
    enum Kind {
        case macro(MacroDefinition, closure: Scope)
        case global(String)
        case method(receiver: Value, name: String)
        case loopCycle(LoopState)
    }

    let kind: Kind
    init(_ kind: Kind) { self.kind = kind }

    var typeName: String {
        switch kind {
        case .macro: return "Macro"
        case .global: return "function"
        case .method: return "builtin_function_or_method"
        case .loopCycle: return "method"
        }
    }

    var repr: String {
        switch kind {
        case .macro(let m, _): return "<Macro '\(m.name)'>"
        case .global(let n): return "<function \(n)>"
        case .method(let r, let n): return "<built-in method \(n) of \(r.typeName) object>"
        case .loopCycle: return "<bound method LoopContext.cycle>"
        }
    }
}

/// A variable scope; lookups fall through to the parent (for-loop bodies and macros get their own).
final class Scope {
    var vars: [String: Value] = [:]
    let parent: Scope?

    init(parent: Scope?) { self.parent = parent }

    func lookup(_ name: String) -> Value? {
        var s: Scope? = self
        while let cur = s {
            if let v = cur.vars[name] { return v }
            s = cur.parent
        }
        return nil
    }
}

// MARK: Python equality and ordering

extension Value {
    /// Numeric view for bool/int/float (Python's bool is an int).
    var numeric: (isInt: Bool, int: Int, double: Double)? {
        switch self {
        case .bool(let b): return (true, b ? 1 : 0, b ? 1 : 0)
        case .int(let i): return (true, i, Double(i))
        case .double(let d): return (false, 0, d)
        default: return nil
        }
    }

    /// Python `==`.
    func pyEquals(_ other: Value) -> Bool {
        switch (self, other) {
        case (.undefined, .undefined), (.unsafeUndefined, .unsafeUndefined), (.none, .none): return true
        case (.string(let a), .string(let b)): return scalarsEqual(a, b)
        case (.list(let a), .list(let b)), (.tuple(let a), .tuple(let b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.pyEquals($1) }
        case (.dict(let a), .dict(let b)):
            guard a.keys.count == b.keys.count else { return false }
            for (k, v) in zip(a.keys, a.values) {
                guard let w = b[k], v.pyEquals(w) else { return false }
            }
            return true
        case (.namespace(let a), .namespace(let b)): return a === b
        case (.callable(let a), .callable(let b)): return a === b
        case (.loop(let a), .loop(let b)): return a === b
        default:
            if let x = numeric, let y = other.numeric {
                if x.isInt && y.isInt { return x.int == y.int }
                return x.double == y.double
            }
            return false
        }
    }

    /// Python `<`/`<=`/`>`/`>=` ordering; nil means the types are not orderable (`TypeError`).
    func pyCompare(_ other: Value) throws -> Int {
        if let f = undefinedFailure() ?? other.undefinedFailure() { throw f }
        switch (self, other) {
        case (.string(let a), .string(let b)):
            return compareScalars(a, b)
        case (.list(let a), .list(let b)), (.tuple(let a), .tuple(let b)):
            for (x, y) in zip(a, b) where !x.pyEquals(y) { return try x.pyCompare(y) }
            return a.count < b.count ? -1 : a.count > b.count ? 1 : 0
        default:
            if let x = numeric, let y = other.numeric {
                if x.isInt && y.isInt { return x.int < y.int ? -1 : x.int > y.int ? 1 : 0 }
                if x.double.isNaN || y.double.isNaN { return 2 }  // every comparison with NaN is false
                return x.double < y.double ? -1 : x.double > y.double ? 1 : 0
            }
            throw EvalFailure.runtime(
                "'<' not supported between instances of '\(typeName)' and '\(other.typeName)'")
        }
    }
}

func compareScalars(_ a: String, _ b: String) -> Int {
    var i = a.unicodeScalars.makeIterator()
    var j = b.unicodeScalars.makeIterator()
    while true {
        switch (i.next(), j.next()) {
        case (nil, nil): return 0
        case (nil, _): return -1
        case (_, nil): return 1
        case (let x?, let y?):
            if x != y { return x.value < y.value ? -1 : 1 }
        }
    }
}

// MARK: Python text formatting

/// Python `repr(float)`: shortest round-trip digits, fixed notation for decimal exponents in
/// (-4, 16], scientific (`1e+16`, `1.5e-05`) otherwise; always a `.0` when integral.
func pythonFloatRepr(_ d: Double) -> String {
    if d.isNaN { return "nan" }
    if d.isInfinite { return d < 0 ? "-inf" : "inf" }
    if d == 0 { return d.sign == .minus ? "-0.0" : "0.0" }
    // Swift's description is also shortest round-trip; take its digits and exponent.
    let desc = "\(abs(d))"
    var mantissa = desc
    var exp10 = 0
    if let e = desc.firstIndex(where: { $0 == "e" || $0 == "E" }) {
        mantissa = String(desc[..<e])
        exp10 = Int(desc[desc.index(after: e)...]) ?? 0
    }
    var digits = ""
    var pointPos = 0
    if let dot = mantissa.firstIndex(of: ".") {
        let intPart = mantissa[..<dot]
        let fracPart = mantissa[mantissa.index(after: dot)...]
        digits = String(intPart) + String(fracPart)
        pointPos = intPart.count
    } else {
        digits = mantissa
        pointPos = mantissa.count
    }
    // Normalize: strip leading zeros (moving the point) and trailing zeros.
    var chars = Array(digits)
    var lead = 0
    while lead < chars.count - 1, chars[lead] == "0" { lead += 1 }
    chars.removeFirst(lead)
    pointPos -= lead
    while chars.count > 1, chars.last == "0" { chars.removeLast() }
    let decpt = pointPos + exp10  // value = 0.d1d2... * 10^decpt
    let sign = d < 0 ? "-" : ""
    let ds = String(chars)
    if decpt > -4 && decpt <= 16 {
        if decpt <= 0 {
            return sign + "0." + String(repeating: "0", count: -decpt) + ds
        }
        if decpt >= ds.count {
            return sign + ds + String(repeating: "0", count: decpt - ds.count) + ".0"
        }
        let idx = ds.index(ds.startIndex, offsetBy: decpt)
        return sign + ds[..<idx] + "." + ds[idx...]
    }
    let e = decpt - 1
    let expText = (e < 0 ? "-" : "+") + (abs(e) < 10 ? "0" : "") + String(abs(e))
    let mant = ds.count == 1 ? ds : String(ds.first!) + "." + ds.dropFirst()
    return sign + mant + "e" + expText
}

/// Whether Python's `str.isprintable()` holds for the scalar (used by `repr`).
private func isPrintable(_ s: Unicode.Scalar) -> Bool {
    if s == " " { return true }
    switch s.properties.generalCategory {
    case .control, .format, .surrogate, .privateUse, .unassigned, .lineSeparator, .paragraphSeparator,
        .spaceSeparator:
        return false
    default:
        return true
    }
}

/// Python `repr(str)`: single quotes unless the text has `'` and no `"`.
func pythonStringRepr(_ s: String) -> String {
    let useDouble = s.unicodeScalars.contains("'") && !s.unicodeScalars.contains("\"")
    let quote: Unicode.Scalar = useDouble ? "\"" : "'"
    var out = String.UnicodeScalarView()
    out.append(quote)
    for c in s.unicodeScalars {
        switch c {
        case "\\": out.append(contentsOf: "\\\\".unicodeScalars)
        case "\n": out.append(contentsOf: "\\n".unicodeScalars)
        case "\r": out.append(contentsOf: "\\r".unicodeScalars)
        case "\t": out.append(contentsOf: "\\t".unicodeScalars)
        default:
            if c == quote {
                out.append("\\")
                out.append(c)
            } else if isPrintable(c) {
                out.append(c)
            } else {
                let v = c.value
                let hex = String(v, radix: 16)
                let text = v < 0x100 ? "\\x" + String(repeating: "0", count: 2 - hex.count) + hex :
                    v < 0x10000 ? "\\u" + String(repeating: "0", count: 4 - hex.count) + hex :
                    "\\U" + String(repeating: "0", count: 8 - hex.count) + hex
                out.append(contentsOf: text.unicodeScalars)
            }
        }
    }
    out.append(quote)
    return String(out)
}

// MARK: JSON output (Python json.dumps)

/// `json.dumps` with transformers' `tojson` defaults (`ensure_ascii=False`) and options
/// (`indent`, `separators`, `sort_keys`).
struct JSONWriter {
    var indent: String?
    var itemSeparator: String
    var keySeparator: String
    var sortKeys: Bool
    var ensureASCII: Bool

    func write(_ v: Value, into out: inout String, level: Int) {
        // Only called with JSON-serializable values (checked by `serializable`).
        switch v {
        case .none: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .double(let d):
            if d.isNaN { out += "NaN" } else if d.isInfinite { out += d < 0 ? "-Infinity" : "Infinity" } else {
                out += pythonFloatRepr(d)
            }
        case .string(let s): writeString(s, into: &out)
        case .list(let a), .tuple(let a):
            if a.isEmpty { out += "[]"; return }
            out += "["
            for (i, item) in a.enumerated() {
                if i > 0 { out += itemSeparator }
                newline(&out, level + 1)
                write(item, into: &out, level: level + 1)
            }
            newline(&out, level)
            out += "]"
        case .dict(let d):
            if d.keys.isEmpty { out += "{}"; return }
            out += "{"
            var order = Array(d.keys.indices)
            if sortKeys { order.sort { compareScalars(d.keys[$0], d.keys[$1]) < 0 } }
            for (n, i) in order.enumerated() {
                if n > 0 { out += itemSeparator }
                newline(&out, level + 1)
                writeString(d.keys[i], into: &out)
                out += keySeparator
                write(d.values[i], into: &out, level: level + 1)
            }
            newline(&out, level)
            out += "}"
        default:
            out += "null"
        }
    }

    private func newline(_ out: inout String, _ level: Int) {
        guard let indent else { return }
        out += "\n"
        for _ in 0..<level { out += indent }
    }

    func writeString(_ s: String, into out: inout String) {
        var o = String.UnicodeScalarView()
        o.append("\"")
        for c in s.unicodeScalars {
            switch c {
            case "\"": o.append(contentsOf: "\\\"".unicodeScalars)
            case "\\": o.append(contentsOf: "\\\\".unicodeScalars)
            case "\n": o.append(contentsOf: "\\n".unicodeScalars)
            case "\r": o.append(contentsOf: "\\r".unicodeScalars)
            case "\t": o.append(contentsOf: "\\t".unicodeScalars)
            case "\u{08}": o.append(contentsOf: "\\b".unicodeScalars)
            case "\u{0C}": o.append(contentsOf: "\\f".unicodeScalars)
            default:
                if c.value < 0x20 || (ensureASCII && c.value > 0x7E) {
                    func u4(_ v: UInt32) -> String {
                        let h = String(v, radix: 16)
                        return "\\u" + String(repeating: "0", count: 4 - h.count) + h
                    }
                    if c.value > 0xFFFF {
                        let v = c.value - 0x10000
                        o.append(contentsOf: (u4(0xD800 + (v >> 10)) + u4(0xDC00 + (v & 0x3FF))).unicodeScalars)
                    } else {
                        o.append(contentsOf: u4(c.value).unicodeScalars)
                    }
                } else {
                    o.append(c)
                }
            }
        }
        o.append("\"")
        out += String(o)
    }

    /// Nil if the value is serializable, else the Python `TypeError` message.
    static func unserializable(_ v: Value, depth: Int = 0) -> String? {
        if depth > 200 { return "value nested too deeply for JSON" }
        switch v {
        case .none, .bool, .int, .double, .string: return nil
        case .list(let a), .tuple(let a):
            for x in a { if let m = unserializable(x, depth: depth + 1) { return m } }
            return nil
        case .dict(let d):
            for x in d.values { if let m = unserializable(x, depth: depth + 1) { return m } }
            return nil
        default:
            return "Object of type \(v.typeName) is not JSON serializable"
        }
    }
}

/// `Value(v)` for contexts where `Value` names something else (TemplateValue's literal associated type).
func runtimeValue(_ v: TemplateValue) -> Value { Value(v) }
