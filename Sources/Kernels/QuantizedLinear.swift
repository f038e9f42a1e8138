/// Linear layers over ggml block-quantized weights, computed on the packed blocks.
///
/// Decode (one token): for a 32-value block with scale `d` and offset `m` (Q4_1), or implied
/// offset `-8d` (Q4_0), `Σ_j (d·q_j + m)·x_j = d·Σ_j q_j·x_j + m·Σ_j x_j`. The block sums of `x`
/// are computed once per token, so each block costs its nibbles widened to fp32 and four
/// eight-lane FMAs, plus one FMA to scale the block's partial sum into the row's accumulator.
/// Four rows share every load of `x`.
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
            case .q4_1: return gemvBlocks32(Q41.self, w, x, y, acc)
            case .q4_0: return gemvBlocks32(Q40.self, w, x, y, acc)
            case .q8_0: return gemvBlocks32(Q80.self, w, x, y, acc)
            default: break
            }
        }
        decodedPanels(w, x, n, y, acc)
    }

    // MARK: decode GEMV

    static func gemvBlocks32<B: Block32>(_ b: B.Type, _ w: Matrix, _ x: UnsafePointer<Float>,
                                         _ y: UnsafeMutablePointer<Float>, _ acc: Bool) {
        let blocks = w.cols / 32
        // Block sums of x: `blocks` floats on the stack, once per call.
        withUnsafeTemporaryAllocation(of: Float.self, capacity: blocks) { sums in
            let s = sums.baseAddress!
            for i in 0..<blocks {
                let p = UnsafeRawPointer(x + 32 * i)
                let v = p.loadUnaligned(as: SIMD8<Float>.self) + p.loadUnaligned(fromByteOffset: 32, as: SIMD8<Float>.self)
                    + p.loadUnaligned(fromByteOffset: 64, as: SIMD8<Float>.self) + p.loadUnaligned(fromByteOffset: 96, as: SIMD8<Float>.self)
                s[i] = v.sum()
            }
            let pool = ThreadPool.shared
            if pool.threadCount == 1 || w.rows * w.cols < parallelThreshold || w.rows < 16 {
                gemvRows(b, w, x, UnsafePointer(s), y, acc, 0, w.rows)
            } else {
                pool.parallelFor(w.rows, granularity: 8) { lo, hi in gemvRows(b, w, x, UnsafePointer(s), y, acc, lo, hi) }
            }
        }
    }

    @inline(__always)
    static func gemvRows<B: Block32>(_ b: B.Type, _ w: Matrix, _ x: UnsafePointer<Float>, _ sums: UnsafePointer<Float>,
                                     _ y: UnsafeMutablePointer<Float>, _ acc: Bool, _ lo: Int, _ hi: Int) {
        let blocks = w.cols / 32, bb = B.blockBytes, stride = w.rowStride
        var r = lo
        while r + 4 <= hi {
            let p0 = w.data + r * stride, p1 = p0 + stride, p2 = p1 + stride, p3 = p2 + stride
            var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
            var o0: Float = 0, o1: Float = 0, o2: Float = 0, o3: Float = 0
            for i in 0..<blocks {
                let xp = UnsafeRawPointer(x + 32 * i)
                let x0 = xp.loadUnaligned(as: SIMD8<Float>.self), x1 = xp.loadUnaligned(fromByteOffset: 32, as: SIMD8<Float>.self)
                let x2 = xp.loadUnaligned(fromByteOffset: 64, as: SIMD8<Float>.self), x3 = xp.loadUnaligned(fromByteOffset: 96, as: SIMD8<Float>.self)
                let xs = sums[i], off = i * bb
                let ahead = off + 8 * stride
                prefetch(p0 + ahead); prefetch(p1 + ahead); prefetch(p2 + ahead); prefetch(p3 + ahead)
                B.accumulate(p0 + off, x0, x1, x2, x3, xs, &a0, &o0)
                B.accumulate(p1 + off, x0, x1, x2, x3, xs, &a1, &o1)
                B.accumulate(p2 + off, x0, x1, x2, x3, xs, &a2, &o2)
                B.accumulate(p3 + off, x0, x1, x2, x3, xs, &a3, &o3)
            }
            put(y + r, a0.sum() + o0, acc); put(y + r + 1, a1.sum() + o1, acc)
            put(y + r + 2, a2.sum() + o2, acc); put(y + r + 3, a3.sum() + o3, acc)
            r += 4
        }
        while r < hi {
            let p = w.data + r * stride
            var a = SIMD8<Float>(), o: Float = 0
            for i in 0..<blocks {
                let xp = UnsafeRawPointer(x + 32 * i)
                B.accumulate(p + i * bb, xp.loadUnaligned(as: SIMD8<Float>.self), xp.loadUnaligned(fromByteOffset: 32, as: SIMD8<Float>.self),
                             xp.loadUnaligned(fromByteOffset: 64, as: SIMD8<Float>.self), xp.loadUnaligned(fromByteOffset: 96, as: SIMD8<Float>.self),
                             sums[i], &a, &o)
            }
            put(y + r, a.sum() + o, acc)
            r += 1
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

/// A 32-value ggml block format for the decode GEMV: adds the block's `Σ w_j·x_j` into the
/// row's accumulators (`vec` gets `d · Σ q_j x_j` lane-wise, `offset` the block's `m · Σ x_j`).
@usableFromInline
protocol Block32 {
    static var blockBytes: Int { get }
    static func accumulate(_ p: UnsafeRawPointer, _ x0: SIMD8<Float>, _ x1: SIMD8<Float>, _ x2: SIMD8<Float>, _ x3: SIMD8<Float>,
                           _ xsum: Float, _ vec: inout SIMD8<Float>, _ offset: inout Float)
}

@inline(__always) @usableFromInline
func halfAt(_ p: UnsafeRawPointer, _ o: Int) -> Float { Float(Float16(bitPattern: p.loadUnaligned(fromByteOffset: o, as: UInt16.self))) }

/// Eight bytes widened to fp32 (`vpmovzxbd` + `vcvtdq2ps`); element-wise so it always inlines.
@inline(__always) @usableFromInline
func widen8(_ v: SIMD16<UInt8>, _ h: Int) -> SIMD8<Float> {
    let i = 8 * h
    return SIMD8<Float>(Float(v[i]), Float(v[i + 1]), Float(v[i + 2]), Float(v[i + 3]),
                        Float(v[i + 4]), Float(v[i + 5]), Float(v[i + 6]), Float(v[i + 7]))
}

/// Q4_1: `d: f16, m: f16, qs[16]`; values 0..<16 are the low nibbles, 16..<32 the high ones.
@usableFromInline
enum Q41: Block32 {
    @usableFromInline static var blockBytes: Int { 20 }
    @inline(__always) @usableFromInline
    static func accumulate(_ p: UnsafeRawPointer, _ x0: SIMD8<Float>, _ x1: SIMD8<Float>, _ x2: SIMD8<Float>, _ x3: SIMD8<Float>,
                           _ xsum: Float, _ vec: inout SIMD8<Float>, _ offset: inout Float) {
        let d = halfAt(p, 0), m = halfAt(p, 2)
        let q = p.loadUnaligned(fromByteOffset: 4, as: SIMD16<UInt8>.self)
        let lo = q & 0x0F, hi = q &>> 4
        var s = widen8(lo, 0) * x0
        s.addProduct(widen8(lo, 1), x1)
        s.addProduct(widen8(hi, 0), x2)
        s.addProduct(widen8(hi, 1), x3)
        vec.addProduct(s, SIMD8(repeating: d))
        offset += m * xsum
    }
}

/// Q4_0: `d: f16, qs[16]`, value `d·(q − 8)`: the −8 goes through the block sum of x.
@usableFromInline
enum Q40: Block32 {
    @usableFromInline static var blockBytes: Int { 18 }
    @inline(__always) @usableFromInline
    static func accumulate(_ p: UnsafeRawPointer, _ x0: SIMD8<Float>, _ x1: SIMD8<Float>, _ x2: SIMD8<Float>, _ x3: SIMD8<Float>,
                           _ xsum: Float, _ vec: inout SIMD8<Float>, _ offset: inout Float) {
        let d = halfAt(p, 0)
        let q = p.loadUnaligned(fromByteOffset: 2, as: SIMD16<UInt8>.self)
        let lo = q & 0x0F, hi = q &>> 4
        var s = widen8(lo, 0) * x0
        s.addProduct(widen8(lo, 1), x1)
        s.addProduct(widen8(hi, 0), x2)
        s.addProduct(widen8(hi, 1), x3)
        vec.addProduct(s, SIMD8(repeating: d))
        offset -= 8 * d * xsum
    }
}

/// Q8_0: `d: f16, qs: int8[32]`.
@usableFromInline
enum Q80: Block32 {
    @usableFromInline static var blockBytes: Int { 34 }
    @inline(__always) @usableFromInline
    static func widenSigned(_ v: SIMD16<UInt8>, _ h: Int) -> SIMD8<Float> {
        let i = 8 * h
        @inline(__always) func f(_ b: UInt8) -> Float { Float(Int8(bitPattern: b)) }
        return SIMD8<Float>(f(v[i]), f(v[i + 1]), f(v[i + 2]), f(v[i + 3]), f(v[i + 4]), f(v[i + 5]), f(v[i + 6]), f(v[i + 7]))
    }
    @inline(__always) @usableFromInline
    static func accumulate(_ p: UnsafeRawPointer, _ x0: SIMD8<Float>, _ x1: SIMD8<Float>, _ x2: SIMD8<Float>, _ x3: SIMD8<Float>,
                           _ xsum: Float, _ vec: inout SIMD8<Float>, _ offset: inout Float) {
        let d = halfAt(p, 0)
        let a = p.loadUnaligned(fromByteOffset: 2, as: SIMD16<UInt8>.self)
        let b = p.loadUnaligned(fromByteOffset: 18, as: SIMD16<UInt8>.self)
        var s = widenSigned(a, 0) * x0
        s.addProduct(widenSigned(a, 1), x1)
        s.addProduct(widenSigned(b, 0), x2)
        s.addProduct(widenSigned(b, 1), x3)
        vec.addProduct(s, SIMD8(repeating: d))
    }
}
