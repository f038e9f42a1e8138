import Checkpoint
import Foundation
import XCTest
@testable import Tokenizer

final class TokenizerTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/smollm2")

    struct Cases: Decodable {
        struct Case: Decodable { let text: String; let ids: [Int] }
        let cases: [Case]
    }

    /// `text` cut by a pre-tokenizer, as strings.
    static func pieces(_ p: PreTokenizer, _ text: String) -> [String] {
        let u = Array(text.unicodeScalars)
        return p.split(u).map { r in
            var v = String.UnicodeScalarView()
            v.append(contentsOf: u[r])
            return String(v)
        }
    }

    static func smolTokenizer() throws -> BPETokenizer {
        try BPETokenizer(gguf: GGUFFile(url: fixtures.appendingPathComponent("tokenizer.gguf")))
    }

    /// SmolLM2's tokenizer read from GGUF metadata gives transformers' ids (loaded from the same
    /// GGUF) on every recorded string: spaces, newlines, digits, punctuation, accents, CJK,
    /// emoji, special tokens and the chat-formatted prompt (scripts/make-smollm2-fixtures.py).
    func testMatchesTransformersOnEveryString() throws {
        let tok = try Self.smolTokenizer()
        let ref = try JSONDecoder().decode(Cases.self, from: Data(contentsOf: Self.fixtures.appendingPathComponent("tokenizer.json")))
        XCTAssertGreaterThanOrEqual(ref.cases.count, 60)
        var failures = 0
        for c in ref.cases {
            let ids = tok.encode(c.text, withBOS: false)
            if ids != c.ids { failures += 1 }
            XCTAssertEqual(ids, c.ids, "text \(c.text.debugDescription)")
            // Decoding gives the text back (the vocabulary covers every byte these strings use).
            XCTAssertEqual(tok.decode(ids), c.text, "round trip of \(c.text.debugDescription)")
        }
        XCTAssertEqual(failures, 0)
    }

    /// Streaming detokenization emits only whole characters, and all of them by the end.
    func testStreamingNeverSplitsACharacter() throws {
        let tok = try Self.smolTokenizer()
        for text in ["日本語のテキスト", "family 👨‍👩‍👧‍👦 and 🇫🇷", "naïve café", "plain ascii"] {
            let ids = tok.encode(text, withBOS: false)
            var stream = StreamingDetokenizer(tok)
            var pieces: [String] = []
            for id in ids { pieces.append(stream.push(id)) }
            pieces.append(stream.finish())
            for p in pieces { XCTAssertFalse(p.contains("\u{FFFD}"), "piece \(p.debugDescription) of \(text) splits a character") }
            XCTAssertEqual(pieces.joined(), text)
            // Some multi-byte character spans several tokens here, so the test exercises waiting.
            if text.hasPrefix("日本") { XCTAssertTrue(pieces.contains(""), "expected a token that completes no character") }
        }
        XCTAssertEqual(StreamingDetokenizer.completePrefix([0x61, 0xE6, 0x97]), 1)
        XCTAssertEqual(StreamingDetokenizer.completePrefix([0xE6, 0x97, 0xA5]), 3)
        XCTAssertEqual(StreamingDetokenizer.completePrefix([0xF0, 0x9F]), 0)
        XCTAssertEqual(StreamingDetokenizer.completePrefix([0xFF]), 1)
    }

    func testSpecialTokensAndBOS() throws {
        let tok = try Self.smolTokenizer()
        XCTAssertEqual(tok.encode("<|im_start|>", withBOS: false), [1])
        XCTAssertEqual(tok.bosTokenID, 1)
        XCTAssertEqual(tok.eosTokenID, 2)
        XCTAssertFalse(tok.addBOS, "SmolLM2's GGUF says add_bos_token = false")
        XCTAssertEqual(tok.decode([1, 2], skipSpecial: true), "")
    }

    /// Malformed tokenizer metadata is a clear error naming the problem.
    func testMalformedMetadataIsAnError() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tok-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let bytes = (0..<256).map { String(Character(BPETokenizer.byteToUnicode[$0])) }
        func write(_ meta: [(String, GGUFValue)]) throws -> URL {
            var w = GGUFWriter()
            w.metadata = meta
            let u = dir.appendingPathComponent("\(UUID().uuidString).gguf")
            try w.write(to: u)
            return u
        }
        let toks = GGUFValue.array((bytes + ["ab"]).map { .string($0) })
        let cases: [([(String, GGUFValue)], String)] = [
            ([("tokenizer.ggml.model", .string("llama")), ("tokenizer.ggml.tokens", toks)], "'llama' is not supported"),
            ([("tokenizer.ggml.model", .string("gpt2"))], "tokenizer.ggml.tokens"),
            ([("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.tokens", toks),
              ("tokenizer.ggml.merges", .array([.string("a b")])), ("tokenizer.ggml.pre", .string("mystery"))], "mystery"),
            ([("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.tokens", toks),
              ("tokenizer.ggml.merges", .array([.string("a zz")]))], "not in the vocabulary"),
            ([("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.tokens", toks),
              ("tokenizer.ggml.merges", .array([.string("ab")]))], "separated by a space"),
            ([("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.tokens", toks),
              ("tokenizer.ggml.merges", .array([.string("a b")])), ("tokenizer.ggml.eos_token_id", .uint32(9999))], "outside the vocabulary"),
            ([("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.tokens", .string("oops"))], "expected array of strings"),
        ]
        for (meta, expected) in cases {
            let url = try write(meta)
            XCTAssertThrowsError(try BPETokenizer(gguf: GGUFFile(url: url))) { e in
                XCTAssertTrue("\(e)".contains(expected), "\(e) should mention \(expected)")
            }
        }
        // And a well-formed one works: "a" + "b" merge to "ab".
        let ok = try write([("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.tokens", toks),
                            ("tokenizer.ggml.merges", .array([.string("a b")]))])
        let tok = try BPETokenizer(gguf: GGUFFile(url: ok))
        XCTAssertEqual(tok.encode("ab"), [256])
    }

    /// Found while writing the tokenizer fuzz target (its reproducers are in
    /// Fuzz/corpus/Tokenizer/regress-*): an added token's id was used unchecked as an index
    /// into the token table sized by the largest id, so -5 trapped (index out of range), 10^14
    /// tried to allocate petabytes and Int.max overflowed `max + 1`. Every id is now an exact
    /// integer in 0..<maxTokenID, or the file is refused with a message naming the token.
    func testTokenizerJSONRefusesTokenIDsOutsideTheTable() throws {
        func json(vocabID: String = "0", addedID: String) -> Data {
            Data(#"{"model": {"type": "BPE", "vocab": {"a": \#(vocabID)}, "merges": []}, "added_tokens": [{"id": \#(addedID), "content": "<x>"}], "pre_tokenizer": {"type": "ByteLevel"}}"#.utf8)
        }
        for bad in ["-5", "100000000000000", "9223372036854775807", "1.5", "1e300", "\"7\"", "null"] {
            XCTAssertThrowsError(try BPETokenizer(tokenizerJSON: json(addedID: bad), source: "t.json"), "added id \(bad)") { e in
                XCTAssertTrue("\(e)".contains("<x>") && "\(e)".contains("token id"), "\(e)")
            }
        }
        for bad in ["-1", "10000000", "2.5"] {
            XCTAssertThrowsError(try BPETokenizer(tokenizerJSON: json(vocabID: bad, addedID: "1"), source: "t.json"), "vocab id \(bad)") { e in
                XCTAssertTrue("\(e)".contains("model.vocab['a']"), "\(e)")
            }
        }
        let ok = try BPETokenizer(tokenizerJSON: json(addedID: "3"), source: "t.json")
        XCTAssertEqual(ok.tokens.count, 4)
        XCTAssertEqual(ok.specialTokens["<x>"], 3)
    }

    /// The Llama-3 / Qwen2 splitting rules on the cases where they differ from GPT-2's.
    func testLlama3PreTokenizer() {
        func split(_ p: PreTokenizer, _ s: String) -> [String] {
            let u = Array(s.unicodeScalars)
            return p.split(u).map { r in var v = String.UnicodeScalarView(); v.append(contentsOf: u[r]); return String(v) }
        }
        XCTAssertEqual(split(.llama3(maxDigits: 3), "12345 abc"), ["123", "45", " abc"])
        XCTAssertEqual(split(.llama3(maxDigits: 1), "123"), ["1", "2", "3"])
        XCTAssertEqual(split(.llama3(maxDigits: 3), "DON'T"), ["DON", "'T"])
        XCTAssertEqual(split(.gpt2, "DON'T"), ["DON", "'", "T"])
        XCTAssertEqual(split(.llama3(maxDigits: 3), "a\n\n  b"), ["a", "\n\n", " ", " b"])
        XCTAssertEqual(split(.llama3(maxDigits: 3), "x...\n\ny"), ["x", "...\n\n", "y"])
        XCTAssertEqual(split(.gpt2, "  two"), [" ", " two"])
    }

    /// DeepSeek-V3's pre-tokenizer (three Isolated splits, then ByteLevel without regex), read
    /// from a tokenizer.json built with Hugging Face `tokenizers` with DeepSeek-V3's exact
    /// pre_tokenizer and a small trained vocabulary (scripts/make-deepseek-tokenizer-fixture.py):
    /// the pieces and the ids equal that library's on every recorded string.
    func testDeepseekV3PreTokenizerMatchesTokenizers() throws {
        struct Ref: Decodable {
            struct Case: Decodable { let text: String; let pieces: [String]; let ids: [Int] }
            let cases: [Case]
        }
        let dir = Self.fixtures.deletingLastPathComponent().appendingPathComponent("deepseek_tokenizer")
        let tok = try BPETokenizer(tokenizerJSON: dir.appendingPathComponent("tokenizer.json"))
        XCTAssertEqual(tok.preTokenizer, .deepseekV3)
        XCTAssertEqual(try PreTokenizer.gguf("deepseek-v3", source: "test"), .deepseekV3)
        let ref = try JSONDecoder().decode(Ref.self, from: Data(contentsOf: dir.appendingPathComponent("reference.json")))
        XCTAssertGreaterThanOrEqual(ref.cases.count, 70)
        for c in ref.cases {
            XCTAssertEqual(Self.pieces(tok.preTokenizer, c.text), c.pieces, "pieces of \(c.text.debugDescription)")
            XCTAssertEqual(tok.encode(c.text, withBOS: false), c.ids, "ids of \(c.text.debugDescription)")
        }
    }

    /// Kimi K2's pre-tokenizer (tiktoken pat_str of tokenization_kimi.py, with Han excluded from
    /// the letter classes) gives the pieces the Python `regex` module finds with that pattern
    /// (scripts/make-kimi-pretokenizer-fixture.py, which also generates the Han table).
    func testKimiK2PreTokenizerMatchesRegex() throws {
        struct Ref: Decodable {
            struct Case: Decodable { let text: String; let pieces: [String] }
            let cases: [Case]
        }
        XCTAssertEqual(try PreTokenizer.gguf("kimi-k2", source: "test"), .kimiK2)
        let url = Self.fixtures.deletingLastPathComponent().appendingPathComponent("kimi_pretokenizer/reference.json")
        let ref = try JSONDecoder().decode(Ref.self, from: Data(contentsOf: url))
        XCTAssertGreaterThanOrEqual(ref.cases.count, 70)
        for c in ref.cases {
            XCTAssertEqual(Self.pieces(.kimiK2, c.text), c.pieces, "pieces of \(c.text.debugDescription)")
        }
    }
}
