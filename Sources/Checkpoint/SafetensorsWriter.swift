import Foundation
import Kernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes safetensors files (used by the synthetic-model writer and tests).
///
/// Output is byte-for-byte what the reference implementation (Python `safetensors`) writes: the
/// JSON header (`__metadata__` first, then the tensors) is padded with spaces so the data section
/// starts at a multiple of 8 bytes, and the tensors' data follows contiguously in header order.
/// That order is the reference's: by dtype from the widest alignment down (I64, F64, F32, I32,
/// BF16, F16, I16, F8_E4M3, F8_E5M2, I8, U8, BOOL), then by name; so every tensor's data is
/// aligned to its element size. A file of a single dtype is therefore in plain name order. Tensors whose bytes are not
/// at hand can be added with a producer closure that fills their buffer at write time, so ~1 GB
/// synthetic models never hold more than one tensor in memory.
///
/// `add` never traps: problems (negative dimensions, a byte count that does not match the dtype
/// and shape, duplicate names) are reported by `write` as `CheckpointError.invalidTensorForWriting`
/// before any file is created.
public struct SafetensorsWriter {
    /// Fills a tensor's whole buffer (exactly `elementCount * dtype.byteSize` bytes, zeroed on entry).
    public typealias Producer = (UnsafeMutableRawBufferPointer) throws -> Void

    enum Source {
        case bytes([UInt8])
        case producer(Producer)
        /// Rejected at `add` time; `write` reports `reason`.
        case invalid(String)
    }

    struct Entry {
        let name: String
        let dtype: TensorDType
        let shape: [Int]
        let source: Source
    }

    private var entries: [Entry] = []

    /// An empty writer.
    public init() {}

    /// Number of tensors added.
    public var count: Int { entries.count }

    /// Names of the tensors added, sorted.
    public var tensorNames: [String] { entries.map(\.name).sorted() }

    /// Adds a tensor whose little-endian element bytes are `bytes`.
    public mutating func add(name: String, dtype: TensorDType, shape: [Int], bytes: [UInt8]) {
        entries.append(Entry(name: name, dtype: dtype, shape: shape, source: .bytes(bytes)))
    }

    /// Adds a tensor whose little-endian element bytes are `bytes`.
    public mutating func add(name: String, dtype: TensorDType, shape: [Int], bytes: Data) {
        add(name: name, dtype: dtype, shape: shape, bytes: [UInt8](bytes))
    }

    /// Adds a tensor whose little-endian element bytes are `bytes` (copied now).
    public mutating func add(name: String, dtype: TensorDType, shape: [Int], bytes: UnsafeRawBufferPointer) {
        add(name: name, dtype: dtype, shape: shape, bytes: [UInt8](bytes))
    }

    /// Adds fp32 values stored as `dtype` (F32, F16 or BF16; BF16 rounds to nearest even).
    /// Other dtypes are reported by `write`.
    public mutating func add(name: String, dtype: TensorDType, shape: [Int], floats: [Float]) {
        guard let bytes = SafetensorsWriter.encode(floats, as: dtype) else {
            entries.append(Entry(name: name, dtype: dtype, shape: shape,
                                 source: .invalid("cannot encode floats as \(dtype.rawValue); use F32, F16 or BF16")))
            return
        }
        add(name: name, dtype: dtype, shape: shape, bytes: bytes)
    }

    /// Adds a tensor whose bytes are produced when the file is written: `producer` is called once
    /// per write with a zeroed buffer of exactly the tensor's byte count to fill.
    public mutating func add(name: String, dtype: TensorDType, shape: [Int], producer: @escaping Producer) {
        entries.append(Entry(name: name, dtype: dtype, shape: shape, source: .producer(producer)))
    }

    /// Total bytes of tensor data (tensors with invalid shapes count as 0).
    public var totalBytes: Int {
        entries.reduce(0) { $0 + (checkedByteCount($1.shape, elementSize: $1.dtype.byteSize)?.bytes ?? 0) }
    }

    // MARK: writing

    /// Writes one safetensors file at `url` (replacing it atomically). `metadata` becomes the
    /// header's `__metadata__` (omitted when empty).
    public func write(to url: URL, metadata: [String: String] = ["format": "pt"]) throws {
        let sized = try validated()
        try SafetensorsWriter.writeFile(sized, to: url, metadata: metadata)
    }

    /// Writes a Hugging Face checkpoint's weights into `directory` (created if needed): a single
    /// `model.safetensors` when all tensors fit in `maxShardBytes`, otherwise shards
    /// `model-0000i-of-0000n.safetensors` of at most `maxShardBytes` each (a tensor larger than
    /// that gets a shard of its own) plus `model.safetensors.index.json` holding
    /// `{"metadata": {"total_parameters": P, "total_size": N}, "weight_map": {name: file}}`
    /// formatted as transformers formats it. Tensors are assigned to
    /// shards in name order. Returns the file names written, index last.
    @discardableResult
    public func writeSharded(to directory: URL, maxShardBytes: Int,
                             metadata: [String: String] = ["format": "pt"]) throws -> [String] {
        guard maxShardBytes > 0 else {
            throw CheckpointError.writeFailed(directory, reason: "maxShardBytes must be positive, got \(maxShardBytes)")
        }
        let sized = try validated()
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        } catch {
            throw CheckpointError.writeFailed(directory, reason: "cannot create directory: \(error.localizedDescription)")
        }
        let total = sized.reduce(0) { $0 + $1.bytes }
        if total <= maxShardBytes {
            try SafetensorsWriter.writeFile(sized, to: directory.appendingPathComponent("model.safetensors"), metadata: metadata)
            return ["model.safetensors"]
        }
        var shards: [[(entry: Entry, bytes: Int)]] = [[]]
        var current = 0
        for e in sized {
            if !shards[shards.count - 1].isEmpty && current + e.bytes > maxShardBytes {
                shards.append([])
                current = 0
            }
            shards[shards.count - 1].append(e)
            current += e.bytes
        }
        var names: [String] = []
        var weightMap: [String: String] = [:]
        for (i, shard) in shards.enumerated() {
            let file = String(format: "model-%05d-of-%05d.safetensors", i + 1, shards.count)
            try SafetensorsWriter.writeFile(shard, to: directory.appendingPathComponent(file), metadata: metadata)
            for e in shard { weightMap[e.entry.name] = file }
            names.append(file)
        }
        // Formatted as transformers writes it (json.dumps(indent=2, sort_keys=True) + "\n").
        let parameters = sized.reduce(0) { $0 + $1.bytes / $1.entry.dtype.byteSize }
        var text = "{\n  \"metadata\": {\n    \"total_parameters\": \(parameters),\n    \"total_size\": \(total)\n  },\n"
        text += "  \"weight_map\": {\n"
        text += weightMap.keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
            .map { "    \(Self.jsonString($0)): \(Self.jsonString(weightMap[$0]!))" }.joined(separator: ",\n")
        text += "\n  }\n}\n"
        let indexURL = directory.appendingPathComponent("model.safetensors.index.json")
        do {
            try Data(text.utf8).write(to: indexURL, options: .atomic)
        } catch {
            throw CheckpointError.writeFailed(indexURL, reason: error.localizedDescription)
        }
        names.append("model.safetensors.index.json")
        return names
    }

    /// Entries sorted by name (the order they are assigned to shards in) with their byte counts,
    /// or the first problem found.
    private func validated() throws -> [(entry: Entry, bytes: Int)] {
        var seen = Set<String>()
        var out: [(entry: Entry, bytes: Int)] = []
        out.reserveCapacity(entries.count)
        for e in entries {
            guard e.name != "__metadata__" else {
                throw CheckpointError.invalidTensorForWriting(e.name, reason: "the name __metadata__ is reserved")
            }
            guard seen.insert(e.name).inserted else {
                throw CheckpointError.invalidTensorForWriting(e.name, reason: "added more than once")
            }
            guard let (_, bytes) = checkedByteCount(e.shape, elementSize: e.dtype.byteSize) else {
                throw CheckpointError.invalidTensorForWriting(
                    e.name, reason: "shape \(e.shape) has a negative dimension or its size overflows")
            }
            if case .invalid(let reason) = e.source {
                throw CheckpointError.invalidTensorForWriting(e.name, reason: reason)
            }
            if case .bytes(let b) = e.source, b.count != bytes {
                throw CheckpointError.invalidTensorForWriting(
                    e.name, reason: "\(e.dtype.rawValue) shape \(e.shape) needs \(bytes) bytes but \(b.count) were given")
            }
            out.append((e, bytes))
        }
        out.sort { $0.entry.name.utf8.lexicographicallyPrecedes($1.entry.name.utf8) }
        return out
    }

    /// The header JSON for `entries` (in order), padded with spaces to a multiple of 8 bytes.
    static func header(_ entries: [(entry: Entry, bytes: Int)], metadata: [String: String]) -> [UInt8] {
        var s = "{"
        var first = true
        if !metadata.isEmpty {
            s += "\"__metadata__\":{"
            s += metadata.keys.sorted().map { "\(jsonString($0)):\(jsonString(metadata[$0]!))" }.joined(separator: ",")
            s += "}"
            first = false
        }
        var offset = 0
        for e in entries {
            if !first { s += "," }
            first = false
            s += "\(jsonString(e.entry.name)):{\"dtype\":\"\(e.entry.dtype.rawValue)\","
            s += "\"shape\":[\(e.entry.shape.map(String.init).joined(separator: ","))],"
            s += "\"data_offsets\":[\(offset),\(offset + e.bytes)]}"
            offset += e.bytes
        }
        s += "}"
        var bytes = Array(s.utf8)
        while bytes.count % 8 != 0 { bytes.append(0x20) }
        return bytes
    }

    /// `s` as a JSON string literal.
    static func jsonString(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
            }
        }
        return out + "\""
    }

    /// The reference implementation's dtype order (its `Dtype` declaration order, by increasing
    /// alignment); files list tensors from the highest rank down.
    static func alignmentRank(_ d: TensorDType) -> Int {
        switch d {
        case .bool: return 0
        case .u8: return 1
        case .i8: return 2
        case .f8e5m2: return 3
        case .f8e4m3: return 4
        case .i16: return 5
        case .f16: return 6
        case .bf16: return 7
        case .i32: return 8
        case .f32: return 9
        case .f64: return 10
        case .i64: return 11
        }
    }

    private static func writeFile(_ unordered: [(entry: Entry, bytes: Int)], to url: URL, metadata: [String: String]) throws {
        let entries = unordered.sorted {
            let (a, b) = (alignmentRank($0.entry.dtype), alignmentRank($1.entry.dtype))
            return a != b ? a > b : $0.entry.name.utf8.lexicographicallyPrecedes($1.entry.name.utf8)
        }
        let dir = url.deletingLastPathComponent()
        let tmp = dir.appendingPathComponent(".\(url.lastPathComponent).partial-\(getpid())")
        let fd = tmp.withUnsafeFileSystemRepresentation { p -> Int32 in
            guard let p else { return -1 }
            return open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        }
        guard fd >= 0 else { throw CheckpointError.writeFailed(url, reason: String(cString: strerror(errno))) }
        var closed = false
        var done = false
        defer {
            if !closed { close(fd) }
            if !done { _ = tmp.withUnsafeFileSystemRepresentation { p in p.map { unlink($0) } } }
        }
        func put(_ buf: UnsafeRawBufferPointer) throws {
            var p = buf.baseAddress
            var left = buf.count
            while left > 0, let q = p {
                let n = posixWrite(fd, q, min(left, 1 << 30))
                if n < 0 {
                    if errno == EINTR { continue }
                    throw CheckpointError.writeFailed(url, reason: String(cString: strerror(errno)))
                }
                p = q + n
                left -= n
            }
        }
        let head = header(entries, metadata: metadata)
        var prefix = UInt64(head.count).littleEndian
        try withUnsafeBytes(of: &prefix) { try put($0) }
        try head.withUnsafeBytes { try put($0) }
        for e in entries {
            switch e.entry.source {
            case .bytes(let b):
                try b.withUnsafeBytes { try put($0) }
            case .producer(let produce):
                let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: max(e.bytes, 1), alignment: 64)
                defer { buf.deallocate() }
                let slice = UnsafeMutableRawBufferPointer(rebasing: buf[0 ..< e.bytes])
                slice.initializeMemory(as: UInt8.self, repeating: 0)
                try produce(slice)
                try put(UnsafeRawBufferPointer(slice))
            case .invalid(let reason):
                throw CheckpointError.invalidTensorForWriting(e.entry.name, reason: reason)
            }
        }
        closed = true
        guard close(fd) == 0 else { throw CheckpointError.writeFailed(url, reason: String(cString: strerror(errno))) }
        let r = tmp.withUnsafeFileSystemRepresentation { a in
            url.withUnsafeFileSystemRepresentation { b in (a != nil && b != nil) ? rename(a!, b!) : -1 }
        }
        guard r == 0 else { throw CheckpointError.writeFailed(url, reason: String(cString: strerror(errno))) }
        done = true
    }

    /// fp32 values as little-endian F32, F16 or BF16 bytes (BF16 rounds to nearest even, as
    /// torch does); nil for other dtypes.
    public static func encode(_ values: [Float], as dtype: TensorDType) -> [UInt8]? {
        switch dtype {
        case .f32:
            var out = [UInt8](repeating: 0, count: values.count * 4)
            out.withUnsafeMutableBytes { o in
                for (i, x) in values.enumerated() { o.storeBytes(of: x.bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self) }
            }
            return out
        case .f16:
            var out = [UInt8](repeating: 0, count: values.count * 2)
            out.withUnsafeMutableBytes { o in
                for (i, x) in values.enumerated() {
                    o.storeBytes(of: Float16(x).bitPattern.littleEndian, toByteOffset: 2 * i, as: UInt16.self)
                }
            }
            return out
        case .bf16:
            var out = [UInt8](repeating: 0, count: values.count * 2)
            out.withUnsafeMutableBytes { o in
                for (i, x) in values.enumerated() {
                    o.storeBytes(of: bf16Bits(x).littleEndian, toByteOffset: 2 * i, as: UInt16.self)
                }
            }
            return out
        default:
            return nil
        }
    }

    /// `x` rounded to bfloat16 (nearest even; NaN stays NaN).
    static func bf16Bits(_ x: Float) -> UInt16 { BFloat16Bits.rounding(x) }
}

/// write(2), reachable from inside a type that has its own `write` methods.
private func posixWrite(_ fd: Int32, _ buf: UnsafeRawPointer, _ count: Int) -> Int {
    #if canImport(Glibc)
    return Glibc.write(fd, buf, count)
    #else
    return Darwin.write(fd, buf, count)
    #endif
}
