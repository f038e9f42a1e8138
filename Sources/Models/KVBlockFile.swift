import Kernels

/// Why a KV block file on disk is not one this server may read. Files on disk are outside input
/// (another model's, an older format, a crash mid-write, a flipped bit): any of these means the
/// file is ignored and removed, never read as KV.
public enum KVBlockFileError: Error, CustomStringConvertible, Equatable {
    case truncated(bytes: Int, expected: Int)
    case badMagic
    case unsupportedVersion(UInt32)
    /// A header field differs from this server's: `field` names it (fingerprint, dtype, …).
    case mismatch(field: String, found: String, expected: String)
    /// The tokens do not chain to the hash the file claims (a collision or a damaged header).
    case hashMismatch
    case badChecksum

    public var description: String {
        switch self {
        case let .truncated(bytes, expected):
            return "the KV block file has \(bytes) bytes, its header promises \(expected) (cut short by a crash or a full disk)"
        case .badMagic:
            return "not a farside KV block file (wrong magic)"
        case .unsupportedVersion(let v):
            return "KV block file format version \(v) is not \(KVBlockFile.version), the one this farside reads"
        case let .mismatch(field, found, expected):
            return "the KV block file's \(field) is \(found), this server's is \(expected) (another model or setting)"
        case .hashMismatch:
            return "the KV block file's tokens do not chain to its block hash"
        case .badChecksum:
            return "the KV block file's checksum does not match its contents (damaged on disk)"
        }
    }
}

/// The on-disk form of one full KV block (`--kv-disk`): a header that says exactly which KV it
/// holds, then the block's tokens, then its bytes as the pool stores them (every layer's `a`
/// and `b` rows). Little-endian throughout.
///
///     offset size  field
///          0    8  magic "FSKVBLK\0"
///          8    4  format version (1)
///         12    8  kv dtype name, NUL-padded ("f32", "q8_0", …)
///         20    4  block size (positions)
///         24    4  layer count
///         28    4  token count (== block size: only full blocks are stored)
///         32    8  model fingerprint (the root of the block hash chain)
///         40    8  block hash
///         48    8  parent block hash
///         56    8  payload bytes
///         64    8  checksum: FNV-1a 64 over the tokens and the payload, 8 bytes a step
///         72  8·n  tokens (Int64)
///    72+8·n     …  payload
///
/// A reader compares every header field with its own `Layout`, recomputes the block hash from
/// parent and tokens, and checks the checksum before any byte reaches the KV pool.
public enum KVBlockFile {
    public static let magic: [UInt8] = Array("FSKVBLK\0".utf8)
    public static let version: UInt32 = 1
    public static let fixedHeaderBytes = 72

    /// What a server's blocks look like: a file must match all of it to be read.
    public struct Layout: Equatable, Sendable {
        public let fingerprint: UInt64
        public let dtype: KVDType
        public let blockSize: Int
        public let layers: Int
        public let payloadBytes: Int

        public init(fingerprint: UInt64, dtype: KVDType, blockSize: Int, layers: Int, payloadBytes: Int) {
            self.fingerprint = fingerprint
            self.dtype = dtype
            self.blockSize = blockSize
            self.layers = layers
            self.payloadBytes = payloadBytes
        }

        /// Bytes before the payload.
        public var headerBytes: Int { KVBlockFile.fixedHeaderBytes + 8 * blockSize }
        /// Bytes of a whole file.
        public var fileBytes: Int { headerBytes + payloadBytes }
    }

    /// What a valid header says besides the layout: which block it is, and the payload's checksum.
    public struct Header: Equatable, Sendable {
        public let key: BlockPool.Key
        public let checksum: UInt64
    }

    /// The header (fixed part and tokens) of a file holding `key`'s block whose tokens and
    /// payload have checksum `checksum`.
    public static func header(_ layout: Layout, key: BlockPool.Key, checksum: UInt64) -> [UInt8] {
        precondition(key.tokens.count == layout.blockSize, "only full blocks are stored on disk")
        var out: [UInt8] = []
        out.reserveCapacity(layout.headerBytes)
        out += magic
        put32(version, &out)
        var name = Array(layout.dtype.rawValue.utf8.prefix(8))
        name += [UInt8](repeating: 0, count: 8 - name.count)
        out += name
        put32(UInt32(layout.blockSize), &out)
        put32(UInt32(layout.layers), &out)
        put32(UInt32(key.tokens.count), &out)
        put64(layout.fingerprint, &out)
        put64(key.hash, &out)
        put64(key.parent, &out)
        put64(UInt64(layout.payloadBytes), &out)
        put64(checksum, &out)
        for t in key.tokens { put64(UInt64(bitPattern: Int64(t)), &out) }
        return out
    }

    /// Reads and checks a header: `bytes` holds at least the file's first `layout.headerBytes`
    /// bytes and `fileBytes` is the whole file's size. Throws when anything differs from
    /// `layout`, the tokens do not chain to the hash, or the size is not header + payload.
    /// The checksum is only returned: checking it needs the payload (`checksum(tokens:payload:)`).
    public static func parseHeader(_ bytes: UnsafeRawBufferPointer, fileBytes: Int, layout: Layout) throws(KVBlockFileError) -> Header {
        guard bytes.count >= fixedHeaderBytes else { throw .truncated(bytes: fileBytes, expected: layout.fileBytes) }
        guard Array(bytes[0..<8]) == magic else { throw .badMagic }
        let v = get32(bytes, 8)
        guard v == version else { throw .unsupportedVersion(v) }
        let nameBytes = Array(bytes[12..<20].prefix { $0 != 0 })
        let name = String(decoding: nameBytes, as: UTF8.self)
        guard name == layout.dtype.rawValue else { throw .mismatch(field: "kv dtype", found: name, expected: layout.dtype.rawValue) }
        func check(_ field: String, _ found: UInt64, _ expected: Int) throws(KVBlockFileError) {
            guard found == UInt64(expected) else { throw .mismatch(field: field, found: "\(found)", expected: "\(expected)") }
        }
        try check("block size", UInt64(get32(bytes, 20)), layout.blockSize)
        try check("layer count", UInt64(get32(bytes, 24)), layout.layers)
        try check("token count", UInt64(get32(bytes, 28)), layout.blockSize)
        let fp = get64(bytes, 32)
        guard fp == layout.fingerprint else {
            throw .mismatch(field: "model fingerprint", found: hex(fp), expected: hex(layout.fingerprint))
        }
        try check("payload size", get64(bytes, 56), layout.payloadBytes)
        guard fileBytes == layout.fileBytes, bytes.count >= layout.headerBytes else {
            throw .truncated(bytes: fileBytes, expected: layout.fileBytes)
        }
        let hash = get64(bytes, 40), parent = get64(bytes, 48)
        var tokens: [Int] = []
        tokens.reserveCapacity(layout.blockSize)
        for i in 0..<layout.blockSize { tokens.append(Int(Int64(bitPattern: get64(bytes, fixedHeaderBytes + 8 * i)))) }
        guard BlockHash.chain(parent: parent, tokens: tokens[...]) == hash else { throw .hashMismatch }
        return Header(key: .init(hash: hash, parent: parent, tokens: tokens), checksum: get64(bytes, 64))
    }

    /// The checksum the header carries: FNV-1a 64 over the tokens' bytes, then over the payload,
    /// taking 8 bytes a step (a byte a step is 8 times slower, and a block is most of a megabyte
    /// read on the path of a request's first token).
    public static func checksum(tokens: UnsafeRawBufferPointer, payload: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for part in [tokens, payload] {
            let words = part.count / 8
            for i in 0..<words {
                h = (h ^ UInt64(littleEndian: part.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self))) &* 0x100_0000_01b3
            }
            for i in (8 * words)..<part.count { h = (h ^ UInt64(part[i])) &* 0x100_0000_01b3 }
            h = (h ^ UInt64(part.count)) &* 0x100_0000_01b3
        }
        return h
    }

    /// The file name of the block hashed `hash` (16 hex digits), so a scan finds blocks by name.
    public static func name(_ hash: UInt64) -> String { hex(hash) + ".kvb" }

    static func hex(_ v: UInt64) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }

    private static func put32(_ v: UInt32, _ out: inout [UInt8]) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
    private static func put64(_ v: UInt64, _ out: inout [UInt8]) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
    private static func get32(_ b: UnsafeRawBufferPointer, _ at: Int) -> UInt32 {
        UInt32(littleEndian: b.loadUnaligned(fromByteOffset: at, as: UInt32.self))
    }
    private static func get64(_ b: UnsafeRawBufferPointer, _ at: Int) -> UInt64 {
        UInt64(littleEndian: b.loadUnaligned(fromByteOffset: at, as: UInt64.self))
    }
}
