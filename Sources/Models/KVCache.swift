/// Where one layer of one sequence keeps its per-position rows, as attention reads them: rows
/// live in blocks of `blockSize` positions (PagedAttention, Kwon et al. 2023); block `i` of the
/// sequence is block `blocks[i]` of its storage, whose `a` rows start at `a + blocks[i] · blockStride`
/// (and likewise `b`). A contiguous cache is the case of one block of unbounded size.
///
/// Valid until the cache it came from next reserves or releases storage.
public struct KVLayerView {
    /// Layer's `a` rows in storage block 0 (GQA: keys; MLA: the normalised latent).
    public let a: UnsafeMutablePointer<Float>
    /// Layer's `b` rows in storage block 0 (GQA: values; MLA: the rotated shared key).
    public let b: UnsafeMutablePointer<Float>
    /// Floats from one storage block to the next.
    public let blockStride: Int
    /// The sequence's block table: storage block of each of its blocks.
    public let blocks: UnsafePointer<Int32>
    /// Positions per block.
    public let blockSize: Int
    public let widthA: Int
    public let widthB: Int

    /// The `a` rows of the sequence's block `i` (`blockSize` of them, `widthA` floats apart).
    @inline(__always) public func blockA(_ i: Int) -> UnsafeMutablePointer<Float> { a + Int(blocks[i]) * blockStride }
    /// The `b` rows of the sequence's block `i`.
    @inline(__always) public func blockB(_ i: Int) -> UnsafeMutablePointer<Float> { b + Int(blocks[i]) * blockStride }
    /// Position `p`'s `a` row.
    @inline(__always) public func rowA(_ p: Int) -> UnsafeMutablePointer<Float> { blockA(p / blockSize) + (p % blockSize) * widthA }
    /// Position `p`'s `b` row.
    @inline(__always) public func rowB(_ p: Int) -> UnsafeMutablePointer<Float> { blockB(p / blockSize) + (p % blockSize) * widthB }
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
/// A GQA layer stores keys and values (`2 · kvHeads · headDim` floats per position); an MLA layer
/// stores only the compressed latent and the shared rotary key (`kv_lora_rank + qk_rope_head_dim`
/// floats per position), which is what makes 256k-token contexts of DeepSeek/Kimi affordable.
/// Storage grows geometrically, so appends are amortised O(1) and need no per-token allocation.
public final class KVCache: KVStore {
    /// One layer's rows: `widthA` floats per position in `a`, `widthB` in `b`.
    /// GQA: a = keys, b = values. MLA: a = normalised latent `c_kv`, b = rotated `k_pe`.
    public final class Layer {
        public let widthA: Int
        public let widthB: Int
        public private(set) var capacity: Int
        public private(set) var a: UnsafeMutablePointer<Float>
        public private(set) var b: UnsafeMutablePointer<Float>

        /// Most positions it will ever hold: growth stops there.
        let limit: Int

        init(widthA: Int, widthB: Int, capacity: Int, limit: Int) {
            self.limit = max(limit, 1)
            self.widthA = widthA
            self.widthB = widthB
            self.capacity = max(min(capacity, self.limit), 1)
            a = .allocate(capacity: max(widthA * self.capacity, 1))
            b = .allocate(capacity: max(widthB * self.capacity, 1))
        }

        deinit {
            a.deallocate()
            b.deallocate()
        }

        func reserve(_ positions: Int) {
            guard positions > capacity else { return }
            var c = capacity
            // Doubling stops at the limit (or the request, if a caller asks past it), so it can
            // neither overshoot the context nor wrap around.
            while c < positions { c = c > max(limit, positions) / 2 ? max(limit, positions) : c * 2 }
            let na = UnsafeMutablePointer<Float>.allocate(capacity: max(widthA * c, 1))
            let nb = UnsafeMutablePointer<Float>.allocate(capacity: max(widthB * c, 1))
            na.update(from: a, count: widthA * capacity)
            nb.update(from: b, count: widthB * capacity)
            a.deallocate()
            b.deallocate()
            a = na
            b = nb
            capacity = c
        }
    }

    public let layers: [Layer]
    /// Positions already stored (the next token's position).
    public private(set) var length: Int = 0
    /// The one-entry block table of a contiguous layer (its block 0 is the whole buffer).
    private let table: UnsafeMutablePointer<Int32>

    /// `widths[l]` gives layer `l`'s `(widthA, widthB)`. `limit` is the most positions it will hold
    /// (the model's context): the initial `capacity` and later growth never go beyond it.
    public init(widths: [(Int, Int)], capacity: Int = 256, limit: Int = Int.max) {
        layers = widths.map { Layer(widthA: $0.0, widthB: $0.1, capacity: capacity, limit: limit) }
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
    public var bytesPerPosition: Int { layers.reduce(0) { $0 + ($1.widthA + $1.widthB) * 4 } }

    public func view(layer: Int) -> KVLayerView {
        let l = layers[layer]
        return KVLayerView(a: l.a, b: l.b, blockStride: 0, blocks: table, blockSize: Int.max, widthA: l.widthA, widthB: l.widthB)
    }
}
