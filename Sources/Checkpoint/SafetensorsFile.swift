import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A memory-mapped `.safetensors` file (`PROT_READ`, `MAP_PRIVATE`; unmapped in `deinit`).
///
/// The layout is an 8-byte little-endian header length `N`, an `N`-byte JSON header mapping
/// tensor names to `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets relative to the
/// data section that follows the header) plus an optional `"__metadata__"` object of strings,
/// then the tensor data. Every field of the header is validated before any `TensorInfo` is
/// handed out, so each tensor's bytes lie inside the mapping and match its dtype and shape;
/// a malformed file produces a `CheckpointError`, never a trap.
public final class SafetensorsFile: @unchecked Sendable {
    /// Headers larger than this are rejected as corrupt (the reference implementation's limit).
    public static let maxHeaderBytes = 100_000_000

    /// The file's location.
    public let url: URL
    /// Every tensor in the file, by name.
    public let tensors: [String: TensorInfo]
    /// The header's `"__metadata__"` object (empty when absent).
    public let metadata: [String: String]
    /// Size of the file in bytes.
    public let fileSize: Int

    /// The mapping (or copy) every tensor's `data` points into.
    private let bytes: FileBytes

    /// Maps `url` and validates its header.
    public convenience init(url: URL) throws(CheckpointError) {
        try self.init(bytes: SafetensorsFile.map(url), url: url)
    }

    /// Validates safetensors bytes already in memory (copied, so the tensors stay valid as long
    /// as this object); `url` only names them in errors. The same checks as a file on disk gets.
    public convenience init(data: Data, url: URL) throws(CheckpointError) {
        guard data.count >= 8 else { throw .fileTooSmall(url, size: data.count) }
        try self.init(bytes: FileBytes(copying: data), url: url)
    }

    private init(bytes: FileBytes, url: URL) throws(CheckpointError) {
        let parsed = try SafetensorsFile.parse(bytes.base, size: bytes.count, url: url)
        self.url = url
        self.bytes = bytes
        self.fileSize = bytes.count
        self.tensors = parsed.tensors
        self.metadata = parsed.metadata
    }

    /// Names of all tensors, sorted.
    public var tensorNames: [String] { tensors.keys.sorted() }

    /// The tensor called `name`, or nil.
    public subscript(name: String) -> TensorInfo? { tensors[name] }

    // MARK: mapping

    private static func map(_ url: URL) throws(CheckpointError) -> FileBytes {
        let fd = url.withUnsafeFileSystemRepresentation { path -> Int32 in
            guard let path else { return -1 }
            return open(path, O_RDONLY | O_CLOEXEC)
        }
        guard fd >= 0 else {
            let e = errno
            if e == ENOENT || e == ENOTDIR { throw .fileNotFound(url, role: "safetensors file") }
            throw .unreadableFile(url, reason: String(cString: strerror(e)))
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .unreadableFile(url, reason: String(cString: strerror(errno))) }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw .unreadableFile(url, reason: "not a regular file")
        }
        guard let size = Int(exactly: st.st_size), size >= 8 else {
            throw .fileTooSmall(url, size: Int(st.st_size))
        }
        let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw .unreadableFile(url, reason: "mmap of \(size) bytes failed: \(String(cString: strerror(errno)))")
        }
        return FileBytes(mapping: p, count: size)
    }

    // MARK: header validation

    private static func parse(_ base: UnsafeRawPointer, size: Int, url: URL) throws(CheckpointError)
        -> (tensors: [String: TensorInfo], metadata: [String: String])
    {
        let n64 = UInt64(littleEndian: base.loadUnaligned(as: UInt64.self))
        guard n64 <= UInt64(maxHeaderBytes), Int(n64) <= size - 8 else {
            throw .invalidHeaderLength(url, headerLength: n64, fileSize: size)
        }
        let n = Int(n64)
        let dataStart = 8 + n
        let dataSize = size - dataStart

        // The header: JSON, optionally padded with spaces (the reference writer) or NULs.
        var bytes = UnsafeRawBufferPointer(start: base + 8, count: n)
        while let last = bytes.last, last == 0 || last == 0x20 || last == 0x0A || last == 0x0D || last == 0x09 {
            bytes = UnsafeRawBufferPointer(rebasing: bytes.dropLast())
        }
        guard !bytes.isEmpty else { throw .invalidHeader(url, reason: "the \(n)-byte header is empty") }
        let json: Any
        do {
            json = try JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])
        } catch {
            throw .invalidHeader(url, reason: "not valid JSON (\(jsonFailureReason(error)))")
        }
        guard let header = json as? [String: Any] else {
            throw .invalidHeader(url, reason: "expected a JSON object, found \(JSONValue(json).kindName)")
        }

        var metadata: [String: String] = [:]
        var tensors: [String: TensorInfo] = [:]
        tensors.reserveCapacity(header.count)
        var ranges: [(range: Range<Int>, name: String)] = []
        ranges.reserveCapacity(header.count)

        for (name, entry) in header {
            if name == "__metadata__" {
                switch JSONValue(entry) {
                case .null: continue
                case .object(let m):
                    for (k, v) in m {
                        guard case .string(let s) = JSONValue(v) else {
                            throw .invalidHeader(url, reason: "__metadata__ value for \"\(k)\" must be a string, "
                                + "found \(JSONValue(v).brief)")
                        }
                        metadata[k] = s
                    }
                default:
                    throw .invalidHeader(url, reason: "__metadata__ must be an object of strings, "
                        + "found \(JSONValue(entry).kindName)")
                }
                continue
            }
            let info = try tensorEntry(name, entry, base: base + dataStart, dataSize: dataSize, url: url)
            tensors[name] = info.tensor
            if !info.range.isEmpty { ranges.append((info.range, name)) }
        }

        // Non-overlap: sort by start; each non-empty range must start at or after the furthest
        // end seen so far.
        ranges.sort { $0.range.lowerBound != $1.range.lowerBound
            ? $0.range.lowerBound < $1.range.lowerBound : $0.name < $1.name }
        var furthest: (end: Int, index: Int)?
        for (i, r) in ranges.enumerated() {
            if let f = furthest, r.range.lowerBound < f.end {
                let prev = ranges[f.index]
                throw .overlappingTensors(url, first: prev.name, firstRange: prev.range,
                                          second: r.name, secondRange: r.range)
            }
            if furthest == nil || r.range.upperBound > furthest!.end { furthest = (r.range.upperBound, i) }
        }
        return (tensors, metadata)
    }

    private static func tensorEntry(_ name: String, _ entry: Any, base: UnsafeRawPointer, dataSize: Int, url: URL)
        throws(CheckpointError) -> (tensor: TensorInfo, range: Range<Int>)
    {
        guard case .object(let e) = JSONValue(entry) else {
            throw .invalidTensorEntry(url, tensor: name, reason: "expected an object with dtype, shape and "
                + "data_offsets, found \(JSONValue(entry).brief)")
        }
        // dtype
        guard let dtypeValue = e["dtype"] else {
            throw .invalidTensorEntry(url, tensor: name, reason: "missing \"dtype\"")
        }
        guard case .string(let dtypeName) = JSONValue(dtypeValue) else {
            throw .invalidTensorEntry(url, tensor: name, reason: "\"dtype\" must be a string, found \(JSONValue(dtypeValue).brief)")
        }
        guard let dtype = TensorDType(rawValue: dtypeName) else {
            throw .unsupportedDType(dtypeName, tensor: name, file: url, allowed: [])
        }
        // shape
        guard let shapeValue = e["shape"] else {
            throw .invalidTensorEntry(url, tensor: name, reason: "missing \"shape\"")
        }
        guard case .array(let shapeItems) = JSONValue(shapeValue) else {
            throw .invalidTensorEntry(url, tensor: name, reason: "\"shape\" must be an array of non-negative integers, "
                + "found \(JSONValue(shapeValue).brief)")
        }
        var shape: [Int] = []
        shape.reserveCapacity(shapeItems.count)
        for item in shapeItems {
            let v = JSONValue(item)
            guard case .integer(let d) = v, d >= 0 else {
                throw .invalidTensorEntry(url, tensor: name, reason: "\"shape\" must be an array of non-negative integers, "
                    + "found \(JSONValue(shapeValue).brief)")
            }
            shape.append(d)
        }
        guard let (_, byteCount) = checkedByteCount(shape, elementSize: dtype.byteSize) else {
            throw .invalidTensorEntry(url, tensor: name, reason: "shape \(shape) of \(dtype.rawValue) has more bytes than "
                + "fit in a 64-bit integer (product overflows)")
        }
        // data_offsets
        guard let offsetsValue = e["data_offsets"] else {
            throw .invalidTensorEntry(url, tensor: name, reason: "missing \"data_offsets\"")
        }
        let offsetsJSON = JSONValue(offsetsValue)
        guard case .array(let offs) = offsetsJSON, offs.count == 2,
              case .integer(let begin) = JSONValue(offs[0]), case .integer(let end) = JSONValue(offs[1]),
              begin >= 0, begin <= end
        else {
            throw .invalidTensorEntry(url, tensor: name, reason: "\"data_offsets\" must be [begin, end] with "
                + "0 <= begin <= end, found \(offsetsJSON.brief)")
        }
        guard end - begin == byteCount else {
            throw .byteCountMismatch(url, tensor: name, dtype: dtype, shape: shape, expected: byteCount, found: end - begin)
        }
        guard end <= dataSize else {
            throw .tensorOutOfBounds(url, tensor: name, end: end, dataSize: dataSize)
        }
        let info = TensorInfo(name: name, dtype: dtype, shape: shape, data: base + begin, byteCount: byteCount, file: url)
        return (info, begin ..< end)
    }
}
