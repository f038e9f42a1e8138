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
    @inlinable static var byteSize: Int { 2 }
    @inlinable @inline(__always)
    static func load8(_ p: UnsafeRawPointer) -> SIMD8<Float> {
        let h = unsafeBitCast(p.loadUnaligned(as: SIMD8<UInt16>.self), to: SIMD8<Float16>.self)
        return SIMD8(Float(h[0]), Float(h[1]), Float(h[2]), Float(h[3]), Float(h[4]), Float(h[5]), Float(h[6]), Float(h[7]))
    }
    @inlinable @inline(__always)
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
    @inlinable static var byteSize: Int { 2 }
    @inlinable @inline(__always)
    static func load8(_ p: UnsafeRawPointer) -> SIMD8<Float> {
        let u = p.loadUnaligned(as: SIMD8<UInt16>.self)
        let wide = SIMD8<UInt32>(UInt32(u[0]) &<< 16, UInt32(u[1]) &<< 16, UInt32(u[2]) &<< 16, UInt32(u[3]) &<< 16,
                                 UInt32(u[4]) &<< 16, UInt32(u[5]) &<< 16, UInt32(u[6]) &<< 16, UInt32(u[7]) &<< 16)
        return unsafeBitCast(wide, to: SIMD8<Float>.self)
    }
    @inlinable @inline(__always)
    static func load1(_ p: UnsafeRawPointer) -> Float { Float(bitPattern: UInt32(p.loadUnaligned(as: UInt16.self)) << 16) }
    @usableFromInline static var evenOdd: Bool { true }
    @inlinable @inline(__always)
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
/// **Batch invariance.** Every output `y[t, r]` is computed by one canonical sequence of fp32
/// operations that depends only on row `r` of the weights, row `t` of `x`, `cols`, the dtype
/// and the value `y[t, r]` held before the call (with `accumulate`): never on the number of
/// tokens in the call, the token's position in it, the rows computed alongside, or how the work
/// is split over threads. A token therefore gets the same bits alone or in any batch. The
/// canonical order, for float weights (f32, f16, bf16):
/// - columns `0 ..< cols` are cut into blocks: 1024 columns each, except that a remainder of
///   under 1536 columns is one last block (`blockEnd`);
/// - in a block, the columns of its whole 16-column chunks are multiplied and added by fused
///   multiply-adds into eight fp32 lanes, in chunk order, each chunk's first eight weights
///   (as `WeightFormat.load16` returns them: elements 0-7, or for bf16 the even elements) before
///   its second eight; the lanes are then summed as `((l0+l4) + (l1+l5)) + ((l2+l6) + (l3+l7))`;
/// - columns past the last whole chunk (`cols & ~15 ..< cols`, only in the last block) are
///   summed one at a time from 0 by fused multiply-adds, and that sum is added to the block's;
/// - `y[t, r]` is the first block's sum (plus the old `y[t, r]` with `accumulate`, in that
///   order), then each further block's sum is added in column order.
/// Quantized weights follow their own canonical order, for every token count: the int16 block
/// dot of `QuantizedLinear.swift` (ggml types) or the fp32 block dot of `Int4Linear.swift` (INT4). `KernelsTests.BatchInvarianceTests` checks
/// all of this bitwise.
///
/// The paths, chosen by the number of tokens, all compute that order:
/// - `count == 1` (decode GEMV, memory-bound): each thread reads its rows as eight long
///   sequential streams (eight distant rows at a time, each stream moving on to the next row
///   in memory), which keeps the hardware prefetchers fed even when rows are short.
/// - `2 ..< panelMinTokens` (batched experts, short prefills): 3-row × 3-token register tiles
///   over rows read as three streams, weights widened in registers 16 at a time (bf16 in
///   even/odd order against an input copy permuted to match).
/// - `panelMinTokens...` (prefill): the same tiles over panels of `panelRows` rows, token tiles
///   outside row groups, so a panel's column block stays in L2 and a token tile's inputs in L1
///   while the weights are still read from memory once per call.
///
/// Results differ from a sequential sum by rounding only (tests: within 2e-6 of Σ|x·w| at 8192
/// columns).
public enum Linear {
    /// Below this many multiply-adds a call runs on the calling thread: waking the pool costs more.
    static let parallelThreshold = 1 << 15

    /// Columns summed in SIMD lanes before being folded into the row total, which bounds how
    /// many products one fp32 running sum takes; also the column block of the batched paths (a
    /// 3-row group's weights for one block stay in L1 across token tiles). A trailing remainder
    /// under half a block joins the last block.
    static let columnBlock = 1024

    /// The end of the canonical column block that starts at `c0`.
    @inline(__always)
    static func blockEnd(_ c0: Int, _ cols: Int) -> Int {
        cols - c0 < columnBlock + columnBlock / 2 ? cols : c0 + columnBlock
    }

    /// How far ahead (bytes) the small-batch kernels prefetch each weight row. Their three
    /// streams do enough arithmetic per byte that the out-of-order window alone no longer keeps
    /// enough loads in flight; prefetching took 2- and 3-token batches (4096×4096 bf16, one thread)
    /// from ~15 to ~20 GB/s of weights.
    static let prefetchAhead = 512

    /// Batches of at least this many tokens run the register tiles over row panels
    /// (`gemmPanels`); smaller ones over three row streams (`gemm`). Same arithmetic either way.
    static let panelMinTokens = 48

    /// Rows per panel of `gemmPanels` (a multiple of 3): 24 rows × 1536 fp32 columns = 144 KiB,
    /// within L2 with the token tiles' inputs.
    static let panelRows = 24

    /// `y[t, r] = Σ_c x[t, c] · W[r, c]` for `t in 0..<count`, i.e. `y = x · Wᵀ`, with
    /// `x` `[count, w.cols]` and `y` `[count, w.rows]` (both row-major fp32).
    /// With `accumulate`, adds into `y` instead of overwriting it. Work is split across the
    /// shared `ThreadPool` (over rows, or over tokens when there are few rows).
    /// `y` must not overlap `x` or the weights.
    ///
    /// Batch invariant (see the type's documentation): `y[t, r]` has the same bits whatever
    /// `count`, `t` and the thread split are.
    public static func forward(
        _ w: Matrix, input x: UnsafePointer<Float>, count: Int,
        output y: UnsafeMutablePointer<Float>, accumulate: Bool = false
    ) {
        forward(w, input: x, count: count, output: y, accumulate: accumulate, pool: .shared)
    }

    /// `forward` on a given pool (tests compare thread counts with it).
    static func forward(_ w: Matrix, input x: UnsafePointer<Float>, count: Int,
                        output y: UnsafeMutablePointer<Float>, accumulate: Bool, pool: ThreadPool) {
        guard count > 0, w.rows > 0 else { return }
        guard w.cols > 0 else {
            if !accumulate { y.update(repeating: 0, count: count * w.rows) }
            return
        }
        switch w.dtype {
        case .bf16: dispatch(BF16Format.self, w, x, count, y, accumulate, pool)
        case .f16: dispatch(F16Format.self, w, x, count, y, accumulate, pool)
        case .f32: dispatch(F32Format.self, w, x, count, y, accumulate, pool)
        case .q8_0, .q4_0, .q4_1, .q4_K, .q5_K, .q6_K, .int4: quantized(w, x, count, y, accumulate, pool)
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
                                          _ y: UnsafeMutablePointer<Float>, _ acc: Bool, _ pool: ThreadPool) {
        let rows = w.rows, cols = w.cols
        let serial = pool.threadCount == 1 || rows * cols * n < parallelThreshold
        withBatchInput(f, x, n, cols) { input in
            if n == 1 {
                if serial || rows < 16 {
                    gemv(f, w, input, y, acc, 0, rows)
                } else {
                    pool.parallelFor(rows, granularity: 8) { lo, hi in gemv(f, w, input, y, acc, lo, hi) }
                }
            } else if serial {
                gemm(f, w, input, n, y, acc, 0, rows)
            } else if rows >= 8 * pool.threadCount {
                let g = n >= panelMinTokens ? panelRows : 3
                pool.parallelFor(rows, granularity: g) { lo, hi in gemm(f, w, input, n, y, acc, lo, hi) }
            } else {
                // Few rows, many tokens (e.g. a router): split the tokens instead.
                pool.parallelFor(n, granularity: 3) { lo, hi in
                    gemm(f, w, input.dropping(lo), hi - lo, y + lo * rows, acc, 0, rows)
                }
            }
        }
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
    /// Lane `k` of every vector here belongs to row `k`, so each row gets the canonical order.
    @inline(__always)
    static func gemv<F: WeightFormat>(_ f: F.Type, _ w: Matrix, _ input: BatchInput,
                                      _ y: UnsafeMutablePointer<Float>, _ acc: Bool, _ lo: Int, _ hi: Int) {
        let cols = w.cols, rb = w.rowStride, vecEnd = cols & ~15, es = F.byteSize
        let (x, xv) = input.row(0)
        let per = (hi - lo) / 8
        if per > 0 {
            let sb = per * rb
            for j in 0..<per {
                let r = lo + j
                let p = w.data + r * rb
                var s = SIMD8<Float>()
                var c0 = 0
                while c0 < cols {
                    let c1 = blockEnd(c0, cols), chunkEnd = min(c1, vecEnd)
                    var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
                    var a4 = SIMD8<Float>(), a5 = SIMD8<Float>(), a6 = SIMD8<Float>(), a7 = SIMD8<Float>()
                    var c = c0
                    while c < chunkEnd {
                        let q = p + c * es
                        let xl = loadX(xv, c), xh = loadX(xv, c + 8)
                        @inline(__always) func step(_ a: inout SIMD8<Float>, _ k: Int) {
                            let (wl, wh) = F.load16(q + k * sb)
                            a.addProduct(wl, xl)
                            a.addProduct(wh, xh)
                        }
                        step(&a0, 0); step(&a1, 1); step(&a2, 2); step(&a3, 3)
                        step(&a4, 4); step(&a5, 5); step(&a6, 6); step(&a7, 7)
                        c += 16
                    }
                    var block = reduce8(a0, a1, a2, a3, a4, a5, a6, a7)
                    if c < c1 {
                        var t = SIMD8<Float>()
                        while c < c1 {
                            let q = p + c * es
                            let wv = SIMD8<Float>(F.load1(q), F.load1(q + sb), F.load1(q + 2 * sb), F.load1(q + 3 * sb),
                                                  F.load1(q + 4 * sb), F.load1(q + 5 * sb), F.load1(q + 6 * sb), F.load1(q + 7 * sb))
                            t.addProduct(wv, SIMD8(repeating: x[c]))
                            c += 1
                        }
                        block += t
                    }
                    if c0 > 0 {
                        s += block
                    } else if acc {
                        s = SIMD8(y[r], y[r + per], y[r + 2 * per], y[r + 3 * per],
                                  y[r + 4 * per], y[r + 5 * per], y[r + 6 * per], y[r + 7 * per]) + block
                    } else {
                        s = block
                    }
                    c0 = c1
                }
                for k in 0..<8 { y[r + k * per] = s[k] }
            }
        }
        var r = lo + 8 * per
        while r < hi {
            dot1(f, w.data + r * rb, x, xv, cols, y + r, acc)
            r += 1
        }
    }

    /// One row times one token in the canonical order, stored into (or, with `acc`, added to) `y`.
    @inline(__always)
    static func dot1<F: WeightFormat>(_ f: F.Type, _ p: UnsafeRawPointer, _ x: UnsafePointer<Float>,
                                      _ xv: UnsafePointer<Float>, _ cols: Int, _ y: UnsafeMutablePointer<Float>, _ acc: Bool) {
        let es = F.byteSize, vecEnd = cols & ~15
        var c0 = 0
        while c0 < cols {
            let c1 = blockEnd(c0, cols), chunkEnd = min(c1, vecEnd)
            var a = SIMD8<Float>()
            var c = c0
            while c < chunkEnd {
                let (wl, wh) = F.load16(p + c * es)
                a.addProduct(wl, loadX(xv, c))
                a.addProduct(wh, loadX(xv, c + 8))
                c += 16
            }
            let b = a.lowHalf + a.highHalf
            var block = (b[0] + b[1]) + (b[2] + b[3])
            if c < c1 {
                var t: Float = 0
                while c < c1 {
                    t = t.addingProduct(F.load1(p + c * es), x[c])
                    c += 1
                }
                block += t
            }
            put(y, block, acc || c0 > 0)
            c0 = c1
        }
    }

    /// `[a0.sum(), …, a7.sum()]` by pairwise adds (no lane-by-lane extraction), each in the
    /// canonical lane order.
    @inline(__always)
    static func reduce8(_ a0: SIMD8<Float>, _ a1: SIMD8<Float>, _ a2: SIMD8<Float>, _ a3: SIMD8<Float>,
                        _ a4: SIMD8<Float>, _ a5: SIMD8<Float>, _ a6: SIMD8<Float>, _ a7: SIMD8<Float>) -> SIMD8<Float> {
        SIMD8(lowHalf: reduce4(a0, a1, a2, a3), highHalf: reduce4(a4, a5, a6, a7))
    }

    /// `[a0.sum(), a1.sum(), a2.sum(), a3.sum()]`, each as `((l0+l4) + (l1+l5)) + ((l2+l6) + (l3+l7))`.
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

    /// Rows `lo ..< hi` for `n ≥ 2` tokens. Small batches: the weights are read once, as three
    /// sequential row streams (rows `lo + j + k·per`, like `gemv`), widened in registers, and
    /// each 3-row group meets every token in 3-row × 3-token register tiles (nine accumulators,
    /// so the widened weights and the inputs fit the 16 registers with no spills; each weight
    /// vector feeds three FMAs). A group's rows stay in L1/L2 while the token tiles pass.
    /// From `panelMinTokens` tokens on, `gemmPanels`.
    static func gemm<F: WeightFormat>(_ f: F.Type, _ w: Matrix, _ input: BatchInput, _ n: Int,
                                      _ y: UnsafeMutablePointer<Float>, _ acc: Bool, _ lo: Int, _ hi: Int) {
        if n >= panelMinTokens { return gemmPanels(f, w, input, n, y, acc, lo, hi) }
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

    /// Large batches: rows in panels of `panelRows`; per panel and column block, each 3-token
    /// tile passes over all of the panel's 3-row groups, so the tile's inputs (3 × 1536 floats
    /// at most) stay in L1 and the panel's block in L2, and each weight is read from memory once.
    static func gemmPanels<F: WeightFormat>(_ f: F.Type, _ w: Matrix, _ input: BatchInput, _ n: Int,
                                            _ y: UnsafeMutablePointer<Float>, _ acc: Bool, _ lo: Int, _ hi: Int) {
        let rb = w.rowStride, rows = w.rows, cols = w.cols
        var p0 = lo
        while p0 < hi {
            let p1 = min(hi, p0 + panelRows)
            var c0 = 0
            while c0 < cols {
                let c1 = blockEnd(c0, cols)
                let add = acc || c0 > 0
                var t = 0
                while t < n {
                    let m = min(3, n - t)
                    var r0 = p0
                    while r0 < p1 {
                        let valid = min(3, p1 - r0)
                        let base = w.data + r0 * rb
                        let rows3 = (base, base + min(1, valid - 1) * rb, base + min(2, valid - 1) * rb)
                        tileStore(f, rows3, input, t, m, c0, c1, cols, y, rows, r0, 1, valid, add)
                        r0 += 3
                    }
                    t += m
                }
                c0 = c1
            }
            p0 = p1
        }
    }

    /// Tokens `t ..< t + m` (`m ≤ 3`) against three rows over block `c0 ..< c1`, stored into (or
    /// added to) `y` at rows `r0 + k·stride`, `k < valid`.
    @inline(__always)
    static func tileStore<F: WeightFormat>(_ f: F.Type, _ rows3: Rows3, _ input: BatchInput, _ t: Int, _ m: Int,
                                           _ c0: Int, _ c1: Int, _ cols: Int, _ y: UnsafeMutablePointer<Float>,
                                           _ rows: Int, _ r0: Int, _ stride: Int, _ valid: Int, _ add: Bool) {
        @inline(__always) func store(_ t: Int, _ s: SIMD4<Float>) {
            let out = y + t * rows + r0
            for k in 0..<valid { put(out + k * stride, s[k], add) }
        }
        if m == 3 {
            let (sa, sb, sc) = tile3x3(f, rows3, input.row(t), input.row(t + 1), input.row(t + 2), c0, c1, cols)
            store(t, sa); store(t + 1, sb); store(t + 2, sc)
        } else if m == 2 {
            let (sa, sb) = tile3x2(f, rows3, input.row(t), input.row(t + 1), c0, c1, cols)
            store(t, sa); store(t + 1, sb)
        } else {
            store(t, tile3x1(f, rows3, input.row(t), c0, c1, cols))
        }
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
            let c1 = blockEnd(c0, cols)
            var t = 0
            while t < n {
                let m = min(3, n - t)
                tileStore(f, rows3, input, t, m, c0, c1, cols, y, rows, r0, stride, valid, add || c0 > 0)
                t += m
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

    /// Three rows × one token (token tail): one accumulator per row, as every path.
    @inline(__always)
    static func tile3x1<F: WeightFormat>(_ f: F.Type, _ p: Rows3, _ ra: Row, _ c0: Int, _ c1: Int, _ cols: Int) -> SIMD4<Float> {
        let es = F.byteSize, vecEnd = min(c1, cols & ~15)
        let (xa, va) = ra
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>()
        var c = c0
        while c < vecEnd {
            let o = c * es
            prefetch(p.0 + o + prefetchAhead); prefetch(p.1 + o + prefetchAhead); prefetch(p.2 + o + prefetchAhead)
            let (w0l, w0h) = F.load16(p.0 + o), (w1l, w1h) = F.load16(p.1 + o), (w2l, w2h) = F.load16(p.2 + o)
            let vl = loadX(va, c), vh = loadX(va, c + 8)
            a0.addProduct(w0l, vl); a1.addProduct(w1l, vl); a2.addProduct(w2l, vl)
            a0.addProduct(w0h, vh); a1.addProduct(w1h, vh); a2.addProduct(w2h, vh)
            c += 16
        }
        var sa = reduce3(a0, a1, a2)
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
        case .q8_0, .q4_0, .q4_1, .q4_K, .q5_K, .q6_K, .int4: Quantized.dequantizeRow(dtype, p, cols: cols, into: out)
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
