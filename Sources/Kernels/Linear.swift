/// Storage formats the linear kernels read, widened to fp32 in registers eight at a time.
///
/// Every load is unaligned-safe: weights usually sit inside a memory-mapped checkpoint, where
/// only the element size's alignment (2 bytes for f16/bf16, 4 for f32) is guaranteed.
@usableFromInline
protocol WeightFormat {
    /// Bytes per stored element.
    static var byteSize: Int { get }
    /// Elements `0..<8` at `p`, widened to fp32.
    static func load8(_ p: UnsafeRawPointer) -> SIMD8<Float>
    /// Element `0` at `p`, widened to fp32.
    static func load1(_ p: UnsafeRawPointer) -> Float
    /// Whether `load16` returns elements in even/odd order rather than `0..<8`, `8..<16`. The
    /// kernels then read the input through a copy permuted the same way (`permute16`), so every
    /// dot product is unchanged.
    static var evenOdd: Bool { get }
    /// Elements `0..<16` at `p`, widened to fp32, as two vectors (in even/odd order if `evenOdd`).
    static func load16(_ p: UnsafeRawPointer) -> (SIMD8<Float>, SIMD8<Float>)
}

extension WeightFormat {
    @inline(__always) @usableFromInline
    static var evenOdd: Bool { false }
    @inline(__always) @usableFromInline
    static func load16(_ p: UnsafeRawPointer) -> (SIMD8<Float>, SIMD8<Float>) { (load8(p), load8(p + 8 * byteSize)) }
}

@usableFromInline
enum F32Format: WeightFormat {
    @usableFromInline static var byteSize: Int { 4 }
    @inline(__always) @usableFromInline
    static func load8(_ p: UnsafeRawPointer) -> SIMD8<Float> { p.loadUnaligned(as: SIMD8<Float>.self) }
    @inline(__always) @usableFromInline
    static func load1(_ p: UnsafeRawPointer) -> Float { p.loadUnaligned(as: Float.self) }
}

/// IEEE half: one `vcvtph2ps` (F16C) per eight elements.
@usableFromInline
enum F16Format: WeightFormat {
    @usableFromInline static var byteSize: Int { 2 }
    @inline(__always) @usableFromInline
    static func load8(_ p: UnsafeRawPointer) -> SIMD8<Float> {
        let h = unsafeBitCast(p.loadUnaligned(as: SIMD8<UInt16>.self), to: SIMD8<Float16>.self)
        return SIMD8(Float(h[0]), Float(h[1]), Float(h[2]), Float(h[3]), Float(h[4]), Float(h[5]), Float(h[6]), Float(h[7]))
    }
    @inline(__always) @usableFromInline
    static func load1(_ p: UnsafeRawPointer) -> Float { Float(Float16(bitPattern: p.loadUnaligned(as: UInt16.self))) }
}

/// bfloat16 is the top half of an IEEE float. Eight at a time in order: zero-extend to 32 bits
/// and shift left by 16 (`vpmovzxwd` + `vpslld`). Sixteen at a time (the batched kernels, where
/// the widening competes with the FMAs for execution ports): read them as eight 32-bit words;
/// a 16-bit shift gives the even elements and masking the low half the odd ones, two integer ops
/// per sixteen weights, at the price of the input being read in even/odd order.
///
/// Every operation used here is `@_transparent` in the standard library (the element-wise
/// initializer, `&<<`, `&`), so it always inlines; the generic
/// `SIMD8<UInt32>(truncatingIfNeeded:)` may be left as an out-of-line call in large functions.
@usableFromInline
enum BF16Format: WeightFormat {
    @usableFromInline static var byteSize: Int { 2 }
    @inline(__always) @usableFromInline
    static func load8(_ p: UnsafeRawPointer) -> SIMD8<Float> {
        let u = p.loadUnaligned(as: SIMD8<UInt16>.self)
        let wide = SIMD8<UInt32>(UInt32(u[0]) &<< 16, UInt32(u[1]) &<< 16, UInt32(u[2]) &<< 16, UInt32(u[3]) &<< 16,
                                 UInt32(u[4]) &<< 16, UInt32(u[5]) &<< 16, UInt32(u[6]) &<< 16, UInt32(u[7]) &<< 16)
        return unsafeBitCast(wide, to: SIMD8<Float>.self)
    }
    @inline(__always) @usableFromInline
    static func load1(_ p: UnsafeRawPointer) -> Float { Float(bitPattern: UInt32(p.loadUnaligned(as: UInt16.self)) << 16) }
    @usableFromInline static var evenOdd: Bool { true }
    @inline(__always) @usableFromInline
    static func load16(_ p: UnsafeRawPointer) -> (SIMD8<Float>, SIMD8<Float>) {
        let u = p.loadUnaligned(as: SIMD8<UInt32>.self)
        return (unsafeBitCast(u &<< 16, to: SIMD8<Float>.self),
                unsafeBitCast(u & SIMD8(repeating: 0xFFFF_0000), to: SIMD8<Float>.self))
    }
}

/// The input of a batched call: `x` `[n, cols]` row-major, and the view the 16-column loops
/// read (`xv`, rows `xvStride` apart): `x` itself, or its even/odd-permuted copy.
struct BatchInput {
    var x: UnsafePointer<Float>
    var xv: UnsafePointer<Float>
    var xvStride: Int
    var cols: Int

    /// Token `t`'s row of `x` and of `xv`.
    @inline(__always) func row(_ t: Int) -> (UnsafePointer<Float>, UnsafePointer<Float>) { (x + t * cols, xv + t * xvStride) }

    /// The same input from token `t` on.
    @inline(__always) func dropping(_ t: Int) -> BatchInput {
        BatchInput(x: x + t * cols, xv: xv + t * xvStride, xvStride: xvStride, cols: cols)
    }
}

/// LLVM's prefetch intrinsic, reached by its symbol name (Swift has no prefetch API; LLVM
/// treats a call to `llvm.*` as the intrinsic, and it compiles to one `prefetcht0`). Should a
/// future compiler stop accepting this, the build fails loudly (unknown intrinsic or undefined
/// symbol) rather than miscompiling.
@_silgen_name("llvm.prefetch.p0")
func llvmPrefetch(_ address: UnsafeRawPointer, _ write: Int32, _ locality: Int32, _ dataCache: Int32)

/// Asks for the cache line at `p` to be brought into all cache levels (never faults).
@inline(__always)
func prefetch(_ p: UnsafeRawPointer) { llvmPrefetch(p, 0, 3, 1) }

@inline(__always)
private func loadX(_ x: UnsafePointer<Float>, _ c: Int) -> SIMD8<Float> {
    UnsafeRawPointer(x + c).loadUnaligned(as: SIMD8<Float>.self)
}

/// Dense linear layers over weights in any `DType`, accumulating in fp32.
///
/// Three paths, chosen by the number of tokens:
/// - `count == 1` (decode GEMV, memory-bound): each thread reads its rows as eight long
///   sequential streams (eight distant rows at a time, each stream moving on to the next row
///   in memory), which keeps the hardware prefetchers fed even when rows are short.
/// - `2 ..< packedMinTokens` (batched experts, short prefills): 3-row × 3-token register tiles
///   over rows read as three streams, weights widened in registers 16 at a time (bf16 in
///   even/odd order against an input copy permuted to match).
/// - `packedMinTokens...` (prefill): 16-row slivers widened and transposed once into an L1
///   buffer, 6-token × 16-row outer-product register tiles (no horizontal sums).
///
/// Numerics: fp32 products and sums throughout. The dot-product paths keep eight partial sums
/// per row (SIMD lanes), folded into the row total every `columnBlock` columns; the packed path
/// keeps one running sum per output over `packColumns` columns, then adds it into `y`. Results
/// differ from a sequential sum by rounding only (tests: within 2e-6 of Σ|x·w| at 8192
/// columns), and may differ in the last bits between paths (a token's result can depend on
/// how many tokens were in its batch).
public enum Linear {
    /// Below this many multiply-adds a call runs on the calling thread: waking the pool costs more.
    static let parallelThreshold = 1 << 15

    /// Columns summed in SIMD lanes (GEMV and small batches) before being folded into the row
    /// total, which bounds how many products one fp32 running sum takes; also the column block
    /// of the small-batch path (a 3-row group's weights for one block stay in L1 across token
    /// tiles; there a trailing remainder under half a block joins the last block).
    static let columnBlock = 1024

    /// How far ahead (bytes) the small-batch kernels prefetch each weight row. Their three
    /// streams do enough arithmetic per byte that the out-of-order window alone no longer keeps
    /// enough loads in flight; prefetching took 2- and 3-token batches (4096×4096 bf16, one thread)
    /// from ~15 to ~20 GB/s of weights.
    static let prefetchAhead = 512

    /// Batches of at least this many tokens take the packed outer-product path (`gemmPacked`);
    /// smaller ones the streaming dot-product path (`gemm`).
    static let packedMinTokens = 48

    /// `y[t, r] = Σ_c x[t, c] · W[r, c]` for `t in 0..<count`, i.e. `y = x · Wᵀ`, with
    /// `x` `[count, w.cols]` and `y` `[count, w.rows]` (both row-major fp32).
    /// With `accumulate`, adds into `y` instead of overwriting it. Work is split across the
    /// shared `ThreadPool` (over rows, or over tokens when there are few rows).
    /// `y` must not overlap `x` or the weights.
    public static func forward(
        _ w: Matrix, input x: UnsafePointer<Float>, count: Int,
        output y: UnsafeMutablePointer<Float>, accumulate: Bool = false
    ) {
        guard count > 0, w.rows > 0 else { return }
        guard w.cols > 0 else {
            if !accumulate { y.update(repeating: 0, count: count * w.rows) }
            return
        }
        switch w.dtype {
        case .bf16: dispatch(BF16Format.self, w, x, count, y, accumulate)
        case .f16: dispatch(F16Format.self, w, x, count, y, accumulate)
        case .f32: dispatch(F32Format.self, w, x, count, y, accumulate)
        case .q8_0, .q4_0, .q4_1, .q4_K, .q5_K, .q6_K: quantized(w, x, count, y, accumulate)
        }
    }

    /// Quantized weights, the plain way: each row decoded to fp32 and dotted with every token.
    /// Correct for every block format; the fast kernels replace it.
    static func quantizedReference(_ w: Matrix, _ x: UnsafePointer<Float>, _ n: Int,
                                   _ y: UnsafeMutablePointer<Float>, _ acc: Bool) {
        let rows = w.rows, cols = w.cols
        ThreadPool.shared.parallelFor(rows, granularity: 4) { lo, hi in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: cols) { buf in
                let row = buf.baseAddress!
                for r in lo..<hi {
                    Quantized.dequantizeRow(w.dtype, w.data + r * w.rowStride, cols: cols, into: row)
                    for t in 0..<n {
                        var s: Float = 0
                        let xt = x + t * cols
                        for c in 0..<cols { s += row[c] * xt[c] }
                        put(y + t * rows + r, s, acc)
                    }
                }
            }
        }
    }

    static func dispatch<F: WeightFormat>(_ f: F.Type, _ w: Matrix, _ x: UnsafePointer<Float>, _ n: Int,
                                          _ y: UnsafeMutablePointer<Float>, _ acc: Bool) {
        let pool = ThreadPool.shared, rows = w.rows, cols = w.cols
        let serial = pool.threadCount == 1 || rows * cols * n < parallelThreshold
        if n == 1 {
            if serial || rows < 16 {
                gemv(f, w, x, y, acc, 0, rows)
            } else {
                pool.parallelFor(rows, granularity: 8) { lo, hi in gemv(f, w, x, y, acc, lo, hi) }
            }
            return
        }
        if n >= packedMinTokens {
            if serial {
                gemmPacked(f, w, x, n, y, acc, 0, rows)
            } else if rows >= 32 * pool.threadCount {
                pool.parallelFor(rows, granularity: packRows) { lo, hi in gemmPacked(f, w, x, n, y, acc, lo, hi) }
            } else {
                // Few rows, many tokens (e.g. a router): split the tokens instead.
                pool.parallelFor(n, granularity: tileTokens) { lo, hi in
                    let xs = x + lo * cols, ys = y + lo * rows, m = hi - lo
                    m >= packedMinTokens ? gemmPacked(f, w, xs, m, ys, acc, 0, rows) : gemmSmall(f, w, xs, m, ys, acc)
                }
            }
            return
        }
        withBatchInput(f, x, n, cols) { input in
            if serial {
                gemm(f, w, input, n, y, acc, 0, rows)
            } else if rows >= 8 * pool.threadCount {
                pool.parallelFor(rows, granularity: 3) { lo, hi in gemm(f, w, input, n, y, acc, lo, hi) }
            } else {
                pool.parallelFor(n, granularity: 3) { lo, hi in
                    gemm(f, w, input.dropping(lo), hi - lo, y + lo * rows, acc, 0, rows)
                }
            }
        }
    }

    /// A serial small-batch call (the token-split path's leftovers).
    static func gemmSmall<F: WeightFormat>(_ f: F.Type, _ w: Matrix, _ x: UnsafePointer<Float>, _ n: Int,
                                           _ y: UnsafeMutablePointer<Float>, _ acc: Bool) {
        withBatchInput(f, x, n, w.cols) { input in gemm(f, w, input, n, y, acc, 0, w.rows) }
    }

    /// Calls `body` with the input as `F`'s 16-column loads want it: `x` itself, or (bf16) a
    /// copy whose every 16-column block is permuted to even/odd order (columns past the last
    /// full block are not copied: the kernels read them from `x`).
    @inline(__always)
    static func withBatchInput<F: WeightFormat>(_ f: F.Type, _ x: UnsafePointer<Float>, _ n: Int, _ cols: Int,
                                                _ body: (BatchInput) -> Void) {
        guard F.evenOdd else {
            body(BatchInput(x: x, xv: x, xvStride: cols, cols: cols))
            return
        }
        let vec = cols & ~15
        withUnsafeTemporaryAllocation(of: Float.self, capacity: max(1, n * vec)) { buf in
            let p = buf.baseAddress!
            for t in 0..<n {
                let src = x + t * cols, dst = p + t * vec
                var c = 0
                while c < vec {
                    let a = UnsafeRawPointer(src + c).loadUnaligned(as: SIMD8<Float>.self)
                    let b = UnsafeRawPointer(src + c + 8).loadUnaligned(as: SIMD8<Float>.self)
                    UnsafeMutableRawPointer(dst + c).storeBytes(
                        of: SIMD8(a[0], a[2], a[4], a[6], b[0], b[2], b[4], b[6]), as: SIMD8<Float>.self)
                    UnsafeMutableRawPointer(dst + c + 8).storeBytes(
                        of: SIMD8(a[1], a[3], a[5], a[7], b[1], b[3], b[5], b[7]), as: SIMD8<Float>.self)
                    c += 16
                }
            }
            body(BatchInput(x: x, xv: UnsafePointer(p), xvStride: vec, cols: cols))
        }
    }

    @inline(__always)
    static func put(_ y: UnsafeMutablePointer<Float>, _ v: Float, _ add: Bool) {
        if add { y.pointee += v } else { y.pointee = v }
    }

    // MARK: GEMV

    /// Rows `lo ..< hi` for one token: rows `lo + j + k·per` for `k in 0..<8` together, so each
    /// thread reads eight sequential streams. Leftover rows (fewer than eight) go one at a time.
    @inline(__always)
    static func gemv<F: WeightFormat>(_ f: F.Type, _ w: Matrix, _ x: UnsafePointer<Float>,
                                      _ y: UnsafeMutablePointer<Float>, _ acc: Bool, _ lo: Int, _ hi: Int) {
        let cols = w.cols, rb = w.rowStride, vecEnd = cols & ~7, es = F.byteSize
        let per = (hi - lo) / 8
        if per > 0 {
            let sb = per * rb
            for j in 0..<per {
                let r = lo + j
                let p = w.data + r * rb
                var s = SIMD8<Float>()
                var c = 0
                while c < vecEnd {
                    let blockEnd = min(c + columnBlock, vecEnd)
                    var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
                    var a4 = SIMD8<Float>(), a5 = SIMD8<Float>(), a6 = SIMD8<Float>(), a7 = SIMD8<Float>()
                    while c < blockEnd {
                        let xv = loadX(x, c)
                        let q = p + c * es
                        a0.addProduct(F.load8(q), xv)
                        a1.addProduct(F.load8(q + sb), xv)
                        a2.addProduct(F.load8(q + 2 * sb), xv)
                        a3.addProduct(F.load8(q + 3 * sb), xv)
                        a4.addProduct(F.load8(q + 4 * sb), xv)
                        a5.addProduct(F.load8(q + 5 * sb), xv)
                        a6.addProduct(F.load8(q + 6 * sb), xv)
                        a7.addProduct(F.load8(q + 7 * sb), xv)
                        c += 8
                    }
                    s += reduce8(a0, a1, a2, a3, a4, a5, a6, a7)
                }
                while c < cols {
                    let q = p + c * es
                    let wv = SIMD8<Float>(F.load1(q), F.load1(q + sb), F.load1(q + 2 * sb), F.load1(q + 3 * sb),
                                          F.load1(q + 4 * sb), F.load1(q + 5 * sb), F.load1(q + 6 * sb), F.load1(q + 7 * sb))
                    s.addProduct(wv, SIMD8(repeating: x[c]))
                    c += 1
                }
                for k in 0..<8 { put(y + r + k * per, s[k], acc) }
            }
        }
        var r = lo + 8 * per
        while r < hi {
            put(y + r, dot1(f, w.data + r * rb, x, cols), acc)
            r += 1
        }
    }

    /// One row times `x`, two accumulators.
    @inline(__always)
    static func dot1<F: WeightFormat>(_ f: F.Type, _ p: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ cols: Int) -> Float {
        let es = F.byteSize, vecEnd = cols & ~7
        var s: Float = 0
        var c = 0
        while c < vecEnd {
            let blockEnd = min(c + columnBlock, vecEnd)
            var a0 = SIMD8<Float>(), a1 = SIMD8<Float>()
            while c + 16 <= blockEnd {
                a0.addProduct(F.load8(p + c * es), loadX(x, c))
                a1.addProduct(F.load8(p + (c + 8) * es), loadX(x, c + 8))
                c += 16
            }
            if c < blockEnd {
                a0.addProduct(F.load8(p + c * es), loadX(x, c))
                c += 8
            }
            s += (a0 + a1).sum()
        }
        while c < cols {
            s += F.load1(p + c * es) * x[c]
            c += 1
        }
        return s
    }

    /// `[a0.sum(), …, a7.sum()]` by pairwise adds (no lane-by-lane extraction).
    @inline(__always)
    static func reduce8(_ a0: SIMD8<Float>, _ a1: SIMD8<Float>, _ a2: SIMD8<Float>, _ a3: SIMD8<Float>,
                        _ a4: SIMD8<Float>, _ a5: SIMD8<Float>, _ a6: SIMD8<Float>, _ a7: SIMD8<Float>) -> SIMD8<Float> {
        SIMD8(lowHalf: reduce4(a0, a1, a2, a3), highHalf: reduce4(a4, a5, a6, a7))
    }

    /// `[a0.sum(), a1.sum(), a2.sum(), a3.sum()]`.
    @inline(__always)
    static func reduce4(_ a0: SIMD8<Float>, _ a1: SIMD8<Float>, _ a2: SIMD8<Float>, _ a3: SIMD8<Float>) -> SIMD4<Float> {
        let b0 = a0.lowHalf + a0.highHalf, b1 = a1.lowHalf + a1.highHalf
        let b2 = a2.lowHalf + a2.highHalf, b3 = a3.lowHalf + a3.highHalf
        // Transpose-and-add: lanes (0,1) of each then (2,3).
        let c01 = SIMD4(b0[0], b1[0], b2[0], b3[0]) + SIMD4(b0[1], b1[1], b2[1], b3[1])
        let c23 = SIMD4(b0[2], b1[2], b2[2], b3[2]) + SIMD4(b0[3], b1[3], b2[3], b3[3])
        return c01 + c23
    }

    // MARK: GEMM

    /// Rows `lo ..< hi` for `n` tokens (small batches): the weights are read once, as three
    /// sequential row streams (rows `lo + j + k·per`, like `gemv`), widened in registers, and
    /// each 3-row group meets every token in 3-row × 3-token register tiles (nine accumulators,
    /// so the widened weights and the inputs fit the 16 registers with no spills; each weight
    /// vector feeds three FMAs). A group's rows stay in L1/L2 while the token tiles pass.
    static func gemm<F: WeightFormat>(_ f: F.Type, _ w: Matrix, _ input: BatchInput, _ n: Int,
                                      _ y: UnsafeMutablePointer<Float>, _ acc: Bool, _ lo: Int, _ hi: Int) {
        let per = (hi - lo) / 3
        for j in 0..<per {
            gemmGroup(f, w, input, n, y, lo + j, per, 3, acc)
        }
        var r = lo + 3 * per
        while r < hi {
            gemmGroup(f, w, input, n, y, r, 1, min(3, hi - r), acc)
            r += 3
        }
    }

    /// Rows per packed sliver and tokens per register tile of `gemmPacked`.
    static let packRows = 16, tileTokens = 6
    /// Columns per packed sliver block: 16 rows × 256 fp32 = 16 KiB, half of L1.
    static let packColumns = 256

    /// Large batches: 16 rows at a time are widened to fp32 and transposed into a column-major
    /// sliver (`packColumns` columns, 16 KiB), and a 6-token × 16-row register tile accumulates
    /// outer products over it: per column, two weight loads and six broadcasts feed twelve FMAs
    /// and no horizontal sums are needed. Each row is read once, sequentially; the sliver stays
    /// in L1 across every token tile, and the y tile for a sliver (n × 16 floats) in L1/L2.
    static func gemmPacked<F: WeightFormat>(_ f: F.Type, _ w: Matrix, _ x: UnsafePointer<Float>, _ n: Int,
                                            _ y: UnsafeMutablePointer<Float>, _ acc: Bool, _ lo: Int, _ hi: Int) {
        let cols = w.cols, rows = w.rows, kc = packColumns
        withUnsafeTemporaryAllocation(of: Float.self, capacity: packRows * kc) { buf in
            let sliver = buf.baseAddress!
            var r = lo
            while r < hi {
                let valid = min(packRows, hi - r)
                var c0 = 0
                while c0 < cols {
                    let len = min(kc, cols - c0)
                    pack16(f, w, r, valid, c0, len, sliver)
                    let add = acc || c0 > 0
                    var t = 0
                    while t < n {
                        outer6x16(sliver, len, x + t * cols + c0, cols, min(tileTokens, n - t), y + t * rows + r, rows, valid, add)
                        t += tileTokens
                    }
                    c0 += len
                }
                r += packRows
            }
        }
    }

    /// `out[k·16 + i] = W[r + i, c0 + k]` for `k < len`, `i < 16` (rows past `valid` repeat
    /// the last valid row; their results are never stored).
    @inline(__always)
    static func pack16<F: WeightFormat>(_ f: F.Type, _ w: Matrix, _ r: Int, _ valid: Int, _ c0: Int, _ len: Int,
                                        _ out: UnsafeMutablePointer<Float>) {
        let rb = w.rowStride, es = F.byteSize
        let base = w.data + r * rb + c0 * es
        for half in 0..<2 {
            let i0 = 8 * half
            @inline(__always) func row(_ i: Int) -> UnsafeRawPointer { base + min(i0 + i, valid - 1) * rb }
            let q0 = row(0), q1 = row(1), q2 = row(2), q3 = row(3), q4 = row(4), q5 = row(5), q6 = row(6), q7 = row(7)
            var k = 0
            while k + 8 <= len {
                let o = k * es
                let (t0, t1, t2, t3, t4, t5, t6, t7) = transpose8(
                    F.load8(q0 + o), F.load8(q1 + o), F.load8(q2 + o), F.load8(q3 + o),
                    F.load8(q4 + o), F.load8(q5 + o), F.load8(q6 + o), F.load8(q7 + o))
                let d = UnsafeMutableRawPointer(out + k * packRows + i0)
                d.storeBytes(of: t0, toByteOffset: 0 * 64, as: SIMD8<Float>.self)
                d.storeBytes(of: t1, toByteOffset: 1 * 64, as: SIMD8<Float>.self)
                d.storeBytes(of: t2, toByteOffset: 2 * 64, as: SIMD8<Float>.self)
                d.storeBytes(of: t3, toByteOffset: 3 * 64, as: SIMD8<Float>.self)
                d.storeBytes(of: t4, toByteOffset: 4 * 64, as: SIMD8<Float>.self)
                d.storeBytes(of: t5, toByteOffset: 5 * 64, as: SIMD8<Float>.self)
                d.storeBytes(of: t6, toByteOffset: 6 * 64, as: SIMD8<Float>.self)
                d.storeBytes(of: t7, toByteOffset: 7 * 64, as: SIMD8<Float>.self)
                k += 8
            }
            while k < len {
                let o = k * es
                let v = SIMD8<Float>(F.load1(q0 + o), F.load1(q1 + o), F.load1(q2 + o), F.load1(q3 + o),
                                     F.load1(q4 + o), F.load1(q5 + o), F.load1(q6 + o), F.load1(q7 + o))
                UnsafeMutableRawPointer(out + k * packRows + i0).storeBytes(of: v, as: SIMD8<Float>.self)
                k += 1
            }
        }
    }

    /// 8×8 transpose: result `j` holds element `j` of each input.
    @inline(__always)
    static func transpose8(_ r0: SIMD8<Float>, _ r1: SIMD8<Float>, _ r2: SIMD8<Float>, _ r3: SIMD8<Float>,
                           _ r4: SIMD8<Float>, _ r5: SIMD8<Float>, _ r6: SIMD8<Float>, _ r7: SIMD8<Float>)
        -> (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>) {
        // unpcklps / unpckhps within 128-bit lanes
        @inline(__always) func unlo(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> { SIMD8(a[0], b[0], a[1], b[1], a[4], b[4], a[5], b[5]) }
        @inline(__always) func unhi(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> { SIMD8(a[2], b[2], a[3], b[3], a[6], b[6], a[7], b[7]) }
        // shufps (1,0,1,0) / (3,2,3,2) within 128-bit lanes
        @inline(__always) func shlo(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> { SIMD8(a[0], a[1], b[0], b[1], a[4], a[5], b[4], b[5]) }
        @inline(__always) func shhi(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> { SIMD8(a[2], a[3], b[2], b[3], a[6], a[7], b[6], b[7]) }
        // vperm2f128
        @inline(__always) func lo128(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> { SIMD8(lowHalf: a.lowHalf, highHalf: b.lowHalf) }
        @inline(__always) func hi128(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> { SIMD8(lowHalf: a.highHalf, highHalf: b.highHalf) }
        let t0 = unlo(r0, r1), t1 = unhi(r0, r1), t2 = unlo(r2, r3), t3 = unhi(r2, r3)
        let t4 = unlo(r4, r5), t5 = unhi(r4, r5), t6 = unlo(r6, r7), t7 = unhi(r6, r7)
        let u0 = shlo(t0, t2), u1 = shhi(t0, t2), u2 = shlo(t1, t3), u3 = shhi(t1, t3)
        let u4 = shlo(t4, t6), u5 = shhi(t4, t6), u6 = shlo(t5, t7), u7 = shhi(t5, t7)
        return (lo128(u0, u4), lo128(u1, u5), lo128(u2, u6), lo128(u3, u7),
                hi128(u0, u4), hi128(u1, u5), hi128(u2, u6), hi128(u3, u7))
    }

    /// `y[j, 0..<valid] (+)= Σ_k x[j, k] · sliver[k, 0..<16]` for tokens `j < mt` (`mt ≤ 6`;
    /// missing tokens re-read the last one and are not stored). `x` rows are `xStride` apart,
    /// `y` rows `yStride` apart.
    @inline(__always)
    static func outer6x16(_ sliver: UnsafePointer<Float>, _ len: Int, _ x: UnsafePointer<Float>, _ xStride: Int,
                          _ mt: Int, _ y: UnsafeMutablePointer<Float>, _ yStride: Int, _ valid: Int, _ add: Bool) {
        let x0 = x, x1 = x + min(1, mt - 1) * xStride, x2 = x + min(2, mt - 1) * xStride
        let x3 = x + min(3, mt - 1) * xStride, x4 = x + min(4, mt - 1) * xStride, x5 = x + min(5, mt - 1) * xStride
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
        var a4 = SIMD8<Float>(), a5 = SIMD8<Float>(), b0 = SIMD8<Float>(), b1 = SIMD8<Float>()
        var b2 = SIMD8<Float>(), b3 = SIMD8<Float>(), b4 = SIMD8<Float>(), b5 = SIMD8<Float>()
        let s = UnsafeRawPointer(sliver)
        for k in 0..<len {
            let wl = s.load(fromByteOffset: k * 64, as: SIMD8<Float>.self)
            let wh = s.load(fromByteOffset: k * 64 + 32, as: SIMD8<Float>.self)
            var v = SIMD8<Float>(repeating: x0[k]); a0.addProduct(wl, v); b0.addProduct(wh, v)
            v = SIMD8<Float>(repeating: x1[k]); a1.addProduct(wl, v); b1.addProduct(wh, v)
            v = SIMD8<Float>(repeating: x2[k]); a2.addProduct(wl, v); b2.addProduct(wh, v)
            v = SIMD8<Float>(repeating: x3[k]); a3.addProduct(wl, v); b3.addProduct(wh, v)
            v = SIMD8<Float>(repeating: x4[k]); a4.addProduct(wl, v); b4.addProduct(wh, v)
            v = SIMD8<Float>(repeating: x5[k]); a5.addProduct(wl, v); b5.addProduct(wh, v)
        }
        @inline(__always) func put16(_ j: Int, _ lo: SIMD8<Float>, _ hi: SIMD8<Float>) {
            let out = y + j * yStride
            if valid == packRows {
                let o = UnsafeMutableRawPointer(out)
                if add {
                    o.storeBytes(of: lo + o.loadUnaligned(as: SIMD8<Float>.self), as: SIMD8<Float>.self)
                    o.storeBytes(of: hi + o.loadUnaligned(fromByteOffset: 32, as: SIMD8<Float>.self), toByteOffset: 32, as: SIMD8<Float>.self)
                } else {
                    o.storeBytes(of: lo, as: SIMD8<Float>.self)
                    o.storeBytes(of: hi, toByteOffset: 32, as: SIMD8<Float>.self)
                }
            } else {
                for i in 0..<valid { put(out + i, i < 8 ? lo[i] : hi[i - 8], add) }
            }
        }
        put16(0, a0, b0)
        if mt > 1 { put16(1, a1, b1) }
        if mt > 2 { put16(2, a2, b2) }
        if mt > 3 { put16(3, a3, b3) }
        if mt > 4 { put16(4, a4, b4) }
        if mt > 5 { put16(5, a5, b5) }
    }

    /// Rows `r0 + k·stride` for `k in 0..<valid` (`valid ≤ 3`), all `n` tokens; adds into `y`
    /// when `add`. Missing rows of a short group re-read the last row and are not stored.
    @inline(__always)
    static func gemmGroup<F: WeightFormat>(_ f: F.Type, _ w: Matrix, _ input: BatchInput, _ n: Int,
                                           _ y: UnsafeMutablePointer<Float>, _ r0: Int, _ stride: Int, _ valid: Int,
                                           _ add: Bool) {
        let rb = w.rowStride, rows = w.rows, cols = w.cols
        let base = w.data + r0 * rb
        let rows3 = (base, base + min(1, valid - 1) * stride * rb, base + min(2, valid - 1) * stride * rb)
        // Column blocks outermost: the group's weights for one block (3 × `columnBlock` columns)
        // stay in L1 while every token tile passes over them.
        var c0 = 0
        while c0 < cols {
            let c1 = cols - c0 < columnBlock + columnBlock / 2 ? cols : c0 + columnBlock
            let add = add || c0 > 0
            @inline(__always) func store(_ t: Int, _ s: SIMD4<Float>) {
                let out = y + t * rows + r0
                for k in 0..<valid { put(out + k * stride, s[k], add) }
            }
            var t = 0
            while t + 3 <= n {
                let (sa, sb, sc) = tile3x3(f, rows3, input.row(t), input.row(t + 1), input.row(t + 2), c0, c1, cols)
                store(t, sa); store(t + 1, sb); store(t + 2, sc)
                t += 3
            }
            if n - t == 2 {
                let (sa, sb) = tile3x2(f, rows3, input.row(t), input.row(t + 1), c0, c1, cols)
                store(t, sa); store(t + 1, sb)
            } else if n - t == 1 {
                store(t, tile3x1(f, rows3, input.row(t), c0, c1, cols))
            }
            c0 = c1
        }
    }

    /// A token's input row: the original (for column tails) and the view 16-column loads read.
    typealias Row = (UnsafePointer<Float>, UnsafePointer<Float>)
    /// Three weight rows.
    typealias Rows3 = (UnsafeRawPointer, UnsafeRawPointer, UnsafeRawPointer)

    /// The column tail past the last 16-column block, scalar, for one token (lane 3 unused).
    @inline(__always)
    static func tail3<F: WeightFormat>(_ f: F.Type, _ p: Rows3, _ x: UnsafePointer<Float>, _ from: Int, _ cols: Int) -> SIMD4<Float> {
        var s = SIMD4<Float>()
        var c = from
        while c < cols {
            let o = c * F.byteSize
            s.addProduct(SIMD4<Float>(F.load1(p.0 + o), F.load1(p.1 + o), F.load1(p.2 + o), 0), SIMD4(repeating: x[c]))
            c += 1
        }
        return s
    }

    /// `[a0.sum(), a1.sum(), a2.sum(), 0]`.
    @inline(__always)
    static func reduce3(_ a0: SIMD8<Float>, _ a1: SIMD8<Float>, _ a2: SIMD8<Float>) -> SIMD4<Float> {
        reduce4(a0, a1, a2, SIMD8())
    }

    /// Three rows × three tokens over columns `c0 ..< c1`, 16 columns per step: nine
    /// accumulators. `c0` is a multiple of 16; columns past `cols & ~15` go through `tail3`.
    @inline(__always)
    static func tile3x3<F: WeightFormat>(_ f: F.Type, _ p: Rows3, _ ra: Row, _ rb: Row, _ rc: Row,
                                         _ c0: Int, _ c1: Int, _ cols: Int) -> (SIMD4<Float>, SIMD4<Float>, SIMD4<Float>) {
        let es = F.byteSize, vecEnd = min(c1, cols & ~15)
        let (xa, va) = ra, (xb, vb) = rb, (xc, vc) = rc
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>()
        var b0 = SIMD8<Float>(), b1 = SIMD8<Float>(), b2 = SIMD8<Float>()
        var d0 = SIMD8<Float>(), d1 = SIMD8<Float>(), d2 = SIMD8<Float>()
        var c = c0
        while c < vecEnd {
            let o = c * es
            prefetch(p.0 + o + prefetchAhead); prefetch(p.1 + o + prefetchAhead); prefetch(p.2 + o + prefetchAhead)
            let (w0l, w0h) = F.load16(p.0 + o), (w1l, w1h) = F.load16(p.1 + o), (w2l, w2h) = F.load16(p.2 + o)
            var v = loadX(va, c)
            a0.addProduct(w0l, v); a1.addProduct(w1l, v); a2.addProduct(w2l, v)
            v = loadX(vb, c)
            b0.addProduct(w0l, v); b1.addProduct(w1l, v); b2.addProduct(w2l, v)
            v = loadX(vc, c)
            d0.addProduct(w0l, v); d1.addProduct(w1l, v); d2.addProduct(w2l, v)
            v = loadX(va, c + 8)
            a0.addProduct(w0h, v); a1.addProduct(w1h, v); a2.addProduct(w2h, v)
            v = loadX(vb, c + 8)
            b0.addProduct(w0h, v); b1.addProduct(w1h, v); b2.addProduct(w2h, v)
            v = loadX(vc, c + 8)
            d0.addProduct(w0h, v); d1.addProduct(w1h, v); d2.addProduct(w2h, v)
            c += 16
        }
        var sa = reduce3(a0, a1, a2), sb = reduce3(b0, b1, b2), sc = reduce3(d0, d1, d2)
        if c < c1 {
            sa += tail3(f, p, xa, c, c1)
            sb += tail3(f, p, xb, c, c1)
            sc += tail3(f, p, xc, c, c1)
        }
        return (sa, sb, sc)
    }

    /// Three rows × two tokens (token tail).
    @inline(__always)
    static func tile3x2<F: WeightFormat>(_ f: F.Type, _ p: Rows3, _ ra: Row, _ rb: Row, _ c0: Int, _ c1: Int,
                                         _ cols: Int) -> (SIMD4<Float>, SIMD4<Float>) {
        let es = F.byteSize, vecEnd = min(c1, cols & ~15)
        let (xa, va) = ra, (xb, vb) = rb
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>()
        var b0 = SIMD8<Float>(), b1 = SIMD8<Float>(), b2 = SIMD8<Float>()
        var c = c0
        while c < vecEnd {
            let o = c * es
            prefetch(p.0 + o + prefetchAhead); prefetch(p.1 + o + prefetchAhead); prefetch(p.2 + o + prefetchAhead)
            let (w0l, w0h) = F.load16(p.0 + o), (w1l, w1h) = F.load16(p.1 + o), (w2l, w2h) = F.load16(p.2 + o)
            var v = loadX(va, c)
            a0.addProduct(w0l, v); a1.addProduct(w1l, v); a2.addProduct(w2l, v)
            v = loadX(vb, c)
            b0.addProduct(w0l, v); b1.addProduct(w1l, v); b2.addProduct(w2l, v)
            v = loadX(va, c + 8)
            a0.addProduct(w0h, v); a1.addProduct(w1h, v); a2.addProduct(w2h, v)
            v = loadX(vb, c + 8)
            b0.addProduct(w0h, v); b1.addProduct(w1h, v); b2.addProduct(w2h, v)
            c += 16
        }
        var sa = reduce3(a0, a1, a2), sb = reduce3(b0, b1, b2)
        if c < c1 {
            sa += tail3(f, p, xa, c, c1)
            sb += tail3(f, p, xb, c, c1)
        }
        return (sa, sb)
    }

    /// Three rows × one token (token tail): two accumulators per row.
    @inline(__always)
    static func tile3x1<F: WeightFormat>(_ f: F.Type, _ p: Rows3, _ ra: Row, _ c0: Int, _ c1: Int, _ cols: Int) -> SIMD4<Float> {
        let es = F.byteSize, vecEnd = min(c1, cols & ~15)
        let (xa, va) = ra
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>()
        var b0 = SIMD8<Float>(), b1 = SIMD8<Float>(), b2 = SIMD8<Float>()
        var c = c0
        while c < vecEnd {
            let o = c * es
            prefetch(p.0 + o + prefetchAhead); prefetch(p.1 + o + prefetchAhead); prefetch(p.2 + o + prefetchAhead)
            let (w0l, w0h) = F.load16(p.0 + o), (w1l, w1h) = F.load16(p.1 + o), (w2l, w2h) = F.load16(p.2 + o)
            let vl = loadX(va, c), vh = loadX(va, c + 8)
            a0.addProduct(w0l, vl); a1.addProduct(w1l, vl); a2.addProduct(w2l, vl)
            b0.addProduct(w0h, vh); b1.addProduct(w1h, vh); b2.addProduct(w2h, vh)
            c += 16
        }
        var sa = reduce3(a0 + b0, a1 + b1, a2 + b2)
        if c < c1 { sa += tail3(f, p, xa, c, c1) }
        return sa
    }
}

extension Matrix {
    /// Writes row `r` widened to fp32 into `out[0..<cols]` (embedding lookup). Exact.
    public func widenRow(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        let p = data + r * rowStride
        switch dtype {
        case .bf16: widen(BF16Format.self, p, out)
        case .f16: widen(F16Format.self, p, out)
        case .f32: UnsafeMutableRawPointer(out).copyMemory(from: p, byteCount: rowBytes)
        case .q8_0, .q4_0, .q4_1, .q4_K, .q5_K, .q6_K: Quantized.dequantizeRow(dtype, p, cols: cols, into: out)
        }
    }

    private func widen<F: WeightFormat>(_ f: F.Type, _ p: UnsafeRawPointer, _ out: UnsafeMutablePointer<Float>) {
        var c = 0
        while c + 8 <= cols {
            UnsafeMutableRawPointer(out + c).storeBytes(of: F.load8(p + c * F.byteSize), as: SIMD8<Float>.self)
            c += 8
        }
        while c < cols {
            out[c] = F.load1(p + c * F.byteSize)
            c += 1
        }
    }
}
