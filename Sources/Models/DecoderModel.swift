import Foundation
import Kernels
import Protocol

/// A decoder layer's feed-forward part: dense on the attention side, or sparse (routed experts on
/// the expert side, plus optional shared experts on the attention side).
public enum FeedForward {
    case dense(SwiGLU)
    case sparse(SparseMoE)
}

/// A sparse MoE block as the attention side runs it: route, ask the `ExpertBackend` for the
/// routed sum, add the shared expert (scaled by `sigmoid(sharedGate · x)` when present: Qwen2-MoE).
public struct SparseMoE {
    public let router: Router
    public let shared: SwiGLU?
    public let sharedGate: Matrix?
    /// Routed experts' intermediate size (for expert-side loading and accounting).
    public let expertIntermediate: Int
}

/// One decoder layer: pre-norm attention and pre-norm feed-forward, each with a residual.
public struct DecoderLayer {
    public let inputNorm: [Float]
    public let attention: AttentionLayer
    public let postAttentionNorm: [Float]
    public let feedForward: FeedForward
}

/// Which positions' logits a forward pass returns.
public enum LogitSelection: Sendable {
    case none, last, all
}

/// Per MoE layer and position, the experts a forward pass chose and their weights.
public final class RouteTrace {
    public struct Entry: Sendable {
        public let layer: Int
        public let position: Int
        public let experts: [Int]
        public let weights: [Float]
    }
    public private(set) var entries: [Entry] = []
    public init() {}
    func record(layer: Int, positions: ArraySlice<Int>, batch: RoutedBatch) {
        for (t, position) in positions.enumerated() {
            let r = t * batch.topK ..< (t + 1) * batch.topK
            entries.append(Entry(layer: layer, position: position,
                                 experts: batch.experts[r].map(Int.init), weights: Array(batch.weights[r])))
        }
    }
}

/// Loads routed expert `expert` of decoder layer `layer` from the model's weights.
public typealias ExpertLoader = (_ layer: Int, _ expert: Int) throws -> SwiGLU

/// A decoder-only transformer as the attention side runs it. The architecture files
/// (`LlamaForCausalLM.swift`, `DeepseekV3ForCausalLM.swift`, …) build one from their config and
/// weight-name table; routed experts are reached only through `experts`.
public final class DecoderModel {
    /// The Hugging Face class this model reproduces.
    public let architecture: String
    public let vocabSize: Int
    public let hidden: Int
    /// Positions a sequence may hold: the checkpoint's context (`max_position_embeddings`),
    /// unless `extendContext(to:)` raised it.
    public private(set) var maxPositions: Int
    public let normEps: Float
    public let embedding: Matrix
    public let layers: [DecoderLayer]
    public let finalNorm: [Float]
    public let lmHead: Matrix
    public let rope: RotaryEmbedding
    /// Tokens that end generation (config.json's `eos_token_id`, one or several).
    public let eosTokenIds: [Int]
    /// Reads routed experts' weights; the expert side calls it for the experts it holds.
    public let expertLoader: ExpertLoader
    /// Where routed experts are computed. Set before the first forward pass of a sparse model.
    public var experts: ExpertBackend?
    /// The weights' owner (a mapped checkpoint): every `Matrix` above points into it.
    public let weightSource: WeightSource

    let workspace = Workspace()
    var routed = [RoutedBatch](repeating: RoutedBatch(rows: 0, hidden: 0, topK: 0, experts: [], weights: []), count: 2)
    /// Smallest batch of a model with routed experts that runs as two micro-batches (ping-pong);
    /// `Int.max`, the default, never splits. Worth it when expert nodes run on other machines:
    /// where they share the coordinator's cores (`--local-nodes`) the overlap only contends for
    /// them (BENCHMARKS.md). Give the same value in process to get bit-identical results.
    public var pingPongMinTokens = Int.max
    lazy var hasSparseLayers = !sparseLayers.isEmpty
    var cosTable: [Float] = []
    var sinTable: [Float] = []
    var spanCos: [Float] = []
    var spanSin: [Float] = []

    public init(architecture: String, vocabSize: Int, hidden: Int, maxPositions: Int, normEps: Float,
                embedding: Matrix, layers: [DecoderLayer], finalNorm: [Float], lmHead: Matrix,
                rope: RotaryEmbedding, eosTokenIds: [Int], weightSource: WeightSource,
                expertLoader: @escaping ExpertLoader) {
        self.weightSource = weightSource
        self.architecture = architecture
        self.vocabSize = vocabSize
        self.hidden = hidden
        self.maxPositions = maxPositions
        self.normEps = normEps
        self.embedding = embedding
        self.layers = layers
        self.finalNorm = finalNorm
        self.lmHead = lmHead
        self.rope = rope
        self.eosTokenIds = eosTokenIds
        self.expertLoader = expertLoader
    }

    /// Indices of the layers with routed experts, and their expert counts.
    public var sparseLayers: [(layer: Int, experts: Int, router: Router)] {
        layers.enumerated().compactMap { i, l in
            if case .sparse(let m) = l.feedForward { return (i, m.router.expertCount, m.router) }
            return nil
        }
    }

    /// Bytes of weights one decode step reads: every attention-side matrix, one embedding row,
    /// the LM head, and `topK` routed experts per sparse layer (expert sizes taken from layer 0's
    /// loader view of expert 0, which all experts of a layer share).
    public func decodeWeightBytes() throws -> Int {
        var total = embedding.rowBytes + lmHead.byteCount
        for (i, l) in layers.enumerated() {
            total += l.attention.weightBytes
            switch l.feedForward {
            case .dense(let f): total += f.weightBytes
            case .sparse(let m):
                total += m.router.weight.byteCount + (m.shared?.weightBytes ?? 0) + (m.sharedGate?.byteCount ?? 0)
                total += m.router.topK * (try expertLoader(i, 0).weightBytes)
            }
        }
        return total
    }

    /// Lets sequences run to `positions` positions, past the trained context (RoPE is computed
    /// for any position; beyond the trained length the model's output is not meaningful). For
    /// speed measurements at lengths a small model was not trained to (`farside bench
    /// --context`), as llama-bench runs them.
    public func extendContext(to positions: Int) { maxPositions = max(maxPositions, positions) }

    /// A fresh, empty KV cache shaped for this model, with room for `capacity` positions to start
    /// with; neither that nor its growth goes beyond the model's context (`maxPositions`, whose
    /// cache size in bytes the loaders check fits), so any requested capacity is safe.
    public func makeCache(capacity: Int = 256) -> KVCache {
        KVCache(widths: layers.map { $0.attention.cacheWidths }, capacity: min(capacity, maxPositions), limit: maxPositions)
    }

    /// The same, storing rows as `dtype`; throws `KVCacheError.unsupportedDType` when this
    /// model's rows do not suit it (`checkKVDType`).
    public func makeCache(capacity: Int = 256, dtype: KVDType) throws -> KVCache {
        try checkKVDType(dtype)
        return KVCache(widths: layers.map { $0.attention.cacheWidths }, dtype: dtype, capacity: min(capacity, maxPositions),
                       limit: maxPositions)
    }

    /// Throws `KVCacheError.unsupportedDType` unless every row piece attention reads on its own
    /// (`AttentionLayer.cacheReadWidths`) is a whole number of `dtype`'s scale groups: q8_0
    /// needs multiples of 32 (a block may not straddle two heads); the float types suit any model.
    public func checkKVDType(_ dtype: KVDType) throws {
        for (i, l) in layers.enumerated() {
            let (a, b) = l.attention.cacheReadWidths
            for w in [a, b] where w % dtype.groupValues != 0 {
                throw KVCacheError.unsupportedDType(dtype, layer: i, width: w)
            }
        }
    }

    /// Bytes one position's KV takes over all layers, stored as `dtype`.
    public func kvBytesPerPosition(_ dtype: KVDType = .f32) -> Int {
        layers.reduce(0) { $0 + dtype.bytes($1.attention.cacheWidths.0) + dtype.bytes($1.attention.cacheWidths.1) }
    }

    /// A paged KV cache for this model: `budgetBytes` of blocks of `blockSize` positions, rows
    /// stored as `dtype`, shared by the sequences made from it (`KVCacheAllocator`). `identity`
    /// (e.g. the weights' path) goes into the prefix hashes' root with the model's shape and the
    /// dtype, so no other model's blocks (nor this model's in another dtype) match. Throws
    /// `KVCacheError` when the dtype does not suit the model (`checkKVDType`) or the budget
    /// holds no block.
    public func makeKVAllocator(blockSize: Int, budgetBytes: Int, dtype: KVDType = .f32, identity: String = "") throws -> KVCacheAllocator {
        try checkKVDType(dtype)
        let widths = layers.map { $0.attention.cacheWidths }
        let parts = [architecture, "\(vocabSize)", "\(hidden)", "\(maxPositions)", "\(layers.count)",
                     widths.map { "\($0.0)x\($0.1)" }.joined(separator: ","), "kv-dtype=\(dtype)", identity]
        return try KVCacheAllocator(widths: widths, dtype: dtype, blockSize: blockSize, budgetBytes: budgetBytes,
                                    fingerprint: BlockHash.fingerprint(parts))
    }

    /// Runs `tokens` at positions `cache.length ..< cache.length + tokens.count`, appends them to
    /// `cache`, and returns the selected logits row-major (`[rows, vocabSize]`).
    public func forward(_ tokens: [Int], cache: any KVStore, logits selection: LogitSelection = .last,
                        trace: RouteTrace? = nil) throws -> [Float] {
        guard !tokens.isEmpty else { throw ModelError.emptyInput }
        return try forward(.single(tokens, start: cache.length, logits: selection), caches: [cache], trace: trace)
    }

    /// Runs one step of several sequences (see `Batch` for the layout it requires): row `t`
    /// appends to `caches[batch.sequences[t]]`, attends over that sequence only, and the rows
    /// that want logits get them, returned row-major (`[batch.logitRows, vocabSize]`) in batch
    /// order. Every weight is read once for the whole step; all rows that reach a MoE layer go
    /// to the expert backend as one routed batch. On error no cache changes length.
    public func forward(_ batch: Batch, caches: [any KVStore], trace: RouteTrace? = nil) throws -> [Float] {
        let n = batch.count
        guard n > 0 else { throw ModelError.emptyInput }
        for t in batch.tokens where t < 0 || t >= vocabSize { throw ModelError.tokenOutOfRange(token: t, vocab: vocabSize) }
        let spans = try sequenceSpans(batch, caches: caches)
        for s in spans { try s.cache.reserve(additional: s.rows.count) }

        let d = hidden
        let h = workspace.buffer(0, count: n * d)
        let xn = workspace.buffer(1, count: n * d)
        let y = workspace.buffer(2, count: n * d)
        for (t, tok) in batch.tokens.enumerated() { embedding.widenRow(tok, into: h + t * d) }
        let half = rope.dim / 2
        if cosTable.count < n * half {
            cosTable = [Float](repeating: 0, count: n * half)
            sinTable = cosTable
        }
        for s in spans {
            rope.table(positions: s.start ..< s.start + s.rows.count, cos: &spanCos, sin: &spanSin)
            let o = s.rows.lowerBound * half, m = s.rows.count * half
            cosTable.withUnsafeMutableBufferPointer { $0.baseAddress!.advanced(by: o).update(from: spanCos, count: m) }
            sinTable.withUnsafeMutableBufferPointer { $0.baseAddress!.advanced(by: o).update(from: spanSin, count: m) }
        }

        // Micro-batches (ping-pong): a batch of routed tokens may run as two halves, each one layer
        // step apart, so that with a remote expert backend one half's attention overlaps the
        // other half's experts. The split depends only on `n` and the setting, never on the backend: a
        // matrix product's rounding depends on how many rows it is given: in process and
        // through any number of nodes the same rows meet the same kernels, bit for bit.
        let parts: [Range<Int>]
        if n >= pingPongMinTokens, hasSparseLayers {
            parts = [0 ..< n / 2, n / 2 ..< n]
        } else {
            parts = [0 ..< n]
        }
        let partSpans = parts.map { part in spans.compactMap { $0.clipped(to: part) } }
        var inFlight = [PendingFFN?](repeating: nil, count: parts.count)
        do {
            for (li, layer) in layers.enumerated() {
                for (pi, part) in parts.enumerated() {
                    if let p = inFlight[pi] {
                        try finishSparse(p, batchRows: n, h: h, y: y)
                        inFlight[pi] = nil
                    }
                    let m = part.count, o = part.lowerBound * d
                    for t in part { Elementwise.rmsNorm(h + t * d, weight: layer.inputNorm, eps: normEps, dim: d, output: xn + t * d) }
                    cosTable.withUnsafeBufferPointer { c in
                        sinTable.withUnsafeBufferPointer { s in
                            layer.attention.forward(xn + o, count: m, spans: partSpans[pi], layer: li,
                                                    cos: c.baseAddress! + part.lowerBound * half,
                                                    sin: s.baseAddress! + part.lowerBound * half,
                                                    output: y + o, workspace: workspace)
                        }
                    }
                    Elementwise.add(h + o, y + o, count: m * d)
                    for t in part { Elementwise.rmsNorm(h + t * d, weight: layer.postAttentionNorm, eps: normEps, dim: d, output: xn + t * d) }
                    switch layer.feedForward {
                    case .dense(let ffn):
                        ffn.forward(xn + o, count: m, output: y + o, scratch: workspace.buffer(3, count: 2 * m * ffn.intermediate))
                        Elementwise.add(h + o, y + o, count: m * d)
                    case .sparse(let moe):
                        inFlight[pi] = try beginSparse(moe, layer: li, part: pi, rows: part, batchRows: n, x: xn,
                                                        positions: batch.positions, output: y, trace: trace)
                    }
                }
            }
            for (pi, p) in inFlight.enumerated() {
                if let p { try finishSparse(p, batchRows: n, h: h, y: y) }
                inFlight[pi] = nil
            }
        } catch {
            for case let p? in inFlight { experts?.cancelExperts(p.step) }
            throw error
        }
        for s in spans { s.cache.commit(s.rows.count) }

        // The LM head only for the rows that want logits.
        let wanted = batch.logitRows
        guard wanted > 0 else { return [] }
        let normed = workspace.buffer(1, count: wanted * d)
        var i = 0
        for t in 0..<n where batch.wantsLogits[t] {
            Elementwise.rmsNorm(h + t * d, weight: finalNorm, eps: normEps, dim: d, output: normed + i * d)
            i += 1
        }
        var out = [Float](repeating: 0, count: wanted * vocabSize)
        out.withUnsafeMutableBufferPointer { o in
            Linear.forward(lmHead, input: normed, count: wanted, output: o.baseAddress!)
        }
        return out
    }

    /// The batch's runs of rows per sequence, checked against `Batch`'s contract: each sequence
    /// contiguous, at consecutive positions from its cache's length, within the context.
    func sequenceSpans(_ batch: Batch, caches: [any KVStore]) throws -> [SequenceSpan] {
        var spans: [SequenceSpan] = []
        var seen = Set<Int>()
        var t = 0
        while t < batch.count {
            let seq = batch.sequences[t]
            guard seq >= 0 && seq < caches.count else {
                throw ModelError.invalidBatch("row \(t) names sequence \(seq), but \(caches.count) caches were given")
            }
            guard seen.insert(seq).inserted else {
                throw ModelError.invalidBatch("sequence \(seq)'s rows are not contiguous in the batch (again at row \(t))")
            }
            let cache = caches[seq]
            var end = t
            while end < batch.count && batch.sequences[end] == seq {
                guard batch.positions[end] == cache.length + (end - t) else {
                    throw ModelError.invalidBatch("row \(end) of sequence \(seq) is at position \(batch.positions[end]), expected \(cache.length + (end - t)) (the cache holds \(cache.length))")
                }
                end += 1
            }
            guard cache.length + (end - t) <= maxPositions else {
                throw ModelError.contextOverflow(needed: cache.length + (end - t), limit: maxPositions)
            }
            spans.append(SequenceSpan(rows: t ..< end, cache: cache, start: cache.length))
            t = end
        }
        return spans
    }

    /// A sparse layer's step in flight for one micro-batch.
    struct PendingFFN {
        let moe: SparseMoE
        let step: ExpertStep
        let rows: Range<Int>
        /// The micro-batch's normalised input rows (the routed experts' and the shared expert's).
        let input: UnsafeMutablePointer<Float>
        /// The shared expert ran while the routed experts were away.
        let sharedDone: Bool
    }

    /// Routes one micro-batch, starts its routed experts, and computes its shared expert while
    /// they run when the backend says that pays (`ExpertBackend.overlapsSharedExpert`), else
    /// `finishSparse` does after they return. The shared output and gate go to workspace buffers
    /// 5 and 6 at the micro-batch's rows (sized for the whole batch by `forward`, so they are not
    /// reallocated in flight).
    private func beginSparse(_ moe: SparseMoE, layer: Int, part: Int, rows: Range<Int>, batchRows: Int,
                             x: UnsafeMutablePointer<Float>, positions: [Int], output: UnsafeMutablePointer<Float>,
                             trace: RouteTrace?) throws -> PendingFFN {
        guard let experts else {
            throw ModelError.invalidConfig("layer \(layer) has routed experts but no expert backend is attached")
        }
        let n = rows.count, d = hidden, xs = x + rows.lowerBound * d
        // One routing buffer per micro-batch: the backend may hold on to it until finished.
        routed[part].rows = n
        routed[part].hidden = d
        moe.router.route(xs, batch: &routed[part], logits: workspace.buffer(4, count: n * moe.router.expertCount))
        trace?.record(layer: layer, positions: positions[rows], batch: routed[part])
        let step = try experts.beginExperts(layer: layer, batch: routed[part], input: xs, output: output + rows.lowerBound * d)
        let overlap = experts.overlapsSharedExpert
        if overlap { sharedExpert(moe, rows: rows, batchRows: batchRows, input: xs) }
        return PendingFFN(moe: moe, step: step, rows: rows, input: xs, sharedDone: overlap)
    }

    /// The shared expert (and its gate, when present) for one micro-batch's rows, into workspace
    /// buffers 5 and 6.
    private func sharedExpert(_ moe: SparseMoE, rows: Range<Int>, batchRows: Int, input xs: UnsafeMutablePointer<Float>) {
        guard let shared = moe.shared else { return }
        let n = rows.count, d = hidden
        let s = workspace.buffer(5, count: batchRows * d) + rows.lowerBound * d
        shared.forward(xs, count: n, output: s, scratch: workspace.buffer(3, count: 2 * n * shared.intermediate))
        if let gate = moe.sharedGate {
            Linear.forward(gate, input: xs, count: n, output: workspace.buffer(6, count: batchRows) + rows.lowerBound)
        }
    }

    /// Waits for a micro-batch's routed experts, adds its shared expert (scaled by
    /// `sigmoid(gate · x)` when gated), and adds the result to the residual stream `h`.
    private func finishSparse(_ p: PendingFFN, batchRows: Int, h: UnsafeMutablePointer<Float>,
                              y: UnsafeMutablePointer<Float>) throws {
        try experts!.finishExperts(p.step)
        if !p.sharedDone { sharedExpert(p.moe, rows: p.rows, batchRows: batchRows, input: p.input) }
        let d = hidden
        if p.moe.shared != nil {
            let s = workspace.buffer(5, count: batchRows * d)
            let g = p.moe.sharedGate == nil ? nil : workspace.buffer(6, count: batchRows)
            for t in p.rows {
                if let g {
                    let sig = 1 / (1 + expf(-g[t]))
                    Elementwise.addScaled(y + t * d, s + t * d, scale: sig, count: d)
                } else {
                    Elementwise.add(y + t * d, s + t * d, count: d)
                }
            }
        }
        Elementwise.add(h + p.rows.lowerBound * d, y + p.rows.lowerBound * d, count: p.rows.count * d)
    }
}
