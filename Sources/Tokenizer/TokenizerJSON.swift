import Checkpoint
import Foundation

extension BPETokenizer {
    /// Reads a Hugging Face `tokenizer.json` (model type BPE, byte-level). The pre-tokenizer is
    /// recognised from its regex: ByteLevel with `use_regex` (GPT-2), a Split on the
    /// Llama-3/Qwen2 pattern, or DeepSeek-V3's three Splits, followed by ByteLevel without regex.
    public convenience init(tokenizerJSON url: URL) throws {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw TokenizerError.malformed("cannot read: \(error.localizedDescription)", source: url.path)
        }
        try self.init(tokenizerJSON: data, source: url.path)
    }

    /// Parses the bytes of a `tokenizer.json`; `source` names it in errors.
    public convenience init(tokenizerJSON data: Data, source src: String) throws {
        guard let root = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw TokenizerError.malformed("not a JSON object", source: src)
        }
        guard let model = root["model"] as? [String: Any] else { throw TokenizerError.malformed("no \"model\" object", source: src) }
        let type = model["type"] as? String ?? "?"
        guard type == "BPE" else { throw TokenizerError.unsupportedModel(type, source: src) }
        guard let vocab = model["vocab"] as? [String: Any] else { throw TokenizerError.malformed("model.vocab is not an object", source: src) }
        // Every id becomes an index into the token table, which is as long as the largest id: ids
        // from the file (vocab and added tokens alike) must be exact integers in 0..<maxTokenID.
        func tokenID(_ v: Any?) -> Int? {
            guard let id = JSONValue(v).exactInt, id >= 0, id < Self.maxTokenID else { return nil }
            return id
        }
        var byID: [Int: String] = [:]
        for (t, v) in vocab {
            guard let id = tokenID(v) else {
                throw TokenizerError.malformed("model.vocab['\(t)'] is not a token id (an integer in 0..<\(Self.maxTokenID))", source: src)
            }
            byID[id] = t
        }
        var specials: [String: Int] = [:]
        for a in root["added_tokens"] as? [[String: Any]] ?? [] {
            guard let content = a["content"] as? String, a["id"] != nil else {
                throw TokenizerError.malformed("an added_tokens entry lacks id or content", source: src)
            }
            guard let id = tokenID(a["id"]) else {
                throw TokenizerError.malformed("added token '\(content)' has id \(JSONValue(a["id"]).brief), not a token id (an integer in 0..<\(Self.maxTokenID))", source: src)
            }
            byID[id] = content
            specials[content] = id
        }
        let count = (byID.keys.max() ?? -1) + 1
        var tokens = [String](repeating: "", count: count)
        for (id, t) in byID { tokens[id] = t }
        var merges: [(String, String)] = []
        for (i, m) in (model["merges"] as? [Any] ?? []).enumerated() {
            if let line = m as? String, let sp = line.firstIndex(of: " ") {
                merges.append((String(line[..<sp]), String(line[line.index(after: sp)...])))
            } else if let pair = m as? [String], pair.count == 2 {
                merges.append((pair[0], pair[1]))
            } else {
                throw TokenizerError.malformed("model.merges[\(i)] is neither \"a b\" nor [a, b]", source: src)
            }
        }
        let pre = try Self.preTokenizer(root["pre_tokenizer"] as? [String: Any], source: src)
        try self.init(tokens: tokens, merges: merges, specialTokens: specials, preTokenizer: pre,
                      bos: nil, eos: nil, addBOS: false, source: src)
    }

    /// Token ids a tokenizer.json may use: far above any published vocabulary (a few hundred
    /// thousand), low enough that the table sized by the largest id stays small.
    static let maxTokenID = 10_000_000

    static let llama3Pattern = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let qwen2Pattern = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// DeepSeek-V3's three `Split` patterns, as its tokenizer.json spells them.
    static let deepseekV3Patterns = [
        #"\p{N}{1,3}"#,
        "[\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}]+",
        ##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
    ]

    static func preTokenizer(_ p: [String: Any]?, source: String) throws -> PreTokenizer {
        guard let p else { throw TokenizerError.unsupportedPreTokenizer("none", source: source) }
        let type = p["type"] as? String ?? "?"
        if type == "ByteLevel" {
            guard p["use_regex"] as? Bool ?? true else { throw TokenizerError.unsupportedPreTokenizer("ByteLevel without regex", source: source) }
            return .gpt2
        }
        if type == "Sequence", let list = p["pretokenizers"] as? [[String: Any]] {
            if list.contains(where: { $0["type"] as? String == "Digits" }) {
                throw TokenizerError.unsupportedPreTokenizer("Digits", source: source)
            }
            let splits = list.filter { $0["type"] as? String == "Split" }.map { ($0["pattern"] as? [String: Any])?["Regex"] as? String ?? "" }
            if splits == deepseekV3Patterns,
               list.filter({ $0["type"] as? String == "Split" }).allSatisfy({ ($0["behavior"] as? String)?.lowercased() == "isolated" }) {
                return .deepseekV3
            }
            for q in list where q["type"] as? String == "Split" {
                let pattern = (q["pattern"] as? [String: Any])?["Regex"] as? String ?? ""
                if pattern == llama3Pattern { return .llama3(maxDigits: 3) }
                if pattern == qwen2Pattern { return .llama3(maxDigits: 1) }
                throw TokenizerError.unsupportedPreTokenizer("Split on \(pattern)", source: source)
            }
            if list.contains(where: { $0["type"] as? String == "ByteLevel" && ($0["use_regex"] as? Bool ?? true) }) { return .gpt2 }
        }
        throw TokenizerError.unsupportedPreTokenizer(type, source: source)
    }
}
