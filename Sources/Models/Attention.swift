import Kernels

/// One attention layer of the attention side. It appends its new positions to its layer of each
/// sequence's KV cache (`KVStore`: contiguous or paged) and attends causally over everything
/// stored there.
public protocol AttentionLayer {
    /// Values per position this layer stores in the cache: `(widthA, widthB)`.
    var cacheWidths: (Int, Int) { get }
    /// Widths of the pieces of an `a` and a `b` row that attention reads on its own (GQA: one
    /// head; MLA: the whole latent and rotary key). A quantized cache's scale groups must not
    /// straddle two pieces (`DecoderModel.checkKVDType`).
    var cacheReadWidths: (Int, Int) { get }
    /// Bytes of weights one token's pass reads.
    var weightBytes: Int { get }
    /// `output[n, hidden] = Attn(x[n, hidden])` for `n` rows of one or more sequences: `spans`
    /// (sorted, covering rows `0..<n`) say which sequence's cache each row appends to, at which
    /// positions; each row attends causally over its own sequence only, layer `layer` of its
    /// cache. `cos`/`sin` hold the RoPE table rows for the rows' positions (`[n, ropeDim / 2]`).
    func forward(_ x: UnsafePointer<Float>, count n: Int, spans: [SequenceSpan], layer: Int,
                 cos: UnsafePointer<Float>, sin: UnsafePointer<Float>,
                 output: UnsafeMutablePointer<Float>, workspace: Workspace)
}

@inline(__always)
func addBias(_ y: UnsafeMutablePointer<Float>, _ bias: [Float]?, rows n: Int) {
    guard let bias else { return }
    bias.withUnsafeBufferPointer { b in
        for t in 0..<n { Elementwise.add(y + t * b.count, b.baseAddress!, count: b.count) }
    }
}

/// Positions per attention tile. Attention over a query's context is computed tile by tile
/// (positions `[k·tile, (k+1)·tile)`) as partial softmax states that are merged in tile order,
/// so the reduction order for a query depends on its position only: never on the batch, the
/// chunking of its prompt, the thread count or the KV block size (FlashAttention's tiling,
/// Dao et al. 2022; FlashDecoding's split-K for decode, Dao et al. 2023).
let attentionTile = 256

/// Prompt rows that walk the KV tiles together (each KV tile is read and widened once per query
/// tile, rather than once per row), at most: fewer when a row has many queries, so that one
/// call's queries stay near `attentionTileQueries` (its scores, `queries × attentionTile`
/// floats, stay in L2).
let attentionQueryTile = 32
let attentionTileQueries = 96

/// Rows per query tile for rows of `g` queries per group.
@inline(__always)
func queryTileRows(_ g: Int) -> Int { max(1, min(attentionQueryTile, attentionTileQueries / max(1, g))) }

/// Batches with at most this many rows split each row's context into its tiles across the
/// cores (split-K) and merge the partial states afterwards; larger batches give each core whole
/// query tiles. Both give the same bits (same tiles, same merge order).
let attentionSplitRows = 16

/// Floats in one partial softmax state of a `width`-wide accumulator: `[max, sum, acc...]`.
@inline(__always)
func softmaxStateSize(_ width: Int) -> Int { width + 2 }

/// Per-worker scratch of `attendTile`: the tile's scores, its row pointer lists, the calling
/// queries' pointers and `AttentionTile`'s widened rows; carved from one temporary allocation.
struct TileScratch {
    let scores: UnsafeMutablePointer<Float>
    let keys: UnsafeMutablePointer<UnsafeRawPointer>, ropeKeys: UnsafeMutablePointer<UnsafeRawPointer>
    let values: UnsafeMutablePointer<UnsafeRawPointer>
    let queries: UnsafeMutablePointer<UnsafePointer<Float>>, ropeQueries: UnsafeMutablePointer<UnsafePointer<Float>>
    let kernel: UnsafeMutableRawPointer

    /// Bytes for calls of up to `queries` queries over rows of `width` (and `ropeWidth`) values.
    static func bytes(queries: Int, width: Int, ropeWidth: Int) -> Int {
        let p = MemoryLayout<UnsafeRawPointer>.stride
        return 4 * queries * attentionTile + 3 * p * attentionTile + 2 * p * queries
            + AttentionTile.scratchBytes(width: width, ropeWidth: ropeWidth) + 64
    }

    /// Runs `body` with scratch for `queries` queries (`bytes(queries:width:ropeWidth:)`).
    @inline(__always)
    static func with<R>(queries: Int, width: Int, ropeWidth: Int, _ body: (TileScratch) -> R) -> R {
        withUnsafeTemporaryAllocation(byteCount: bytes(queries: queries, width: width, ropeWidth: ropeWidth),
                                      alignment: 64) { buf in
            let b = buf.baseAddress!, p = MemoryLayout<UnsafeRawPointer>.stride, T = attentionTile
            let pointers = b + 4 * queries * T
            let q = pointers + 3 * p * T
            return body(TileScratch(scores: b.assumingMemoryBound(to: Float.self),
                                    keys: pointers.assumingMemoryBound(to: UnsafeRawPointer.self),
                                    ropeKeys: (pointers + p * T).assumingMemoryBound(to: UnsafeRawPointer.self),
                                    values: (pointers + 2 * p * T).assumingMemoryBound(to: UnsafeRawPointer.self),
                                    queries: q.assumingMemoryBound(to: UnsafePointer<Float>.self),
                                    ropeQueries: (q + p * queries).assumingMemoryBound(to: UnsafePointer<Float>.self),
                                    kernel: q + 2 * p * queries))
        }
    }
}

/// Where the queries of a batch row are, and which stored rows they read: GQA (`rope` nil) reads
/// its key head from the `a` rows and its value head from the `b` rows (group `k`: the piece at
/// value `k · width`); MLA (`rope` set) scores the latent (`a` rows) plus the rotary key (`b`
/// rows, `ropeWidth` values) and accumulates the latent as its value.
struct TileQueries {
    /// Query `i` of group `group` of batch row `t`: `(t, group, i)`.
    let query: (Int, Int, Int) -> UnsafePointer<Float>
    /// MLA's rotary query part, `(t, group, i)`; nil for GQA.
    let rope: ((Int, Int, Int) -> UnsafePointer<Float>)?
    let ropeWidth: Int
}

/// One KV tile's attention for batch rows `t0..<t1` of one sequence that all attend to
/// positions `lo..<hi` (within one `attentionTile`), group `group`: for row `t`'s query `i`,
/// `states + ((t − t0) · g + i) · softmaxStateSize(width)` becomes the tile's partial state —
/// the largest scaled score `m`, `ℓ = Σ_j e^(s_j − m)` and the unnormalised
/// `Σ_j e^(s_j − m) · value_j` (FlashAttention's `(m, ℓ, O)`). Rows are found through the
/// block table, in position order, and each is read once for all the queries of the call
/// (`AttentionTile.run`, whose result for a query does not depend on the others in the call).
@inline(__always)
func attendTile(_ kv: KVLayerView, rows t0: Int, _ t1: Int, group: Int, from lo: Int, to hi: Int, queries g: Int,
                width: Int, scale: Float, layout: TileQueries, scratch: TileScratch, states: UnsafeMutablePointer<Float>) {
    let len = hi - lo, latent = layout.rope != nil, offset = kv.dtype.bytes(group * width)
    var j = 0, block = lo / kv.blockSize, first = lo % kv.blockSize
    while j < len {
        let rows = min(kv.blockSize - first, len - j)
        var a = UnsafeRawPointer(kv.blockA(block)) + first * kv.rowBytesA
        var b = UnsafeRawPointer(kv.blockB(block)) + first * kv.rowBytesB
        for r in 0..<rows {
            scratch.keys[j + r] = a + offset
            if latent {
                scratch.ropeKeys[j + r] = b
                scratch.values[j + r] = a
            } else {
                scratch.values[j + r] = b + offset
            }
            a += kv.rowBytesA
            b += kv.rowBytesB
        }
        j += rows
        block += 1
        first = 0
    }
    var u = 0
    for t in t0..<t1 {
        for i in 0..<g {
            scratch.queries[u] = layout.query(t, group, i)
            if let rope = layout.rope { scratch.ropeQueries[u] = rope(t, group, i) }
            u += 1
        }
    }
    AttentionTile.run(dtype: kv.dtype, count: len, keys: scratch.keys, ropeKeys: latent ? UnsafePointer(scratch.ropeKeys) : nil,
                      values: scratch.values, queries: scratch.queries,
                      ropeQueries: latent ? UnsafePointer(scratch.ropeQueries) : nil,
                      count: u, width: width, ropeWidth: layout.ropeWidth, scale: scale,
                      scores: scratch.scores, scoreStride: attentionTile, scratch: scratch.kernel,
                      states: states, stateStride: softmaxStateSize(width))
}

/// Merges partial state `p` into `s` (both `softmaxStateSize(width)` floats): the combined
/// state of their positions, rescaled to the larger max (FlashAttention's online softmax).
@inline(__always)
func mergeSoftmaxState(_ s: UnsafeMutablePointer<Float>, _ p: UnsafePointer<Float>, width: Int) {
    let m = max(s[0], p[0])
    var e = SIMD8<Float>(s[0] - m, p[0] - m, 0, 0, 0, 0, 0, 0)
    withUnsafeMutableBytes(of: &e) { Elementwise.exp($0.baseAddress!.assumingMemoryBound(to: Float.self), count: 2) }
    let a = e[0], b = e[1]
    s[0] = m
    s[1] = s[1] * a + p[1] * b
    let av = SIMD8<Float>(repeating: a), bv = SIMD8<Float>(repeating: b)
    var i = 0
    let so = UnsafeMutableRawPointer(s + 2), po = UnsafeRawPointer(p + 2)
    while i + 8 <= width {
        let x = so.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self) * av
        so.storeBytes(of: x.addingProduct(po.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self), bv),
                      toByteOffset: 4 * i, as: SIMD8<Float>.self)
        i += 8
    }
    while i < width {
        s[2 + i] = (s[2 + i] * a).addingProduct(p[2 + i], b)
        i += 1
    }
}

/// `out = acc / ℓ` of a merged state: the attention output.
@inline(__always)
func finishSoftmaxState(_ s: UnsafePointer<Float>, width: Int, out: UnsafeMutablePointer<Float>) {
    out.update(from: s + 2, count: width)
    Elementwise.scale(out, by: 1 / s[1], count: width)
}

/// Causal attention of every row of a batch over its own sequence's cache, tiled
/// (`attentionTile`) with partial softmax states merged in tile order. Each row has `groups`
/// groups of `queries` queries; a group's queries read the same stored rows (GQA: one KV head's
/// query heads; MLA: every head), so each KV row is read once per group (`attendTile`, with
/// `layout` saying where the queries are). `output(t, group, i)` is where query `i`'s result
/// goes. `splitK` (nil: by batch size) picks the decode scheme (tiles of one row across cores,
/// then a merge) or the prompt scheme (query tiles of `queryTileRows(g)` rows walk the KV tiles
/// together, all the rows a KV tile lies wholly before in one call); both give the same bits.
@inline(__always)
func attendCausal(rows n: Int, spans: [SequenceSpan], layer: Int, groups: Int, queries g: Int, width: Int,
                  scale: Float, layout: TileQueries, workspace ws: Workspace, splitK: Bool? = nil,
                  output: (Int, Int, Int) -> UnsafeMutablePointer<Float>) {
    let T = attentionTile, stride = softmaxStateSize(width), slot = g * stride
    // Context length of row `t` (it attends to its own position and every earlier one).
    func length(_ span: SequenceSpan, _ t: Int) -> Int { span.start + (t - span.rows.lowerBound) + 1 }
    if splitK ?? (n <= attentionSplitRows) {
        // Split-K: the partial states of (row t, group, tile k) go to slot
        // `first[t] + group · tiles(t) + k`. A work item is one tile of one row with all its
        // groups, one after the other (the tile's rows are read in order, while the first
        // group's reads are still in cache), or, when that leaves too few items for the cores
        // (short contexts), one group of one tile.
        withUnsafeTemporaryAllocation(of: Int.self, capacity: 3 * n + 2) { buf in
            let first = buf.baseAddress!, tiles = first + n + 1, tileFirst = tiles + n
            var hint = 0
            first[0] = 0
            tileFirst[0] = 0
            for t in 0..<n {
                tiles[t] = (length(spans.span(containing: t, hint: &hint), t) + T - 1) / T
                first[t + 1] = first[t] + groups * tiles[t]
                tileFirst[t + 1] = tileFirst[t] + tiles[t]
            }
            let whole = groups == 1 || tileFirst[n] >= 4 * ThreadPool.shared.threadCount
            let partials = ws.buffer(Workspace.softmaxPartials, count: first[n] * slot)
            ThreadPool.shared.parallelFor(whole ? tileFirst[n] : first[n]) { lo, hi in
                TileScratch.with(queries: g, width: width, ropeWidth: layout.ropeWidth) { scratch in
                    var t = 0, hint = 0
                    for item in lo..<hi {
                        let k: Int, groupRange: Range<Int>
                        if whole {
                            while tileFirst[t + 1] <= item { t += 1 }
                            k = item - tileFirst[t]
                            groupRange = 0..<groups
                        } else {
                            while first[t + 1] <= item { t += 1 }
                            let local = item - first[t]
                            k = local % tiles[t]
                            groupRange = (local / tiles[t])..<(local / tiles[t] + 1)
                        }
                        let span = spans.span(containing: t, hint: &hint), view = span.cache.view(layer: layer)
                        for group in groupRange {
                            attendTile(view, rows: t, t + 1, group: group, from: k * T, to: min((k + 1) * T, length(span, t)),
                                       queries: g, width: width, scale: scale, layout: layout, scratch: scratch,
                                       states: partials + (first[t] + group * tiles[t] + k) * slot)
                        }
                    }
                }
            }
            // Merge each (row, group)'s tiles in tile order. A small merge (a GQA decode step:
            // a few thousand multiply-adds) runs on this thread: another pool job per layer costs
            // more than it, and far more when the machine is oversubscribed (a descheduled worker
            // holding a chunk stalls the step); MLA's wide states still spread over the cores.
            let mergeWork = g * (first[n] / max(1, n * groups)) * stride
            ThreadPool.shared.parallelFor(n * groups, granularity: max(1, (1 << 16) / max(1, mergeWork))) { lo, hi in
                for idx in lo..<hi {
                    let t = idx / groups, group = idx % groups
                    let s = partials + (first[t] + group * tiles[t]) * slot
                    for i in 0..<g {
                        for k in 1..<max(1, tiles[t]) { mergeSoftmaxState(s + i * stride, s + k * slot + i * stride, width: width) }
                        finishSoftmaxState(s + i * stride, width: width, out: output(t, group, i))
                    }
                }
            }
        }
        return
    }
    // Query tiles: runs of up to `Q` rows of one span.
    let Q = queryTileRows(g)
    let count = spans.reduce(0) { $0 + ($1.rows.count + Q - 1) / Q }
    withUnsafeTemporaryAllocation(of: Int.self, capacity: count) { starts in
        var c = 0
        for s in spans {
            var t = s.rows.lowerBound
            while t < s.rows.upperBound { starts[c] = t; c += 1; t += Q }
        }
        ThreadPool.shared.parallelFor(count * groups) { lo, hi in
            // Per worker chunk: the query tile's running states and one tile's partial states.
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * Q * slot) { buf in
                let states = buf.baseAddress!, partial = states + Q * slot
                TileScratch.with(queries: Q * g, width: width, ropeWidth: layout.ropeWidth) { scratch in
                    var hint = 0
                    for idx in lo..<hi {
                        // Query tiles in the order first, last, second, second-to-last, ... so
                        // that the pool's contiguous chunks get similar shares of the causal triangle.
                        let u = idx / groups, group = idx % groups
                        let t0 = starts[u % 2 == 0 ? u / 2 : count - 1 - u / 2]
                        let span = spans.span(containing: t0, hint: &hint)
                        let t1 = min(t0 + Q, span.rows.upperBound), view = span.cache.view(layer: layer)
                        let tiles = (length(span, t1 - 1) + T - 1) / T
                        for k in 0..<tiles {
                            let dst = k == 0 ? states : partial
                            // Rows the tile lies wholly before (a suffix, as lengths grow with t)
                            // share one call; a row that ends inside it is its own call (the
                            // diagonal), and rows that end before it skip it (upper triangle).
                            var full = t1
                            while full > t0 && length(span, full - 1) >= (k + 1) * T { full -= 1 }
                            for t in t0..<full where length(span, t) > k * T {
                                attendTile(view, rows: t, t + 1, group: group, from: k * T, to: length(span, t), queries: g,
                                           width: width, scale: scale, layout: layout, scratch: scratch,
                                           states: dst + (t - t0) * slot)
                            }
                            if full < t1 {
                                attendTile(view, rows: full, t1, group: group, from: k * T, to: (k + 1) * T, queries: g,
                                           width: width, scale: scale, layout: layout, scratch: scratch,
                                           states: dst + (full - t0) * slot)
                            }
                            if k > 0 {
                                for t in t0..<t1 where length(span, t) > k * T {
                                    for i in 0..<g {
                                        mergeSoftmaxState(states + (t - t0) * slot + i * stride,
                                                          partial + (t - t0) * slot + i * stride, width: width)
                                    }
                                }
                            }
                        }
                        for t in t0..<t1 {
                            for i in 0..<g { finishSoftmaxState(states + (t - t0) * slot + i * stride, width: width, out: output(t, group, i)) }
                        }
                    }
                }
            }
        }
    }
}

/// Grouped-query attention (Ainslie et al. 2023) with RoPE, as Llama, Mixtral and the Qwen
/// MoE families use it; optional q/k/v biases (Qwen2) and per-head q/k RMSNorm (Qwen3).
public final class GroupedQueryAttention: AttentionLayer {
    public let heads: Int, kvHeads: Int, headDim: Int
    let wq: Matrix, wk: Matrix, wv: Matrix, wo: Matrix
    let qBias: [Float]?, kBias: [Float]?, vBias: [Float]?, oBias: [Float]?
    let qNorm: [Float]?, kNorm: [Float]?
    let normEps: Float
    let rope: RotaryEmbedding
    let scale: Float

    public init(heads: Int, kvHeads: Int, headDim: Int, wq: Matrix, wk: Matrix, wv: Matrix, wo: Matrix,
                qBias: [Float]? = nil, kBias: [Float]? = nil, vBias: [Float]? = nil, oBias: [Float]? = nil,
                qNorm: [Float]? = nil, kNorm: [Float]? = nil, normEps: Float = 1e-6, rope: RotaryEmbedding) {
        self.heads = heads; self.kvHeads = kvHeads; self.headDim = headDim
        self.wq = wq; self.wk = wk; self.wv = wv; self.wo = wo
        self.qBias = qBias; self.kBias = kBias; self.vBias = vBias; self.oBias = oBias
        self.qNorm = qNorm; self.kNorm = kNorm; self.normEps = normEps
        self.rope = rope
        self.scale = 1 / Float(headDim).squareRoot()
    }

    public var cacheWidths: (Int, Int) { (kvHeads * headDim, kvHeads * headDim) }
    public var cacheReadWidths: (Int, Int) { (headDim, headDim) }
    public var weightBytes: Int { [wq, wk, wv, wo].reduce(0) { $0 + $1.byteCount } }

    public func forward(_ x: UnsafePointer<Float>, count n: Int, spans: [SequenceSpan], layer: Int,
                        cos: UnsafePointer<Float>, sin: UnsafePointer<Float>,
                        output: UnsafeMutablePointer<Float>, workspace ws: Workspace) {
        let hd = headDim, qDim = heads * hd, kvDim = kvHeads * hd, half = rope.dim / 2
        let q = ws.buffer(10, count: n * qDim)
        // Keys and values go to scratch, then each row to its slot in its sequence's cache (one
        // row copy per token, against the row's whole projection and attention).
        let k = ws.buffer(18, count: n * kvDim), v = ws.buffer(19, count: n * kvDim)
        Linear.forward(wq, wk, wv, input: x, count: n, outputs: q, k, v)
        addBias(q, qBias, rows: n)
        addBias(k, kBias, rows: n)
        addBias(v, vBias, rows: n)
        for t in 0..<n {
            for h in 0..<heads {
                let row = q + t * qDim + h * hd
                if let qNorm { Elementwise.rmsNorm(row, weight: qNorm, eps: normEps, dim: hd, output: row) }
                rope.rotate(row, cos: cos + t * half, sin: sin + t * half)
            }
            for h in 0..<kvHeads {
                let row = k + t * kvDim + h * hd
                if let kNorm { Elementwise.rmsNorm(row, weight: kNorm, eps: normEps, dim: hd, output: row) }
                rope.rotate(row, cos: cos + t * half, sin: sin + t * half)
            }
        }
        for s in spans {
            let c = s.cache.view(layer: layer)
            for t in s.rows {
                let pos = s.start + (t - s.rows.lowerBound)
                c.storeA(pos, k + t * kvDim)
                c.storeB(pos, v + t * kvDim)
            }
        }
        let ctx = ws.buffer(11, count: n * qDim)
        Self.attend(q: q, count: n, spans: spans, layer: layer, heads: heads, kvHeads: kvHeads, headDim: hd,
                    scale: scale, workspace: ws, ctx: ctx)
        Linear.forward(wo, input: ctx, count: n, output: output)
        addBias(output, oBias, rows: n)
    }

    /// Causal attention of query rows `q` (`[n, heads·headDim]`, RoPE applied) over their
    /// sequences' caches (layer `layer`) into `ctx` (same shape). `splitK` as `attendCausal`'s.
    static func attend(q: UnsafePointer<Float>, count n: Int, spans: [SequenceSpan], layer: Int, heads: Int, kvHeads: Int,
                       headDim hd: Int, scale: Float, workspace ws: Workspace, splitK: Bool? = nil,
                       ctx: UnsafeMutablePointer<Float>) {
        let qDim = heads * hd, group = heads / kvHeads
        // One group per KV head: its `group` query heads read each stored row once.
        let layout = TileQueries(query: { t, kvh, i in UnsafePointer(q + t * qDim + (kvh * group + i) * hd) },
                                 rope: nil, ropeWidth: 0)
        attendCausal(rows: n, spans: spans, layer: layer, groups: kvHeads, queries: group, width: hd, scale: scale,
                     layout: layout, workspace: ws, splitK: splitK,
                     output: { t, kvh, i in ctx + t * qDim + (kvh * group + i) * hd })
    }
}

/// MLA's up-projections from the latent: W_UK (the keys' no-RoPE part) and W_UV (the values).
public enum LatentUpProjection {
    /// Hugging Face's `kv_b_proj`, `[heads·(nope+v), r]`: per head, nope rows of W_UK then v rows of W_UV.
    case fused(Matrix)
    /// llama.cpp's split: W_UKᵀ per head (`[heads·r, nope]`, so absorbing it into the query is a
    /// plain matrix product) and W_UV (`[heads·v, r]`).
    case split(kT: Matrix, v: Matrix)

    var byteCount: Int {
        switch self {
        case .fused(let m): return m.byteCount
        case .split(let k, let v): return k.byteCount + v.byteCount
        }
    }
}

/// Multi-head Latent Attention (DeepSeek-V2 §2.1, used by DeepSeek-V3 and Kimi K2).
///
/// The cache holds only the normalised latent `c_kv` (`kv_lora_rank` floats) and the rotated
/// shared key `k_pe` (`qk_rope_head_dim`) per position. Keys and values are never expanded: the
/// up-projections are absorbed (DeepSeek-V2 appendix): score = (W_UKᵀ q_nope)·c_kv + q_pe·k_pe,
/// and the value is W_UV (Σ_j p_j c_kv_j). Same function as transformers' expand-then-attend,
/// with fp32 rounding differences only.
public final class MultiHeadLatentAttention: AttentionLayer {
    public let heads: Int, kvLoraRank: Int, nopeDim: Int, ropeDim: Int, vDim: Int
    let wq: Matrix?
    let qA: Matrix?, qANorm: [Float]?, qB: Matrix?
    let kvA: Matrix, kvANorm: [Float], up: LatentUpProjection, wo: Matrix
    let qABias: [Float]?, kvABias: [Float]?, oBias: [Float]?
    let eps: Float
    let rope: RotaryEmbedding
    let scale: Float

    public init(heads: Int, kvLoraRank: Int, nopeDim: Int, ropeDim: Int, vDim: Int,
                wq: Matrix?, qA: Matrix?, qANorm: [Float]?, qB: Matrix?,
                kvA: Matrix, kvANorm: [Float], up: LatentUpProjection, wo: Matrix,
                qABias: [Float]? = nil, kvABias: [Float]? = nil, oBias: [Float]? = nil,
                eps: Float, rope: RotaryEmbedding, scale: Float) {
        self.heads = heads; self.kvLoraRank = kvLoraRank; self.nopeDim = nopeDim
        self.ropeDim = ropeDim; self.vDim = vDim
        self.wq = wq; self.qA = qA; self.qANorm = qANorm; self.qB = qB
        self.kvA = kvA; self.kvANorm = kvANorm; self.up = up; self.wo = wo
        self.qABias = qABias; self.kvABias = kvABias; self.oBias = oBias
        self.eps = eps; self.rope = rope; self.scale = scale
    }

    public var cacheWidths: (Int, Int) { (kvLoraRank, ropeDim) }
    public var cacheReadWidths: (Int, Int) { (kvLoraRank, ropeDim) }
    public var weightBytes: Int { [wq, qA, qB, kvA, wo].reduce(up.byteCount) { $0 + ($1?.byteCount ?? 0) } }

    public func forward(_ x: UnsafePointer<Float>, count n: Int, spans: [SequenceSpan], layer: Int,
                        cos: UnsafePointer<Float>, sin: UnsafePointer<Float>,
                        output: UnsafeMutablePointer<Float>, workspace ws: Workspace) {
        let qkDim = nopeDim + ropeDim, qDim = heads * qkDim, half = ropeDim / 2
        let r = kvLoraRank, heads = self.heads, nope = nopeDim, rd = ropeDim, vd = vDim
        let q = ws.buffer(10, count: n * qDim)
        if let wq {
            Linear.forward(wq, input: x, count: n, output: q)
        } else if let qA, let qB, let qANorm {
            let qa = ws.buffer(12, count: n * qA.rows)
            Linear.forward(qA, input: x, count: n, output: qa)
            addBias(qa, qABias, rows: n)
            for t in 0..<n {
                Elementwise.rmsNorm(qa + t * qA.rows, weight: qANorm, eps: eps, dim: qA.rows, output: qa + t * qA.rows)
            }
            Linear.forward(qB, input: qa, count: n, output: q)
        }
        let kv = ws.buffer(13, count: n * (r + rd))
        Linear.forward(kvA, input: x, count: n, output: kv)
        addBias(kv, kvABias, rows: n)
        var hint = 0
        for t in 0..<n {
            let span = spans.span(containing: t, hint: &hint)
            let cache = span.cache.view(layer: layer), pos = span.start + (t - span.rows.lowerBound)
            // Normalised and rotated in the scratch row, then rounded once into the cache.
            let src = kv + t * (r + rd)
            Elementwise.rmsNorm(src, weight: kvANorm, eps: eps, dim: r, output: src)
            rope.rotate(src + r, cos: cos + t * half, sin: sin + t * half)
            cache.storeA(pos, src)
            cache.storeB(pos, src + r)
            for h in 0..<heads {
                rope.rotate(q + t * qDim + h * qkDim + nope, cos: cos + t * half, sin: sin + t * half)
            }
        }
        // Absorb W_UK into the query: qLat[h, t] = W_UK[h]ᵀ q_nope[t, h]   (head-major).
        let qLat = ws.buffer(14, count: n * heads * r)
        let up = self.up
        switch up {
        case .fused(let kvB):
            ThreadPool.shared.parallelFor(heads) { lo, hi in
                withUnsafeTemporaryAllocation(of: Float.self, capacity: r) { rowBuf in
                    let w = rowBuf.baseAddress!
                    for h in lo..<hi {
                        let dst = qLat + h * n * r
                        dst.update(repeating: 0, count: n * r)
                        for i in 0..<nope {
                            kvB.widenRow(h * (nope + vd) + i, into: w)
                            for t in 0..<n {
                                Elementwise.addScaled(dst + t * r, w, scale: q[t * qDim + h * qkDim + i], count: r)
                            }
                        }
                    }
                }
            }
        case .split(let kT, _):
            // W_UKᵀ is stored: gather head h's q_nope rows, then one matrix product per head.
            ThreadPool.shared.parallelFor(heads) { lo, hi in
                withUnsafeTemporaryAllocation(of: Float.self, capacity: n * nope) { buf in
                    let qn = buf.baseAddress!
                    for h in lo..<hi {
                        for t in 0..<n { (qn + t * nope).update(from: q + t * qDim + h * qkDim, count: nope) }
                        Linear.forward(kT.rows(h * r, count: r), input: qn, count: n, output: qLat + h * n * r)
                    }
                }
            }
        }
        let oLat = ws.buffer(15, count: n * heads * r)
        let scale = self.scale
        // One group of every head: each position's latent and rotary key are read once per
        // layer for all heads.
        let layout = TileQueries(query: { t, _, h in UnsafePointer(qLat + (h * n + t) * r) },
                                 rope: { t, _, h in UnsafePointer(q + t * qDim + h * qkDim + nope) }, ropeWidth: rd)
        attendCausal(rows: n, spans: spans, layer: layer, groups: 1, queries: heads, width: r, scale: scale,
                     layout: layout, workspace: ws, output: { t, _, h in oLat + (h * n + t) * r })
        // Values: v[t, h] = W_UV[h] oLat[h, t], gathered token-major for o_proj.
        let vHead = ws.buffer(16, count: n * heads * vd)
        ThreadPool.shared.parallelFor(heads) { lo, hi in
            for h in lo..<hi {
                let wuv: Matrix
                switch up {
                case .fused(let kvB): wuv = kvB.rows(h * (nope + vd) + nope, count: vd)
                case .split(_, let v): wuv = v.rows(h * vd, count: vd)
                }
                Linear.forward(wuv, input: oLat + h * n * r, count: n, output: vHead + h * n * vd)
            }
        }
        let ctx = ws.buffer(17, count: n * heads * vd)
        for h in 0..<heads {
            for t in 0..<n { (ctx + t * heads * vd + h * vd).update(from: vHead + (h * n + t) * vd, count: vd) }
        }
        Linear.forward(wo, input: ctx, count: n, output: output)
        addBias(output, oBias, rows: n)
    }
}
