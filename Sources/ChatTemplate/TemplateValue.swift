/// A JSON-like value handed to a chat template: message fields, tool schemas, `bos_token`, flags.
///
/// Objects keep their key order, because templates print them with `tojson` and iterate them with
/// `items()`, and Python dicts (what transformers hands to Jinja) keep insertion order. Integers and
/// floating-point numbers stay distinct for the same reason: Python prints `1` and `1.0` differently.
public enum TemplateValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([TemplateValue])
    case object(TemplateObject)
}

/// An insertion-ordered string-keyed map (a Python `dict` with string keys): the objects handed
/// to templates (`TemplateObject`) and the dicts templates build.
///
/// Keys compare by Unicode scalars, as Python does, not by Swift's canonical equivalence
/// ("é" precomposed and "e" + combining accent are different keys here).
public struct OrderedStringMap<Element>: ExpressibleByDictionaryLiteral {
    public private(set) var keys: [String] = []
    public private(set) var values: [Element] = []

    public init() {}

    /// Builds a map from pairs in order; a repeated key keeps its first position and last value,
    /// like a Python dict literal.
    public init(_ pairs: [(String, Element)]) {
        for (key, value) in pairs { self[key] = value }
    }

    public init(dictionaryLiteral elements: (String, Element)...) {
        self.init(elements)
    }

    /// Keys (distinct) and their values, as another map has them.
    init(keys: [String], values: [Element]) {
        self.keys = keys
        self.values = values
    }

    public var count: Int { keys.count }
    public var isEmpty: Bool { keys.isEmpty }

    func index(of key: String) -> Int? {
        keys.firstIndex { scalarsEqual($0, key) }
    }

    /// Reading a missing key gives nil; assigning nil removes the key.
    public subscript(key: String) -> Element? {
        get { index(of: key).map { values[$0] } }
        set {
            if let i = index(of: key) {
                if let newValue { values[i] = newValue } else {
                    keys.remove(at: i)
                    values.remove(at: i)
                }
            } else if let newValue {
                keys.append(key)
                values.append(newValue)
            }
        }
    }

    /// The pairs in insertion order.
    public var pairs: [(key: String, value: Element)] {
        Array(zip(keys, values)).map { (key: $0.0, value: $0.1) }
    }
}

extension OrderedStringMap: Sendable where Element: Sendable {}
extension OrderedStringMap: Equatable where Element: Equatable {}

/// The objects handed to a template.
public typealias TemplateObject = OrderedStringMap<TemplateValue>

extension TemplateValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByFloatLiteral, ExpressibleByArrayLiteral, ExpressibleByNilLiteral, ExpressibleByDictionaryLiteral
{
    public init(dictionaryLiteral elements: (String, TemplateValue)...) { self = .object(TemplateObject(elements)) }
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .int(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(arrayLiteral elements: TemplateValue...) { self = .array(elements) }
    public init(nilLiteral: ()) { self = .null }
}

extension TemplateValue {
    /// Parses JSON text, keeping object key order and the integer/float distinction of the text
    /// (`1` is `.int`, `1.0` and `1e3` are `.double`), as Python's `json.loads` does.
    public init(json text: String) throws {
        var reader = JSONReader(Array(text.utf8))
        self = try reader.readDocument()
    }

    /// The value as compact JSON text (Python `json.dumps(..., ensure_ascii=False)` spacing).
    public var jsonText: String {
        var out = ""
        JSONWriter(indent: nil, itemSeparator: ", ", keySeparator: ": ", sortKeys: false, ensureASCII: false)
            .write(runtimeValue(self), into: &out, level: 0)
        return out
    }
}

/// Python string equality: scalar by scalar (UTF-8 bytes are equal exactly when scalars are).
@inline(__always)
func scalarsEqual(_ a: String, _ b: String) -> Bool {
    a.utf8.elementsEqual(b.utf8)
}

/// A strict RFC 8259 reader over UTF-8 bytes with a nesting limit, so hostile input cannot
/// exhaust the stack.
struct JSONReader {
    private let bytes: [UInt8]
    private var pos = 0
    private var depth = 0
    private static let maxDepth = 512

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    private func fail(_ what: String) -> ChatTemplateError {
        .invalidInput("invalid JSON at byte \(pos): \(what)")
    }

    mutating func readDocument() throws -> TemplateValue {
        skipSpace()
        let value = try readValue()
        skipSpace()
        guard pos == bytes.count else { throw fail("trailing characters") }
        return value
    }

    private mutating func skipSpace() {
        while pos < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[pos]) { pos += 1 }
    }

    private mutating func readValue() throws -> TemplateValue {
        guard pos < bytes.count else { throw fail("unexpected end") }
        switch bytes[pos] {
        case UInt8(ascii: "{"): return try readObject()
        case UInt8(ascii: "["): return try readArray()
        case UInt8(ascii: "\""): return .string(try readString())
        case UInt8(ascii: "t"): try expectWord("true"); return .bool(true)
        case UInt8(ascii: "f"): try expectWord("false"); return .bool(false)
        case UInt8(ascii: "n"): try expectWord("null"); return .null
        default: return try readNumber()
        }
    }

    private mutating func expectWord(_ word: String) throws {
        let w = Array(word.utf8)
        guard pos + w.count <= bytes.count, Array(bytes[pos..<pos + w.count]) == w else {
            throw fail("unexpected character")
        }
        pos += w.count
    }

    private mutating func enter() throws {
        depth += 1
        if depth > Self.maxDepth { throw fail("nesting deeper than \(Self.maxDepth)") }
    }

    private mutating func readObject() throws -> TemplateValue {
        try enter()
        defer { depth -= 1 }
        pos += 1
        var object = TemplateObject()
        skipSpace()
        if pos < bytes.count, bytes[pos] == UInt8(ascii: "}") {
            pos += 1
            return .object(object)
        }
        while true {
            skipSpace()
            guard pos < bytes.count, bytes[pos] == UInt8(ascii: "\"") else { throw fail("expected object key") }
            let key = try readString()
            skipSpace()
            guard pos < bytes.count, bytes[pos] == UInt8(ascii: ":") else { throw fail("expected ':'") }
            pos += 1
            skipSpace()
            object[key] = try readValue()
            skipSpace()
            guard pos < bytes.count else { throw fail("unexpected end") }
            if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
            if bytes[pos] == UInt8(ascii: "}") { pos += 1; return .object(object) }
            throw fail("expected ',' or '}'")
        }
    }

    private mutating func readArray() throws -> TemplateValue {
        try enter()
        defer { depth -= 1 }
        pos += 1
        var items: [TemplateValue] = []
        skipSpace()
        if pos < bytes.count, bytes[pos] == UInt8(ascii: "]") {
            pos += 1
            return .array(items)
        }
        while true {
            skipSpace()
            items.append(try readValue())
            skipSpace()
            guard pos < bytes.count else { throw fail("unexpected end") }
            if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
            if bytes[pos] == UInt8(ascii: "]") { pos += 1; return .array(items) }
            throw fail("expected ',' or ']'")
        }
    }

    private mutating func readHex4() throws -> UInt32 {
        guard pos + 4 <= bytes.count else { throw fail("short \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[pos]
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            default: throw fail("bad hex digit in \\u escape")
            }
            v = v * 16 + d
            pos += 1
        }
        return v
    }

    private mutating func readString() throws -> String {
        pos += 1
        var scalars = String.UnicodeScalarView()
        var chunkStart = pos
        var raw: [UInt8] = []
        while true {
            guard pos < bytes.count else { throw fail("unterminated string") }
            let c = bytes[pos]
            if c == UInt8(ascii: "\"") {
                raw.append(contentsOf: bytes[chunkStart..<pos])
                pos += 1
                break
            }
            if c < 0x20 { throw fail("control character in string") }
            if c != UInt8(ascii: "\\") { pos += 1; continue }
            raw.append(contentsOf: bytes[chunkStart..<pos])
            pos += 1
            guard pos < bytes.count else { throw fail("unterminated escape") }
            let e = bytes[pos]
            pos += 1
            var scalar: Unicode.Scalar
            switch e {
            case UInt8(ascii: "\""): scalar = "\""
            case UInt8(ascii: "\\"): scalar = "\\"
            case UInt8(ascii: "/"): scalar = "/"
            case UInt8(ascii: "b"): scalar = "\u{08}"
            case UInt8(ascii: "f"): scalar = "\u{0C}"
            case UInt8(ascii: "n"): scalar = "\n"
            case UInt8(ascii: "r"): scalar = "\r"
            case UInt8(ascii: "t"): scalar = "\t"
            case UInt8(ascii: "u"):
                var code = try readHex4()
                if (0xD800...0xDBFF).contains(code), pos + 6 <= bytes.count, bytes[pos] == UInt8(ascii: "\\"),
                    bytes[pos + 1] == UInt8(ascii: "u")
                {
                    let save = pos
                    pos += 2
                    let low = try readHex4()
                    if (0xDC00...0xDFFF).contains(low) {
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    } else {
                        pos = save
                    }
                }
                // A lone surrogate cannot live in a Swift String; it becomes U+FFFD.
                scalar = Unicode.Scalar(code) ?? "\u{FFFD}"
            default: throw fail("bad escape")
            }
            try appendUTF8(raw, to: &scalars)
            raw.removeAll(keepingCapacity: true)
            scalars.append(scalar)
            chunkStart = pos
        }
        try appendUTF8(raw, to: &scalars)
        return String(scalars)
    }

    private func appendUTF8(_ raw: [UInt8], to scalars: inout String.UnicodeScalarView) throws {
        if raw.isEmpty { return }
        guard let s = String(validating: raw, as: UTF8.self) else { throw fail("invalid UTF-8") }
        scalars.append(contentsOf: s.unicodeScalars)
    }

    private mutating func readNumber() throws -> TemplateValue {
        let start = pos
        if pos < bytes.count, bytes[pos] == UInt8(ascii: "-") { pos += 1 }
        func digits() -> Int {
            let s = pos
            while pos < bytes.count, (0x30...0x39).contains(bytes[pos]) { pos += 1 }
            return pos - s
        }
        guard pos < bytes.count, (0x30...0x39).contains(bytes[pos]) else { throw fail("unexpected character") }
        if bytes[pos] == 0x30 { pos += 1 } else { _ = digits() }
        var isFloat = false
        if pos < bytes.count, bytes[pos] == UInt8(ascii: ".") {
            pos += 1
            isFloat = true
            guard digits() > 0 else { throw fail("expected digits after '.'") }
        }
        if pos < bytes.count, bytes[pos] == UInt8(ascii: "e") || bytes[pos] == UInt8(ascii: "E") {
            pos += 1
            isFloat = true
            if pos < bytes.count, bytes[pos] == UInt8(ascii: "+") || bytes[pos] == UInt8(ascii: "-") { pos += 1 }
            guard digits() > 0 else { throw fail("expected exponent digits") }
        }
        let text = String(decoding: bytes[start..<pos], as: UTF8.self)
        if !isFloat, let i = Int(text) { return .int(i) }
        guard let d = Double(text) else { throw fail("bad number") }
        return .double(d)
    }
}
