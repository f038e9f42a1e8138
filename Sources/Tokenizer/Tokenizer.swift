import Checkpoint
import Foundation

/// The Tokenizer module owns text ↔ token ids: byte-level BPE (GPT-2's scheme, used by the
/// SmolLM, Llama-3 and Qwen families) built from GGUF metadata or a Hugging Face
/// `tokenizer.json`, the pre-tokenizer of each supported family, special tokens, and streaming
/// detokenization that never splits a UTF-8 character.
public enum TokenizerError: Error, CustomStringConvertible {
    case unsupportedModel(String, source: String)
    case unsupportedPreTokenizer(String, source: String)
    case malformed(String, source: String)

    public var description: String {
        switch self {
        case let .unsupportedModel(m, s): return "\(s): tokenizer model '\(m)' is not supported (only byte-level BPE: GGUF 'gpt2', tokenizer.json 'BPE')"
        case let .unsupportedPreTokenizer(p, s): return "\(s): pre-tokenizer '\(p)' is not supported (supported: gpt2/smollm, llama-bpe/llama3, qwen2, deepseek-v3, kimi-k2)"
        case let .malformed(r, s): return "\(s): malformed tokenizer: \(r)"
        }
    }
}

/// How text is split into words before BPE: the regexes of the supported families, implemented
/// by hand over Unicode scalars (same classes: `\p{L}` letters, `\p{N}` numbers, `\s` White_Space).
public enum PreTokenizer: Sendable, Equatable {
    /// GPT-2 (`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`);
    /// SmolLM2 as transformers loads it from GGUF, GPT-2, StarCoder.
    case gpt2
    /// Llama-3 (`maxDigits` 3) and Qwen2 (`maxDigits` 1):
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,k}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    case llama3(maxDigits: Int)
    /// DeepSeek-V3 (llama.cpp `deepseek-v3`): three splits in turn, each keeping matches and the
    /// text between them as pieces (tokenizers' `Split` with `Isolated`): `\p{N}{1,3}`, then
    /// `[一-龥぀-ゟ゠-ヿ]+`, then
    /// `[!-/:-@[-`{-~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
    case deepseekV3
    /// Kimi K2 (tiktoken `pat_str` of its tokenization_kimi.py; llama.cpp `kimi-k2`): Han runs,
    /// then Llama-3-like words whose letter classes exclude Han and split case runs
    /// (`[^\r\n\p{L}\p{N}]?[Lu Lt Lm Lo M]*[Ll Lm Lo M]+('s…)?|…[Lu Lt Lm Lo M]+[Ll Lm Lo M]*('s…)?`),
    /// `\p{N}{1,3}`, and Llama-3's punctuation and whitespace rules.
    case kimiK2

    /// The pre-tokenizer a GGUF `tokenizer.ggml.pre` names.
    public static func gguf(_ name: String, source: String) throws -> PreTokenizer {
        switch name {
        case "gpt2", "gpt-2", "smollm", "starcoder", "default": return .gpt2
        case "llama-bpe", "llama3", "smaug-bpe": return .llama3(maxDigits: 3)
        case "qwen2": return .llama3(maxDigits: 1)
        case "deepseek-v3": return .deepseekV3
        case "kimi-k2": return .kimiK2
        default: throw TokenizerError.unsupportedPreTokenizer(name, source: source)
        }
    }

    @inline(__always) static func isLetter(_ c: Unicode.Scalar) -> Bool {
        switch c.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
        default: return false
        }
    }
    @inline(__always) static func isNumber(_ c: Unicode.Scalar) -> Bool {
        switch c.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }
    @inline(__always) static func isSpace(_ c: Unicode.Scalar) -> Bool { c.properties.isWhitespace }
    @inline(__always) static func isOther(_ c: Unicode.Scalar) -> Bool { !isSpace(c) && !isLetter(c) && !isNumber(c) }
    @inline(__always) static func isNewline(_ c: Unicode.Scalar) -> Bool { c == "\r" || c == "\n" }

    /// Splits `s` into pre-tokens (ranges of `s`'s scalars).
    public func split(_ s: [Unicode.Scalar]) -> [Range<Int>] {
        if case .deepseekV3 = self { return Self.deepseekV3Split(s) }
        var out: [Range<Int>] = []
        var i = 0
        let n = s.count
        while i < n {
            let end: Int
            switch self {
            case .gpt2: end = Self.gpt2Match(s, i)
            case .llama3(let k): end = Self.llama3Match(s, i, maxDigits: k)
            case .kimiK2: end = Self.kimiMatch(s, i)
            case .deepseekV3: end = n  // handled above
            }
            out.append(i..<end)
            i = end
        }
        return out
    }

    /// The contraction at `i` (`'s`, `'t`, `'re`, `'ve`, `'m`, `'ll`, `'d`), if any: its end.
    static func contraction(_ s: [Unicode.Scalar], _ i: Int, caseInsensitive: Bool) -> Int? {
        guard s[i] == "'", i + 1 < s.count else { return nil }
        func lower(_ c: Unicode.Scalar) -> Unicode.Scalar {
            caseInsensitive && c.value >= 65 && c.value <= 90 ? Unicode.Scalar(c.value + 32)! : c
        }
        let a = lower(s[i + 1])
        if a == "s" || a == "t" || a == "m" || a == "d" { return i + 2 }
        if i + 2 < s.count {
            let b = lower(s[i + 2])
            if (a == "r" && b == "e") || (a == "v" && b == "e") || (a == "l" && b == "l") { return i + 3 }
        }
        return nil
    }

    static func run(_ s: [Unicode.Scalar], from i: Int, while p: (Unicode.Scalar) -> Bool) -> Int {
        var j = i
        while j < s.count && p(s[j]) { j += 1 }
        return j
    }

    /// `\s+(?!\S)|\s+` at a whitespace scalar `i`: the whole run at the end of text or before
    /// more whitespace… i.e. the run minus its last scalar when a non-space follows it (unless
    /// the run is one scalar long).
    static func whitespace(_ s: [Unicode.Scalar], _ i: Int) -> Int {
        let j = run(s, from: i, while: isSpace)
        if j < s.count && j - i > 1 { return j - 1 }
        return j
    }

    static func gpt2Match(_ s: [Unicode.Scalar], _ i: Int) -> Int {
        if let e = contraction(s, i, caseInsensitive: false) { return e }
        let c = s[i]
        if c == " " && i + 1 < s.count {
            let d = s[i + 1]
            if isLetter(d) { return run(s, from: i + 1, while: isLetter) }
            if isNumber(d) { return run(s, from: i + 1, while: isNumber) }
            if isOther(d) { return run(s, from: i + 1, while: isOther) }
        }
        if isLetter(c) { return run(s, from: i, while: isLetter) }
        if isNumber(c) { return run(s, from: i, while: isNumber) }
        if isOther(c) { return run(s, from: i, while: isOther) }
        return whitespace(s, i)
    }

    @inline(__always) static func isPunctOrSymbol(_ c: Unicode.Scalar) -> Bool {
        switch c.properties.generalCategory {
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation, .initialPunctuation,
             .finalPunctuation, .otherPunctuation, .mathSymbol, .currencySymbol, .modifierSymbol, .otherSymbol: return true
        default: return false
        }
    }
    @inline(__always) static func isLetterOrMark(_ c: Unicode.Scalar) -> Bool {
        switch c.properties.generalCategory {
        case .nonspacingMark, .spacingMark, .enclosingMark: return true
        default: return isLetter(c)
        }
    }
    @inline(__always) static func isASCIIPunct(_ c: Unicode.Scalar) -> Bool {
        (0x21...0x2F).contains(c.value) || (0x3A...0x40).contains(c.value) || (0x5B...0x60).contains(c.value) || (0x7B...0x7E).contains(c.value)
    }
    @inline(__always) static func isASCIILetter(_ c: Unicode.Scalar) -> Bool {
        (0x41...0x5A).contains(c.value) || (0x61...0x7A).contains(c.value)
    }
    /// `[一-龥぀-ゟ゠-ヿ]`: CJK ideographs U+4E00–U+9FA5, hiragana, katakana.
    @inline(__always) static func isDeepseekCJK(_ c: Unicode.Scalar) -> Bool {
        (0x4E00...0x9FA5).contains(c.value) || (0x3040...0x30FF).contains(c.value)
    }

    /// Splits every piece at the matches of a pattern, keeping matches and the gaps between
    /// them; `match(i, end)` is the end of the pattern's leftmost match starting at `i` within
    /// the piece ending at `end`, or nil.
    static func isolate(_ pieces: [Range<Int>], _ match: (Int, Int) -> Int?) -> [Range<Int>] {
        var out: [Range<Int>] = []
        out.reserveCapacity(pieces.count)
        for piece in pieces {
            var gap = piece.lowerBound, i = piece.lowerBound
            while i < piece.upperBound {
                if let e = match(i, piece.upperBound) {
                    if gap < i { out.append(gap..<i) }
                    out.append(i..<e)
                    i = e
                    gap = e
                } else {
                    i += 1
                }
            }
            if gap < piece.upperBound { out.append(gap..<piece.upperBound) }
        }
        return out
    }

    static func deepseekV3Split(_ s: [Unicode.Scalar]) -> [Range<Int>] {
        func run(_ i: Int, _ end: Int, _ p: (Unicode.Scalar) -> Bool) -> Int {
            var j = i
            while j < end && p(s[j]) { j += 1 }
            return j
        }
        var pieces = s.isEmpty ? [] : [0..<s.count]
        pieces = isolate(pieces) { i, end in
            guard isNumber(s[i]) else { return nil }
            var j = i
            while j < end && j - i < 3 && isNumber(s[j]) { j += 1 }
            return j
        }
        pieces = isolate(pieces) { i, end in isDeepseekCJK(s[i]) ? run(i, end, isDeepseekCJK) : nil }
        return isolate(pieces) { i, end in
            let c = s[i]
            // [!-/:-@[-`{-~][A-Za-z]+
            if isASCIIPunct(c) && i + 1 < end && isASCIILetter(s[i + 1]) { return run(i + 1, end, isASCIILetter) }
            // [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+ (a leading mark is the same match either way)
            if isLetterOrMark(c) { return run(i, end, isLetterOrMark) }
            if !isNewline(c) && !isLetter(c) && !isPunctOrSymbol(c) && i + 1 < end && isLetterOrMark(s[i + 1]) {
                return run(i + 1, end, isLetterOrMark)
            }
            // ' ?[\p{P}\p{S}]+[\r\n]*'
            let o = (c == " " && i + 1 < end && isPunctOrSymbol(s[i + 1])) ? i + 1 : i
            if isPunctOrSymbol(s[o]) { return run(run(o, end, isPunctOrSymbol), end, isNewline) }
            guard isSpace(c) else { return nil }
            // \s*[\r\n]+ : the whitespace run up to its last newline, if it has one.
            let ws = run(i, end, isSpace)
            if let last = (i..<ws).last(where: { isNewline(s[$0]) }) { return last + 1 }
            // \s+(?!\S)|\s+ : the run, less its last scalar when a non-space follows in the piece.
            return ws < end && ws - i > 1 ? ws - 1 : ws
        }
    }

    static func isHan(_ c: Unicode.Scalar) -> Bool {
        let v = c.value
        guard v >= 0x2E80 else { return false }
        var lo = 0, hi = hanRanges.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if hanRanges[mid].upperBound < v { lo = mid + 1 } else { hi = mid }
        }
        return lo < hanRanges.count && hanRanges[lo].contains(v)
    }
    /// Kimi's `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]` (upper) and
    /// `[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]` (lower).
    static func kimiUpper(_ c: Unicode.Scalar) -> Bool {
        switch c.properties.generalCategory {
        case .uppercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter, .nonspacingMark, .spacingMark, .enclosingMark:
            return !isHan(c)
        default: return false
        }
    }
    static func kimiLower(_ c: Unicode.Scalar) -> Bool {
        switch c.properties.generalCategory {
        case .lowercaseLetter, .modifierLetter, .otherLetter, .nonspacingMark, .spacingMark, .enclosingMark:
            return !isHan(c)
        default: return false
        }
    }

    static func kimiMatch(_ s: [Unicode.Scalar], _ i: Int) -> Int {
        let c = s[i], n = s.count
        // [\p{Han}]+
        if isHan(c) { return run(s, from: i, while: isHan) }
        func withContraction(_ e: Int) -> Int { e < n ? contraction(s, e, caseInsensitive: true) ?? e : e }
        // The two word alternatives from `s0` (after the optional prefix): `upper* lower+` — the
        // upper run and a lower run after it, or else the run given back to its last lower-class
        // scalar (`lower` true) — or else `upper+ lower*`.
        func word(_ s0: Int) -> (end: Int, lower: Bool)? {
            let j = run(s, from: s0, while: kimiUpper)
            if j < n && kimiLower(s[j]) { return (withContraction(run(s, from: j, while: kimiLower)), true) }
            if let q = (s0..<j).last(where: { kimiLower(s[$0]) }) { return (withContraction(q + 1), true) }
            if j > s0 { return (withContraction(run(s, from: j, while: kimiLower)), false) }
            return nil
        }
        // Pattern order: the first alternative with the `[^\r\n\p{L}\p{N}]` prefix, then without,
        // then the second with, then without.
        let prefixed = !isNewline(c) && !isLetter(c) && !isNumber(c) && i + 1 < n ? word(i + 1) : nil
        let bare = word(i)
        if let w = prefixed, w.lower { return w.end }
        if let w = bare, w.lower { return w.end }
        if let w = prefixed ?? bare { return w.end }
        return numberPunctuationOrSpace(s, i, maxDigits: 3)
    }

    static func llama3Match(_ s: [Unicode.Scalar], _ i: Int, maxDigits: Int) -> Int {
        if let e = contraction(s, i, caseInsensitive: true) { return e }
        let c = s[i], n = s.count
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if isLetter(c) { return run(s, from: i, while: isLetter) }
        if !isNewline(c) && !isNumber(c) && i + 1 < n && isLetter(s[i + 1]) { return run(s, from: i + 1, while: isLetter) }
        return numberPunctuationOrSpace(s, i, maxDigits: maxDigits)
    }

    /// `\p{N}{1,k}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+` at `i`: the tail that
    /// Llama-3, Qwen2 and Kimi K2 share.
    static func numberPunctuationOrSpace(_ s: [Unicode.Scalar], _ i: Int, maxDigits: Int) -> Int {
        let c = s[i], n = s.count
        // \p{N}{1,k}
        if isNumber(c) {
            var j = i
            while j < n && j - i < maxDigits && isNumber(s[j]) { j += 1 }
            return j
        }
        // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
        let o = (c == " " && i + 1 < n && isOther(s[i + 1])) ? i + 1 : i
        if isOther(s[o]) {
            let j = run(s, from: o, while: isOther)
            return run(s, from: j, while: isNewline)
        }
        // \s*[\r\n]+ : the longest whitespace run that ends in newlines, up to its last newline.
        let ws = run(s, from: i, while: isSpace)
        var lastNewline = -1
        for j in i..<ws where isNewline(s[j]) { lastNewline = j }
        if lastNewline >= 0 {
            // [\r\n]+ must be a suffix run ending at lastNewline; \s* before it.
            return lastNewline + 1
        }
        return whitespace(s, i)
    }
}

/// Byte-level BPE (Sennrich et al. 2016 with GPT-2's byte-to-unicode alphabet): text is split by
/// special tokens, then pre-tokenized, each piece's UTF-8 bytes mapped to printable characters,
/// and adjacent symbols merged in merge-rank order.
public final class BPETokenizer: @unchecked Sendable {
    /// Token strings in byte-level form (`Ġ` for a space byte, …), indexed by id.
    public let tokens: [String]
    public let preTokenizer: PreTokenizer
    /// Ids matched as whole units in text before BPE (control and user-defined tokens).
    public let specialTokens: [String: Int]
    public let bosTokenID: Int?
    public let eosTokenID: Int?
    /// Whether encoding a prompt starts with BOS (GGUF `tokenizer.ggml.add_bos_token`).
    public let addBOS: Bool

    let ids: [String: Int]
    /// Merge rank and result of a pair of token ids.
    let merges: [UInt64: (rank: Int32, merged: Int32)]
    /// Byte values of each token (specials: their UTF-8 text), for decoding.
    let tokenBytes: [[UInt8]]
    let byteToID: [Int32]
    var cache: [String: [Int]] = [:]
    let lock = NSLock()
    /// Specials sorted longest first, so a longer special wins where two start at one place.
    let specialsByLength: [(scalars: [Unicode.Scalar], id: Int)]

    static let byteToUnicode: [Unicode.Scalar] = {
        // GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256 + k.
        var map = [Unicode.Scalar](repeating: " ", count: 256)
        var n: UInt32 = 0
        for b in 0..<256 {
            let printable = (33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b)
            if printable { map[b] = Unicode.Scalar(UInt32(b))! } else { map[b] = Unicode.Scalar(256 + n)!; n += 1 }
        }
        return map
    }()
    static let unicodeToByte: [UInt32: UInt8] = {
        var m: [UInt32: UInt8] = [:]
        for (b, u) in byteToUnicode.enumerated() { m[u.value] = UInt8(b) }
        return m
    }()

    public init(tokens: [String], merges: [(String, String)], specialTokens: [String: Int], preTokenizer: PreTokenizer,
                bos: Int?, eos: Int?, addBOS: Bool, source: String) throws {
        self.tokens = tokens
        self.preTokenizer = preTokenizer
        self.specialTokens = specialTokens
        bosTokenID = bos
        eosTokenID = eos
        self.addBOS = addBOS
        var ids: [String: Int] = [:]
        ids.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() where ids[t] == nil { ids[t] = i }
        self.ids = ids
        var m: [UInt64: (Int32, Int32)] = [:]
        m.reserveCapacity(merges.count)
        for (rank, (a, b)) in merges.enumerated() {
            guard let ia = ids[a], let ib = ids[b] else {
                throw TokenizerError.malformed("merge \(rank) ('\(a) \(b)') names a token not in the vocabulary", source: source)
            }
            guard let im = ids[a + b] else {
                throw TokenizerError.malformed("merge \(rank) ('\(a) \(b)') makes '\(a + b)', which is not in the vocabulary", source: source)
            }
            let key = UInt64(ia) << 32 | UInt64(ib)
            if m[key] == nil { m[key] = (Int32(rank), Int32(im)) }
        }
        self.merges = m
        // Some vocabularies (SmolLM2's) lack tokens for control bytes never seen in training;
        // such bytes are dropped on encoding, as the reference BPE without `unk_token` does.
        var b2i = [Int32](repeating: -1, count: 256)
        for b in 0..<256 {
            if let id = ids[String(Character(Self.byteToUnicode[b]))] { b2i[b] = Int32(id) }
        }
        byteToID = b2i
        let specialIDs = Set(specialTokens.values)
        tokenBytes = tokens.enumerated().map { i, t in
            if specialIDs.contains(i) { return Array(t.utf8) }
            var out: [UInt8] = []
            for u in t.unicodeScalars {
                if let b = Self.unicodeToByte[u.value] { out.append(b) } else { out += Array(String(u).utf8) }
            }
            return out
        }
        specialsByLength = specialTokens.map { (Array($0.key.unicodeScalars), $0.value) }
            .filter { !$0.0.isEmpty }.sorted { $0.0.count > $1.0.count }
        for (t, id) in specialTokens where id < 0 || id >= tokens.count {
            throw TokenizerError.malformed("special token '\(t)' has id \(id) outside the vocabulary", source: source)
        }
        for (name, id) in [("bos", bos), ("eos", eos)] {
            if let id, id < 0 || id >= tokens.count {
                throw TokenizerError.malformed("\(name) token id \(id) is outside the vocabulary of \(tokens.count)", source: source)
            }
        }
    }

    /// Reads the tokenizer a GGUF file's metadata describes.
    public convenience init(gguf f: GGUFFile) throws {
        let src = f.url.path
        guard let model = try f.optionalString("tokenizer.ggml.model") else {
            throw TokenizerError.malformed("GGUF metadata has no tokenizer.ggml.model", source: src)
        }
        guard model == "gpt2" else { throw TokenizerError.unsupportedModel(model, source: src) }
        let tokens = try f.stringArray("tokenizer.ggml.tokens")
        let mergeLines = try f.stringArray("tokenizer.ggml.merges")
        let types = try f.optionalIntArray("tokenizer.ggml.token_type") ?? []
        guard types.isEmpty || types.count == tokens.count else {
            throw TokenizerError.malformed("tokenizer.ggml.token_type has \(types.count) entries for \(tokens.count) tokens", source: src)
        }
        var merges: [(String, String)] = []
        merges.reserveCapacity(mergeLines.count)
        for (i, line) in mergeLines.enumerated() {
            guard let sp = line.firstIndex(of: " ") else {
                throw TokenizerError.malformed("merge \(i) ('\(line)') is not two tokens separated by a space", source: src)
            }
            merges.append((String(line[..<sp]), String(line[line.index(after: sp)...])))
        }
        var specials: [String: Int] = [:]
        // llama.cpp token types: 3 control, 4 user-defined; both are matched whole in text.
        for (i, t) in types.enumerated() where t == 3 || t == 4 { specials[tokens[i]] = i }
        let pre = try PreTokenizer.gguf(try f.optionalString("tokenizer.ggml.pre") ?? "default", source: src)
        try self.init(tokens: tokens, merges: merges, specialTokens: specials, preTokenizer: pre,
                      bos: try f.optionalInt("tokenizer.ggml.bos_token_id"), eos: try f.optionalInt("tokenizer.ggml.eos_token_id"),
                      addBOS: try f.optionalBool("tokenizer.ggml.add_bos_token") ?? false, source: src)
    }

    /// Token ids of `text` (with BOS first when `addBOS` and `withBOS`).
    public func encode(_ text: String, withBOS: Bool = true) -> [Int] {
        var out: [Int] = []
        if withBOS && addBOS, let b = bosTokenID { out.append(b) }
        let s = Array(text.unicodeScalars)
        var start = 0, i = 0
        while i < s.count {
            if let (len, id) = special(at: i, in: s) {
                encodeOrdinary(s[start..<i], into: &out)
                out.append(id)
                i += len
                start = i
            } else {
                i += 1
            }
        }
        encodeOrdinary(s[start..<s.count], into: &out)
        return out
    }

    func special(at i: Int, in s: [Unicode.Scalar]) -> (Int, Int)? {
        for (sp, id) in specialsByLength where i + sp.count <= s.count && s[i] == sp[0] {
            var ok = true
            for k in 1..<sp.count where s[i + k] != sp[k] { ok = false; break }
            if ok { return (sp.count, id) }
        }
        return nil
    }

    func encodeOrdinary(_ part: ArraySlice<Unicode.Scalar>, into out: inout [Int]) {
        guard !part.isEmpty else { return }
        let s = Array(part)
        for r in preTokenizer.split(s) {
            var word = String.UnicodeScalarView()
            word.append(contentsOf: s[r])
            let key = String(word)
            lock.lock()
            let hit = cache[key]
            lock.unlock()
            if let hit { out += hit; continue }
            let ids = bpe(Array(key.utf8))
            lock.lock()
            if cache.count > 100_000 { cache.removeAll(keepingCapacity: true) }
            cache[key] = ids
            lock.unlock()
            out += ids
        }
    }

    /// Merges the byte symbols of one word, lowest rank first.
    func bpe(_ bytes: [UInt8]) -> [Int] {
        var sym = bytes.compactMap { byteToID[Int($0)] >= 0 ? byteToID[Int($0)] : nil }
        while sym.count > 1 {
            var best = Int32.max, at = -1, merged: Int32 = 0
            for j in 0..<(sym.count - 1) {
                if let m = merges[UInt64(UInt32(sym[j])) << 32 | UInt64(UInt32(sym[j + 1]))], m.rank < best {
                    best = m.rank; at = j; merged = m.merged
                }
            }
            if at < 0 { break }
            // Merge every occurrence of the pair, left to right (as the reference does for one rank).
            let a = sym[at], b = sym[at + 1]
            var next: [Int32] = []
            next.reserveCapacity(sym.count)
            var j = 0
            while j < sym.count {
                if j + 1 < sym.count && sym[j] == a && sym[j + 1] == b { next.append(merged); j += 2 } else { next.append(sym[j]); j += 1 }
            }
            sym = next
        }
        return sym.map(Int.init)
    }

    /// The bytes token `id` stands for (empty for ids outside the vocabulary).
    public func bytes(of id: Int) -> [UInt8] { id >= 0 && id < tokenBytes.count ? tokenBytes[id] : [] }

    /// Text of `ids` (invalid UTF-8 replaced by U+FFFD); special tokens are dropped when `skipSpecial`.
    public func decode(_ ids: [Int], skipSpecial: Bool = false) -> String {
        var b: [UInt8] = []
        let specialIDs = skipSpecial ? Set(specialTokens.values) : []
        for id in ids where !specialIDs.contains(id) { b += bytes(of: id) }
        return String(decoding: b, as: UTF8.self)
    }

    public var vocabularySize: Int { tokens.count }
}

/// Turns a stream of token ids into text pieces without ever splitting a UTF-8 character: bytes
/// of an incomplete character wait for the token that completes it.
public struct StreamingDetokenizer {
    let tokenizer: BPETokenizer
    let skipSpecial: Bool
    var pending: [UInt8] = []

    public init(_ tokenizer: BPETokenizer, skipSpecial: Bool = false) {
        self.tokenizer = tokenizer
        self.skipSpecial = skipSpecial
    }

    /// The text that `id` completes (possibly empty).
    public mutating func push(_ id: Int) -> String {
        if skipSpecial && tokenizer.specialTokens.values.contains(id) { return "" }
        pending += tokenizer.bytes(of: id)
        let cut = Self.completePrefix(pending)
        guard cut > 0 else { return "" }
        let s = String(decoding: pending[..<cut], as: UTF8.self)
        pending.removeFirst(cut)
        return s
    }

    /// Whatever is left (an incomplete character becomes U+FFFD).
    public mutating func finish() -> String {
        defer { pending.removeAll() }
        return String(decoding: pending, as: UTF8.self)
    }

    /// Length of the longest prefix of `b` that does not end inside a UTF-8 character. Invalid
    /// bytes count as complete (they decode to U+FFFD at once rather than stalling the stream).
    static func completePrefix(_ b: [UInt8]) -> Int {
        var i = b.count - 1
        var back = 0
        while i >= 0 && back < 4 && b[i] & 0xC0 == 0x80 { i -= 1; back += 1 }
        guard i >= 0 else { return b.count }
        let lead = b[i]
        let need: Int
        if lead & 0x80 == 0 { need = 1 } else if lead & 0xE0 == 0xC0 { need = 2 } else if lead & 0xF0 == 0xE0 { need = 3 } else if lead & 0xF8 == 0xF0 { need = 4 } else { return b.count }
        return b.count - i >= need ? b.count : i
    }
}
