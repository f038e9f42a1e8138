import CQuantDot

/// Linear layers over ggml block-quantized weights, computed on the packed blocks.
///
/// Decode (one token): `x` is quantized once per call to int16 per 32-value block
/// (`x ≈ dx·qx`, `dx = max|x|/32767`, relative rounding error ≤ 1.5e-5 of the block's largest
/// value), then every weight block costs an exact int32 dot of its integer values with `qx`
/// (`vpmaddwd`) scaled by `d·dx` into an fp32 accumulator; the offsets (`m·Σx` for Q4_1, `−8d·Σx`
/// for Q4_0) use the exact fp32 block sums of `x`. The kernel is C (Sources/CQuantDot): Swift's
/// SIMD types give no 16-bit multiply-add (BENCHMARKS.md has both measured).
///
/// Batches: each thread decodes a panel of rows into fp32 once and runs the fp32 kernels over
/// all tokens, so decoding is amortised across the batch (k-quants and any batch take this path
/// at n > 1; for n == 1 the k-quants use it too, decoding one panel per call).
extension Linear {
    /// Rows decoded per panel in the batched path: 64 rows × 1536 columns of fp32 = 384 KiB.
    static let panelRows = 64

    static func quantized(_ w: Matrix, _ x: UnsafePointer<Float>, _ n: Int, _ y: UnsafeMutablePointer<Float>, _ acc: Bool) {
        if n == 1 {
            switch w.dtype {
            case .q4_1: return gemvInt16(w, x, y, acc, fs_gemv_q4_1)
            case .q4_0: return gemvInt16(w, x, y, acc, fs_gemv_q4_0)
            case .q8_0: return gemvInt16(w, x, y, acc, fs_gemv_q8_0)
            default: break
            }
        }
        decodedPanels(w, x, n, y, acc)
    }

    // MARK: decode GEMV

    typealias BlockGEMV = @convention(c) (UnsafePointer<UInt8>?, Int, Int32, Int32, UnsafePointer<Int16>?,
                                          UnsafePointer<Float>?, UnsafePointer<Float>?, UnsafeMutablePointer<Float>?, Int32) -> Void

    static func gemvInt16(_ w: Matrix, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ acc: Bool,
                          _ kernel: BlockGEMV) {
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
                let pool = ThreadPool.shared
                if pool.threadCount == 1 || w.rows * w.cols < parallelThreshold || w.rows < 16 {
                    run(0, w.rows)
                } else {
                    pool.parallelFor(w.rows, granularity: 8, run)
                }
            }
        }
    }

    // MARK: batched: decode panels, then the fp32 kernels

    static func decodedPanels(_ w: Matrix, _ x: UnsafePointer<Float>, _ n: Int, _ y: UnsafeMutablePointer<Float>, _ acc: Bool) {
        let pool = ThreadPool.shared, rows = w.rows, cols = w.cols
        let work: (Int, Int) -> Void = { lo, hi in
            // One panel buffer per work range (a batch call, not per token).
            let panel = UnsafeMutablePointer<Float>.allocate(capacity: panelRows * cols)
            defer { panel.deallocate() }
            var r0 = lo
            while r0 < hi {
                let r1 = min(hi, r0 + panelRows)
                for r in r0..<r1 {
                    Quantized.dequantizeRow(w.dtype, w.data + r * w.rowStride, cols: cols, into: panel + (r - r0) * cols)
                }
                // A float view whose rows r0..<r1 are the panel (rows outside are never read),
                // so the fp32 kernels store straight into y's columns r0..<r1.
                let view = Matrix(data: UnsafeRawPointer(panel) - r0 * cols * 4, dtype: .f32, rows: rows, cols: cols)
                if n >= packedMinTokens {
                    gemmPacked(F32Format.self, view, x, n, y, acc, r0, r1)
                } else if n > 1 {
                    gemm(F32Format.self, view, BatchInput(x: x, xv: x, xvStride: cols, cols: cols), n, y, acc, r0, r1)
                } else {
                    gemv(F32Format.self, view, x, y, acc, r0, r1)
                }
                r0 = r1
            }
        }
        if pool.threadCount == 1 || rows * cols * n < parallelThreshold {
            work(0, rows)
        } else {
            let g = max(packRows, (rows + 4 * pool.threadCount - 1) / (4 * pool.threadCount) / packRows * packRows)
            pool.parallelFor(rows, granularity: g, work)
        }
    }
}
