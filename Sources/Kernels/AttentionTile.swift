import CQuantDot

/// One KV tile of attention for a set of queries that read the same stored rows (a GQA group,
/// every MLA head, or those of several prompt rows): the tile's partial softmax states,
/// FlashAttention's `(m, ℓ, O)` (Dao et al. 2022), computed with register-blocked kernels.
///
/// The tile's key rows are widened from their stored type (`KVDType`) to fp32 once per call,
/// a few dozen rows at a time into an L1-sized scratch (`f32` rows are read in place), and then
/// reused by every query: the score kernel computes two queries × four keys (or one query ×
/// eight keys) per step with one 8-lane accumulator per pair, and sums the eight accumulators
/// horizontally together (`reduce8`: one shuffle tree for eight scores instead of eight
/// separate horizontal sums). The value kernel keeps two queries × 32 output values in
/// registers while it walks the widened value rows.
///
/// Batch invariance: every number a query gets is computed by the same operations in the same
/// order whichever block, kernel variant or call it falls into — a score is a per-lane fused
/// multiply-add chain over the dimensions in order, the fixed tree `((x0+x1)+(x2+x3)) +
/// ((x4+x5)+(x6+x7))`, then the remaining dimensions in order; an output value is a fused
/// multiply-add chain over the keys in position order. So the result for one query does not
/// depend on which other queries share the call, on the KV block layout, or on the thread.
public enum AttentionTile {
    /// Keys widened per step of the score and value passes: a few KB of fp32 that stay in L1.
    @inlinable
    static func chunkKeys(width: Int) -> Int { max(16, min(64, (8192 / max(1, width)) & ~7)) }

    /// Floats of a widened row (rounded up so rows start 64-byte apart).
    @inlinable
    static func paddedWidth(_ width: Int) -> Int { (width + 15) & ~15 }

    /// Bytes of `scratch` that `run` needs for rows of `width` (and `ropeWidth`) values.
    public static func scratchBytes(width: Int, ropeWidth: Int) -> Int {
        let w = max(width, ropeWidth), c = chunkKeys(width: w)
        return c * paddedWidth(w) * 4 + (c + 8) * MemoryLayout<UnsafePointer<Float>>.stride + 64
    }

    /// For each query `i < g`, `states + i·stateStride` becomes `[m, ℓ, O[0..<width]]`: over the
    /// `n ≥ 1` positions whose stored rows are `keys[j]` (key, `width` values), `ropeKeys[j]`
    /// (a second key piece of `ropeWidth` values whose score adds to the first, MLA's rotary
    /// key; nil: none) and `values[j]` (`width` values), in position order: the score
    /// `s_j = scale · (q_i·key_j + qr_i·ropeKey_j)`, `m = max_j s_j`, `ℓ = Σ_j e^(s_j − m)` and
    /// `O = Σ_j e^(s_j − m) · value_j`. Queries are `queries[i]` (`width` floats) and
    /// `ropeQueries[i]` (`ropeWidth`). `scores` holds `g · scoreStride` floats
    /// (`scoreStride ≥ n`); `scratch` holds `scratchBytes(width:ropeWidth:)` bytes, any alignment.
    public static func run(dtype: KVDType, count n: Int,
                           keys: UnsafePointer<UnsafeRawPointer>, ropeKeys: UnsafePointer<UnsafeRawPointer>?,
                           values: UnsafePointer<UnsafeRawPointer>,
                           queries: UnsafePointer<UnsafePointer<Float>>, ropeQueries: UnsafePointer<UnsafePointer<Float>>?,
                           count g: Int, width: Int, ropeWidth: Int, scale: Float,
                           scores: UnsafeMutablePointer<Float>, scoreStride: Int, scratch: UnsafeMutableRawPointer,
                           states: UnsafeMutablePointer<Float>, stateStride: Int) {
        switch dtype {
        case .f32:
            run(KVRowF32.self, dtype, n, keys, ropeKeys, values, queries, ropeQueries, g, width, ropeWidth, scale,
                scores, scoreStride, scratch, states, stateStride)
        case .f16:
            run(KVRowF16.self, dtype, n, keys, ropeKeys, values, queries, ropeQueries, g, width, ropeWidth, scale,
                scores, scoreStride, scratch, states, stateStride)
        case .bf16:
            run(KVRowBF16.self, dtype, n, keys, ropeKeys, values, queries, ropeQueries, g, width, ropeWidth, scale,
                scores, scoreStride, scratch, states, stateStride)
        case .q8_0:
            run(KVRowQ8_0.self, dtype, n, keys, ropeKeys, values, queries, ropeQueries, g, width, ropeWidth, scale,
                scores, scoreStride, scratch, states, stateStride)
        }
    }

    @inline(__always)
    static func run<F: KVRowFormat>(_: F.Type, _ dtype: KVDType, _ n: Int, _ keys: UnsafePointer<UnsafeRawPointer>,
                                    _ ropeKeys: UnsafePointer<UnsafeRawPointer>?, _ values: UnsafePointer<UnsafeRawPointer>,
                                    _ queries: UnsafePointer<UnsafePointer<Float>>,
                                    _ ropeQueries: UnsafePointer<UnsafePointer<Float>>?,
                                    _ g: Int, _ width: Int, _ ropeWidth: Int, _ scale: Float,
                                    _ scores: UnsafeMutablePointer<Float>, _ scoreStride: Int,
                                    _ scratch: UnsafeMutableRawPointer,
                                    _ states: UnsafeMutablePointer<Float>, _ stateStride: Int) {
        // Scratch: the widened rows (64-byte aligned), then their pointers.
        let base = UnsafeMutableRawPointer(bitPattern: (Int(bitPattern: scratch) + 63) & ~63)!
        let wmax = max(width, ropeWidth), chunk = chunkKeys(width: wmax)
        let rowsBuf = base.assumingMemoryBound(to: Float.self)
        let rows = (base + chunk * paddedWidth(wmax) * 4).assumingMemoryBound(to: UnsafePointer<Float>.self)
        let keyBytes = dtype.bytes(width), ropeBytes = dtype.bytes(ropeWidth)
        // Scores, chunk by chunk of keys.
        var j0 = 0
        while j0 < n {
            let c = min(chunk, n - j0)
            // GQA: the value rows of these keys (another array) are fetched into L2 meanwhile, so
            // that the value pass below finds them there; MLA's values are its keys' rows.
            widen(F.self, keys + j0, count: c, ahead: n - j0 - c, rowBytes: keyBytes, width: width, buffer: rowsBuf, rows: rows,
                  later: ropeKeys == nil ? values + j0 : nil)
            scoreBlock(rows, count: c, queries: queries, count: g, width: width,
                       out: scores + j0, outStride: scoreStride, accumulate: false)
            if let ropeKeys, let ropeQueries {
                widen(F.self, ropeKeys + j0, count: c, ahead: n - j0 - c, rowBytes: ropeBytes, width: ropeWidth,
                      buffer: rowsBuf, rows: rows, later: nil)
                scoreBlock(rows, count: c, queries: ropeQueries, count: g, width: ropeWidth,
                           out: scores + j0, outStride: scoreStride, accumulate: true)
            }
            j0 += c
        }
        // Softmax statistics per query; the scores become the weights e^(s_j - m).
        for i in 0..<g {
            let s = scores + i * scoreStride, st = states + i * stateStride
            let m = scaleAndMax(s, count: n, scale: scale)
            st[0] = m
            st[1] = expAndSum(s, count: n, subtracting: m)
            (st + 2).update(repeating: 0, count: width)
        }
        // Values, chunk by chunk of keys, accumulated in key order.
        j0 = 0
        while j0 < n {
            let c = min(chunk, n - j0)
            widen(F.self, values + j0, count: c, ahead: n - j0 - c, rowBytes: keyBytes, width: width, buffer: rowsBuf, rows: rows,
                  later: nil)
            accumulate(rows, count: c, weights: scores + j0, weightStride: scoreStride, queries: g, width: width,
                       acc: states + 2, accStride: stateStride)
            j0 += c
        }
    }

    /// Rows ahead of the one being widened whose cache lines are prefetched: far enough that a
    /// row's load from memory overlaps the widening of the rows before it.
    @inlinable static var prefetchRows: Int { 16 }

    /// `rows[j]` = row `j < c` as fp32: in place for f32 rows, else widened into `buffer`. The
    /// list is padded to a multiple of 8 with copies of the last row (the kernels' spare lanes).
    /// `src` continues for `ahead` more rows after `c`; the lines of rows up to `prefetchRows`
    /// ahead (of `rowBytes` each) are prefetched. Decode reads each KV row once, a row stride
    /// apart per head, and without this the widening waits on memory for most of its time.
    /// The lines of `later[j]` (`rowBytes` each), if given, are prefetched into L2 beside row `j`.
    @inline(__always)
    static func widen<F: KVRowFormat>(_: F.Type, _ src: UnsafePointer<UnsafeRawPointer>, count c: Int, ahead: Int,
                                      rowBytes: Int, width: Int,
                                      buffer: UnsafeMutablePointer<Float>, rows: UnsafeMutablePointer<UnsafePointer<Float>>,
                                      later: UnsafePointer<UnsafeRawPointer>?) {
        let last = c + min(ahead, prefetchRows)
        /// Row `j`'s lines ahead into L1, and `later[j - prefetchRows]`'s (a row of this chunk) into L2.
        @inline(__always)
        func prefetch(_ j: Int) {
            var o = 0
            if j < last {
                while o < rowBytes { fs_prefetch(src[j] + o); o += 64 }
            }
            if let later {
                o = 0
                while o < rowBytes { fs_prefetch_l2(later[j - prefetchRows] + o); o += 64 }
            }
        }
        if F.self == KVRowF32.self {
            for j in 0..<c {
                prefetch(j + prefetchRows)
                rows[j] = UnsafePointer(src[j].assumingMemoryBound(to: Float.self))
            }
        } else {
            let pw = paddedWidth(width)
            for j in 0..<c {
                prefetch(j + prefetchRows)
                F.widen(src[j], into: buffer + j * pw, count: width)
                rows[j] = UnsafePointer(buffer + j * pw)
            }
        }
        var j = c
        while j & 7 != 0 { rows[j] = rows[c - 1]; j += 1 }
    }

    @inline(__always)
    static func load(_ p: UnsafePointer<Float>, _ i: Int) -> SIMD8<Float> {
        UnsafeRawPointer(p + i).loadUnaligned(as: SIMD8<Float>.self)
    }

    @inline(__always)
    static func store(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>, _ i: Int) {
        UnsafeMutableRawPointer(p + i).storeBytes(of: v, as: SIMD8<Float>.self)
    }

    /// `[a0+a1, a2+a3, b0+b1, b2+b3, a4+a5, a6+a7, b4+b5, b6+b7]` (AVX's `vhaddps` pattern).
    @inline(__always)
    static func hadd(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
        SIMD8(a[0], a[2], b[0], b[2], a[4], a[6], b[4], b[6]) + SIMD8(a[1], a[3], b[1], b[3], a[5], a[7], b[5], b[7])
    }

    /// The lane sums of eight vectors, lane `k` = `((v_k0+v_k1)+(v_k2+v_k3)) + ((v_k4+v_k5)+(v_k6+v_k7))`.
    @inline(__always)
    static func reduce8(_ v0: SIMD8<Float>, _ v1: SIMD8<Float>, _ v2: SIMD8<Float>, _ v3: SIMD8<Float>,
                        _ v4: SIMD8<Float>, _ v5: SIMD8<Float>, _ v6: SIMD8<Float>, _ v7: SIMD8<Float>) -> SIMD8<Float> {
        let a = hadd(hadd(v0, v1), hadd(v2, v3)), b = hadd(hadd(v4, v5), hadd(v6, v7))
        return SIMD8(lowHalf: a.lowHalf, highHalf: b.lowHalf) + SIMD8(lowHalf: a.highHalf, highHalf: b.highHalf)
    }

    /// `out[i·outStride + j] (+)= q_i · row_j` for `i < g`, `j < c` (`rows` padded to a multiple
    /// of 8). Query pairs take four keys per step (8 accumulators), an odd last query eight.
    @inline(__always)
    static func scoreBlock(_ rows: UnsafePointer<UnsafePointer<Float>>, count c: Int,
                           queries: UnsafePointer<UnsafePointer<Float>>, count g: Int, width w: Int,
                           out: UnsafeMutablePointer<Float>, outStride: Int, accumulate: Bool) {
        let w8 = w & ~7
        // Dimensions past the last multiple of 8, in order, after the lane tree.
        @inline(__always)
        func tail(_ s: Float, _ q: UnsafePointer<Float>, _ k: UnsafePointer<Float>) -> Float {
            var s = s
            var d = w8
            while d < w { s = s.addingProduct(q[d], k[d]); d += 1 }
            return s
        }
        @inline(__always)
        func put(_ o: UnsafeMutablePointer<Float>, _ s: Float) { o.pointee = accumulate ? o.pointee + s : s }
        // Four scores at once (no tail dimensions): the same additions, lane by lane.
        @inline(__always)
        func put4(_ o: UnsafeMutablePointer<Float>, _ s: SIMD4<Float>) {
            let r = UnsafeMutableRawPointer(o)
            r.storeBytes(of: accumulate ? r.loadUnaligned(as: SIMD4<Float>.self) + s : s, as: SIMD4<Float>.self)
        }
        var i = 0
        while i + 2 <= g {
            let qa = queries[i], qb = queries[i + 1]
            let oa = out + i * outStride, ob = oa + outStride
            var j = 0
            while j < c {
                let k0 = rows[j], k1 = rows[j + 1], k2 = rows[j + 2], k3 = rows[j + 3]
                var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
                var b0 = SIMD8<Float>(), b1 = SIMD8<Float>(), b2 = SIMD8<Float>(), b3 = SIMD8<Float>()
                var d = 0
                while d < w8 {
                    let x = load(qa, d), y = load(qb, d)
                    let v0 = load(k0, d), v1 = load(k1, d), v2 = load(k2, d), v3 = load(k3, d)
                    a0.addProduct(x, v0); a1.addProduct(x, v1); a2.addProduct(x, v2); a3.addProduct(x, v3)
                    b0.addProduct(y, v0); b1.addProduct(y, v1); b2.addProduct(y, v2); b3.addProduct(y, v3)
                    d += 8
                }
                let s = reduce8(a0, a1, a2, a3, b0, b1, b2, b3)
                if w8 == w && j + 4 <= c {
                    put4(oa + j, s.lowHalf)
                    put4(ob + j, s.highHalf)
                } else {
                    for k in 0..<min(4, c - j) {
                        put(oa + j + k, tail(s[k], qa, rows[j + k]))
                        put(ob + j + k, tail(s[4 + k], qb, rows[j + k]))
                    }
                }
                j += 4
            }
            i += 2
        }
        if i < g {
            let q = queries[i], o = out + i * outStride
            var j = 0
            while j < c {
                let k0 = rows[j], k1 = rows[j + 1], k2 = rows[j + 2], k3 = rows[j + 3]
                let k4 = rows[j + 4], k5 = rows[j + 5], k6 = rows[j + 6], k7 = rows[j + 7]
                var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
                var a4 = SIMD8<Float>(), a5 = SIMD8<Float>(), a6 = SIMD8<Float>(), a7 = SIMD8<Float>()
                var d = 0
                while d < w8 {
                    let x = load(q, d)
                    a0.addProduct(x, load(k0, d)); a1.addProduct(x, load(k1, d))
                    a2.addProduct(x, load(k2, d)); a3.addProduct(x, load(k3, d))
                    a4.addProduct(x, load(k4, d)); a5.addProduct(x, load(k5, d))
                    a6.addProduct(x, load(k6, d)); a7.addProduct(x, load(k7, d))
                    d += 8
                }
                let s = reduce8(a0, a1, a2, a3, a4, a5, a6, a7)
                if w8 == w && j + 8 <= c {
                    put4(o + j, s.lowHalf)
                    put4(o + j + 4, s.highHalf)
                } else {
                    for k in 0..<min(8, c - j) { put(o + j + k, tail(s[k], q, rows[j + k])) }
                }
                j += 8
            }
        }
    }

    /// `s[j] *= scale` for `j < n`; returns the largest.
    @inline(__always)
    static func scaleAndMax(_ s: UnsafeMutablePointer<Float>, count n: Int, scale: Float) -> Float {
        let sv = SIMD8<Float>(repeating: scale)
        var mv = SIMD8<Float>(repeating: -.infinity)
        var j = 0
        while j + 8 <= n {
            let v = load(s, j) * sv
            store(v, s, j)
            mv = mv.replacing(with: v, where: v .> mv)
            j += 8
        }
        var m = mv.max()
        while j < n {
            s[j] *= scale
            m = max(m, s[j])
            j += 1
        }
        return m
    }

    /// `s[j] = e^(s[j] - m)` for `j < n` (`Elementwise.exp`'s rounding); returns their sum (eight
    /// lanes in order of `j`, the lane tree, then the tail).
    @inline(__always)
    static func expAndSum(_ s: UnsafeMutablePointer<Float>, count n: Int, subtracting m: Float) -> Float {
        let mv = SIMD8<Float>(repeating: m)
        var j = 0
        while j + 8 <= n { store(load(s, j) - mv, s, j); j += 8 }
        while j < n { s[j] -= m; j += 1 }
        Elementwise.exp(s, count: n)
        var acc = SIMD8<Float>()
        j = 0
        while j + 8 <= n { acc += load(s, j); j += 8 }
        var sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
        while j < n { sum += s[j]; j += 1 }
        return sum
    }

    /// `acc[i·accStride + d] += Σ_j p[i·weightStride + j] · row_j[d]` for `i < g`, `d < w`, the
    /// sum over `j < c` in order (one fused multiply-add per key). Pairs of queries keep 2 × 32
    /// values in registers across the keys, an odd last query 64.
    @inline(__always)
    static func accumulate(_ rows: UnsafePointer<UnsafePointer<Float>>, count c: Int,
                           weights p: UnsafePointer<Float>, weightStride: Int, queries g: Int, width w: Int,
                           acc: UnsafeMutablePointer<Float>, accStride: Int) {
        var i = 0
        while i + 2 <= g {
            let oa = acc + i * accStride, ob = oa + accStride
            let pa = p + i * weightStride, pb = pa + weightStride
            var d = 0
            while d + 32 <= w {
                var a0 = load(oa, d), a1 = load(oa, d + 8), a2 = load(oa, d + 16), a3 = load(oa, d + 24)
                var b0 = load(ob, d), b1 = load(ob, d + 8), b2 = load(ob, d + 16), b3 = load(ob, d + 24)
                for j in 0..<c {
                    let v = rows[j] + d
                    let x = SIMD8<Float>(repeating: pa[j]), y = SIMD8<Float>(repeating: pb[j])
                    let v0 = load(v, 0), v1 = load(v, 8), v2 = load(v, 16), v3 = load(v, 24)
                    a0.addProduct(x, v0); a1.addProduct(x, v1); a2.addProduct(x, v2); a3.addProduct(x, v3)
                    b0.addProduct(y, v0); b1.addProduct(y, v1); b2.addProduct(y, v2); b3.addProduct(y, v3)
                }
                store(a0, oa, d); store(a1, oa, d + 8); store(a2, oa, d + 16); store(a3, oa, d + 24)
                store(b0, ob, d); store(b1, ob, d + 8); store(b2, ob, d + 16); store(b3, ob, d + 24)
                d += 32
            }
            while d + 8 <= w {
                var a0 = load(oa, d), b0 = load(ob, d)
                for j in 0..<c {
                    let v0 = load(rows[j], d)
                    a0.addProduct(SIMD8(repeating: pa[j]), v0)
                    b0.addProduct(SIMD8(repeating: pb[j]), v0)
                }
                store(a0, oa, d); store(b0, ob, d)
                d += 8
            }
            while d < w {
                var a = oa[d], b = ob[d]
                for j in 0..<c {
                    a = a.addingProduct(pa[j], rows[j][d])
                    b = b.addingProduct(pb[j], rows[j][d])
                }
                oa[d] = a; ob[d] = b
                d += 1
            }
            i += 2
        }
        if i < g {
            let o = acc + i * accStride, pa = p + i * weightStride
            var d = 0
            while d + 64 <= w {
                var a0 = load(o, d), a1 = load(o, d + 8), a2 = load(o, d + 16), a3 = load(o, d + 24)
                var a4 = load(o, d + 32), a5 = load(o, d + 40), a6 = load(o, d + 48), a7 = load(o, d + 56)
                for j in 0..<c {
                    let v = rows[j] + d, x = SIMD8<Float>(repeating: pa[j])
                    a0.addProduct(x, load(v, 0)); a1.addProduct(x, load(v, 8))
                    a2.addProduct(x, load(v, 16)); a3.addProduct(x, load(v, 24))
                    a4.addProduct(x, load(v, 32)); a5.addProduct(x, load(v, 40))
                    a6.addProduct(x, load(v, 48)); a7.addProduct(x, load(v, 56))
                }
                store(a0, o, d); store(a1, o, d + 8); store(a2, o, d + 16); store(a3, o, d + 24)
                store(a4, o, d + 32); store(a5, o, d + 40); store(a6, o, d + 48); store(a7, o, d + 56)
                d += 64
            }
            while d + 8 <= w {
                var a0 = load(o, d)
                for j in 0..<c { a0.addProduct(SIMD8(repeating: pa[j]), load(rows[j], d)) }
                store(a0, o, d)
                d += 8
            }
            while d < w {
                var a = o[d]
                for j in 0..<c { a = a.addingProduct(pa[j], rows[j][d]) }
                o[d] = a
                d += 1
            }
        }
    }
}
