import Kernels

/// Where one layer of one sequence keeps its per-position rows, as attention reads them: rows
/// live in blocks of `blockSize` positions (PagedAttention, Kwon et al. 2023); block `i` of the
/// sequence is block `blocks[i]` of its storage, whose `a` rows start at `a + blocks[i] · blockStride`
/// bytes (and likewise `b`). A contiguous cache is the case of one block of unbounded size.
/// Rows are stored in `dtype` (`rowBytesA`, `rowBytesB` bytes each): `storeA`/`storeB` round a
/// computed fp32 row into place, attention reads them with `dtype`'s `KVRowFormat`.
///
/// Valid until the cache it came from next reserves or releases storage.
public struct KVLayerView {
    /// Layer's `a` rows in storage block 0 (GQA: keys; MLA: the normalised latent).
    public let a: UnsafeMutableRawPointer
    /// Layer's `b` rows in storage block 0 (GQA: values; MLA: the rotated shared key).
    public let b: UnsafeMutableRawPointer
    /// Bytes from one storage block to the next.
    public let blockStride: Int
    /// The sequence's block table: storage block of each of its blocks.
    public let blocks: UnsafePointer<Int32>
    /// Positions per block.
    public let blockSize: Int
    /// Values per `a` and `b` row.
    public let widthA: Int
    public let widthB: Int
    /// How the rows are stored.
    public let dtype: KVDType
    /// Bytes per `a` and `b` row.
    public let rowBytesA: Int
    public let rowBytesB: Int

    public init(a: UnsafeMutableRawPointer, b: UnsafeMutableRawPointer, blockStride: Int, blocks: UnsafePointer<Int32>,
                blockSize: Int, widthA: Int, widthB: Int, dtype: KVDType) {
        self.a = a; self.b = b; self.blockStride = blockStride; self.blocks = blocks; self.blockSize = blockSize
        self.widthA = widthA; self.widthB = widthB; self.dtype = dtype
        rowBytesA = dtype.bytes(widthA)
        rowBytesB = dtype.bytes(widthB)
    }

    /// The `a` rows of the sequence's block `i` (`blockSize` of them, `rowBytesA` bytes apart).
    @inline(__always) public func blockA(_ i: Int) -> UnsafeMutableRawPointer { a + Int(blocks[i]) * blockStride }
    /// The `b` rows of the sequence's block `i`.
    @inline(__always) public func blockB(_ i: Int) -> UnsafeMutableRawPointer { b + Int(blocks[i]) * blockStride }
    /// Position `p`'s stored `a` row.
    @inline(__always) public func rowA(_ p: Int) -> UnsafeMutableRawPointer { blockA(p / blockSize) + (p % blockSize) * rowBytesA }
    /// Position `p`'s stored `b` row.
    @inline(__always) public func rowB(_ p: Int) -> UnsafeMutableRawPointer { blockB(p / blockSize) + (p % blockSize) * rowBytesB }
    /// Stores `x[0..<widthA]`, rounded to `dtype`, as position `p`'s `a` row.
    @inline(__always) public func storeA(_ p: Int, _ x: UnsafePointer<Float>) { dtype.store(x, into: rowA(p), count: widthA) }
    /// Stores `x[0..<widthB]`, rounded to `dtype`, as position `p`'s `b` row.
    @inline(__always) public func storeB(_ p: Int, _ x: UnsafePointer<Float>) { dtype.store(x, into: rowB(p), count: widthB) }
}

/// One sequence's attention state as the model uses it: a forward step reserves room for its new
/// positions, every layer writes and reads rows through `view(layer:)`, and the step commits.
/// `KVCache` (contiguous, per sequence) and `PagedKVCache` (block table over a shared pool) are
/// the two kinds; they give bit-identical results, as attention visits rows in the same order.
public protocol KVStore: AnyObject {
    /// Positions already stored (the next token's position).
    var length: Int { get }
    /// Makes room for `count` more positions in every layer, or throws (`KVCacheError`) leaving
    /// the stored positions untouched.
    func reserve(additional count: Int) throws
    /// Marks `count` positions (already written by every layer) as stored.
    func commit(_ count: Int)
    /// Layer `layer`'s rows (after `reserve`, covering `length + count` positions).
    func view(layer: Int) -> KVLayerView
}

/// Per-sequence attention state in one contiguous buffer per layer: for every layer, the rows
/// each past position contributes. The reference the paged cache is tested against, and what
/// the one-sequence paths (`generate`, `chat`, `logits`) use.
///
/// A GQA layer stores keys and values (`2 · kvHeads · headDim` values per position); an MLA layer
/// stores only the compressed latent and the shared rotary key (`kv_lora_rank + qk_rope_head_dim`
/// values per position), which is what makes 256k-token contexts of DeepSeek/Kimi affordable.
/// Storage grows geometrically, so appends are amortised O(1) and need no per-token allocation.
public final class KVCache: KVStore {
    /// One layer's rows: `widthA` values per position in `a`, `widthB` in `b`, stored as `dtype`.
    /// GQA: a = keys, b = values. MLA: a = normalised latent `c_kv`, b = rotated `k_pe`.
    public final class Layer {
        public let widthA: Int
        public let widthB: Int
        public let dtype: KVDType
        public private(set) var capacity: Int
        public private(set) var a: UnsafeMutableRawPointer
        public private(set) var b: UnsafeMutableRawPointer

        /// Most positions it will ever hold: growth stops there.
        let limit: Int

        init(widthA: Int, widthB: Int, dtype: KVDType, capacity: Int, limit: Int) {
            self.limit = max(limit, 1)
            self.widthA = widthA
            self.widthB = widthB
            self.dtype = dtype
            self.capacity = max(min(capacity, self.limit), 1)
            a = Self.allocate(dtype.bytes(widthA) * self.capacity)
            b = Self.allocate(dtype.bytes(widthB) * self.capacity)
        }

        deinit {
            a.deallocate()
            b.deallocate()
        }

        /// Storage for `bytes` bytes, bound to `Float` (an f32 cache reads it as such; the other
        /// types only load and store bytes, which any binding allows).
        static func allocate(_ bytes: Int) -> UnsafeMutableRawPointer {
            let p = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 4), alignment: 64)
            p.bindMemory(to: Float.self, capacity: max(bytes, 4) / 4)
            return p
        }

        func reserve(_ positions: Int) {
            guard positions > capacity else { return }
            var c = capacity
            // Doubling stops at the limit (or the request, if a caller asks past it), so it can
            // neither overshoot the context nor wrap around.
            while c < positions { c = c > max(limit, positions) / 2 ? max(limit, positions) : c * 2 }
            let na = Self.allocate(dtype.bytes(widthA) * c)
            let nb = Self.allocate(dtype.bytes(widthB) * c)
            na.copyMemory(from: a, byteCount: dtype.bytes(widthA) * capacity)
            nb.copyMemory(from: b, byteCount: dtype.bytes(widthB) * capacity)
            a.deallocate()
            b.deallocate()
            a = na
            b = nb
            capacity = c
        }
    }

    public let layers: [Layer]
    /// How rows are stored.
    public let dtype: KVDType
    /// Positions already stored (the next token's position).
    public private(set) var length: Int = 0
    /// The one-entry block table of a contiguous layer (its block 0 is the whole buffer).
    private let table: UnsafeMutablePointer<Int32>

    /// `widths[l]` gives layer `l`'s `(widthA, widthB)`. `limit` is the most positions it will hold
    /// (the model's context): the initial `capacity` and later growth never go beyond it.
    /// Rows are stored as `dtype` (the caller has checked that it suits the widths: see
    /// `DecoderModel.checkKVDType`).
    public init(widths: [(Int, Int)], dtype: KVDType = .f32, capacity: Int = 256, limit: Int = Int.max) {
        self.dtype = dtype
        layers = widths.map { Layer(widthA: $0.0, widthB: $0.1, dtype: dtype, capacity: capacity, limit: limit) }
        table = .allocate(capacity: 1)
        table.initialize(to: 0)
    }

    deinit { table.deallocate() }

    /// Makes room for `count` more positions in every layer.
    public func reserve(additional count: Int) {
        for l in layers { l.reserve(length + count) }
    }

    /// Marks `count` positions (already written by every layer) as stored.
    public func commit(_ count: Int) { length += count }

    /// Forgets everything after `position` (e.g. to re-run a step); storage is kept.
    public func truncate(to position: Int) { length = min(length, max(0, position)) }

    /// Bytes of cache storage per stored position, over all layers.
    public var bytesPerPosition: Int { layers.reduce(0) { $0 + dtype.bytes($1.widthA) + dtype.bytes($1.widthB) } }

    public func view(layer: Int) -> KVLayerView {
        let l = layers[layer]
        return KVLayerView(a: l.a, b: l.b, blockStride: 0, blocks: table, blockSize: Int.max, widthA: l.widthA, widthB: l.widthB,
                           dtype: dtype)
    }
}
