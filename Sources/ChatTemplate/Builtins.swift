import Foundation

/// Binds Python-style positional and keyword arguments to parameter names.
func bindArguments(_ function: String, _ names: [String], _ positional: [Value], _ keyword: [(String, Value)])
    throws -> [Value?]
{
    guard positional.count <= names.count else {
        throw EvalFailure.runtime("\(function)() takes at most \(names.count) argument(s) (\(positional.count) given)")
    }
    var bound = [Value?](repeating: nil, count: names.count)
    for (i, v) in positional.enumerated() { bound[i] = v }
    for (k, v) in keyword {
        guard let i = names.firstIndex(of: k) else {
            throw EvalFailure.runtime("\(function)() got an unexpected keyword argument '\(k)'")
        }
        guard bound[i] == nil else { throw EvalFailure.runtime("\(function)() got multiple values for argument '\(k)'") }
        bound[i] = v
    }
    return bound
}

func expectString(_ v: Value, _ what: String) throws -> String {
    if let f = v.undefinedFailure() { throw f }
    guard case .string(let s) = v else { throw EvalFailure.runtime("\(what) must be str, not \(v.typeName)") }
    return s
}

func expectInt(_ v: Value, _ what: String) throws -> Int {
    if let f = v.undefinedFailure() { throw f }
    guard let n = v.numeric, n.isInt else {
        throw EvalFailure.runtime("'\(v.typeName)' object cannot be interpreted as an integer (\(what))")
    }
    return n.int
}

/// Optional str argument where None means "absent" (Python's `sep=None`, `chars=None`).
func optionalString(_ v: Value?, _ what: String) throws -> String? {
    guard let v else { return nil }
    if case .none = v { return nil }
    return try expectString(v, what)
}

/// jinja2's global functions as transformers configures them.
enum Globals {
    static func call(_ name: String, _ args: [Value], _ kwargs: [(String, Value)], _ interp: Interpreter) throws
        -> Value
    {
        switch name {
        case "range":
            guard kwargs.isEmpty else { throw EvalFailure.runtime("range() takes no keyword arguments") }
            let ints = try args.map { try expectInt($0, "range") }
            var start = 0, stop = 0, step = 1
            switch ints.count {
            case 1: stop = ints[0]
            case 2: (start, stop) = (ints[0], ints[1])
            case 3: (start, stop, step) = (ints[0], ints[1], ints[2])
            default: throw EvalFailure.runtime("range expected 1 to 3 arguments, got \(ints.count)")
            }
            guard step != 0 else { throw EvalFailure.runtime("range() arg 3 must not be zero") }
            let span = step > 0 ? Double(stop) - Double(start) : Double(start) - Double(stop)
            let count = span <= 0 ? 0 : Int((span / Double(abs(step))).rounded(.up))
            try interp.checkCount(count)
            var out: [Value] = []
            out.reserveCapacity(count)
            var i = start
            for _ in 0..<count {
                out.append(.int(i))
                i = i &+ step
            }
            return .list(out)
        case "dict":
            var d = Dict()
            guard args.count <= 1 else { throw EvalFailure.runtime("dict expected at most 1 argument") }
            if let first = args.first {
                guard case .dict(let src) = first else {
                    throw EvalFailure.unsupported("dict() from a non-dict argument")
                }
                d = src
            }
            for (k, v) in kwargs { d[k] = v }
            return .dict(d)
        case "namespace":
            let ns = Namespace()
            guard args.count <= 1 else { throw EvalFailure.runtime("namespace expected at most 1 argument") }
            if let first = args.first {
                guard case .dict(let src) = first else {
                    throw EvalFailure.runtime("namespace() argument must be a dict")
                }
                ns.attributes = src
            }
            for (k, v) in kwargs { ns.attributes[k] = v }
            // transformers' TemplateNamespace refuses underscore names (they could reach CPython internals).
            if let bad = ns.attributes.keys.first(where: { $0.hasPrefix("_") }) {
                throw EvalFailure.unsafe(
                    "Chat templates cannot store underscore-prefixed attributes on a namespace, but got '\(bad)'.")
            }
            return .namespace(ns)
        case "raise_exception":
            let bound = try bindArguments("raise_exception", ["message"], args, kwargs)
            guard let message = bound[0] else {
                throw EvalFailure.runtime("raise_exception() missing 1 required positional argument: 'message'")
            }
            throw EvalFailure.raised(message.pyStr)
        case "strftime_now":
            let bound = try bindArguments("strftime_now", ["format"], args, kwargs)
            guard let f = bound[0] else {
                throw EvalFailure.runtime("strftime_now() missing 1 required positional argument: 'format'")
            }
            return .string(Strftime.format(try expectString(f, "format"), interp.now()))
        default:
            throw EvalFailure.unsupported("the global function '\(name)'")
        }
    }
}

/// Methods of Python str, dict and list that templates call.
enum Methods {
    static func call(_ receiver: Value, _ name: String, _ args: [Value], _ kwargs: [(String, Value)],
        _ interp: Interpreter) throws -> Value
    {
        switch receiver {
        case .string(let s): return try stringMethod(s, name, args, kwargs, interp)
        case .dict(let d):
            switch name {
            case "keys":
                _ = try bindArguments(name, [], args, kwargs)
                return .list(d.keys.map { .string($0) })
            case "values":
                _ = try bindArguments(name, [], args, kwargs)
                return .list(d.values)
            case "items":
                _ = try bindArguments(name, [], args, kwargs)
                return .list(zip(d.keys, d.values).map { .tuple([.string($0.0), $0.1]) })
            case "get":
                guard kwargs.isEmpty else { throw EvalFailure.runtime("get() takes no keyword arguments") }
                guard args.count == 1 || args.count == 2 else {
                    throw EvalFailure.runtime("get expected 1 or 2 arguments, got \(args.count)")
                }
                if case .string(let k) = args[0], let v = d[k] { return v }
                if let f = args[0].undefinedFailure() { throw f }
                return args.count == 2 ? args[1] : .none
            case "copy":
                return receiver
            default: break
            }
        case .list(let a), .tuple(let a):
            switch name {
            case "count":
                let b = try bindArguments(name, ["value"], args, kwargs)
                guard let x = b[0] else { throw EvalFailure.runtime("count() takes exactly one argument") }
                return .int(a.filter { $0.pyEquals(x) }.count)
            case "index":
                let b = try bindArguments(name, ["value"], args, kwargs)
                guard let x = b[0] else { throw EvalFailure.runtime("index() takes at least 1 argument") }
                guard let i = a.firstIndex(where: { $0.pyEquals(x) }) else {
                    throw EvalFailure.runtime("\(x.pyRepr) is not in list")
                }
                return .int(i)
            case "copy":
                return receiver
            default: break
            }
        default: break
        }
        throw EvalFailure.unsupported("the method '\(name)' of \(receiver.typeName)")
    }

    private static func stringMethod(_ s: String, _ name: String, _ args: [Value], _ kwargs: [(String, Value)],
        _ interp: Interpreter) throws -> Value
    {
        func noArgs() throws {
            guard args.isEmpty && kwargs.isEmpty else { throw EvalFailure.runtime("\(name)() takes no arguments") }
        }
        switch name {
        case "strip", "lstrip", "rstrip":
            let b = try bindArguments(name, ["chars"], args, kwargs)
            return .string(StringOps.strip(s, try optionalString(b[0], "chars"), left: name != "rstrip",
                right: name != "lstrip"))
        case "split", "rsplit":
            let b = try bindArguments(name, ["sep", "maxsplit"], args, kwargs)
            let sep = try optionalString(b[0], "sep")
            let maxsplit = try b[1].map { try expectInt($0, "maxsplit") } ?? -1
            let parts = name == "split" ? try StringOps.split(s, sep, maxsplit) : try StringOps.rsplit(s, sep, maxsplit)
            return .list(parts.map { .string($0) })
        case "splitlines":
            let b = try bindArguments(name, ["keepends"], args, kwargs)
            return .list(StringOps.splitlines(s, keepends: b[0]?.truthy ?? false).map { .string($0) })
        case "startswith", "endswith":
            let b = try bindArguments(name, ["prefix", "start", "end"], args, kwargs)
            guard let p = b[0] else { throw EvalFailure.runtime("\(name)() takes at least 1 argument (0 given)") }
            var sc = Array(s.unicodeScalars)
            if b[1] != nil || b[2] != nil {
                guard case .string(let sliced) = try interp.slice(.string(s), b[1], b[2], nil) else {
                    throw EvalFailure.runtime("slice indices must be integers or None")
                }
                sc = Array(sliced.unicodeScalars)
            }
            var candidates: [String] = []
            switch p {
            case .string(let x): candidates = [x]
            case .tuple(let xs): candidates = try xs.map { try expectString($0, "\(name) tuple item") }
            default:
                if let f = p.undefinedFailure() { throw f }
                throw EvalFailure.runtime("\(name) first arg must be str or a tuple of str, not \(p.typeName)")
            }
            for c in candidates {
                let cs = Array(c.unicodeScalars)
                if cs.count <= sc.count {
                    if name == "startswith" ? Array(sc.prefix(cs.count)) == cs : Array(sc.suffix(cs.count)) == cs {
                        return .bool(true)
                    }
                }
            }
            return .bool(false)
        case "replace":
            let b = try bindArguments(name, ["old", "new", "count"], args, kwargs)
            guard let o = b[0], let n = b[1] else { throw EvalFailure.runtime("replace expected at least 2 arguments") }
            let count = try b[2].map { try expectInt($0, "count") } ?? -1
            return .string(try StringOps.replace(s, try expectString(o, "old"), try expectString(n, "new"), count,
                limit: interp.limits.maxStringBytes))
        case "upper": try noArgs(); return .string(s.uppercased())
        case "lower": try noArgs(); return .string(s.lowercased())
        case "casefold": try noArgs(); return .string(s.lowercased())
        case "title": try noArgs(); return .string(StringOps.title(s))
        case "capitalize": try noArgs(); return .string(StringOps.capitalize(s))
        case "swapcase": try noArgs(); return .string(StringOps.swapcase(s))
        case "find", "rfind", "index", "rindex", "count":
            let b = try bindArguments(name, ["sub", "start", "end"], args, kwargs)
            guard let subValue = b[0] else { throw EvalFailure.runtime("\(name)() takes at least 1 argument") }
            let sub = Array(try expectString(subValue, "sub").unicodeScalars)
            var sc = Array(s.unicodeScalars)
            var offset = 0
            if b[1] != nil || b[2] != nil {
                let n = sc.count
                func norm(_ v: Value?, _ d: Int) throws -> Int {
                    guard let v, !(v.pyEquals(.none)) else { return d }
                    var x = try expectInt(v, "index")
                    if x < 0 { x += n }
                    return min(max(x, 0), n)
                }
                let a = try norm(b[1], 0)
                let e = try norm(b[2], n)
                sc = a <= e ? Array(sc[a..<e]) : []
                offset = a
            }
            if name == "count" {
                if sub.isEmpty { return .int(sc.count + 1) }
                var c = 0
                var i = 0
                while let j = StringOps.find(sc, sub, from: i) {
                    c += 1
                    i = j + sub.count
                }
                return .int(c)
            }
            let found = name.hasPrefix("r") ? StringOps.rfind(sc, sub) : StringOps.find(sc, sub, from: 0)
            if let found { return .int(found + offset) }
            if name.hasSuffix("index") { throw EvalFailure.runtime("substring not found") }
            return .int(-1)
        case "join":
            let b = try bindArguments(name, ["iterable"], args, kwargs)
            guard let it = b[0] else { throw EvalFailure.runtime("join() takes exactly one argument") }
            let items = try interp.iterate(it)
            var parts: [String] = []
            for (i, x) in items.enumerated() {
                guard case .string(let p) = x else {
                    throw EvalFailure.runtime("sequence item \(i): expected str instance, \(x.typeName) found")
                }
                parts.append(p)
            }
            return .string(try interp.checkString(parts.joined(separator: s)))
        case "isdigit", "isdecimal", "isnumeric":
            try noArgs()
            return .bool(StringOps.isCharacterClass(s) { $0.properties.numericType != nil })
        case "isalpha":
            try noArgs()
            return .bool(StringOps.isCharacterClass(s) { $0.properties.isAlphabetic })
        case "isalnum":
            try noArgs()
            return .bool(StringOps.isCharacterClass(s) { $0.properties.isAlphabetic || $0.properties.numericType != nil })
        case "isspace":
            try noArgs()
            return .bool(StringOps.isCharacterClass(s, isPyWhitespace))
        case "islower": try noArgs(); return .bool(StringOps.isLower(s))
        case "isupper": try noArgs(); return .bool(StringOps.isUpper(s))
        case "istitle": try noArgs(); return .bool(StringOps.hasCased(s) && StringOps.title(s) == s)
        case "center", "ljust", "rjust":
            let b = try bindArguments(name, ["width", "fillchar"], args, kwargs)
            guard let w = b[0] else { throw EvalFailure.runtime("\(name)() takes at least 1 argument") }
            let width = try expectInt(w, "width")
            var fill: Unicode.Scalar = " "
            if let f = b[1] {
                let fs = try expectString(f, "fillchar")
                guard fs.unicodeScalars.count == 1 else {
                    throw EvalFailure.runtime("The fill character must be exactly one character long")
                }
                fill = fs.unicodeScalars.first!
            }
            guard width <= interp.limits.maxStringBytes else { throw EvalFailure.limit("padding too wide") }
            return .string(StringOps.pad(s, width, fill, align: name == "center" ? "^" : name == "ljust" ? "<" : ">"))
        case "zfill":
            let b = try bindArguments(name, ["width"], args, kwargs)
            guard let w = b[0] else { throw EvalFailure.runtime("zfill() takes exactly one argument") }
            let width = try expectInt(w, "width")
            guard width <= interp.limits.maxStringBytes else { throw EvalFailure.limit("padding too wide") }
            var sc = Array(s.unicodeScalars)
            guard width > sc.count else { return .string(s) }
            let fill = [Unicode.Scalar](repeating: "0", count: width - sc.count)
            if let first = sc.first, first == "+" || first == "-" {
                sc.insert(contentsOf: fill, at: 1)
            } else {
                sc.insert(contentsOf: fill, at: 0)
            }
            return .string(StringOps.string(sc))
        case "removeprefix", "removesuffix":
            let b = try bindArguments(name, ["affix"], args, kwargs)
            guard let a = b[0] else { throw EvalFailure.runtime("\(name)() takes exactly one argument") }
            let affix = Array(try expectString(a, "affix").unicodeScalars)
            let sc = Array(s.unicodeScalars)
            if name == "removeprefix", sc.starts(with: affix) { return .string(StringOps.string(sc[affix.count...])) }
            if name == "removesuffix", !affix.isEmpty, sc.count >= affix.count,
                Array(sc.suffix(affix.count)) == affix
            {
                return .string(StringOps.string(sc[..<(sc.count - affix.count)]))
            }
            return .string(s)
        case "partition", "rpartition":
            let b = try bindArguments(name, ["sep"], args, kwargs)
            guard let sepValue = b[0] else { throw EvalFailure.runtime("\(name)() takes exactly one argument") }
            let sep = Array(try expectString(sepValue, "sep").unicodeScalars)
            guard !sep.isEmpty else { throw EvalFailure.runtime("empty separator") }
            let sc = Array(s.unicodeScalars)
            let found = name == "partition" ? StringOps.find(sc, sep, from: 0) : StringOps.rfind(sc, sep)
            guard let i = found else {
                return name == "partition" ? .tuple([.string(s), .string(""), .string("")]) :
                    .tuple([.string(""), .string(""), .string(s)])
            }
            return .tuple([.string(StringOps.string(sc[..<i])), .string(StringOps.string(sep)),
                .string(StringOps.string(sc[(i + sep.count)...]))])
        case "expandtabs":
            let b = try bindArguments(name, ["tabsize"], args, kwargs)
            let size = try b[0].map { try expectInt($0, "tabsize") } ?? 8
            var out = ""
            var col = 0
            for c in s.unicodeScalars {
                if c == "\t" {
                    if size > 0 {
                        let n = size - col % size
                        guard out.utf8.count + n <= interp.limits.maxStringBytes else { throw EvalFailure.limit("string too long") }
                        out += String(repeating: " ", count: n)
                        col += n
                    }
                } else {
                    out.unicodeScalars.append(c)
                    col = (c == "\n" || c == "\r") ? 0 : col + 1
                }
            }
            return .string(out)
        default:
            throw EvalFailure.unsupported("the str method '\(name)'")
        }
    }
}

/// C `strftime` as Python's `datetime.strftime` uses it (C locale, local time).
enum Strftime {
    static let shortDays = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    static let longDays = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
    static let shortMonths = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    static let longMonths = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
        "October", "November", "December"]

    static func format(_ fmt: String, _ date: Date, timeZone: TimeZone = .current) -> String {
        var cal = Calendar(identifier: .gregorian)
        cal.timeZone = timeZone
        let c = cal.dateComponents([.year, .month, .day, .hour, .minute, .second, .nanosecond, .weekday], from: date)
        let year = c.year ?? 1970, month = c.month ?? 1, day = c.day ?? 1
        let hour = c.hour ?? 0, minute = c.minute ?? 0, second = c.second ?? 0
        let weekday0 = (c.weekday ?? 1) - 1  // 0 = Sunday
        let yday = cal.ordinality(of: .day, in: .year, for: date) ?? 1
        func pad(_ v: Int, _ width: Int, _ fill: Character = "0") -> String {
            let s = String(v)
            return s.count >= width ? s : String(repeating: fill, count: width - s.count) + s
        }
        var out = ""
        var it = Array(fmt.unicodeScalars)[...]
        while let ch = it.popFirst() {
            guard ch == "%" else {
                out.unicodeScalars.append(ch)
                continue
            }
            var noPad = false
            guard var d = it.popFirst() else {
                out += "%"
                break
            }
            if d == "-", let next = it.first {
                noPad = true
                d = next
                it = it.dropFirst()
            }
            func num(_ v: Int, _ w: Int, _ fill: Character = "0") -> String { noPad ? String(v) : pad(v, w, fill) }
            let hour12 = hour % 12 == 0 ? 12 : hour % 12
            switch d {
            case "a": out += shortDays[weekday0]
            case "A": out += longDays[weekday0]
            case "w": out += String(weekday0)
            case "d": out += num(day, 2)
            case "e": out += num(day, 2, " ")
            case "b", "h": out += shortMonths[month - 1]
            case "B": out += longMonths[month - 1]
            case "m": out += num(month, 2)
            case "y": out += num(year % 100, 2)
            case "Y": out += String(year)
            case "H": out += num(hour, 2)
            case "I": out += num(hour12, 2)
            case "p": out += hour < 12 ? "AM" : "PM"
            case "M": out += num(minute, 2)
            case "S": out += num(second, 2)
            case "f": out += pad((c.nanosecond ?? 0) / 1000, 6)
            case "j": out += num(yday, 3)
            case "z":
                let off = timeZone.secondsFromGMT(for: date)
                out += (off < 0 ? "-" : "+") + pad(abs(off) / 3600, 2) + pad(abs(off) % 3600 / 60, 2)
            case "Z": out += timeZone.abbreviation(for: date) ?? ""
            case "D": out += pad(month, 2) + "/" + pad(day, 2) + "/" + pad(year % 100, 2)
            case "F": out += String(year) + "-" + pad(month, 2) + "-" + pad(day, 2)
            case "T": out += pad(hour, 2) + ":" + pad(minute, 2) + ":" + pad(second, 2)
            case "R": out += pad(hour, 2) + ":" + pad(minute, 2)
            case "c":
                out += shortDays[weekday0] + " " + shortMonths[month - 1] + " " + pad(day, 2, " ") + " " + pad(hour, 2)
                    + ":" + pad(minute, 2) + ":" + pad(second, 2) + " " + String(year)
            case "x": out += pad(month, 2) + "/" + pad(day, 2) + "/" + pad(year % 100, 2)
            case "X": out += pad(hour, 2) + ":" + pad(minute, 2) + ":" + pad(second, 2)
            case "n": out += "\n"
            case "t": out += "\t"
            case "%": out += "%"
            default:
                out += "%"
                if noPad { out += "-" }
                out.unicodeScalars.append(d)
            }
        }
        return out
    }
}
