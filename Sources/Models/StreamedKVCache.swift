import Foundation
import Kernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One sequence's KV kept in a file, with one layer at a time in RAM: what lets a sequence whose
/// KV is larger than the whole `--kv-budget` run (`--kv-disk`), streaming its rows from disk.
///
/// The file holds every layer's `a` and `b` rows in regions of `capacity` positions (the model's
/// context; the file is sparse, so only written rows take space). A step's first `view(layer:)`
/// of a new layer writes the rows the step added to the previous layer back to the file and
/// reads the new layer's rows `0 ..< length` into one staging buffer, which attention then reads
/// as a contiguous cache: the same rows in the same order as `KVCache`, so the same logits bit
/// for bit. `commit` writes the last layer's new rows. RAM: one layer's rows of the sequence
/// (1/layers of its KV); each step reads the whole KV back (from the page cache while it fits).
///
/// Contract (as `DecoderModel.forward` calls it): within a step, layers are visited in
/// increasing order, and a layer's first `view(layer:)` (the rows' stores) happens on one
/// thread before the concurrent reads of that layer. The file is unlinked once open, so it
/// vanishes with the sequence, or with the process however it ends.
public final class StreamedKVCache: KVStore {
    /// How rows are stored.
    public let dtype: KVDType
    /// Positions the file has room for (the model's context).
    public let capacity: Int
    /// Positions stored (the next token's position).
    public private(set) var length = 0
    /// Why a read or write of the file failed, if one did: the rows of the step that saw it may
    /// be wrong, and the next `reserve` throws.
    public private(set) var failure: String?
    /// Bytes read from and written to the file.
    public private(set) var bytesRead = 0
    public private(set) var bytesWritten = 0

    private let widths: [(Int, Int)]
    private let rowBytes: [(Int, Int)]
    /// File offset of each layer's `a` rows; its `b` rows follow `capacity` `a` rows later.
    private let offsets: [Int]
    private let fd: Int32
    private var staging: UnsafeMutableRawPointer
    /// Positions the staging buffer holds per layer.
    private var stagingPositions: Int
    private let maxRowBytes: Int
    /// The layer whose rows are in `staging` (-1: none).
    private var current = -1
    /// Positions reserved for the step in flight.
    private var pending = 0
    private let table: UnsafeMutablePointer<Int32>

    /// A sequence of `widths[l]` values per position in layer `l`, stored as `dtype`, of at most
    /// `capacity` positions, in a new file in `directory`. Throws when the file cannot be made.
    public init(widths: [(Int, Int)], dtype: KVDType, capacity: Int, directory: String) throws {
        self.widths = widths
        self.dtype = dtype
        self.capacity = max(capacity, 1)
        rowBytes = widths.map { (dtype.bytes($0.0), dtype.bytes($0.1)) }
        var o = 0
        var offsets: [Int] = []
        for (ra, rb) in rowBytes {
            offsets.append(o)
            o += self.capacity * (ra + rb)
        }
        self.offsets = offsets
        maxRowBytes = max(rowBytes.map { $0.0 + $0.1 }.max() ?? 4, 4)
        let path = directory + "/stream-\(getpid())-\(UUID().uuidString).part"
        let fd = open(path, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw KVCacheError.streamFile(path: path, reason: String(cString: strerror(errno))) }
        unlink(path)
        self.fd = fd
        stagingPositions = 256
        staging = Self.allocate(stagingPositions * maxRowBytes)
        table = .allocate(capacity: 1)
        table.initialize(to: 0)
    }

    deinit {
        close(fd)
        staging.deallocate()
        table.deallocate()
        readErrors.deallocate()
    }

    private static func allocate(_ bytes: Int) -> UnsafeMutableRawPointer {
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 4), alignment: 64)
        p.bindMemory(to: Float.self, capacity: max(bytes, 4) / 4)
        return p
    }

    /// Bytes one position takes over all layers, as stored.
    public var bytesPerPosition: Int { rowBytes.reduce(0) { $0 + $1.0 + $1.1 } }

    /// Bytes of RAM the sequence holds (its staging buffer: one layer's rows).
    public var residentBytes: Int { stagingPositions * maxRowBytes }

    public func reserve(additional count: Int) throws {
        if let failure { throw KVCacheError.streamIO(failure) }
        guard length + count <= capacity else { throw KVCacheError.outOfBlocks(needed: count, free: capacity - length) }
        if length + count > stagingPositions {
            var n = stagingPositions
            while n < length + count { n = min(n * 2, max(capacity, length + count)) }
            staging.deallocate()
            staging = Self.allocate(n * maxRowBytes)
            stagingPositions = n
            current = -1  // the last layer's rows were written back at `commit`: read again
        }
        pending = count
    }

    public func commit(_ count: Int) {
        precondition(count <= pending, "commit past the reserved positions")
        if current >= 0 { writeBack(current, count: count) }
        length += count
        pending = 0
    }

    public func view(layer: Int) -> KVLayerView {
        if layer != current {
            if current >= 0 { writeBack(current, count: pending) }
            readIn(layer)
            current = layer
        }
        let (ra, _) = rowBytes[layer]
        return KVLayerView(a: staging, b: staging + stagingPositions * ra, blockStride: 0, blocks: table, blockSize: Int.max,
                           widthA: widths[layer].0, widthB: widths[layer].1, dtype: dtype)
    }

    /// Writes layer `l`'s rows `length ..< length + count` from staging to the file.
    private func writeBack(_ l: Int, count: Int) {
        guard count > 0 else { return }
        let (ra, rb) = rowBytes[l]
        write(staging + length * ra, ra * count, at: offsets[l] + length * ra)
        write(staging + stagingPositions * ra + length * rb, rb * count, at: offsets[l] + capacity * ra + length * rb)
    }

    /// Reads layer `l`'s rows `0 ..< length` from the file into staging, on every core: one
    /// core's copy out of the page cache falls well short of the memory bandwidth (BENCHMARKS,
    /// "Streaming from the file"), and the copy is most of what a streamed decode step adds.
    private func readIn(_ l: Int) {
        guard length > 0 else { return }
        let (ra, rb) = rowBytes[l]
        let length = length, staging = staging, a = offsets[l], b = offsets[l] + capacity * ra, bBase = stagingPositions * ra
        let granule = max(256, (length + Self.readSlots - 1) / Self.readSlots)
        let errors = readErrors
        ThreadPool.shared.parallelFor(length, granularity: granule) { start, end in
            let n = end - start
            let e1 = Self.move(write: false, fd, staging + start * ra, ra * n, at: a + start * ra)
            let e2 = Self.move(write: false, fd, staging + bBase + start * rb, rb * n, at: b + start * rb)
            errors[start / granule] = e1 != 0 ? e1 : e2
        }
        for i in 0..<((length + granule - 1) / granule) where errors[i] != 0 {
            note(errors[i])
            errors[i] = 0
        }
        bytesRead += (ra + rb) * length
    }

    /// Chunks a layer's read is split into at most, and each chunk's outcome (0, an errno, or
    /// -1 for a file that ended early), kept for the sequence's life.
    private static let readSlots = 64
    private let readErrors: UnsafeMutablePointer<Int32> = {
        let p = UnsafeMutablePointer<Int32>.allocate(capacity: readSlots)
        p.initialize(repeating: 0, count: readSlots)
        return p
    }()

    /// `pwrite`s or `pread`s all `count` bytes at `offset` from or into `p`; 0, an errno, or -1
    /// when the file ends first.
    private static func move(write: Bool, _ fd: Int32, _ p: UnsafeMutableRawPointer, _ count: Int, at offset: Int) -> Int32 {
        var done = 0
        while done < count {
            let n = write ? pwrite(fd, p + done, count - done, off_t(offset + done)) : pread(fd, p + done, count - done, off_t(offset + done))
            if n < 0 && errno == EINTR { continue }
            if n < 0 { return errno }
            if n == 0 { return -1 }
            done += n
        }
        return 0
    }

    /// Keeps the first failure `move` reported (`code` ≠ 0).
    private func note(_ code: Int32) {
        guard failure == nil else { return }
        failure = code > 0 ? String(cString: strerror(code)) : "the sequence's KV file ended early"
    }

    private func write(_ p: UnsafeMutableRawPointer, _ count: Int, at offset: Int) {
        let code = Self.move(write: true, fd, p, count, at: offset)
        if code != 0 { return note(code) }
        bytesWritten += count
    }
}
