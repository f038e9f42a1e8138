import Foundation
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

/// bfloat16 is the top half of an IEEE float: zero-extend to 32 bits and shift left by 16
/// (`vpmovzxwd` + `vpslld`, elements stay in order).
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
}

@inline(__always)
private func loadX(_ x: UnsafePointer<Float>, _ c: Int) -> SIMD8<Float> {
    UnsafeRawPointer(x + c).loadUnaligned(as: SIMD8<Float>.self)
}

/// Dense linear layers over weights in any `DType`, accumulating in fp32.
///
/// Decode (`count == 1`) is a GEMV bound by memory bandwidth: each thread reads its rows as
/// eight long sequential streams (eight distant rows at a time, each stream moving on to the
/// next row in memory), which keeps the hardware prefetchers busy even when rows are short.
/// Batches (`count > 1`) use 4-row × 3-token register tiles, so each widened weight vector
/// feeds three FMAs and each input vector four; small batches read rows as four streams, large
/// ones block the columns so a tile's weights stay in L1 while every token passes over them.
///
/// Numerics: products are summed in fp32, in eight SIMD lanes per row, folded into the row's
/// total every `columnBlock` columns (so no single fp32 running sum covers more than 64 terms
/// before being folded).
public enum Linear {
    /// Below this many multiply-adds a call runs on the calling thread: waking the pool costs more.
    static let parallelThreshold = 1 << 15

    /// Columns summed in SIMD lanes before being folded into a row total.
    static let columnBlock = Int(ProcessInfo.processInfo.environment["FOLD"] ?? "1024")!

    /// Column block of large batches: a 4-row weight tile, widened to fp32, of this many columns
    /// stays in L1 while every token tile passes over it.
    static let panelColumns = Int(ProcessInfo.processInfo.environment["KB"] ?? "1024")!

    /// Batches above this many tokens use column blocking instead of row streams.
    static let streamingMaxTokens = Int(ProcessInfo.processInfo.environment["SMT"] ?? "6")!

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
        }
    }

    static func dispatch<F: WeightFormat>(_ f: F.Type, _ w: Matrix, _ x: UnsafePointer<Float>, _ n: Int,
                                          _ y: UnsafeMutablePointer<Float>, _ acc: Bool) {
        let pool = ThreadPool.shared
        let serial = pool.threadCount == 1 || w.rows * w.cols * n < parallelThreshold
        if n == 1 {
            if serial || w.rows < 16 {
                gemv(f, w, x, y, acc, 0, w.rows)
            } else {
                pool.parallelFor(w.rows, granularity: 8) { lo, hi in gemv(f, w, x, y, acc, lo, hi) }
            }
            return
        }
        if serial {
            gemm(f, w, x, n, y, acc, 0, w.rows)
        } else if w.rows >= 8 * pool.threadCount {
            pool.parallelFor(w.rows, granularity: 4) { lo, hi in gemm(f, w, x, n, y, acc, lo, hi) }
        } else {
            // Few rows, many tokens (e.g. a router): split the tokens instead.
            pool.parallelFor(n, granularity: 3) { lo, hi in
                gemm(f, w, x + lo * w.cols, hi - lo, y + lo * w.rows, acc, 0, w.rows)
            }
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
        let cols = w.cols, rb = w.rowBytes, vecEnd = cols & ~7, es = F.byteSize
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

    /// One row times `x`, four accumulators.
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

    /// Rows `lo ..< hi` for `n` tokens.
    ///
    /// Up to `streamingMaxTokens` tokens the weights are read once, as four sequential row
    /// streams (like `gemv`), and each tile covers all columns. Above that, the columns are
    /// cut into `columnBlock`-sized blocks; within a block, each 4-row weight tile (≤ 8 KiB)
    /// stays in L1 while every token tile passes over it, and the block of inputs stays in L2.
    static func gemm<F: WeightFormat>(_ f: F.Type, _ w: Matrix, _ x: UnsafePointer<Float>, _ n: Int,
                                      _ y: UnsafeMutablePointer<Float>, _ acc: Bool, _ lo: Int, _ hi: Int) {
        let cols = w.cols
        if n <= streamingMaxTokens {
            let per = (hi - lo) / 4
            for j in 0..<per {
                gemmGroup(f, w, x, cols, n, y, w.rows, lo + j, per, 4, 0, cols, acc)
            }
            var r = lo + 4 * per
            while r < hi {
                gemmGroup(f, w, x, cols, n, y, w.rows, r, 1, min(4, hi - r), 0, cols, acc)
                r += 4
            }
        } else {
            // Each 4-row × `panelColumns` weight tile is widened to fp32 once, then every token
            // tile runs the fp32 kernel over it (the widening is paid once per weight, not once
            // per token tile).
            let order = ProcessInfo.processInfo.environment["ORDER"] ?? "full"
            if order == "full" {
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 4 * cols) { panel in
                let pp = panel.baseAddress!
                let panelMatrix = Matrix(data: UnsafeRawPointer(pp), dtype: .f32, rows: 4, cols: cols)
                var r = lo
                while r < hi {
                    let valid = min(4, hi - r)
                    for k in 0..<4 {
                        widen(f, w.data + (r + min(k, valid - 1)) * w.rowBytes, pp + k * cols, cols)
                    }
                    var c0 = 0
                    while c0 < cols {
                        let c1 = cols - c0 < panelColumns + panelColumns / 2 ? cols : c0 + panelColumns
                        gemmGroup(F32Format.self, panelMatrix, x, cols, n, y + r, w.rows, 0, 1, valid, c0, c1, acc || c0 > 0)
                        c0 = c1
                    }
                    r += 4
                }
            }
            return
            }
            let kc = min(cols, panelColumns + panelColumns / 2)
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 4 * kc) { panel in
                let pp = panel.baseAddress!
                let panelMatrix = Matrix(data: UnsafeRawPointer(pp), dtype: .f32, rows: 4, cols: kc)
                var c0 = 0
                while c0 < cols {
                    let c1 = cols - c0 < panelColumns + panelColumns / 2 ? cols : c0 + panelColumns
                    let len = c1 - c0
                    var r = lo
                    while r < hi {
                        let valid = min(4, hi - r)
                        for k in 0..<4 {
                            widen(f, w.data + (r + min(k, valid - 1)) * w.rowBytes + c0 * F.byteSize, pp + k * kc, len)
                        }
                        gemmGroup(F32Format.self, panelMatrix, x + c0, cols, n, y + r, w.rows, 0, 1, valid, 0, len, acc || c0 > 0)
                        r += 4
                    }
                    c0 = c1
                }
            }
        }
    }

    /// `out[0..<count] = p[0..<count]` widened to fp32.
    @inline(__always)
    static func widen<F: WeightFormat>(_ f: F.Type, _ p: UnsafeRawPointer, _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        var c = 0
        while c + 8 <= count {
            UnsafeMutableRawPointer(out + c).storeBytes(of: F.load8(p + c * F.byteSize), as: SIMD8<Float>.self)
            c += 8
        }
        while c < count {
            out[c] = F.load1(p + c * F.byteSize)
            c += 1
        }
    }

    /// Rows `r0 + k·stride` for `k in 0..<valid` (`valid ≤ 4`), columns `c0 ..< c1`, all `n`
    /// tokens; adds into `y` when `add`. Missing rows of a short group re-read the last row
    /// and are not stored.
    @inline(__always)
    static func gemmGroup<F: WeightFormat>(_ f: F.Type, _ w: Matrix, _ x: UnsafePointer<Float>, _ cols: Int, _ n: Int,
                                           _ y: UnsafeMutablePointer<Float>, _ rows: Int, _ r0: Int, _ stride: Int, _ valid: Int,
                                           _ c0: Int, _ c1: Int, _ add: Bool) {
        let rb = w.rowBytes
        let base = w.data + r0 * rb
        let p0 = base
        let p1 = base + min(1, valid - 1) * stride * rb
        let p2 = base + min(2, valid - 1) * stride * rb
        let p3 = base + min(3, valid - 1) * stride * rb
        @inline(__always) func store(_ t: Int, _ s: SIMD4<Float>) {
            let out = y + t * rows + r0
            if stride == 1 && valid == 4 {
                var v = s
                if add { v += UnsafeRawPointer(out).loadUnaligned(as: SIMD4<Float>.self) }
                UnsafeMutableRawPointer(out).storeBytes(of: v, as: SIMD4<Float>.self)
            } else {
                for k in 0..<valid { put(out + k * stride, s[k], add) }
            }
        }
        var t = 0
        while t + 3 <= n {
            let xa = x + t * cols
            let (sa, sb, sc) = tile4x3(f, p0, p1, p2, p3, xa, xa + cols, xa + 2 * cols, c0, c1)
            store(t, sa); store(t + 1, sb); store(t + 2, sc)
            t += 3
        }
        if n - t == 2 {
            let xa = x + t * cols
            let (sa, sb) = tile4x2(f, p0, p1, p2, p3, xa, xa + cols, c0, c1)
            store(t, sa); store(t + 1, sb)
        } else if n - t == 1 {
            store(t, tile4x1(f, p0, p1, p2, p3, x + t * cols, c0, c1))
        }
    }

    /// Four rows × three tokens over columns `c0 ..< c1`: twelve accumulators, each weight
    /// vector widened once and used three times.
    @inline(__always)
    static func tile4x3<F: WeightFormat>(_ f: F.Type, _ p0: UnsafeRawPointer, _ p1: UnsafeRawPointer,
                                         _ p2: UnsafeRawPointer, _ p3: UnsafeRawPointer,
                                         _ xa: UnsafePointer<Float>, _ xb: UnsafePointer<Float>, _ xc: UnsafePointer<Float>,
                                         _ c0: Int, _ c1: Int) -> (SIMD4<Float>, SIMD4<Float>, SIMD4<Float>) {
        let es = F.byteSize, vecEnd = c0 + ((c1 - c0) & ~7)
        var sa = SIMD4<Float>(), sb = SIMD4<Float>(), sc = SIMD4<Float>()
        var c = c0
        while c < vecEnd {
            let blockEnd = min(c + columnBlock, vecEnd)
            var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
            var b0 = SIMD8<Float>(), b1 = SIMD8<Float>(), b2 = SIMD8<Float>(), b3 = SIMD8<Float>()
            var d0 = SIMD8<Float>(), d1 = SIMD8<Float>(), d2 = SIMD8<Float>(), d3 = SIMD8<Float>()
            while c < blockEnd {
                let o = c * es
                let va = loadX(xa, c), vb = loadX(xb, c), vc = loadX(xc, c)
                let w0 = F.load8(p0 + o)
                a0.addProduct(w0, va); b0.addProduct(w0, vb); d0.addProduct(w0, vc)
                let w1 = F.load8(p1 + o)
                a1.addProduct(w1, va); b1.addProduct(w1, vb); d1.addProduct(w1, vc)
                let w2 = F.load8(p2 + o)
                a2.addProduct(w2, va); b2.addProduct(w2, vb); d2.addProduct(w2, vc)
                let w3 = F.load8(p3 + o)
                a3.addProduct(w3, va); b3.addProduct(w3, vb); d3.addProduct(w3, vc)
                c += 8
            }
            sa += reduce4(a0, a1, a2, a3)
            sb += reduce4(b0, b1, b2, b3)
            sc += reduce4(d0, d1, d2, d3)
        }
        while c < c1 {
            let o = c * es
            let wv = SIMD4<Float>(F.load1(p0 + o), F.load1(p1 + o), F.load1(p2 + o), F.load1(p3 + o))
            sa.addProduct(wv, SIMD4(repeating: xa[c]))
            sb.addProduct(wv, SIMD4(repeating: xb[c]))
            sc.addProduct(wv, SIMD4(repeating: xc[c]))
            c += 1
        }
        return (sa, sb, sc)
    }

    /// Four rows × two tokens (token tail).
    @inline(__always)
    static func tile4x2<F: WeightFormat>(_ f: F.Type, _ p0: UnsafeRawPointer, _ p1: UnsafeRawPointer,
                                         _ p2: UnsafeRawPointer, _ p3: UnsafeRawPointer,
                                         _ xa: UnsafePointer<Float>, _ xb: UnsafePointer<Float>,
                                         _ c0: Int, _ c1: Int) -> (SIMD4<Float>, SIMD4<Float>) {
        let es = F.byteSize, vecEnd = c0 + ((c1 - c0) & ~7)
        var sa = SIMD4<Float>(), sb = SIMD4<Float>()
        var c = c0
        while c < vecEnd {
            let blockEnd = min(c + columnBlock, vecEnd)
            var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
            var b0 = SIMD8<Float>(), b1 = SIMD8<Float>(), b2 = SIMD8<Float>(), b3 = SIMD8<Float>()
            while c < blockEnd {
                let o = c * es
                let va = loadX(xa, c), vb = loadX(xb, c)
                let w0 = F.load8(p0 + o), w1 = F.load8(p1 + o)
                a0.addProduct(w0, va); b0.addProduct(w0, vb); a1.addProduct(w1, va); b1.addProduct(w1, vb)
                let w2 = F.load8(p2 + o), w3 = F.load8(p3 + o)
                a2.addProduct(w2, va); b2.addProduct(w2, vb); a3.addProduct(w3, va); b3.addProduct(w3, vb)
                c += 8
            }
            sa += reduce4(a0, a1, a2, a3)
            sb += reduce4(b0, b1, b2, b3)
        }
        while c < c1 {
            let o = c * es
            let wv = SIMD4<Float>(F.load1(p0 + o), F.load1(p1 + o), F.load1(p2 + o), F.load1(p3 + o))
            sa.addProduct(wv, SIMD4(repeating: xa[c]))
            sb.addProduct(wv, SIMD4(repeating: xb[c]))
            c += 1
        }
        return (sa, sb)
    }

    /// Four rows × one token (token tail): two accumulators per row.
    @inline(__always)
    static func tile4x1<F: WeightFormat>(_ f: F.Type, _ p0: UnsafeRawPointer, _ p1: UnsafeRawPointer,
                                         _ p2: UnsafeRawPointer, _ p3: UnsafeRawPointer,
                                         _ xa: UnsafePointer<Float>, _ c0: Int, _ c1: Int) -> SIMD4<Float> {
        let es = F.byteSize, vecEnd = c0 + ((c1 - c0) & ~7)
        var sa = SIMD4<Float>()
        var c = c0
        while c < vecEnd {
            let blockEnd = min(c + columnBlock, vecEnd)
            var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
            var b0 = SIMD8<Float>(), b1 = SIMD8<Float>(), b2 = SIMD8<Float>(), b3 = SIMD8<Float>()
            while c + 16 <= blockEnd {
                let o = c * es, va = loadX(xa, c), vb = loadX(xa, c + 8)
                a0.addProduct(F.load8(p0 + o), va); a1.addProduct(F.load8(p1 + o), va)
                a2.addProduct(F.load8(p2 + o), va); a3.addProduct(F.load8(p3 + o), va)
                b0.addProduct(F.load8(p0 + o + 8 * es), vb); b1.addProduct(F.load8(p1 + o + 8 * es), vb)
                b2.addProduct(F.load8(p2 + o + 8 * es), vb); b3.addProduct(F.load8(p3 + o + 8 * es), vb)
                c += 16
            }
            if c < blockEnd {
                let o = c * es, va = loadX(xa, c)
                a0.addProduct(F.load8(p0 + o), va); a1.addProduct(F.load8(p1 + o), va)
                a2.addProduct(F.load8(p2 + o), va); a3.addProduct(F.load8(p3 + o), va)
                c += 8
            }
            sa += reduce4(a0 + b0, a1 + b1, a2 + b2, a3 + b3)
        }
        while c < c1 {
            let o = c * es
            sa.addProduct(SIMD4<Float>(F.load1(p0 + o), F.load1(p1 + o), F.load1(p2 + o), F.load1(p3 + o)),
                          SIMD4(repeating: xa[c]))
            c += 1
        }
        return sa
    }
}

extension Matrix {
    /// Writes row `r` widened to fp32 into `out[0..<cols]` (embedding lookup). Exact.
    public func widenRow(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        let p = data + r * rowBytes
        switch dtype {
        case .bf16: widen(BF16Format.self, p, out)
        case .f16: widen(F16Format.self, p, out)
        case .f32: UnsafeMutableRawPointer(out).copyMemory(from: p, byteCount: rowBytes)
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
