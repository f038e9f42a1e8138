// libFuzzer target: a .safetensors file's header and data section (first byte 0), or a sharded
// checkpoint's model.safetensors.index.json (first byte 1), as CheckpointDirectory reads them.
import Foundation
@testable import Checkpoint

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1 else { return 0 }
    let bytes = Data(bytes: data + 1, count: size - 1)
    if data[0] & 1 == 1 {
        let index = URL(fileURLWithPath: "/fuzz/model.safetensors.index.json")
        if let map = try? CheckpointDirectory.shardMap(indexData: bytes, index: index) {
            for (file, names) in map { precondition(!file.isEmpty && !file.hasPrefix("/") && !names.isEmpty) }
        }
        return 0
    }
    guard let f = try? SafetensorsFile(data: bytes, url: URL(fileURLWithPath: "/fuzz/model.safetensors")) else { return 0 }
    var sum = 0
    for name in f.tensorNames {
        let t = f[name]!
        guard t.byteCount > 0 else { continue }
        // The first and last byte must be readable (AddressSanitizer checks the copy's bounds).
        sum &+= Int(t.data.load(as: UInt8.self)) &+ Int(t.data.load(fromByteOffset: t.byteCount - 1, as: UInt8.self))
        if let dtype = t.dtype.computeType, t.byteCount <= 1 << 16 { _ = CheckpointDirectory.widen(t, dtype) }
    }
    _ = sum
    return 0
}
