import Foundation

/// jinja2's built-in filters (3.1 semantics), with transformers' `tojson` override.
enum Filters {
    static let implemented: Set<String> = [
        "abs", "attr", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape", "first", "float",
        "forceescape", "indent", "int", "items", "join", "last", "length", "list", "lower", "map", "max", "min",
        "reject", "rejectattr", "replace", "reverse", "round", "safe", "select", "selectattr", "sort", "string", "sum",
        "title", "tojson", "trim", "unique", "upper", "wordcount",
    ]

    static let jinjaBuiltins: Set<String> = implemented.union([
        "batch", "filesizeformat", "format", "groupby", "pprint", "random", "slice", "striptags", "truncate",
        "urlencode", "urlize", "wordwrap", "xmlattr",
    ])

    static func apply(_ name: String, _ v: Value, _ args: [Value], _ kwargs: [(String, Value)], _ interp: Interpreter)
        throws -> Value
    {
        func bind(_ names: [String]) throws -> [Value?] { try bindArguments(name, names, args, kwargs) }
        switch name {
        case "default", "d":
            let b = try bind(["default_value", "boolean"])
            let replacement = b[0] ?? .string("")
            let boolean = b[1]?.truthy ?? false
            if v.isUndefined || (boolean && !v.truthy) { return replacement }
            return v
        case "length", "count":
            _ = try bind([])
            return .int(try length(v))
        case "string":
            _ = try bind([])
            return .string(v.pyStr)
        case "trim":
            let b = try bind(["chars"])
            return .string(StringOps.strip(v.pyStr, try optionalString(b[0], "chars"), left: true, right: true))
        case "upper":
            _ = try bind([])
            return .string(v.pyStr.uppercased())
        case "lower":
            _ = try bind([])
            return .string(v.pyStr.lowercased())
        case "capitalize":
            _ = try bind([])
            return .string(StringOps.capitalize(v.pyStr))
        case "title":
            _ = try bind([])
            return .string(titleFilter(v.pyStr))
        case "safe", "e", "escape", "forceescape":
            _ = try bind([])
            if name == "safe" { return v }
            return .string(htmlEscape(v.pyStr))
        case "tojson":
            return try tojson(v, args, kwargs)
        case "first", "last":
            _ = try bind([])
            if let f = v.undefinedFailure(), !v.isUndefined { throw f }
            let items = try interp.iterate(v)
            guard let x = name == "first" ? items.first : items.last else {
                return .undefined(hint: "No \(name) item, sequence was empty.")
            }
            return x
        case "join":
            let b = try bind(["d", "attribute"])
            let sep = b[0].map { $0.pyStr } ?? ""
            var items = try interp.iterate(v)
            if let attr = b[1] { items = try items.map { try attributeOrItem($0, attr, interp) } }
            return .string(try interp.checkString(items.map(\.pyStr).joined(separator: sep)))
        case "replace":
            let b = try bind(["old", "new", "count"])
            guard let o = b[0], let n = b[1] else { throw EvalFailure.runtime("replace() missing required arguments") }
            var count = -1
            if let c = b[2], !c.pyEquals(.none) { count = try expectInt(c, "count") }
            return .string(try StringOps.replace(v.pyStr, o.pyStr, n.pyStr, count, limit: interp.limits.maxStringBytes))
        case "items":
            _ = try bind([])
            switch v {
            case .undefined: return .list([])
            case .dict(let d): return .list(zip(d.keys, d.values).map { .tuple([.string($0.0), $0.1]) })
            default:
                if let f = v.undefinedFailure() { throw f }
                throw EvalFailure.runtime("Can only get item pairs from a mapping.")
            }
        case "list":
            _ = try bind([])
            return .list(try interp.iterate(v))
        case "reverse":
            _ = try bind([])
            if case .string(let s) = v { return .string(StringOps.string(Array(s.unicodeScalars.reversed()))) }
            return .list(try interp.iterate(v).reversed())
        case "abs":
            _ = try bind([])
            if let f = v.undefinedFailure() { throw f }
            switch v {
            case .bool(let b): return .int(b ? 1 : 0)
            case .int(let i):
                guard i != Int.min else { throw EvalFailure.runtime("integer overflow") }
                return .int(abs(i))
            case .double(let d): return .double(abs(d))
            default: throw EvalFailure.runtime("bad operand type for abs(): '\(v.typeName)'")
            }
        case "int":
            let b = try bind(["default", "base"])
            let dflt = b[0] ?? .int(0)
            let base = try b[1].map { try expectInt($0, "base") } ?? 10
            switch v {
            case .bool(let x): return .int(x ? 1 : 0)
            case .int: return v
            case .double(let d):
                guard d.isFinite, abs(d) < 9.2e18 else { return dflt }
                return .int(Int(d))
            case .string(let s):
                var t = StringOps.strip(s, nil, left: true, right: true).replacingOccurrences(of: "_", with: "")
                var negative = false
                if t.hasPrefix("-") || t.hasPrefix("+") {
                    negative = t.hasPrefix("-")
                    t.removeFirst()
                }
                let prefixes = [16: "0x", 8: "0o", 2: "0b"]
                if let p = prefixes[base], t.lowercased().hasPrefix(p) { t.removeFirst(2) }
                if !t.hasPrefix("-"), !t.hasPrefix("+"), let i = Int(t, radix: base) { return .int(negative ? -i : i) }
                if negative { t = "-" + t }
                if base == 10, let d = Double(t), d.isFinite, abs(d) < 9.2e18 { return .int(Int(d)) }
                return dflt
            default: return dflt
            }
        case "float":
            let b = try bind(["default"])
            let dflt = b[0] ?? .double(0)
            switch v {
            case .bool(let x): return .double(x ? 1 : 0)
            case .int(let i): return .double(Double(i))
            case .double: return v
            case .string(let s):
                let t = StringOps.strip(s, nil, left: true, right: true).lowercased()
                if ["inf", "+inf", "infinity", "+infinity"].contains(t) { return .double(.infinity) }
                if ["-inf", "-infinity"].contains(t) { return .double(-.infinity) }
                if ["nan", "+nan", "-nan"].contains(t) { return .double(.nan) }
                if t.unicodeScalars.allSatisfy({ "0123456789.eE+-_".unicodeScalars.contains($0) }),
                    let d = Double(t.replacingOccurrences(of: "_", with: ""))
                {
                    return .double(d)
                }
                return dflt
            default: return dflt
            }
        case "round":
            let b = try bind(["precision", "method"])
            let precision = try b[0].map { try expectInt($0, "precision") } ?? 0
            let method = b[1].map { $0.pyStr } ?? "common"
            guard let n = v.numeric else {
                if let f = v.undefinedFailure() { throw f }
                throw EvalFailure.runtime("type \(v.typeName) doesn't define __round__ method")
            }
            let scale = pow(10.0, Double(max(-300, min(300, precision))))
            let x = n.double * scale
            let r: Double
            switch method {
            case "common": r = x.rounded(.toNearestOrEven)
            case "ceil": r = x.rounded(.up)
            case "floor": r = x.rounded(.down)
            default: throw EvalFailure.runtime("method must be common, ceil or floor")
            }
            return .double(r / scale)
        case "center":
            let b = try bind(["width"])
            let w = try b[0].map { try expectInt($0, "width") } ?? 80
            guard w <= interp.limits.maxStringBytes else { throw EvalFailure.limit("padding too wide") }
            return .string(StringOps.pad(v.pyStr, w, " ", align: "^"))
        case "indent":
            let b = try bind(["width", "first", "blank"])
            var indention = "    "
            if let w = b[0] {
                if case .string(let s) = w { indention = s } else {
                    let n = try expectInt(w, "width")
                    guard n <= 4096 else { throw EvalFailure.limit("indent too wide") }
                    indention = String(repeating: " ", count: max(0, n))
                }
            }
            let first = b[1]?.truthy ?? false
            let blank = b[2]?.truthy ?? false
            let s = v.pyStr + "\n"
            var rv: String
            let lines = StringOps.splitlines(s)
            if blank {
                rv = lines.joined(separator: "\n" + indention)
            } else {
                rv = lines.first ?? ""
                if lines.count > 1 {
                    rv += "\n" + lines.dropFirst().map { $0.isEmpty ? $0 : indention + $0 }.joined(separator: "\n")
                }
            }
            if first { rv = indention + rv }
            return .string(try interp.checkString(rv))
        case "wordcount":
            _ = try bind([])
            return .int(wordCount(v.pyStr))
        case "attr":
            let b = try bind(["name"])
            guard let n = b[0] else { throw EvalFailure.runtime("attr() missing argument 'name'") }
            // Only real attributes (methods, namespace/loop fields), never dict keys.
            let attrName = n.pyStr
            if let f = v.undefinedFailure() { throw f }
            return interp.pythonAttribute(v, attrName) ?? .undefined(hint: "\(v.typeName) object has no attribute '\(attrName)'")
        case "map":
            return try map(v, args, kwargs, interp)
        case "select", "reject", "selectattr", "rejectattr":
            return try select(name, v, args, kwargs, interp)
        case "sort":
            let b = try bind(["reverse", "case_sensitive", "attribute"])
            let items = try interp.iterate(v)
            let reverse = b[0]?.truthy ?? false
            let caseSensitive = b[1]?.truthy ?? false
            let keys = try items.map { item -> Value in
                var k = item
                if let a = b[2] { k = try attributeOrItem(item, a, interp) }
                return caseSensitive ? k : lowered(k)
            }
            return .list(try stableSort(items, keys, reverse: reverse))
        case "dictsort":
            let b = try bind(["case_sensitive", "by", "reverse"])
            guard case .dict(let d) = v else { throw EvalFailure.runtime("You can only sort by either 'key' or 'value'") }
            let caseSensitive = b[0]?.truthy ?? false
            let by = b[1]?.pyStr ?? "key"
            guard by == "key" || by == "value" else {
                throw EvalFailure.runtime("You can only sort by either 'key' or 'value'")
            }
            let pairs: [Value] = zip(d.keys, d.values).map { .tuple([.string($0.0), $0.1]) }
            let keys: [Value] = zip(d.keys, d.values).map { k, val in
                let x: Value = by == "key" ? .string(k) : val
                return caseSensitive ? x : lowered(x)
            }
            return .list(try stableSort(pairs, keys, reverse: b[2]?.truthy ?? false))
        case "unique":
            let b = try bind(["case_sensitive", "attribute"])
            var seen: [Value] = []
            var out: [Value] = []
            for item in try interp.iterate(v) {
                var k = item
                if let a = b[1] { k = try attributeOrItem(item, a, interp) }
                if !(b[0]?.truthy ?? false) { k = lowered(k) }
                if !seen.contains(where: { $0.pyEquals(k) }) {
                    seen.append(k)
                    out.append(item)
                }
            }
            return .list(out)
        case "min", "max":
            let b = try bind(["case_sensitive", "attribute"])
            let items = try interp.iterate(v)
            guard !items.isEmpty else { return .undefined(hint: "No aggregated item, sequence was empty.") }
            var best = 0
            var bestKey: Value? = nil
            for (i, item) in items.enumerated() {
                var k = item
                if let a = b[1] { k = try attributeOrItem(item, a, interp) }
                if !(b[0]?.truthy ?? false) { k = lowered(k) }
                if let bk = bestKey {
                    let c = try k.pyCompare(bk)
                    if name == "min" ? c == -1 : c == 1 {
                        best = i
                        bestKey = k
                    }
                } else {
                    bestKey = k
                }
            }
            return items[best]
        case "sum":
            let b = try bind(["attribute", "start"])
            var total = b[1] ?? .int(0)
            for item in try interp.iterate(v) {
                var x = item
                if let a = b[0] { x = try attributeOrItem(item, a, interp) }
                total = try Arithmetic.apply(.add, total, x, interp)
            }
            return total
        default:
            throw EvalFailure.unsupported("the '\(name)' filter")
        }
    }

    static func length(_ v: Value) throws -> Int {
        switch v {
        case .undefined: return 0
        case .string(let s): return s.unicodeScalars.count
        case .list(let a), .tuple(let a): return a.count
        case .dict(let d): return d.keys.count
        case .loop(let l): return l.length
        default:
            if let f = v.undefinedFailure() { throw f }
            throw EvalFailure.runtime("object of type '\(v.typeName)' has no len()")
        }
    }

    private static func lowered(_ v: Value) -> Value {
        if case .string(let s) = v { return .string(s.lowercased()) }
        return v
    }

    private static func stableSort(_ items: [Value], _ keys: [Value], reverse: Bool) throws -> [Value] {
        var order = Array(items.indices)
        var failure: Error? = nil
        // Merge sort keeps Python's stability; comparison errors surface after sorting.
        func less(_ a: Int, _ b: Int) -> Bool {
            do {
                let c = try keys[a].pyCompare(keys[b])
                return reverse ? c == 1 : c == -1
            } catch {
                failure = failure ?? error
                return false
            }
        }
        order = mergeSort(order, less)
        if let failure { throw failure }
        return order.map { items[$0] }
    }

    private static func mergeSort(_ a: [Int], _ less: (Int, Int) -> Bool) -> [Int] {
        if a.count <= 1 { return a }
        let mid = a.count / 2
        let l = mergeSort(Array(a[..<mid]), less)
        let r = mergeSort(Array(a[mid...]), less)
        var out: [Int] = []
        out.reserveCapacity(a.count)
        var i = 0, j = 0
        while i < l.count && j < r.count {
            if less(r[j], l[i]) { out.append(r[j]); j += 1 } else { out.append(l[i]); i += 1 }
        }
        out.append(contentsOf: l[i...])
        out.append(contentsOf: r[j...])
        return out
    }

    /// jinja2's `environment.getitem`-based attribute path: "a.b.0" walks dicts, lists and attributes.
    static func attributeOrItem(_ v: Value, _ attribute: Value, _ interp: Interpreter) throws -> Value {
        if case .int = attribute { return try interp.getItem(v, attribute) }
        var cur = v
        for part in attribute.pyStr.split(separator: ".", omittingEmptySubsequences: false).map(String.init) {
            if let i = Int(part) { cur = try interp.getItem(cur, .int(i)) } else { cur = try interp.getItem(cur, .string(part)) }
        }
        return cur
    }

    private static func map(_ v: Value, _ args: [Value], _ kwargs: [(String, Value)], _ interp: Interpreter) throws
        -> Value
    {
        let items = try interp.iterate(v)
        if args.isEmpty, let attr = kwargs.first(where: { $0.0 == "attribute" })?.1 {
            let dflt = kwargs.first(where: { $0.0 == "default" })?.1
            if let extra = kwargs.first(where: { $0.0 != "attribute" && $0.0 != "default" }) {
                throw EvalFailure.runtime("Unexpected keyword argument '\(extra.0)'")
            }
            return .list(try items.map { item in
                let x = try attributeOrItem(item, attr, interp)
                if x.isUndefined, let dflt { return dflt }
                return x
            })
        }
        guard let first = args.first, case .string(let filterName) = first else {
            throw EvalFailure.runtime("map requires a filter argument")
        }
        guard implemented.contains(filterName) else {
            if jinjaBuiltins.contains(filterName) { throw EvalFailure.unsupported("the '\(filterName)' filter") }
            throw EvalFailure.runtime("No filter named '\(filterName)'.")
        }
        let rest = Array(args.dropFirst())
        return .list(try items.map { try apply(filterName, $0, rest, kwargs, interp) })
    }

    private static func select(_ name: String, _ v: Value, _ args: [Value], _ kwargs: [(String, Value)],
        _ interp: Interpreter) throws -> Value
    {
        let items = try interp.iterate(v)
        let byAttribute = name.hasSuffix("attr")
        let keep = name.hasPrefix("select")
        var rest = args
        var attribute: Value? = nil
        if byAttribute {
            guard !rest.isEmpty else { throw EvalFailure.runtime("Missing parameter for attribute name") }
            attribute = rest.removeFirst()
        }
        var testName: String? = nil
        if !rest.isEmpty {
            testName = rest.removeFirst().pyStr
            if let t = testName, !Tests.implemented.contains(t) {
                if Tests.jinjaBuiltins.contains(t) { throw EvalFailure.unsupported("the '\(t)' test") }
                throw EvalFailure.runtime("No test named '\(t)'.")
            }
        }
        var out: [Value] = []
        for item in items {
            let x = try attribute.map { try attributeOrItem(item, $0, interp) } ?? item
            let passed = try testName.map { try Tests.apply($0, x, rest, kwargs, interp) } ?? x.truthy
            if passed == keep { out.append(item) }
        }
        return .list(out)
    }

    private static func tojson(_ v: Value, _ args: [Value], _ kwargs: [(String, Value)]) throws -> Value {
        let b = try bindArguments("tojson", ["ensure_ascii", "indent", "separators", "sort_keys"], args, kwargs)
        let ensureASCII = b[0]?.truthy ?? false
        var indent: String? = nil
        if let i = b[1], !i.pyEquals(.none) {
            switch i {
            case .string(let s): indent = s
            default:
                let n = try expectInt(i, "indent")
                guard n <= 4096 else { throw EvalFailure.limit("indent too wide") }
                indent = String(repeating: " ", count: max(0, n))
            }
        }
        var itemSep = indent == nil ? ", " : ","
        var keySep = ": "
        if let s = b[2], !s.pyEquals(.none) {
            guard case .tuple(let parts) = s, parts.count == 2 else {
                if case .list(let parts) = s, parts.count == 2 {
                    itemSep = try expectString(parts[0], "separator")
                    keySep = try expectString(parts[1], "separator")
                    return try finishJSON(v, indent, itemSep, keySep, b[3]?.truthy ?? false, ensureASCII)
                }
                throw EvalFailure.runtime("separators must be a (item_separator, key_separator) pair")
            }
            itemSep = try expectString(parts[0], "separator")
            keySep = try expectString(parts[1], "separator")
        }
        return try finishJSON(v, indent, itemSep, keySep, b[3]?.truthy ?? false, ensureASCII)
    }

    private static func finishJSON(_ v: Value, _ indent: String?, _ itemSep: String, _ keySep: String, _ sortKeys: Bool,
        _ ensureASCII: Bool) throws -> Value
    {
        if let message = JSONWriter.unserializable(v) { throw EvalFailure.runtime(message) }
        var out = ""
        JSONWriter(indent: indent, itemSeparator: itemSep, keySeparator: keySep, sortKeys: sortKeys,
            ensureASCII: ensureASCII).write(v, into: &out, level: 0)
        return .string(out)
    }

    /// markupsafe's escape.
    static func htmlEscape(_ s: String) -> String {
        var out = ""
        for c in s.unicodeScalars {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&#34;"
            case "'": out += "&#39;"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }

    /// jinja2's `title` filter: capitalizes the first letter of each word, words split at
    /// whitespace, dashes, parentheses, braces and brackets.
    static func titleFilter(_ s: String) -> String {
        var out = ""
        var atWordStart = true
        for c in s.unicodeScalars {
            if isPyWhitespace(c) || "-([{<".unicodeScalars.contains(c) {
                out.unicodeScalars.append(c)
                atWordStart = true
                continue
            }
            if atWordStart {
                out += String(c.properties.titlecaseMapping)
                atWordStart = false
            } else {
                out += String(c).lowercased()
            }
        }
        return out
    }

    /// jinja2 counts `\w+` runs.
    static func wordCount(_ s: String) -> Int {
        var n = 0
        var inWord = false
        for c in s.unicodeScalars {
            let w = c == "_" || c.properties.isAlphabetic || c.properties.numericType != nil
            if w && !inWord { n += 1 }
            inWord = w
        }
        return n
    }
}

/// jinja2's built-in tests.
enum Tests {
    static let implemented: Set<String> = [
        "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "escaped", "even", "false", "float", "ge",
        "greaterthan", "gt", "in", "integer", "iterable", "le", "lessthan", "lower", "lt", "mapping", "ne", "none",
        "number", "odd", "sameas", "sequence", "string", "true", "undefined", "upper", "==", "!=", "<", "<=", ">",
        ">=", "filter", "test",
    ]
    static let jinjaBuiltins = implemented

    static func apply(_ name: String, _ v: Value, _ args: [Value], _ kwargs: [(String, Value)], _ interp: Interpreter)
        throws -> Bool
    {
        func one() throws -> Value {
            let b = try bindArguments(name, ["other"], args, kwargs)
            guard let o = b[0] else { throw EvalFailure.runtime("test '\(name)' needs an argument") }
            return o
        }
        func none() throws { _ = try bindArguments(name, [], args, kwargs) }
        switch name {
        case "defined": try none(); return !v.isUndefined
        case "undefined": try none(); return v.isUndefined
        case "none": try none(); if case .none = v { return true }; return false
        case "boolean": try none(); if case .bool = v { return true }; return false
        case "true": try none(); if case .bool(true) = v { return true }; return false
        case "false": try none(); if case .bool(false) = v { return true }; return false
        case "string": try none(); if case .string = v { return true }; return false
        case "mapping": try none(); if case .dict = v { return true }; return false
        case "number":
            try none()
            switch v {
            case .bool, .int, .double: return true
            default: return false
            }
        case "integer": try none(); if case .int = v { return true }; return false
        case "float": try none(); if case .double = v { return true }; return false
        case "iterable":
            try none()
            switch v {
            case .undefined, .unsafeUndefined, .string, .list, .tuple, .dict, .loop: return true
            default: return false
            }
        case "sequence":
            try none()
            switch v {
            case .undefined, .unsafeUndefined, .string, .list, .tuple, .dict: return true
            default: return false
            }
        case "callable":
            try none()
            if case .callable = v { return true }
            return false
        case "escaped": try none(); return false
        case "lower": try none(); return StringOps.isLower(v.pyStr)
        case "upper": try none(); return StringOps.isUpper(v.pyStr)
        case "odd", "even":
            try none()
            let n = try expectInt(v, name)
            return (n % 2 != 0) == (name == "odd")
        case "divisibleby":
            let d = try expectInt(try one(), "divisibleby")
            let n = try expectInt(v, "divisibleby")
            guard d != 0 else { throw EvalFailure.runtime("integer division or modulo by zero") }
            if d == -1 { return true }
            return n % d == 0
        case "eq", "equalto", "==": return try interp.compare(.eq, v, try one())
        case "ne", "!=": return try interp.compare(.ne, v, try one())
        case "lt", "lessthan", "<": return try interp.compare(.lt, v, try one())
        case "le", "<=": return try interp.compare(.le, v, try one())
        case "gt", "greaterthan", ">": return try interp.compare(.gt, v, try one())
        case "ge", ">=": return try interp.compare(.ge, v, try one())
        case "in": return try interp.contains(try one(), v)
        case "sameas":
            let o = try one()
            switch (v, o) {
            case (.none, .none): return true
            case (.bool(let a), .bool(let b)): return a == b
            case (.namespace(let a), .namespace(let b)): return a === b
            case (.callable(let a), .callable(let b)): return a === b
            default: return false
            }
        case "filter", "test":
            let o = try one()
            guard case .string(let n) = o else { return false }
            return name == "filter" ? Filters.implemented.contains(n) : implemented.contains(n)
        default:
            throw EvalFailure.unsupported("the '\(name)' test")
        }
    }
}
