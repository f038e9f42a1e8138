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

/// Softmax-weighted attention of one query over the first `length` rows of a sequence's cache,
/// the inner loop shared by every attention variant: `out = Σ_j softmax_j(scale · score_j) ·
/// value_j`, fp32 as eager attention computes it. Rows are visited block by block through the
/// block table (PagedAttention), in position order, so a paged cache gives the contiguous
/// cache's result bit for bit; `score` gets row j's stored `a` and `b` rows, `accumulate` adds
/// its value row times its softmax weight to `out` (both read the rows in the cache's dtype, so
/// no converted copy of the cache is made).
@inline(__always)
func attend(_ kv: KVLayerView, length: Int, scale: Float, scores: UnsafeMutablePointer<Float>,
            score: (UnsafeRawPointer, UnsafeRawPointer) -> Float,
            accumulate: (UnsafeMutablePointer<Float>, UnsafeRawPointer, UnsafeRawPointer, Float) -> Void, width: Int,
            out: UnsafeMutablePointer<Float>) {
    let wa = kv.rowBytesA, wb = kv.rowBytesB
    var j = 0, block = 0
    while j < length {
        let rows = min(kv.blockSize, length - j)
        var a = UnsafeRawPointer(kv.blockA(block)), b = UnsafeRawPointer(kv.blockB(block))
        for r in 0..<rows {
            scores[j + r] = score(a, b) * scale
            a += wa
            b += wb
        }
        j += rows
        block += 1
    }
    Elementwise.softmax(scores, count: length)
    out.update(repeating: 0, count: width)
    j = 0
    block = 0
    while j < length {
        let rows = min(kv.blockSize, length - j)
        var a = UnsafeRawPointer(kv.blockA(block)), b = UnsafeRawPointer(kv.blockB(block))
        for r in 0..<rows {
            accumulate(out, a, b, scores[j + r])
            a += wa
            b += wb
        }
        j += rows
        block += 1
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
        let group = heads / kvHeads
        let scale = self.scale, heads = self.heads
        let longest = spans.reduce(0) { max($0, $1.start + $1.rows.count) }
        ThreadPool.shared.parallelFor(n * heads) { lo, hi in
            // One score row per worker chunk (a few per layer), sized for the longest context in
            // this batch; past a few KiB it comes from malloc, negligible next to reading K and V.
            withUnsafeTemporaryAllocation(of: Float.self, capacity: longest) { buf in
                var hint = 0
                for idx in lo..<hi {
                    let t = idx / heads, h = idx % heads, kvh = h / group
                    let span = spans.span(containing: t, hint: &hint)
                    let qv = UnsafePointer(q + t * qDim + h * hd)
                    let view = span.cache.view(layer: layer), head = view.dtype.bytes(kvh * hd)
                    let length = span.start + (t - span.rows.lowerBound) + 1, out = ctx + t * qDim + h * hd
                    // One copy of the loop per storage type, each reading its rows in place.
                    func run<F: KVRowFormat>(_: F.Type) {
                        attend(view, length: length, scale: scale, scores: buf.baseAddress!,
                               score: { key, _ in F.dot(qv, key + head, count: hd) },
                               accumulate: { o, _, value, p in F.addScaled(o, value + head, scale: p, count: hd) }, width: hd,
                               out: out)
                    }
                    switch view.dtype {
                    case .f32: run(KVRowF32.self)
                    case .f16: run(KVRowF16.self)
                    case .bf16: run(KVRowBF16.self)
                    case .q8_0: run(KVRowQ8_0.self)
                    }
                }
            }
        }
        Linear.forward(wo, input: ctx, count: n, output: output)
        addBias(output, oBias, rows: n)
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
        let longest = spans.reduce(0) { max($0, $1.start + $1.rows.count) }
        ThreadPool.shared.parallelFor(n * heads) { lo, hi in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: longest) { buf in
                var hint = 0
                for idx in lo..<hi {
                    let h = idx / n, t = idx % n
                    let span = spans.span(containing: t, hint: &hint)
                    let length = span.start + (t - span.rows.lowerBound) + 1
                    let ql = UnsafePointer(qLat + (h * n + t) * r)
                    let qpe = UnsafePointer(q + t * qDim + h * qkDim + nope)
                    let view = span.cache.view(layer: layer), out = oLat + (h * n + t) * r
                    func run<F: KVRowFormat>(_: F.Type) {
                        attend(view, length: length, scale: scale, scores: buf.baseAddress!,
                               score: { latent, ropeKey in F.dot(ql, latent, count: r) + F.dot(qpe, ropeKey, count: rd) },
                               accumulate: { o, latent, _, p in F.addScaled(o, latent, scale: p, count: r) }, width: r,
                               out: out)
                    }
                    switch view.dtype {
                    case .f32: run(KVRowF32.self)
                    case .f16: run(KVRowF16.self)
                    case .bf16: run(KVRowBF16.self)
                    case .q8_0: run(KVRowQ8_0.self)
                    }
                }
            }
        }
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
