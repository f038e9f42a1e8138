import CQuantDot

/// Linear layers over ggml block-quantized weights, computed on the packed blocks.
///
/// Decode (one token): `x` is quantized once per call to int16 per 32-value block
/// (`x ≈ dx·qx`, `dx = max|x|/32767`, relative rounding error ≤ 1.5e-5 of the block's largest
/// value), then every weight block costs an exact int32 dot of its integer values with `qx`
/// (`vpmaddwd`) scaled by `d·dx` into an fp32 accumulator; the offsets (`m·Σx` for Q4_1, `−8d·Σx`
/// for Q4_0) use the exact fp32 block sums of `x`. The kernel is C (Sources/CQuantDot): Swift's
/// SIMD types give no 16-bit multiply-add (BENCHMARKS.md has both measured). INT4 weights take
/// fp32 activations instead (`Int4Linear.swift`).
///
/// The k-quants (Q4_K, Q5_K, Q6_K) take the same path: their 32-value sub-blocks (Q6_K: pairs
/// of 16) meet one activation block each, with the sub-block scales applied in fp32.
///
/// Batch invariance: this block dot is the canonical arithmetic of a quantized row for every
/// token count. Each token's activations are quantized on their own (the int16 values, scales
/// and sums of a token depend only on that token), and every row of the C kernels runs the same
/// per-row instruction sequence whichever rows share its group (CQuantDot), so `y[t, r]` has
/// the same bits alone or in any batch, on any thread split. Batches (`gemmInt16`) go over
/// groups of `int16GroupBytes` of rows, which stay in L1/L2 while every token passes (the weights
/// are read from memory once per call, `rowGroups`): Q4_1, Q4_0 and Q8_0 through a token-tiled C kernel that
/// decodes each weight block once per four tokens and runs the GEMV's per-row instructions, the
/// k-quants through the GEMV token after token.
extension Linear {
    /// Bytes of weight rows a batched call runs through every token before moving on: they stay
    /// in L2 (512 KiB a core here) while the token chunks pass, so they are read from memory once
    /// per call.
    static let int16GroupBytes = 256 << 10

    /// Tokens per kernel call: 16 tokens of int16 activations over 576 columns are 18 KiB, in L1
    /// while a row group passes. One layer of SmolLM2 (Q4_1, one thread, loaded machine):
    /// 36-47 GFLOP/s at 16-24 tokens this way; 21-29 when 32-row groups met every token at once
    /// with no prefetch.
    static let int16ChunkTokens = 16

    static func quantized(_ w: Matrix, _ x: UnsafePointer<Float>, _ n: Int, _ y: UnsafeMutablePointer<Float>, _ acc: Bool,
                          _ pool: ThreadPool) {
        if w.dtype == .int4 { return int4(w, x, n, y, acc, pool) }
        guard let kernel = int16Kernel(w.dtype) else { return quantizedReference(w, x, n, y, acc) }
        if n == 1 { return gemvInt16(w, x, y, acc, kernel, pool) }
        gemmInt16(w, x, n, y, acc, kernel, pool)
    }

    typealias BlockGEMM = @convention(c) (UnsafePointer<UInt8>?, Int, Int32, Int32, Int32, UnsafePointer<Int16>?,
                                          UnsafePointer<Float>?, UnsafePointer<Float>?, UnsafeMutablePointer<Float>?, Int, Int32) -> Void

    /// The token-tiled batch kernel (each weight block decoded once per four tokens), where one
    /// exists; k-quants run the GEMV token after token.
    static func int16BatchKernel(_ d: DType) -> BlockGEMM? {
        switch d {
        case .q4_1: return fs_gemm_q4_1
        case .q4_0: return fs_gemm_q4_0
        case .q8_0: return fs_gemm_q8_0
        default: return nil
        }
    }

    static func int16Kernel(_ d: DType) -> BlockGEMV? {
        switch d {
        case .q4_1: return fs_gemv_q4_1
        case .q4_0: return fs_gemv_q4_0
        case .q8_0: return fs_gemv_q8_0
        case .q4_K: return fs_gemv_q4_k
        case .q5_K: return fs_gemv_q5_k
        case .q6_K: return fs_gemv_q6_k
        default: return nil
        }
    }

    /// `y₁ = W₁·x`, `y₂ = W₂·x` (and `y₃ = W₃·x`): matrices that read the same input, as q/k/v
    /// and gate/up do. For one token on the int16 GEMV path (`x` quantized once) or INT4, one
    /// parallel loop covers all their rows — one synchronisation of the pool instead of three;
    /// otherwise each product runs on its own. Results equal separate `forward` calls.
    public static func forward(_ w1: Matrix, _ w2: Matrix, _ w3: Matrix? = nil, input x: UnsafePointer<Float>, count: Int,
                               outputs y1: UnsafeMutablePointer<Float>, _ y2: UnsafeMutablePointer<Float>,
                               _ y3: UnsafeMutablePointer<Float>? = nil) {
        let kernel = int16Kernel(w1.dtype)
        guard count == 1, kernel != nil || w1.dtype == .int4, w2.dtype == w1.dtype, w3 == nil || w3!.dtype == w1.dtype,
              w1.cols == w2.cols, w3 == nil || w3!.cols == w1.cols, w1.cols > 0, y3 == nil || w3 != nil
        else {
            forward(w1, input: x, count: count, output: y1)
            forward(w2, input: x, count: count, output: y2)
            if let w3, let y3 { forward(w3, input: x, count: count, output: y3) }
            return
        }
        guard let kernel else {
            return sharedInputRows(w1, w2, w3, y1, y2, y3) { w, y, lo, hi in int4Rows(w, x, y, false, lo, hi) }
        }
        let blocks = w1.cols / 32
        withUnsafeTemporaryAllocation(of: Int16.self, capacity: w1.cols) { q in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * blocks) { f in
                let qx = UnsafePointer(q.baseAddress!), scale = f.baseAddress!, sums = scale + blocks
                fs_quantize_i16(x, Int32(blocks), q.baseAddress!, scale, sums)
                sharedInputRows(w1, w2, w3, y1, y2, y3) { w, y, lo, hi in
                    let base = w.data.assumingMemoryBound(to: UInt8.self)
                    kernel(base + lo * w.rowStride, w.rowStride, Int32(hi - lo), Int32(blocks), qx, scale, sums, y + lo, 0)
                }
            }
        }
    }

    /// One parallel loop over the concatenated rows of `w1`, `w2` (and `w3`): `part(w, y, lo, hi)`
    /// computes rows `lo ..< hi` (non-empty) of one of them into its output.
    static func sharedInputRows(_ w1: Matrix, _ w2: Matrix, _ w3: Matrix?, _ y1: UnsafeMutablePointer<Float>,
                                _ y2: UnsafeMutablePointer<Float>, _ y3: UnsafeMutablePointer<Float>?,
                                _ part: (Matrix, UnsafeMutablePointer<Float>, Int, Int) -> Void) {
        let r1 = w1.rows, r12 = r1 + w2.rows, total = r12 + (w3?.rows ?? 0)
        // Global row range [lo, hi) over the concatenated rows of w1, w2, w3.
        func run(_ lo: Int, _ hi: Int) {
            if lo < min(hi, r1) { part(w1, y1, lo, min(hi, r1)) }
            if max(lo, r1) < min(hi, r12) { part(w2, y2, max(lo, r1) - r1, min(hi, r12) - r1) }
            if let w3, let y3, max(lo, r12) < hi { part(w3, y3, max(lo, r12) - r12, hi - r12) }
        }
        let pool = ThreadPool.shared
        if pool.threadCount == 1 || total * w1.cols < parallelThreshold || total < 16 {
            run(0, total)
        } else {
            pool.parallelFor(total, granularity: 8) { lo, hi in run(lo, hi) }
        }
    }

    // MARK: decode GEMV

    typealias BlockGEMV = @convention(c) (UnsafePointer<UInt8>?, Int, Int32, Int32, UnsafePointer<Int16>?,
                                          UnsafePointer<Float>?, UnsafePointer<Float>?, UnsafeMutablePointer<Float>?, Int32) -> Void

    static func gemvInt16(_ w: Matrix, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ acc: Bool,
                          _ kernel: BlockGEMV, _ pool: ThreadPool) {
        let blocks = w.cols / 32
        // The quantized x (2 bytes a value) and its block scales and sums: on the stack, once per call.
        withUnsafeTemporaryAllocation(of: Int16.self, capacity: w.cols) { q in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * blocks) { f in
                let qx = UnsafePointer(q.baseAddress!), scale = f.baseAddress!, sums = scale + blocks
                fs_quantize_i16(x, Int32(blocks), q.baseAddress!, scale, sums)
                let base = w.data.assumingMemoryBound(to: UInt8.self), stride = w.rowStride
                let run = { (lo: Int, hi: Int) in
                    kernel(base + lo * stride, stride, Int32(hi - lo), Int32(blocks), qx, scale, sums, y + lo, acc ? 1 : 0)
                }
                if pool.threadCount == 1 || w.rows * w.cols < parallelThreshold || w.rows < 16 {
                    run(0, w.rows)
                } else {
                    pool.parallelFor(w.rows, granularity: 8, run)
                }
            }
        }
    }

    // MARK: batched: the GEMV kernel token after token over row groups

    static func gemmInt16(_ w: Matrix, _ x: UnsafePointer<Float>, _ n: Int, _ y: UnsafeMutablePointer<Float>, _ acc: Bool,
                          _ kernel: BlockGEMV, _ pool: ThreadPool) {
        let rows = w.rows, cols = w.cols, blocks = cols / 32
        // Every token's quantized activations (2 bytes a value) and block scales and sums: one
        // allocation per call, which may be too large for the stack.
        let q = UnsafeMutablePointer<Int16>.allocate(capacity: n * cols)
        let f = UnsafeMutablePointer<Float>.allocate(capacity: 2 * n * blocks)
        defer { q.deallocate(); f.deallocate() }
        let scale = f, sums = f + n * blocks
        for t in 0..<n { fs_quantize_i16(x + t * cols, Int32(blocks), q + t * cols, scale + t * blocks, sums + t * blocks) }
        let base = w.data.assumingMemoryBound(to: UInt8.self), stride = w.rowStride
        let tiled = int16BatchKernel(w.dtype)
        rowGroups(w, n, chunk: int16ChunkTokens, pool) { r0, r1, c0, c1 in
            if let tiled {
                tiled(base + r0 * stride, stride, Int32(r1 - r0), Int32(blocks), Int32(c1 - c0), q + c0 * cols,
                      scale + c0 * blocks, sums + c0 * blocks, y + c0 * rows + r0, rows, acc ? 1 : 0)
            } else {
                for t in c0..<c1 {
                    kernel(base + r0 * stride, stride, Int32(r1 - r0), Int32(blocks), q + t * cols,
                           scale + t * blocks, sums + t * blocks, y + t * rows + r0, acc ? 1 : 0)
                }
            }
        }
    }

    /// The schedule of a batched call over packed rows: `body(r0, r1, c0, c1)` computes rows
    /// `r0 ..< r1` for tokens `c0 ..< c1`. Row groups of `int16GroupBytes` stay in L2 while
    /// chunks of `chunk` tokens pass over them, so the weights are read from memory once per
    /// call; the pool's threads split the row groups, or the tokens when there are few rows.
    static func rowGroups(_ w: Matrix, _ n: Int, chunk: Int, _ pool: ThreadPool,
                          _ body: (Int, Int, Int, Int) -> Void) {
        let rows = w.rows
        let group = max(4, int16GroupBytes / max(1, w.rowStride))
        func run(_ lo: Int, _ hi: Int, _ t0: Int, _ t1: Int) {
            var r0 = lo
            while r0 < hi {
                let r1 = min(hi, r0 + group)
                var c0 = t0
                while c0 < t1 {
                    let c1 = min(t1, c0 + chunk)
                    body(r0, r1, c0, c1)
                    c0 = c1
                }
                r0 = r1
            }
        }
        if pool.threadCount == 1 || rows * w.cols * n < parallelThreshold {
            run(0, rows, 0, n)
        } else if rows >= group * pool.threadCount {
            pool.parallelFor(rows, granularity: group) { lo, hi in run(lo, hi, 0, n) }
        } else {
            // Few rows, many tokens: split the tokens.
            pool.parallelFor(n) { lo, hi in run(0, rows, lo, hi) }
        }
    }
}
