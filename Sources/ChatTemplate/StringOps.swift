/// Python `str` methods, working on Unicode scalars as Python does (indices, lengths and matching
/// are per code point, with no canonical-equivalence folding).
enum StringOps {
    typealias Scalars = [Unicode.Scalar]

    /// str methods a template may call; the ones Python has but this renderer lacks fail with
    /// `unsupported` when called rather than looking undefined.
    static let implemented: Set<String> = [
        "strip", "lstrip", "rstrip", "split", "rsplit", "splitlines", "startswith", "endswith", "replace", "upper",
        "lower", "title", "capitalize", "swapcase", "find", "rfind", "index", "rindex", "count", "join", "isdigit",
        "isalpha", "isalnum", "isspace", "islower", "isupper", "isnumeric", "isdecimal", "istitle", "center",
        "ljust", "rjust", "zfill", "removeprefix", "removesuffix", "partition", "rpartition", "expandtabs",
        "casefold",
    ]
    static let unimplemented: Set<String> = ["format", "format_map", "encode", "translate", "maketrans", "isidentifier",
        "isprintable", "isascii"]
    static let methods = implemented.union(unimplemented)

    static func find(_ hay: Scalars, _ needle: Scalars, from start: Int, to end: Int? = nil) -> Int? {
        let end = min(end ?? hay.count, hay.count)
        if needle.isEmpty { return start <= end ? start : nil }
        guard needle.count <= end - start else { return nil }
        var i = start
        while i + needle.count <= end {
            if hay[i] == needle[0] {
                var k = 1
                while k < needle.count && hay[i + k] == needle[k] { k += 1 }
                if k == needle.count { return i }
            }
            i += 1
        }
        return nil
    }

    static func rfind(_ hay: Scalars, _ needle: Scalars) -> Int? {
        if needle.isEmpty { return hay.count }
        guard needle.count <= hay.count else { return nil }
        var i = hay.count - needle.count
        while i >= 0 {
            if Array(hay[i..<i + needle.count]) == needle { return i }
            i -= 1
        }
        return nil
    }

    static func string(_ s: Scalars) -> String {
        var v = String.UnicodeScalarView()
        v.append(contentsOf: s)
        return String(v)
    }

    static func string(_ s: ArraySlice<Unicode.Scalar>) -> String {
        var v = String.UnicodeScalarView()
        v.append(contentsOf: s)
        return String(v)
    }

    static func strip(_ s: String, _ chars: String?, left: Bool, right: Bool) -> String {
        let sc = Array(s.unicodeScalars)
        let set = chars.map { Set($0.unicodeScalars) }
        func strippable(_ c: Unicode.Scalar) -> Bool { set.map { $0.contains(c) } ?? isPyWhitespace(c) }
        var a = 0
        var b = sc.count
        if left { while a < b, strippable(sc[a]) { a += 1 } }
        if right { while b > a, strippable(sc[b - 1]) { b -= 1 } }
        return string(sc[a..<b])
    }

    /// `str.split(sep=None, maxsplit=-1)`.
    static func split(_ s: String, _ sep: String?, _ maxsplit: Int) throws -> [String] {
        let sc = Array(s.unicodeScalars)
        var out: [String] = []
        guard let sep else {
            var i = 0
            var splits = 0
            while true {
                while i < sc.count, isPyWhitespace(sc[i]) { i += 1 }
                if i >= sc.count { break }
                if maxsplit >= 0 && splits >= maxsplit {
                    var e = sc.count
                    while e > i, isPyWhitespace(sc[e - 1]) { e -= 1 }
                    out.append(string(sc[i..<e]))
                    break
                }
                var j = i
                while j < sc.count, !isPyWhitespace(sc[j]) { j += 1 }
                out.append(string(sc[i..<j]))
                splits += 1
                i = j
            }
            return out
        }
        let needle = Array(sep.unicodeScalars)
        guard !needle.isEmpty else { throw EvalFailure.runtime("empty separator") }
        var start = 0
        var splits = 0
        while maxsplit < 0 || splits < maxsplit, let i = find(sc, needle, from: start) {
            out.append(string(sc[start..<i]))
            start = i + needle.count
            splits += 1
        }
        out.append(string(sc[start...]))
        return out
    }

    /// `str.rsplit(sep=None, maxsplit=-1)`.
    static func rsplit(_ s: String, _ sep: String?, _ maxsplit: Int) throws -> [String] {
        if maxsplit < 0 { return try split(s, sep, -1) }
        let sc = Array(s.unicodeScalars)
        var out: [String] = []
        guard let sep else {
            var j = sc.count
            var splits = 0
            while true {
                while j > 0, isPyWhitespace(sc[j - 1]) { j -= 1 }
                if j == 0 { break }
                if splits >= maxsplit {
                    var a = 0
                    while a < j, isPyWhitespace(sc[a]) { a += 1 }
                    out.append(string(sc[a..<j]))
                    break
                }
                var i = j
                while i > 0, !isPyWhitespace(sc[i - 1]) { i -= 1 }
                out.append(string(sc[i..<j]))
                splits += 1
                j = i
            }
            return out.reversed()
        }
        let needle = Array(sep.unicodeScalars)
        guard !needle.isEmpty else { throw EvalFailure.runtime("empty separator") }
        var end = sc.count
        var splits = 0
        while splits < maxsplit, let i = rfind(Array(sc[0..<end]), needle) {
            out.append(string(sc[(i + needle.count)..<end]))
            end = i
            splits += 1
        }
        out.append(string(sc[0..<end]))
        return out.reversed()
    }

    static func isLineBreak(_ c: Unicode.Scalar) -> Bool {
        switch c.value {
        case 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029: return true
        default: return false
        }
    }

    /// `str.splitlines(keepends=False)`.
    static func splitlines(_ s: String, keepends: Bool = false) -> [String] {
        let sc = Array(s.unicodeScalars)
        var out: [String] = []
        var i = 0
        var start = 0
        while i < sc.count {
            if isLineBreak(sc[i]) {
                var e = i + 1
                if sc[i] == "\r", e < sc.count, sc[e] == "\n" { e += 1 }
                out.append(string(sc[start..<(keepends ? e : i)]))
                start = e
                i = e
            } else {
                i += 1
            }
        }
        if start < sc.count { out.append(string(sc[start...])) }
        return out
    }

    static func replace(_ s: String, _ old: String, _ new: String, _ count: Int, limit: Int) throws -> String {
        let sc = Array(s.unicodeScalars)
        let o = Array(old.unicodeScalars)
        let n = Array(new.unicodeScalars)
        var out: Scalars = []
        var done = 0
        if o.isEmpty {
            for (i, c) in sc.enumerated() {
                if count < 0 || done < count {
                    out.append(contentsOf: n)
                    done += 1
                }
                out.append(c)
                if out.count > limit { throw EvalFailure.limit("string longer than \(limit) bytes") }
                _ = i
            }
            if count < 0 || done < count { out.append(contentsOf: n) }
            return string(out)
        }
        var i = 0
        while i < sc.count {
            if (count < 0 || done < count), let j = find(sc, o, from: i) {
                out.append(contentsOf: sc[i..<j])
                out.append(contentsOf: n)
                if out.count > limit { throw EvalFailure.limit("string longer than \(limit) bytes") }
                i = j + o.count
                done += 1
            } else {
                out.append(contentsOf: sc[i...])
                break
            }
        }
        return string(out)
    }

    static func title(_ s: String) -> String {
        var out = ""
        var previousCased = false
        for c in s.unicodeScalars {
            let cased = c.properties.isCased
            if cased {
                out += previousCased ? String(c).lowercased() : String(c.properties.titlecaseMapping)
            } else {
                out.unicodeScalars.append(c)
            }
            previousCased = cased || c.properties.isCaseIgnorable && previousCased
        }
        return out
    }

    static func capitalize(_ s: String) -> String {
        guard let first = s.unicodeScalars.first else { return s }
        return String(first.properties.titlecaseMapping) + string(Array(s.unicodeScalars.dropFirst())).lowercased()
    }

    static func swapcase(_ s: String) -> String {
        var out = ""
        for c in s.unicodeScalars {
            if c.properties.isUppercase { out += c.properties.lowercaseMapping } else if c.properties.isLowercase {
                out += c.properties.uppercaseMapping
            } else { out.unicodeScalars.append(c) }
        }
        return out
    }

    static func isCharacterClass(_ s: String, _ predicate: (Unicode.Scalar) -> Bool) -> Bool {
        !s.isEmpty && s.unicodeScalars.allSatisfy(predicate)
    }

    static func hasCased(_ s: String) -> Bool { s.unicodeScalars.contains { $0.properties.isCased } }

    static func isLower(_ s: String) -> Bool {
        hasCased(s) && !s.unicodeScalars.contains(where: { $0.properties.isUppercase || $0.properties.generalCategory == .titlecaseLetter })
    }

    static func isUpper(_ s: String) -> Bool {
        hasCased(s) && !s.unicodeScalars.contains(where: { $0.properties.isLowercase || $0.properties.generalCategory == .titlecaseLetter })
    }

    static func pad(_ s: String, _ width: Int, _ fill: Unicode.Scalar, align: Character) -> String {
        let n = s.unicodeScalars.count
        guard width > n else { return s }
        let total = width - n
        let f = String(fill)
        switch align {
        case "<": return s + String(repeating: f, count: total)
        case ">": return String(repeating: f, count: total) + s
        default:
            // CPython's str.center: the odd fill character goes left when both margin and width are odd.
            let left = total / 2 + (total & width & 1)
            return String(repeating: f, count: left) + s + String(repeating: f, count: total - left)
        }
    }
}
