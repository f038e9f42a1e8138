/// Per-sequence attention state: for every layer, the rows each past position contributes.
///
/// A GQA layer stores keys and values (`2 · kvHeads · headDim` floats per position); an MLA layer
/// stores only the compressed latent and the shared rotary key (`kv_lora_rank + qk_rope_head_dim`
/// floats per position), which is what makes 256k-token contexts of DeepSeek/Kimi affordable.
/// Storage grows geometrically, so appends are amortised O(1) and need no per-token allocation.
public final class KVCache {
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

    /// `widths[l]` gives layer `l`'s `(widthA, widthB)`. `limit` is the most positions it will hold
    /// (the model's context): the initial `capacity` and later growth never go beyond it.
    public init(widths: [(Int, Int)], capacity: Int = 256, limit: Int = Int.max) {
        layers = widths.map { Layer(widthA: $0.0, widthB: $0.1, capacity: capacity, limit: limit) }
    }

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
}
