import Foundation
import Kernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A metadata value of a GGUF file (GGUF spec, "gguf_metadata_value_type").
public enum GGUFValue: Sendable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case uint64(UInt64), int64(Int64), float32(Float), float64(Double), bool(Bool), string(String)
    case array([GGUFValue])

    /// The value as an integer, if it is one (any width) and fits `Int`.
    public var int: Int? {
        switch self {
        case .uint8(let v): return Int(v)
        case .int8(let v): return Int(v)
        case .uint16(let v): return Int(v)
        case .int16(let v): return Int(v)
        case .uint32(let v): return Int(v)
        case .int32(let v): return Int(v)
        case .uint64(let v): return Int(exactly: v)
        case .int64(let v): return Int(v)
        case .bool(let v): return v ? 1 : 0
        default: return nil
        }
    }

    /// The value as a floating-point number, if it is a number.
    public var double: Double? {
        switch self {
        case .float32(let v): return Double(v)
        case .float64(let v): return v
        default: return int.map(Double.init)
        }
    }

    /// The GGUF type name, for error messages.
    public var typeName: String {
        switch self {
        case .uint8: return "uint8"
        case .int8: return "int8"
        case .uint16: return "uint16"
        case .int16: return "int16"
        case .uint32: return "uint32"
        case .int32: return "int32"
        case .uint64: return "uint64"
        case .int64: return "int64"
        case .float32: return "float32"
        case .float64: return "float64"
        case .bool: return "bool"
        case .string: return "string"
        case .array: return "array"
        }
    }
}

/// One tensor of a GGUF file, viewed in place.
public struct GGUFTensorInfo: @unchecked Sendable {
    public let name: String
    /// Dimensions in ggml order: `dims[0]` is the innermost (contiguous) one, i.e. the columns
    /// of a weight matrix; a PyTorch `[out, in]` weight is stored as `[in, out]` here.
    public let dims: [Int]
    /// The ggml type id.
    public let typeID: UInt32
    /// The kernels' type for `typeID`, or nil when Farside cannot compute on it.
    public let dtype: DType?
    /// The tensor's bytes inside the mapping (valid while the `GGUFFile` lives).
    public let data: UnsafeRawPointer
    public let byteCount: Int
    /// Number of values.
    public var elementCount: Int { dims.reduce(1, *) }
}

/// Errors reading a GGUF file. Each names the file and what was wrong.
public enum GGUFError: Error, CustomStringConvertible {
    case unreadable(URL, reason: String)
    case badMagic(URL, found: String)
    case unsupportedVersion(URL, version: UInt32)
    case truncated(URL, what: String, offset: Int, fileSize: Int)
    case malformed(URL, reason: String)
    case unknownTensorType(URL, tensor: String, typeID: UInt32)
    case unsupportedTensorType(URL, tensor: String, type: String)
    case missingKey(URL, key: String)
    case wrongKeyType(URL, key: String, expected: String, found: String)
    case missingTensor(URL, tensor: String)

    public var description: String {
        switch self {
        case let .unreadable(u, r): return "\(u.path): cannot read GGUF file: \(r)"
        case let .badMagic(u, f): return "\(u.path): not a GGUF file (magic is \(f), expected \"GGUF\")"
        case let .unsupportedVersion(u, v): return "\(u.path): GGUF version \(v) is not supported (only 2 and 3)"
        case let .truncated(u, w, o, s):
            return "\(u.path): GGUF file is truncated or corrupt: \(w) at byte \(o) runs past the end of the file (\(s) bytes)"
        case let .malformed(u, r): return "\(u.path): malformed GGUF: \(r)"
        case let .unknownTensorType(u, t, id):
            return "\(u.path): tensor \(t) has unknown ggml type id \(id)"
        case let .unsupportedTensorType(u, t, ty):
            return "\(u.path): tensor \(t) is stored as \(ty), which Farside cannot compute on "
                + "(supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)"
        case let .missingKey(u, k): return "\(u.path): GGUF metadata has no key \(k)"
        case let .wrongKeyType(u, k, e, f): return "\(u.path): GGUF metadata key \(k) is \(f), expected \(e)"
        case let .missingTensor(u, t): return "\(u.path): GGUF file has no tensor \(t)"
        }
    }
}

/// A memory-mapped GGUF file (v2 or v3), validated on open: header, metadata, tensor infos and
/// that every tensor's bytes lie inside the file at the declared alignment.
///
/// Layout (GGUF spec): magic "GGUF", u32 version, u64 tensor count, u64 metadata count, metadata
/// key/values, tensor infos (name, u32 n_dims, u64 dims[n], u32 ggml type, u64 offset), padding
/// to `general.alignment` (default 32), then the data section; offsets are relative to it.
public final class GGUFFile: @unchecked Sendable {
    public let url: URL
    public let version: UInt32
    public let alignment: Int
    public let metadata: [String: GGUFValue]
    /// Tensor names in file order.
    public let tensorNames: [String]
    public let tensors: [String: GGUFTensorInfo]
    public let fileSize: Int
    /// Bytes before the data section (header, metadata and tensor infos).
    public let headerBytes: Int

    /// The mapping (or copy) every tensor's `data` points into.
    private let bytes: FileBytes

    /// Limits that reject corrupt counts before they allocate.
    static let maxTensors = 1 << 20, maxKeys = 1 << 20, maxDims = 4, maxNesting = 4

    /// ggml type names by id (ggml.h `enum ggml_type`), for messages about types Farside lacks.
    static let typeNames: [UInt32: String] = [
        0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
        10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
        17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS",
        24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0",
        35: "TQ2_0", 39: "MXFP4",
    ]
    /// (values per block, bytes per block) of every ggml type whose size is known, so tensors of
    /// types Farside cannot compute on are still bounds-checked.
    static let blockSizes: [UInt32: (Int, Int)] = [
        0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
        10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
        16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
        22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
        29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17),
    ]
    static let computeTypes: [UInt32: DType] = [
        0: .f32, 1: .f16, 30: .bf16, 8: .q8_0, 2: .q4_0, 3: .q4_1, 12: .q4_K, 13: .q5_K, 14: .q6_K,
    ]

    /// Maps the file at `url` and validates it.
    public convenience init(url: URL) throws {
        let fd = url.withUnsafeFileSystemRepresentation { p -> Int32 in p.map { open($0, O_RDONLY | O_CLOEXEC) } ?? -1 }
        guard fd >= 0 else { throw GGUFError.unreadable(url, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw GGUFError.unreadable(url, reason: String(cString: strerror(errno))) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw GGUFError.unreadable(url, reason: "not a regular file") }
        let size = Int(st.st_size)
        guard size >= 4 else { throw GGUFError.truncated(url, what: "the magic", offset: 0, fileSize: size) }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw GGUFError.unreadable(url, reason: "mmap failed: \(String(cString: strerror(errno)))")
        }
        try self.init(bytes: FileBytes(mapping: p, count: size), url: url)
    }

    /// Validates GGUF bytes already in memory (copied, so the tensors stay valid as long as this
    /// object); `url` only names them in errors. The same checks as a file on disk gets.
    public convenience init(data: Data, url: URL) throws {
        guard data.count >= 4 else { throw GGUFError.truncated(url, what: "the magic", offset: 0, fileSize: data.count) }
        try self.init(bytes: FileBytes(copying: data), url: url)
    }

    private init(bytes: FileBytes, url: URL) throws {
        self.url = url
        let p = bytes.base, size = bytes.count
        var r = Reader(base: p, size: size, url: url)
        let magic = try r.bytes(4, "the magic")
        guard magic.elementsEqual("GGUF".utf8) else {
            throw GGUFError.badMagic(url, found: "\"" + String(decoding: magic.map { $0 >= 32 && $0 < 127 ? $0 : UInt8(ascii: "?") }, as: UTF8.self) + "\"")
        }
        let version = try r.u32("the version")
        guard version == 2 || version == 3 else { throw GGUFError.unsupportedVersion(url, version: version) }
        let tensorCount = try r.u64("the tensor count"), keyCount = try r.u64("the metadata count")
        guard tensorCount <= UInt64(Self.maxTensors) else { throw GGUFError.malformed(url, reason: "tensor count \(tensorCount) is implausible") }
        guard keyCount <= UInt64(Self.maxKeys) else { throw GGUFError.malformed(url, reason: "metadata count \(keyCount) is implausible") }
        var meta: [String: GGUFValue] = [:]
        meta.reserveCapacity(Int(keyCount))
        for _ in 0..<Int(keyCount) {
            let key = try r.string("a metadata key")
            let type = try r.u32("the type of metadata key \(key)")
            let v = try r.value(type: type, key: key, depth: 0)
            guard meta.updateValue(v, forKey: key) == nil else { throw GGUFError.malformed(url, reason: "metadata key \(key) appears twice") }
        }
        var align = 32
        if let a = meta["general.alignment"] {
            guard let v = a.int, v > 0, v & (v - 1) == 0, v <= 1 << 16 else {
                throw GGUFError.malformed(url, reason: "general.alignment must be a power of two, found \(a)")
            }
            align = v
        }
        struct Pending { let name: String; let dims: [Int]; let type: UInt32; let offset: Int; let bytes: Int }
        var pending: [Pending] = []
        pending.reserveCapacity(Int(tensorCount))
        var seen = Set<String>()
        for _ in 0..<Int(tensorCount) {
            let name = try r.string("a tensor name")
            let nd = try r.u32("the dimension count of tensor \(name)")
            guard nd >= 1 && nd <= UInt32(Self.maxDims) else {
                throw GGUFError.malformed(url, reason: "tensor \(name) has \(nd) dimensions (1...\(Self.maxDims) supported)")
            }
            var dims: [Int] = []
            var count = 1
            for _ in 0..<Int(nd) {
                let d = try r.u64("a dimension of tensor \(name)")
                guard d >= 1, d <= UInt64(Int32.max) else { throw GGUFError.malformed(url, reason: "tensor \(name) has dimension \(d)") }
                dims.append(Int(d))
                guard let m = try? CheckedSize.product([count, Int(d)], "elements"), m <= 1 << 48 else { throw GGUFError.malformed(url, reason: "tensor \(name) has too many elements") }
                count = m
            }
            let type = try r.u32("the type of tensor \(name)")
            let offset = try r.u64("the offset of tensor \(name)")
            guard let (blockValues, blockBytes) = Self.blockSizes[type] else {
                throw GGUFError.unknownTensorType(url, tensor: name, typeID: type)
            }
            guard dims[0] % blockValues == 0 else {
                throw GGUFError.malformed(url, reason: "tensor \(name): row length \(dims[0]) is not a multiple of its \(Self.typeNames[type] ?? "?") block size \(blockValues)")
            }
            guard offset % UInt64(align) == 0, offset <= UInt64(Int.max / 2) else {
                throw GGUFError.malformed(url, reason: "tensor \(name): data offset \(offset) is not a multiple of the alignment \(align)")
            }
            guard seen.insert(name).inserted else { throw GGUFError.malformed(url, reason: "tensor \(name) appears twice") }
            pending.append(Pending(name: name, dims: dims, type: type, offset: Int(offset), bytes: count / blockValues * blockBytes))
        }
        let dataStart = (r.offset + align - 1) / align * align
        var infos: [String: GGUFTensorInfo] = [:]
        infos.reserveCapacity(pending.count)
        for t in pending {
            let start = dataStart + t.offset
            guard start <= size, t.bytes <= size - start else {
                throw GGUFError.truncated(url, what: "tensor \(t.name) (\(t.bytes) bytes)", offset: start, fileSize: size)
            }
            infos[t.name] = GGUFTensorInfo(name: t.name, dims: t.dims, typeID: t.type, dtype: Self.computeTypes[t.type],
                                           data: p + start, byteCount: t.bytes)
        }
        self.version = version
        self.alignment = align
        self.metadata = meta
        self.tensorNames = pending.map(\.name)
        self.tensors = infos
        self.fileSize = size
        self.headerBytes = r.offset
        self.bytes = bytes
    }

    /// The bytes before the data section: identifies the model (metadata and tensor layout)
    /// without reading the weights.
    public var headerData: Data { Data(bytes: bytes.base, count: headerBytes) }

    /// The ggml type name of a type id.
    public static func typeName(_ id: UInt32) -> String { typeNames[id] ?? "type \(id)" }

    // MARK: typed metadata access

    func require(_ key: String) throws -> GGUFValue {
        guard let v = metadata[key] else { throw GGUFError.missingKey(url, key: key) }
        return v
    }

    public func optionalString(_ key: String) throws -> String? {
        guard let v = metadata[key] else { return nil }
        guard case .string(let s) = v else { throw GGUFError.wrongKeyType(url, key: key, expected: "string", found: v.typeName) }
        return s
    }
    public func string(_ key: String) throws -> String {
        guard let s = try optionalString(key) else { throw GGUFError.missingKey(url, key: key) }
        return s
    }
    public func optionalInt(_ key: String) throws -> Int? {
        guard let v = metadata[key] else { return nil }
        guard let i = v.int else { throw GGUFError.wrongKeyType(url, key: key, expected: "integer", found: v.typeName) }
        return i
    }
    public func int(_ key: String) throws -> Int {
        guard let i = try optionalInt(key) else { throw GGUFError.missingKey(url, key: key) }
        return i
    }
    public func optionalDouble(_ key: String) throws -> Double? {
        guard let v = metadata[key] else { return nil }
        guard let d = v.double else { throw GGUFError.wrongKeyType(url, key: key, expected: "number", found: v.typeName) }
        return d
    }
    public func double(_ key: String) throws -> Double {
        guard let d = try optionalDouble(key) else { throw GGUFError.missingKey(url, key: key) }
        return d
    }
    public func optionalBool(_ key: String) throws -> Bool? {
        guard let v = metadata[key] else { return nil }
        guard case .bool(let b) = v else { throw GGUFError.wrongKeyType(url, key: key, expected: "bool", found: v.typeName) }
        return b
    }
    public func optionalStringArray(_ key: String) throws -> [String]? {
        guard let v = metadata[key] else { return nil }
        guard case .array(let a) = v else { throw GGUFError.wrongKeyType(url, key: key, expected: "array of strings", found: v.typeName) }
        return try a.map {
            guard case .string(let s) = $0 else { throw GGUFError.wrongKeyType(url, key: key, expected: "array of strings", found: "array of \($0.typeName)") }
            return s
        }
    }
    public func stringArray(_ key: String) throws -> [String] {
        guard let a = try optionalStringArray(key) else { throw GGUFError.missingKey(url, key: key) }
        return a
    }
    public func optionalIntArray(_ key: String) throws -> [Int]? {
        guard let v = metadata[key] else { return nil }
        guard case .array(let a) = v else { throw GGUFError.wrongKeyType(url, key: key, expected: "array of integers", found: v.typeName) }
        return try a.map {
            guard let i = $0.int else { throw GGUFError.wrongKeyType(url, key: key, expected: "array of integers", found: "array of \($0.typeName)") }
            return i
        }
    }
    public func intArray(_ key: String) throws -> [Int] {
        guard let a = try optionalIntArray(key) else { throw GGUFError.missingKey(url, key: key) }
        return a
    }
    public func floatArray(_ key: String) throws -> [Float] {
        let v = try require(key)
        guard case .array(let a) = v else { throw GGUFError.wrongKeyType(url, key: key, expected: "array of numbers", found: v.typeName) }
        return try a.map {
            guard let d = $0.double else { throw GGUFError.wrongKeyType(url, key: key, expected: "array of numbers", found: "array of \($0.typeName)") }
            return Float(d)
        }
    }

    /// The tensor called `name` with a type Farside computes on.
    public func tensor(_ name: String) throws -> (info: GGUFTensorInfo, dtype: DType) {
        guard let t = tensors[name] else { throw GGUFError.missingTensor(url, tensor: name) }
        guard let d = t.dtype else { throw GGUFError.unsupportedTensorType(url, tensor: name, type: Self.typeName(t.typeID)) }
        return (t, d)
    }
}

/// A bounds-checked little-endian cursor over the mapping.
private struct Reader {
    let base: UnsafeRawPointer
    let size: Int
    let url: URL
    var offset = 0

    mutating func need(_ n: Int, _ what: @autoclosure () -> String) throws {
        guard n >= 0, n <= size - offset else {
            throw GGUFError.truncated(url, what: what(), offset: offset, fileSize: size)
        }
    }
    mutating func bytes(_ n: Int, _ what: @autoclosure () -> String) throws -> UnsafeRawBufferPointer {
        try need(n, what())
        defer { offset += n }
        return UnsafeRawBufferPointer(start: base + offset, count: n)
    }
    mutating func load<T: FixedWidthInteger>(_ t: T.Type, _ what: @autoclosure () -> String) throws -> T {
        try need(MemoryLayout<T>.size, what())
        defer { offset += MemoryLayout<T>.size }
        return T(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: T.self))
    }
    mutating func u32(_ what: @autoclosure () -> String) throws -> UInt32 { try load(UInt32.self, what()) }
    mutating func u64(_ what: @autoclosure () -> String) throws -> UInt64 { try load(UInt64.self, what()) }
    mutating func string(_ what: @autoclosure () -> String) throws -> String {
        let n = try u64("the length of " + what())
        guard n <= UInt64(size - offset) else { throw GGUFError.truncated(url, what: what() + " (\(n) bytes)", offset: offset, fileSize: size) }
        let b = try bytes(Int(n), what())
        return String(decoding: b, as: UTF8.self)
    }

    mutating func value(type: UInt32, key: String, depth: Int) throws -> GGUFValue {
        let what = "the value of metadata key \(key)"
        switch type {
        case 0: return .uint8(try load(UInt8.self, what))
        case 1: return .int8(try load(Int8.self, what))
        case 2: return .uint16(try load(UInt16.self, what))
        case 3: return .int16(try load(Int16.self, what))
        case 4: return .uint32(try load(UInt32.self, what))
        case 5: return .int32(try load(Int32.self, what))
        case 6: return .float32(Float(bitPattern: try load(UInt32.self, what)))
        case 7:
            let b = try load(UInt8.self, what)
            guard b <= 1 else { throw GGUFError.malformed(url, reason: "metadata key \(key): bool byte \(b) is neither 0 nor 1") }
            return .bool(b == 1)
        case 8: return .string(try string(what))
        case 9:
            guard depth < GGUFFile.maxNesting else { throw GGUFError.malformed(url, reason: "metadata key \(key): arrays nested too deeply") }
            let elem = try u32("the element type of " + what)
            let n = try u64("the length of " + what)
            // Every element takes at least one byte: a longer array cannot fit in the file.
            guard n <= UInt64(size - offset) else { throw GGUFError.truncated(url, what: what + " (\(n) elements)", offset: offset, fileSize: size) }
            var out: [GGUFValue] = []
            out.reserveCapacity(Int(n))
            for _ in 0..<Int(n) { out.append(try value(type: elem, key: key, depth: depth + 1)) }
            return .array(out)
        case 10: return .uint64(try load(UInt64.self, what))
        case 11: return .int64(try load(Int64.self, what))
        case 12: return .float64(Double(bitPattern: try load(UInt64.self, what)))
        default: throw GGUFError.malformed(url, reason: "metadata key \(key) has unknown value type \(type)")
        }
    }
}
