import Foundation

/// Writes GGUF v3 files: metadata in the given order, then tensor infos and data aligned to
/// `general.alignment` (32 unless the metadata says otherwise). Used by tests and tools that
/// make small models; tensors are given as raw bytes already in their ggml type's layout.
public struct GGUFWriter {
    public struct Tensor {
        public var name: String
        /// ggml order: `dims[0]` is the innermost dimension.
        public var dims: [Int]
        public var typeID: UInt32
        public var bytes: [UInt8]
        public init(name: String, dims: [Int], typeID: UInt32, bytes: [UInt8]) {
            self.name = name; self.dims = dims; self.typeID = typeID; self.bytes = bytes
        }
    }

    public var metadata: [(String, GGUFValue)] = []
    public var tensors: [Tensor] = []
    public init() {}

    /// An fp32 tensor from values (ggml dims, innermost first).
    public mutating func addF32(_ name: String, dims: [Int], values: [Float]) {
        var b = [UInt8]()
        b.reserveCapacity(values.count * 4)
        for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { b += $0 } }
        tensors.append(Tensor(name: name, dims: dims, typeID: 0, bytes: b))
    }

    /// The file's bytes.
    public func encode() -> [UInt8] {
        var out: [UInt8] = Array("GGUF".utf8)
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func str(_ s: String) { u64(UInt64(s.utf8.count)); out += Array(s.utf8) }
        func typeID(_ v: GGUFValue) -> UInt32 {
            switch v {
            case .uint8: return 0
            case .int8: return 1
            case .uint16: return 2
            case .int16: return 3
            case .uint32: return 4
            case .int32: return 5
            case .float32: return 6
            case .bool: return 7
            case .string: return 8
            case .array: return 9
            case .uint64: return 10
            case .int64: return 11
            case .float64: return 12
            }
        }
        func value(_ v: GGUFValue) {
            switch v {
            case .uint8(let x): out.append(x)
            case .int8(let x): out.append(UInt8(bitPattern: x))
            case .uint16(let x): withUnsafeBytes(of: x.littleEndian) { out += $0 }
            case .int16(let x): withUnsafeBytes(of: x.littleEndian) { out += $0 }
            case .uint32(let x): u32(x)
            case .int32(let x): withUnsafeBytes(of: x.littleEndian) { out += $0 }
            case .float32(let x): u32(x.bitPattern)
            case .bool(let x): out.append(x ? 1 : 0)
            case .string(let s): str(s)
            case .array(let a):
                u32(a.first.map(typeID) ?? 4)
                u64(UInt64(a.count))
                for e in a { value(e) }
            case .uint64(let x): u64(x)
            case .int64(let x): withUnsafeBytes(of: x.littleEndian) { out += $0 }
            case .float64(let x): u64(x.bitPattern)
            }
        }
        let align = metadata.first { $0.0 == "general.alignment" }?.1.int ?? 32
        u32(3)
        u64(UInt64(tensors.count))
        u64(UInt64(metadata.count))
        for (k, v) in metadata { str(k); u32(typeID(v)); value(v) }
        var offset = 0
        var offsets: [Int] = []
        for t in tensors {
            offsets.append(offset)
            offset = (offset + t.bytes.count + align - 1) / align * align
        }
        for (t, o) in zip(tensors, offsets) {
            str(t.name)
            u32(UInt32(t.dims.count))
            for d in t.dims { u64(UInt64(d)) }
            u32(t.typeID)
            u64(UInt64(o))
        }
        while out.count % align != 0 { out.append(0) }
        let dataStart = out.count
        for (t, o) in zip(tensors, offsets) {
            while out.count < dataStart + o { out.append(0) }
            out += t.bytes
        }
        return out
    }

    public func write(to url: URL) throws {
        try Data(encode()).write(to: url)
    }
}
