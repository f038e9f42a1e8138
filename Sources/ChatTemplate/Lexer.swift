/// Tokenizer for the Jinja source, following jinja2 3.1's `Lexer.tokeniter` with the environment
/// transformers uses: `trim_blocks=True`, `lstrip_blocks=True`, `keep_trailing_newline=False`.
///
/// Whitespace rules reproduced here (they decide the exact prompt text):
/// * newlines are normalized to "\n" and one trailing newline of the source is dropped;
/// * `{%-`/`{{-`/`{#-` strip all whitespace before the tag, `-%}`/`-}}`/`-#}` all whitespace after;
/// * trim_blocks removes the single "\n" right after `%}` and `#}` (not after `}}`); `+%}` keeps it;
/// * lstrip_blocks removes spaces/tabs between the start of a line and `{%`/`{#` (not `{{`); `{%+` keeps
///   them. "Start of a line" includes the position right after a tag whose match ended in "\n".
enum TokenKind: Equatable {
    case data(String)
    case variableBegin
    case variableEnd
    case blockBegin
    case blockEnd
    case name(String)
    case string(String)
    case integer(Int)
    case float(Double)
    case op(String)
    case eof
}

struct Token {
    var kind: TokenKind
    var loc: SourceLocation
}

/// Python's `str.isspace()` set (also what `\s` matches in a `str` regex).
@inline(__always)
func isPyWhitespace(_ s: Unicode.Scalar) -> Bool {
    switch s.value {
    case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
        return true
    default:
        return false
    }
}

struct Lexer {
    private let src: [Unicode.Scalar]
    private var lineStarts: [Int] = [0]
    private var tokens: [Token] = []
    private var pos = 0

    /// Source scalars after newline normalization; token locations index into this.
    init(_ source: String) {
        var scalars: [Unicode.Scalar] = []
        scalars.reserveCapacity(source.unicodeScalars.count)
        var it = source.unicodeScalars.makeIterator()
        var pending: Unicode.Scalar? = it.next()
        while let s = pending {
            pending = it.next()
            if s == "\r" {
                scalars.append("\n")
                if pending == "\n" { pending = it.next() }
            } else {
                scalars.append(s)
            }
        }
        if scalars.last == "\n" { scalars.removeLast() }
        src = scalars
        for (i, s) in scalars.enumerated() where s == "\n" { lineStarts.append(i + 1) }
    }

    func location(_ index: Int) -> SourceLocation {
        var lo = 0
        var hi = lineStarts.count - 1
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if lineStarts[mid] <= index { lo = mid } else { hi = mid - 1 }
        }
        return SourceLocation(line: lo + 1, column: index - lineStarts[lo] + 1)
    }

    private func syntaxError(_ message: String, at index: Int) -> ChatTemplateError {
        let l = location(min(index, src.count))
        return .syntax(message, line: l.line, column: l.column)
    }

    private func at(_ i: Int, _ s: String) -> Bool {
        var j = i
        for c in s.unicodeScalars {
            guard j < src.count, src[j] == c else { return false }
            j += 1
        }
        return true
    }

    private func skipWhitespace(from i: Int) -> Int {
        var j = i
        while j < src.count, isPyWhitespace(src[j]) { j += 1 }
        return j
    }

    mutating func tokenize() throws -> [Token] {
        var lineStarting = true
        while pos < src.count {
            guard let open = findOpener(from: pos) else {
                emitData(pos, src.count)
                pos = src.count
                break
            }
            let kind = src[open + 1]
            var afterOpen = open + 2
            var sign: Unicode.Scalar? = nil
            if afterOpen < src.count, src[afterOpen] == "-" || src[afterOpen] == "+" {
                sign = src[afterOpen]
                afterOpen += 1
            }
            // `{% raw %}` is recognised at the opener, before block tokenizing.
            var rawBodyStart: Int? = nil
            if kind == "%" {
                var j = skipWhitespace(from: afterOpen)
                if at(j, "raw") {
                    j = skipWhitespace(from: j + 3)
                    if at(j, "-%}") {
                        rawBodyStart = skipWhitespace(from: j + 3)
                    } else if at(j, "%}") {
                        rawBodyStart = j + 2
                    }
                }
            }
            var textEnd = open
            if sign == "-" {
                while textEnd > pos, isPyWhitespace(src[textEnd - 1]) { textEnd -= 1 }
            } else if sign != "+", kind != "{" {
                textEnd = lstripEnd(textStart: pos, tagStart: open, lineStarting: lineStarting)
            }
            emitData(pos, textEnd)
            switch kind {
            case "#":
                pos = try skipComment(from: afterOpen, openedAt: open)
                lineStarting = src[pos - 1] == "\n"
            case "{":
                tokens.append(Token(kind: .variableBegin, loc: location(open)))
                let end = try tokenizeTag(from: afterOpen, block: false, openedAt: open)
                pos = end
                lineStarting = src[pos - 1] == "\n"
            default:
                if let bodyStart = rawBodyStart {
                    pos = try lexRaw(bodyStart: bodyStart, openedAt: open)
                } else {
                    tokens.append(Token(kind: .blockBegin, loc: location(open)))
                    pos = try tokenizeTag(from: afterOpen, block: true, openedAt: open)
                }
                lineStarting = pos > 0 && src[pos - 1] == "\n"
            }
        }
        tokens.append(Token(kind: .eof, loc: location(src.count)))
        return tokens
    }

    private func findOpener(from start: Int) -> Int? {
        var i = start
        while i + 1 < src.count {
            if src[i] == "{" {
                let n = src[i + 1]
                if n == "{" || n == "%" || n == "#" { return i }
            }
            i += 1
        }
        return nil
    }

    /// lstrip_blocks: the text before a block/comment tag loses its trailing spaces if only
    /// whitespace separates the tag from the start of its line.
    private func lstripEnd(textStart: Int, tagStart: Int, lineStarting: Bool) -> Int {
        var lineStart = tagStart
        while lineStart > textStart, src[lineStart - 1] != "\n" { lineStart -= 1 }
        let hasNewline = lineStart > textStart
        guard hasNewline || lineStarting else { return tagStart }
        guard lineStart < tagStart else { return tagStart }
        for k in lineStart..<tagStart where !isPyWhitespace(src[k]) { return tagStart }
        return lineStart
    }

    private mutating func emitData(_ from: Int, _ to: Int) {
        guard to > from else { return }
        var s = String.UnicodeScalarView()
        s.append(contentsOf: src[from..<to])
        tokens.append(Token(kind: .data(String(s)), loc: location(from)))
    }

    private func skipComment(from start: Int, openedAt: Int) throws -> Int {
        var p = start
        while p < src.count {
            if at(p, "+#}") { return p + 3 }
            if at(p, "-#}") { return skipWhitespace(from: p + 3) }
            if at(p, "#}") {
                let e = p + 2
                return (e < src.count && src[e] == "\n") ? e + 1 : e
            }
            p += 1
        }
        throw syntaxError("missing end of comment tag", at: openedAt)
    }

    private mutating func lexRaw(bodyStart: Int, openedAt: Int) throws -> Int {
        var p = bodyStart
        while p < src.count {
            if at(p, "{%") {
                var j = p + 2
                var sign: Unicode.Scalar? = nil
                if j < src.count, src[j] == "-" || src[j] == "+" {
                    sign = src[j]
                    j += 1
                }
                j = skipWhitespace(from: j)
                if at(j, "endraw") {
                    j = skipWhitespace(from: j + 6)
                    var end: Int? = nil
                    if at(j, "+%}") {
                        end = j + 3
                    } else if at(j, "-%}") {
                        end = skipWhitespace(from: j + 3)
                    } else if at(j, "%}") {
                        end = j + 2
                        if end! < src.count, src[end!] == "\n" { end! += 1 }
                    }
                    if let end {
                        var textEnd = p
                        if sign == "-" {
                            while textEnd > bodyStart, isPyWhitespace(src[textEnd - 1]) { textEnd -= 1 }
                        } else if sign != "+" {
                            // The "line starting" state is whether the raw-begin match ended in "\n".
                            textEnd = lstripEnd(
                                textStart: bodyStart, tagStart: p, lineStarting: src[bodyStart - 1] == "\n")
                        }
                        emitData(bodyStart, textEnd)
                        return end
                    }
                }
            }
            p += 1
        }
        throw syntaxError("missing end of raw directive", at: openedAt)
    }

    /// Tokenizes the inside of `{{ }}` or `{% %}`; returns the index after the closing delimiter.
    private mutating func tokenizeTag(from start: Int, block: Bool, openedAt: Int) throws -> Int {
        var p = start
        var balance: [Unicode.Scalar] = []
        while true {
            guard p < src.count else {
                throw syntaxError(
                    block ? "unexpected end of template: block tag not closed" :
                        "unexpected end of template: expected '}}'", at: openedAt)
            }
            if balance.isEmpty {
                if block {
                    if at(p, "+%}") {
                        tokens.append(Token(kind: .blockEnd, loc: location(p)))
                        return p + 3
                    }
                    if at(p, "-%}") {
                        tokens.append(Token(kind: .blockEnd, loc: location(p)))
                        return skipWhitespace(from: p + 3)
                    }
                    if at(p, "%}") {
                        tokens.append(Token(kind: .blockEnd, loc: location(p)))
                        let e = p + 2
                        return (e < src.count && src[e] == "\n") ? e + 1 : e
                    }
                } else {
                    if at(p, "-}}") {
                        tokens.append(Token(kind: .variableEnd, loc: location(p)))
                        return skipWhitespace(from: p + 3)
                    }
                    if at(p, "}}") {
                        tokens.append(Token(kind: .variableEnd, loc: location(p)))
                        return p + 2
                    }
                }
            }
            let c = src[p]
            if isPyWhitespace(c) {
                p += 1
                continue
            }
            let loc = location(p)
            if let (value, end) = try lexNumber(at: p) {
                tokens.append(Token(kind: value, loc: loc))
                p = end
                continue
            }
            if isNameStart(c) {
                var e = p + 1
                while e < src.count, isNameContinue(src[e]) { e += 1 }
                var s = String.UnicodeScalarView()
                s.append(contentsOf: src[p..<e])
                tokens.append(Token(kind: .name(String(s)), loc: loc))
                p = e
                continue
            }
            if c == "'" || c == "\"" {
                let (value, end) = try lexString(at: p)
                tokens.append(Token(kind: .string(value), loc: loc))
                p = end
                continue
            }
            if let op = operatorAt(p) {
                switch op {
                case "{": balance.append("}")
                case "(": balance.append(")")
                case "[": balance.append("]")
                case "}", ")", "]":
                    guard let expected = balance.popLast() else {
                        throw syntaxError("unexpected '\(op)'", at: p)
                    }
                    if String(expected) != op {
                        throw syntaxError("unexpected '\(op)', expected '\(expected)'", at: p)
                    }
                default: break
                }
                tokens.append(Token(kind: .op(op), loc: loc))
                p += op.unicodeScalars.count
                continue
            }
            throw syntaxError("unexpected char '\(Character(c))'", at: p)
        }
    }

    private func isNameStart(_ c: Unicode.Scalar) -> Bool {
        c == "_" || (c.value < 128 ? (c.properties.isAlphabetic) : c.properties.isXIDStart)
    }

    private func isNameContinue(_ c: Unicode.Scalar) -> Bool {
        c == "_" || (c.value < 128 ? (c.properties.isAlphabetic || ("0"..."9").contains(c)) : c.properties.isXIDContinue)
    }

    private static let operators2 = ["//", "**", "==", "!=", ">=", "<="]
    private static let operators1: Set<Unicode.Scalar> = [
        "+", "-", "/", "*", "%", "~", "[", "]", "(", ")", "{", "}", ">", "<", "=", ".", ":", "|", ",", ";",
    ]

    private func operatorAt(_ p: Int) -> String? {
        for op in Self.operators2 where at(p, op) { return op }
        if Self.operators1.contains(src[p]) { return String(src[p]) }
        return nil
    }

    private func isDigit(_ i: Int) -> Bool { i < src.count && ("0"..."9").contains(src[i]) }

    /// Digits with single underscores between them (`(\d+_)*\d+`); returns the end index.
    private func digitRun(_ i: Int) -> Int? {
        guard isDigit(i) else { return nil }
        var j = i
        while true {
            while isDigit(j) { j += 1 }
            if j < src.count, src[j] == "_", isDigit(j + 1) { j += 1; continue }
            return j
        }
    }

    private func digitsString(_ a: Int, _ b: Int) -> String {
        var s = ""
        for k in a..<b where src[k] != "_" { s.unicodeScalars.append(src[k]) }
        return s
    }

    /// jinja2's float rule comes before its integer rule; a number right after "." is not a float,
    /// so `x.0.1` reads as two integer subscripts.
    private func lexNumber(at p: Int) throws -> (TokenKind, Int)? {
        guard isDigit(p) else { return nil }
        if !(p > 0 && src[p - 1] == "."), let intEnd = digitRun(p) {
            var end: Int? = nil
            var j = intEnd
            if j < src.count, src[j] == ".", let fracEnd = digitRun(j + 1) {
                j = fracEnd
                end = j
            }
            if j < src.count, src[j] == "e" || src[j] == "E" {
                var k = j + 1
                if k < src.count, src[k] == "+" || src[k] == "-" { k += 1 }
                if let expEnd = digitRun(k) { end = expEnd }
            }
            if let end {
                guard let d = Double(digitsString(p, end)) else {
                    throw syntaxError("invalid float literal", at: p)
                }
                return (.float(d), end)
            }
        }
        // Integers: 0b/0o/0x prefixes, or decimal without a leading zero (except zeros).
        if src[p] == "0", p + 1 < src.count {
            let radixChar = src[p + 1]
            let radix: Int? = radixChar == "b" || radixChar == "B" ? 2 :
                radixChar == "o" || radixChar == "O" ? 8 : radixChar == "x" || radixChar == "X" ? 16 : nil
            if let radix {
                var j = p + 2
                var digits = ""
                while j < src.count {
                    if src[j] == "_", j + 1 < src.count, Int(String(src[j + 1]), radix: radix) != nil {
                        j += 1
                        continue
                    }
                    guard Int(String(src[j]), radix: radix) != nil else { break }
                    digits.unicodeScalars.append(src[j])
                    j += 1
                }
                if !digits.isEmpty {
                    guard let v = Int(digits, radix: radix) else { throw syntaxError("integer literal too large", at: p) }
                    return (.integer(v), j)
                }
            }
        }
        var end: Int
        if src[p] == "0" {
            end = p + 1
            while end < src.count {
                if src[end] == "0" { end += 1; continue }
                if src[end] == "_", end + 1 < src.count, src[end + 1] == "0" { end += 2; continue }
                break
            }
        } else {
            end = digitRun(p) ?? p + 1
        }
        guard let v = Int(digitsString(p, end)) else { throw syntaxError("integer literal too large", at: p) }
        return (.integer(v), end)
    }

    /// String literals decode like jinja2: Python `unicode-escape` over the literal (non-ASCII text
    /// passes through; unknown escapes such as `\s` stay as written).
    private func lexString(at p: Int) throws -> (String, Int) {
        let quote = src[p]
        var j = p + 1
        var out = String.UnicodeScalarView()
        while true {
            guard j < src.count else { throw syntaxError("unterminated string literal", at: p) }
            let c = src[j]
            if c == quote { return (String(out), j + 1) }
            if c != "\\" {
                out.append(c)
                j += 1
                continue
            }
            guard j + 1 < src.count else { throw syntaxError("unterminated string literal", at: p) }
            let e = src[j + 1]
            j += 2
            switch e {
            case "\n": break
            case "\\": out.append("\\")
            case "'": out.append("'")
            case "\"": out.append("\"")
            case "a": out.append("\u{07}")
            case "b": out.append("\u{08}")
            case "f": out.append("\u{0C}")
            case "n": out.append("\n")
            case "r": out.append("\r")
            case "t": out.append("\t")
            case "v": out.append("\u{0B}")
            case "0"..."7":
                var v = e.value - 0x30
                var n = 1
                while n < 3, j < src.count, ("0"..."7").contains(src[j]) {
                    v = v * 8 + (src[j].value - 0x30)
                    j += 1
                    n += 1
                }
                out.append(Unicode.Scalar(v) ?? "\u{FFFD}")
            case "x", "u", "U":
                let count = e == "x" ? 2 : e == "u" ? 4 : 8
                var v: UInt32 = 0
                for _ in 0..<count {
                    guard j < src.count, let d = Int(String(src[j]), radix: 16) else {
                        throw syntaxError("truncated \\\(e) escape in string literal", at: p)
                    }
                    v = v &* 16 &+ UInt32(d)
                    j += 1
                }
                guard let scalar = Unicode.Scalar(v) else {
                    throw syntaxError("escape \\\(e) gives an invalid code point", at: p)
                }
                out.append(scalar)
            case "N":
                throw ChatTemplateError.unsupported(
                    "\\N{...} escapes in string literals", line: location(p).line, column: location(p).column)
            default:
                out.append("\\")
                out.append(e)
            }
        }
    }
}
