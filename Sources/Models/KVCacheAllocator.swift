import Foundation
import Kernels

/// Why paged KV storage could not be set up or grown.
public enum KVCacheError: Error, CustomStringConvertible, Equatable {
    case invalidBlockSize(Int)
    case budgetTooSmall(budget: Int, blockBytes: Int, blockSize: Int)
    case budgetTooLarge(budget: Int, blockBytes: Int)
    case outOfBlocks(needed: Int, free: Int)
    case cannotReserve(bytes: Int)
    /// `dtype` cannot store a row piece of `width` values that layer `layer`'s attention reads on its own.
    case unsupportedDType(KVDType, layer: Int, width: Int)
    /// A sequence longer than the budget could not get its file in the disk tier's directory.
    case streamFile(path: String, reason: String)
    /// Reading or writing a streamed sequence's file failed (a full disk, an I/O error).
    case streamIO(String)

    public var description: String {
        switch self {
        case .invalidBlockSize(let n):
            return "the KV block size must be in 1...4096 positions, got \(n)"
        case let .budgetTooSmall(budget, blockBytes, size):
            return "a KV budget of \(budget) bytes holds no block: one block of \(size) positions takes \(blockBytes) bytes for this model; raise --kv-budget or lower --kv-block-size"
        case let .budgetTooLarge(budget, blockBytes):
            return "a KV budget of \(budget) bytes makes more than 2^31 blocks of \(blockBytes) bytes; lower --kv-budget or raise --kv-block-size"
        case .cannotReserve(let bytes):
            return "could not reserve \(bytes) bytes of memory for the KV cache; lower --kv-budget"
        case let .unsupportedDType(dtype, layer, width):
            return "--kv-dtype \(dtype) stores values in blocks of \(dtype.groupValues), but attention in layer \(layer) of this model "
                + "reads rows in pieces of \(width) values (a head, the latent or the rotary key); use --kv-dtype "
                + KVDType.allCases.filter { width % $0.groupValues == 0 }.map(\.rawValue).joined(separator: ", ")
        case let .streamFile(path, reason):
            return "cannot create \(path) for a sequence longer than --kv-budget: \(reason)"
        case .streamIO(let reason):
            return "reading or writing a sequence's KV in the --kv-disk directory failed: \(reason)"
        case let .outOfBlocks(needed, free):
            return "the KV cache needs \(needed) more blocks but \(free) are free; raise --kv-budget"
        }
    }
}

/// The paged KV cache's manager (vLLM v1's `KVCacheManager` over its `BlockPool`): one storage
/// of `pool.blockCount` blocks of `blockSize` positions for every layer, within a byte budget,
/// handed out to sequences (`PagedKVCache`, each with its block table).
///
/// - `sequence(reusing:upTo:)` starts a sequence on the longest prefix of its tokens whose blocks
///   are cached (full blocks by chained hash, then a partly filled last block), sharing them.
/// - `reserve(_:upTo:)` allocates the slots of a step, copying a shared or cached last block
///   before it is written (copy-on-write), so sequences sharing blocks stay independent.
/// - `cacheFullBlocks(_:tokens:)` registers blocks as they fill; `free(_:tokens:)` releases a
///   sequence's blocks, which stay cached (LRU) until their space is needed.
/// - With a `disk` tier, every full block is also written to a file as it fills, and a prefix
///   block no longer in RAM is read back from there (after a restart too).
///
/// Not thread-safe: one engine thread plans and runs steps.
public final class KVCacheAllocator {
    /// Positions per block (`--kv-block-size`).
    public let blockSize: Int
    /// Reference counts, free queue and prefix-cache map of the blocks.
    public let pool: BlockPool
    /// Root of every block hash: KV of another model never matches.
    public let fingerprint: UInt64
    /// Bytes one block takes (all layers), as stored: the budget counts these.
    public let bytesPerBlock: Int
    /// How rows are stored (`--kv-dtype`).
    public let dtype: KVDType
    let widths: [(Int, Int)]
    /// Per layer, where its `a` and `b` rows start inside a block (bytes).
    let offsets: [(Int, Int)]
    /// Bytes per block.
    let blockStride: Int
    let storage: UnsafeMutableRawPointer
    /// Where full blocks are also kept, and looked for when not in RAM (`--kv-disk`); its layout
    /// must be `diskLayout`. Set before the first sequence.
    public var disk: KVDiskTier? {
        didSet { precondition(disk.map { $0.layout == diskLayout } ?? true, "a disk tier for another block layout") }
    }

    /// Storage for as many blocks as `budgetBytes` holds. `widths[l]` is layer `l`'s `(widthA,
    /// widthB)` values per position, stored as `dtype` (which the caller has checked suits the
    /// model: `DecoderModel.checkKVDType`). The memory is reserved, not touched: pages become
    /// resident as blocks are first written. Throws when the block size is out of range or the
    /// budget holds no block.
    public init(widths: [(Int, Int)], dtype: KVDType = .f32, blockSize: Int, budgetBytes: Int, fingerprint: UInt64) throws {
        guard (1...4096).contains(blockSize) else { throw KVCacheError.invalidBlockSize(blockSize) }
        self.blockSize = blockSize
        self.widths = widths
        self.dtype = dtype
        var offsets: [(Int, Int)] = []
        var o = 0
        for (wa, wb) in widths {
            offsets.append((o, o + blockSize * dtype.bytes(wa)))
            o += blockSize * (dtype.bytes(wa) + dtype.bytes(wb))
        }
        self.offsets = offsets
        // f32 rows are read as Floats, so a block starts on a 4-byte boundary.
        blockStride = max((o + 3) & ~3, 4)
        bytesPerBlock = blockStride
        let count = max(budgetBytes, 0) / bytesPerBlock
        guard count >= 1 else {
            throw KVCacheError.budgetTooSmall(budget: budgetBytes, blockBytes: bytesPerBlock, blockSize: blockSize)
        }
        guard count < Int(Int32.max) else { throw KVCacheError.budgetTooLarge(budget: budgetBytes, blockBytes: bytesPerBlock) }
        pool = BlockPool(blockCount: count)
        self.fingerprint = fingerprint
        // malloc, not `allocate`, so a budget the system refuses is an error rather than a trap.
        guard let raw = malloc(count * bytesPerBlock) else { throw KVCacheError.cannotReserve(bytes: count * bytesPerBlock) }
        // Bound to Float for an f32 cache's reads; the other types only load and store bytes.
        raw.bindMemory(to: Float.self, capacity: count * blockStride / 4)
        storage = raw
    }

    deinit { releaseStorage(storage) }

    /// Bytes one position takes over all layers, as stored.
    public var bytesPerPosition: Int { widths.reduce(0) { $0 + dtype.bytes($1.0) + dtype.bytes($1.1) } }

    /// Blocks that hold `positions` positions.
    public func blocks(forPositions positions: Int) -> Int { (positions + blockSize - 1) / blockSize }

    /// Bytes of the blocks sequences hold now.
    public var usedBytes: Int { pool.usedCount * bytesPerBlock }

    /// A new sequence holding the longest cached prefix of `tokens[..<limit]` (`length` says how
    /// many positions it starts with). Full blocks match by chained hash (vLLM's prefix caching);
    /// where the prefix ends inside a block, the cached block after the same parent that shares
    /// the most tokens with it lends its first rows: a finished sequence's partly filled last
    /// block, or a full block the prompt diverges from (or must stop in: its last token is
    /// computed for its logits). `reserve` copies such a block before writing into it. With a
    /// `disk` tier, a full block that is not in RAM is read back from its file when it is there.
    public func sequence(reusing tokens: [Int] = [], upTo limit: Int = 0) -> PagedKVCache {
        let seq = PagedKVCache(allocator: self)
        let limit = min(limit, tokens.count)
        var parent = fingerprint
        var hashes: [UInt64] = []
        // Each block is retained as it is found, so reading a later one from disk (which
        // allocates) cannot hand out an earlier one.
        while (seq.blockCount + 1) * blockSize <= limit {
            let toks = tokens[seq.blockCount * blockSize ..< (seq.blockCount + 1) * blockSize]
            let h = BlockHash.chain(parent: parent, tokens: toks)
            let key = BlockPool.Key(hash: h, parent: parent, tokens: Array(toks))
            if let b = pool.lookup(key) {
                pool.retain(b)
                seq.append(block: b)
            } else if let b = readFromDisk(key) {
                seq.append(block: b)
            } else {
                break
            }
            hashes.append(h)
            parent = h
        }
        var length = seq.blockCount * blockSize
        if length < limit,
           let (b, n) = pool.longestChild(of: parent, matching: tokens[length ..< min(length + blockSize, tokens.count)]) {
            pool.retain(b)
            seq.append(block: b)
            length += min(n, limit - length)
        }
        seq.start(length: length, hashes: hashes)
        return seq
    }

    /// `key`'s block read back from the disk tier into a newly allocated block (held once,
    /// registered in the prefix cache), or nil when it is not on disk, its file does not check
    /// out (and is removed), or no block is free.
    private func readFromDisk(_ key: BlockPool.Key) -> Int? {
        guard let disk, disk.contains(key), let b = pool.allocate() else { return nil }
        guard disk.load(key, into: storage + b * blockStride) else {
            pool.release(b)
            return nil
        }
        pool.register(b, key: key)
        return b
    }

    /// What this pool's blocks look like on disk: a block file must match it to be read.
    public var diskLayout: KVBlockFile.Layout {
        KVBlockFile.Layout(fingerprint: fingerprint, dtype: dtype, blockSize: blockSize, layers: widths.count, payloadBytes: blockStride)
    }

    /// Makes room for up to `count` more positions of `seq`, allocating blocks while any are free
    /// (evicting cached ones, least recently used first), and returns how many positions fit
    /// (0...count). A last block that is only partly filled and shared with another sequence or
    /// registered in the prefix cache is first copied to a private block (copy-on-write), so no
    /// other holder ever sees this sequence's new rows and the cached rows stay as they were.
    public func reserve(_ seq: PagedKVCache, upTo count: Int) -> Int {
        guard count > 0 else { return 0 }
        let used = seq.length % blockSize
        if used != 0 {
            let i = seq.length / blockSize, old = Int(seq.table[i])
            if pool.refCount(old) > 1 || pool.key(old) != nil {
                if let fresh = pool.allocate() {
                    (storage + fresh * blockStride).copyMemory(from: storage + old * blockStride, byteCount: blockStride)
                    pool.release(old)
                    seq.table[i] = Int32(fresh)
                } else if pool.refCount(old) == 1 {
                    // No block to copy to, and no one else holds it: the prefix cache forgets it
                    // and the sequence writes in place (else a pool its prefix fills could never
                    // admit it).
                    pool.unregister(old)
                } else {
                    return 0
                }
            }
        }
        let need = blocks(forPositions: seq.length + count)
        while seq.blockCount < need, let b = pool.allocate() { seq.append(block: b) }
        return min(count, seq.blockCount * blockSize - seq.length)
    }

    /// Registers `seq`'s blocks that have filled since the last call in the prefix cache.
    /// `tokens` are the sequence's tokens (at least its `length` first).
    public func cacheFullBlocks(_ seq: PagedKVCache, tokens: [Int]) {
        precondition(tokens.count >= seq.length, "a sequence's tokens must cover its KV")
        while seq.hashes.count < seq.length / blockSize {
            let i = seq.hashes.count
            let parent = i == 0 ? fingerprint : seq.hashes[i - 1]
            let toks = tokens[i * blockSize ..< (i + 1) * blockSize]
            let h = BlockHash.chain(parent: parent, tokens: toks)
            let key = BlockPool.Key(hash: h, parent: parent, tokens: Array(toks))
            let b = Int(seq.table[i])
            pool.register(b, key: key)
            // Written as it fills, not when evicted, so it outlives a killed server too.
            disk?.store(key, from: storage + b * blockStride)
            seq.hashes.append(h)
        }
    }

    /// Releases every block of `seq` (it is empty afterwards). With `tokens`, its blocks are
    /// cached first, a partly filled last block included, for later requests that share them.
    public func free(_ seq: PagedKVCache, tokens: [Int]? = nil) {
        if let tokens {
            cacheFullBlocks(seq, tokens: tokens)
            let rest = seq.length % blockSize
            if rest > 0 {
                let i = seq.length / blockSize, block = Int(seq.table[i])
                if pool.key(block) == nil {
                    let parent = i == 0 ? fingerprint : seq.hashes[i - 1]
                    let toks = tokens[i * blockSize ..< seq.length]
                    pool.register(block, key: .init(hash: BlockHash.chain(parent: parent, tokens: toks), parent: parent,
                                                    tokens: Array(toks)))
                }
            }
        }
        for i in 0..<seq.blockCount { pool.release(Int(seq.table[i])) }
        seq.clear()
    }

    /// Layer `layer`'s view of `seq`'s rows.
    func view(_ seq: PagedKVCache, layer: Int) -> KVLayerView {
        let (oa, ob) = offsets[layer]
        return KVLayerView(a: storage + oa, b: storage + ob, blockStride: blockStride, blocks: seq.table,
                           blockSize: blockSize, widthA: widths[layer].0, widthB: widths[layer].1, dtype: dtype)
    }
}

/// C's `free`, out of reach of `KVCacheAllocator.free(_:tokens:)`'s name inside the class.
private func releaseStorage(_ p: UnsafeMutableRawPointer) { free(p) }

/// One sequence's paged KV: its block table (PagedAttention's logical → physical block map)
/// over a `KVCacheAllocator`'s storage. Blocks are allocated as the sequence grows and may be
/// shared with other sequences through the prefix cache.
public final class PagedKVCache: KVStore {
    public let allocator: KVCacheAllocator
    /// Positions stored.
    public private(set) var length = 0
    /// Block table: storage block of each of the sequence's blocks.
    private(set) var table: UnsafeMutablePointer<Int32>
    private var tableCapacity = 8
    /// Blocks held (may exceed those `length` fills: reserved for the next step).
    public private(set) var blockCount = 0
    /// Chained hashes of the sequence's first full blocks (those already registered).
    var hashes: [UInt64] = []

    init(allocator: KVCacheAllocator) {
        self.allocator = allocator
        table = .allocate(capacity: tableCapacity)
    }

    deinit {
        for i in 0..<blockCount { allocator.pool.release(Int(table[i])) }
        table.deallocate()
    }

    /// Storage block of each of the sequence's blocks.
    public var blocks: [Int] { (0..<blockCount).map { Int(table[$0]) } }

    func append(block: Int) {
        if blockCount == tableCapacity {
            let bigger = UnsafeMutablePointer<Int32>.allocate(capacity: tableCapacity * 2)
            bigger.update(from: table, count: blockCount)
            table.deallocate()
            table = bigger
            tableCapacity *= 2
        }
        table[blockCount] = Int32(block)
        blockCount += 1
    }

    func start(length: Int, hashes: [UInt64]) {
        self.length = length
        self.hashes = hashes
    }

    func clear() {
        blockCount = 0
        length = 0
        hashes = []
    }

    /// Allocates room for `count` more positions (copy-on-write of a shared last block
    /// included), or throws `KVCacheError.outOfBlocks`, keeping the stored positions.
    public func reserve(additional count: Int) throws {
        let got = allocator.reserve(self, upTo: count)
        guard got == count else {
            throw KVCacheError.outOfBlocks(needed: allocator.blocks(forPositions: length + count) - blockCount,
                                           free: allocator.pool.freeCount)
        }
    }

    public func commit(_ count: Int) {
        precondition(length + count <= blockCount * allocator.blockSize, "commit past the reserved blocks")
        length += count
    }

    public func view(layer: Int) -> KVLayerView { allocator.view(self, layer: layer) }
}
