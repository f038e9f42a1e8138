// libFuzzer target: a GGUF file as `farside` opens one — the parser, every typed metadata read,
// the tokenizer in its metadata, the config.json its metadata becomes, and the model built from it.
import Foundation
@testable import Checkpoint
@testable import Models
import Tokenizer

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let url = URL(fileURLWithPath: "/fuzz/input.gguf")
    guard let f = try? GGUFFile(data: Data(bytes: data, count: size), url: url) else { return 0 }
    for key in f.metadata.keys.sorted() {
        _ = try? f.optionalString(key)
        _ = try? f.optionalInt(key)
        _ = try? f.optionalDouble(key)
        _ = try? f.optionalBool(key)
        _ = try? f.optionalStringArray(key)
        _ = try? f.optionalIntArray(key)
        _ = try? f.floatArray(key)
    }
    var sum = 0
    for name in f.tensorNames {
        guard let (info, _) = try? f.tensor(name), info.byteCount > 0 else { continue }
        // The first and last byte must be readable (AddressSanitizer checks the copy's bounds).
        sum &+= Int(info.data.load(as: UInt8.self)) &+ Int(info.data.load(fromByteOffset: info.byteCount - 1, as: UInt8.self))
    }
    _ = f.headerData.count &+ sum
    _ = GGUFModel.fingerprint(f)
    if let tokenizer = try? BPETokenizer(gguf: f) {
        let ids = tokenizer.encode("Hello, world! 123 <|im_start|>user\n héllo 世界")
        _ = tokenizer.decode(ids)
    }
    if let arch = try? f.string("general.architecture"), let (config, table) = try? GGUFModel.configuration(f, architecture: arch) {
        _ = try? ModelRegistry.load(config: config, weights: GGUFWeights(file: f, table: table))
    }
    return 0
}
