/// Linear layers over `DType.int4` weights (compressed-tensors' symmetric group-32 INT4,
/// regrouped by `Int4Packing`) against fp32 activations.
///
/// Each 18-byte block is widened in registers to its 32 levels `q − 8` as fp32 (exact), dotted
/// with the 32 fp32 activations by fused multiply-adds, and that block sum is scaled by the
/// block's bf16 scale into eight fp32 lanes. Unlike the ggml types (`QuantizedLinear.swift`), the
/// activations are never rounded: rounding them to int16 per block moved the `kimi_k2_int4`
/// fixture's logits by up to 3.6e-4 of transformers' (BENCHMARKS.md, "INT4 experts"); this
/// arithmetic differs from a float reference by fp32 rounding only. The price is arithmetic: a
/// widen, a mask or shift, two float ops and an FMA per eight weights, so on this machine decode
/// is bound by the cores rather than by memory (BENCHMARKS.md).
///
/// Canonical arithmetic of `y[t, r]` (row `r`, token `t`), the same for every token count, thread
/// split and grouping of rows or tokens, so a token's result has the same bits alone or in any
/// batch:
/// - block `b`'s levels as four vectors: `v0` = values 0-7 (low nibbles of bytes 0-7), `v1` =
///   8-15 (low nibbles of bytes 8-15), `v2` = 16-23, `v3` = 24-31 (the high nibbles);
/// - `s = v0·x[32b ..< 32b+8]`, then `s += v1·x[+8 ..< +16]`, `v2·…`, `v3·…` by FMAs;
/// - `a = fma(s, d_b, a)` in eight lanes, blocks in column order from `a = 0`;
/// - `y = ((a0+a4) + (a1+a5)) + ((a2+a6) + (a3+a7))`, added to the old `y` with `accumulate`.
extension Linear {
    typealias Int4Levels = (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>)

    /// The 32 levels `q − 8` of the block at `blk` (`v0 … v3` above), exact. Bytes 0-7 and 8-15
    /// are widened to 32-bit lanes (`vpmovzxbd`), where a mask gives the low nibble and a shift the
    /// high one; the float is `(2²³ + q) − (2²³ + 8)`, `2²³ + q` being `q` ORed into the bits of
    /// 2²³, one integer op where a convert (`vcvtdq2ps`) and the subtraction of 8 would compete
    /// with the FMAs for the same ports (faster, BENCHMARKS.md "INT4 experts").
    /// Built element by element: every operation here is `@_transparent`, so it always inlines
    /// (the generic `SIMD8<UInt32>(truncatingIfNeeded:)` may stay an out-of-line call).
    @inline(__always)
    static func int4Levels(_ blk: UnsafeRawPointer) -> Int4Levels {
        @inline(__always) func widen(_ offset: Int) -> SIMD8<UInt32> {
            let u = blk.loadUnaligned(fromByteOffset: offset, as: SIMD8<UInt8>.self)
            return SIMD8(UInt32(u[0]), UInt32(u[1]), UInt32(u[2]), UInt32(u[3]), UInt32(u[4]), UInt32(u[5]), UInt32(u[6]), UInt32(u[7]))
        }
        let a = widen(2), b = widen(10)
        let low = SIMD8<UInt32>(repeating: 15), two23 = SIMD8<UInt32>(repeating: 0x4B00_0000)
        let bias = SIMD8<Float>(repeating: 8_388_616)  // 2²³ + 8
        @inline(__always) func level(_ q: SIMD8<UInt32>) -> SIMD8<Float> { unsafeBitCast(q | two23, to: SIMD8<Float>.self) - bias }
        return (level(a & low), level(b & low), level(a &>> 4), level(b &>> 4))
    }

    /// The block's bf16 scale in every lane.
    @inline(__always)
    static func int4Scale(_ blk: UnsafeRawPointer) -> SIMD8<Float> {
        SIMD8(repeating: Float(bitPattern: UInt32(blk.loadUnaligned(as: UInt16.self)) &<< 16))
    }

    /// One block's step of one row and token: the only place the arithmetic is written, so the
    /// GEMV and the token tiles cannot drift apart.
    @inline(__always)
    static func int4Step(_ v: Int4Levels, _ d: SIMD8<Float>, _ x: UnsafeRawPointer, _ a: inout SIMD8<Float>) {
        var s = v.0 * x.loadUnaligned(as: SIMD8<Float>.self)
        s.addProduct(v.1, x.loadUnaligned(fromByteOffset: 32, as: SIMD8<Float>.self))
        s.addProduct(v.2, x.loadUnaligned(fromByteOffset: 64, as: SIMD8<Float>.self))
        s.addProduct(v.3, x.loadUnaligned(fromByteOffset: 96, as: SIMD8<Float>.self))
        a.addProduct(s, d)
    }

    /// Rows `lo ..< hi` for one token: four rows at a time (four weight streams in flight, with the
    /// rows two groups ahead prefetched: the next rows a thread reads are a row stride apart, too
    /// far for the hardware prefetcher to guess), then one at a time.
    static func int4Rows(_ w: Matrix, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ acc: Bool,
                         _ lo: Int, _ hi: Int) {
        let blocks = w.cols / 32, stride = w.rowStride, bb = DType.int4.blockBytes
        let xr = UnsafeRawPointer(x)
        var r = lo
        while r + 4 <= hi {
            let p = w.data + r * stride
            var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
            for b in 0..<blocks {
                let blk = p + b * bb, xb = xr + 128 * b
                @inline(__always) func row(_ a: inout SIMD8<Float>, _ k: Int) {
                    let q = blk + k * stride
                    prefetch(q + 8 * stride)
                    int4Step(int4Levels(q), int4Scale(q), xb, &a)
                }
                row(&a0, 0); row(&a1, 1); row(&a2, 2); row(&a3, 3)
            }
            let s = reduce4(a0, a1, a2, a3)
            for i in 0..<4 { put(y + r + i, s[i], acc) }
            r += 4
        }
        while r < hi {
            let p = w.data + r * stride
            var a = SIMD8<Float>()
            for b in 0..<blocks {
                let blk = p + b * bb
                int4Step(int4Levels(blk), int4Scale(blk), xr + 128 * b, &a)
            }
            put(y + r, reduce4(a, a, a, a)[0], acc)
            r += 1
        }
    }

    /// Rows `lo ..< hi` for tokens `t0 ..< t1` (`x` rows `w.cols` apart, `y` rows `w.rows`
    /// apart): one row at a time against tiles of four tokens, so each weight block is widened
    /// once per tile; the last one to three tokens run `int4Rows`, the same per-row arithmetic.
    static func int4Tiles(_ w: Matrix, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ acc: Bool,
                          _ lo: Int, _ hi: Int, _ t0: Int, _ t1: Int) {
        let blocks = w.cols / 32, stride = w.rowStride, bb = DType.int4.blockBytes, cols = w.cols, rows = w.rows
        var t = t0
        while t + 4 <= t1 {
            let x0 = UnsafeRawPointer(x + t * cols), x1 = UnsafeRawPointer(x + (t + 1) * cols)
            let x2 = UnsafeRawPointer(x + (t + 2) * cols), x3 = UnsafeRawPointer(x + (t + 3) * cols)
            for r in lo..<hi {
                let p = w.data + r * stride
                var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
                for b in 0..<blocks {
                    let blk = p + b * bb, o = 128 * b
                    // The first token tile reads the row group from memory: two rows ahead.
                    prefetch(blk + 2 * stride)
                    let v = int4Levels(blk), d = int4Scale(blk)
                    int4Step(v, d, x0 + o, &a0)
                    int4Step(v, d, x1 + o, &a1)
                    int4Step(v, d, x2 + o, &a2)
                    int4Step(v, d, x3 + o, &a3)
                }
                let s = reduce4(a0, a1, a2, a3)
                for i in 0..<4 { put(y + (t + i) * rows + r, s[i], acc) }
            }
            t += 4
        }
        for u in t..<t1 { int4Rows(w, x + u * cols, y + u * rows, acc, lo, hi) }
    }

    /// Tokens per chunk of a batched call: four tokens' fp32 activations over 7168 columns (a
    /// Kimi K2 expert's gate and up) are 112 KiB, which stay in L2 beside a row group
    /// (`int16GroupBytes`) while it passes.
    static let int4ChunkTokens = 4

    /// `y = x·Wᵀ` (or `+=`) for `n` tokens over `DType.int4` weights, on `pool`.
    static func int4(_ w: Matrix, _ x: UnsafePointer<Float>, _ n: Int, _ y: UnsafeMutablePointer<Float>, _ acc: Bool,
                     _ pool: ThreadPool) {
        if n == 1 {
            if pool.threadCount == 1 || w.rows * w.cols < parallelThreshold || w.rows < 16 {
                int4Rows(w, x, y, acc, 0, w.rows)
            } else {
                pool.parallelFor(w.rows, granularity: 8) { lo, hi in int4Rows(w, x, y, acc, lo, hi) }
            }
            return
        }
        rowGroups(w, n, chunk: int4ChunkTokens, pool) { r0, r1, c0, c1 in int4Tiles(w, x, y, acc, r0, r1, c0, c1) }
    }
}
