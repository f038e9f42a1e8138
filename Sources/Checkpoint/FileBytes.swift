import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The bytes a checkpoint file's parser reads and its tensors point into, kept alive as long as
/// the parsed file: a read-only mapping of the file (`munmap` on release), or a 64-byte-aligned
/// copy of bytes already in memory (so the same parser checks bytes that never were a file, as
/// the fuzz targets hand it).
final class FileBytes: @unchecked Sendable {
    let base: UnsafeRawPointer
    let count: Int
    private let mapped: Bool

    /// Takes ownership of a mapping made with `mmap(nil, count, ...)`.
    init(mapping base: UnsafeMutableRawPointer, count: Int) {
        self.base = UnsafeRawPointer(base)
        self.count = count
        self.mapped = true
    }

    /// Copies `data` into memory aligned as a mapping's start would be for the tensor widths read
    /// here (a mapping is page-aligned; 64 bytes covers every element type).
    init(copying data: Data) {
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(data.count, 1), alignment: 64)
        data.withUnsafeBytes { if let src = $0.baseAddress { p.copyMemory(from: src, byteCount: $0.count) } }
        self.base = UnsafeRawPointer(p)
        self.count = data.count
        self.mapped = false
    }

    deinit {
        if mapped { munmap(UnsafeMutableRawPointer(mutating: base), count) } else { base.deallocate() }
    }
}
