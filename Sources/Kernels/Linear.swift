/// Storage formats the linear kernels read, widened to fp32 in registers, 16 elements at a time.
@usableFromInline
protocol WeightFormat {
    static var byteSize: Int { get }
    /// Whether `load16` returns elements in even/odd order (then the kernels read the input
    /// through `permute16`, which applies the same order, so every dot product is unchanged).
    static var evenOdd: Bool { get }
    static func load16(_ p: UnsafeRawPointer) -> (SIMD8<Float>, SIMD8<Float>)
    static func load1(_ p: UnsafeRawPointer) -> Float
}

@usableFromInline
enum F32Format: WeightFormat {
    @usableFromInline static var byteSize: Int { 4 }
    @usableFromInline static var evenOdd: Bool { false }
    @inline(__always) @usableFromInline
    static func load16(_ p: UnsafeRawPointer) -> (SIMD8<Float>, SIMD8<Float>) {
        (p.loadUnaligned(as: SIMD8<Float>.self), p.loadUnaligned(fromByteOffset: 32, as: SIMD8<Float>.self))
    }
    @inline(__always) @usableFromInline
    static func load1(_ p: UnsafeRawPointer) -> Float { p.loadUnaligned(as: Float.self) }
}

@usableFromInline
enum F16Format: WeightFormat {
    @usableFromInline static var byteSize: Int { 2 }
    @usableFromInline static var evenOdd: Bool { false }
    @inline(__always) @usableFromInline
    static func load16(_ p: UnsafeRawPointer) -> (SIMD8<Float>, SIMD8<Float>) {
        let bits = p.loadUnaligned(as: SIMD16<UInt16>.self)
        let h = unsafeBitCast(bits, to: SIMD16<Float16>.self)
        return (SIMD8<Float>(h.lowHalf), SIMD8<Float>(h.highHalf))
    }
    @inline(__always) @usableFromInline
    static func load1(_ p: UnsafeRawPointer) -> Float { Float(Float16(bitPattern: p.loadUnaligned(as: UInt16.self))) }
}

/// bfloat16 is the top half of an IEEE float. Sixteen of them read as eight 32-bit words give
/// the odd elements by masking the low half and the even ones by a 16-bit shift: two integer ops
/// per 16 weights and no lane shuffles, at the price of the input being read in even/odd order.
@usableFromInline
enum BF16Format: WeightFormat {
    @usableFromInline static var byteSize: Int { 2 }
    @usableFromInline static var evenOdd: Bool { true }
    @inline(__always) @usableFromInline
    static func load16(_ p: UnsafeRawPointer) -> (SIMD8<Float>, SIMD8<Float>) {
        let u = p.loadUnaligned(as: SIMD8<UInt32>.self)
        return (unsafeBitCast(u &<< 16, to: SIMD8<Float>.self),
                unsafeBitCast(u & SIMD8(repeating: 0xFFFF_0000), to: SIMD8<Float>.self))
    }
    @inline(__always) @usableFromInline
    static func load1(_ p: UnsafeRawPointer) -> Float { Float(bitPattern: UInt32(p.loadUnaligned(as: UInt16.self)) << 16) }
}

/// Dense linear layers over weights in any `DType`, accumulating in fp32.
public enum Linear {
    /// Below this many multiply-adds a call runs on the calling thread: waking the pool costs more.
    static let parallelThreshold = 1 << 15

    /// `y[t, r] = Σ_c x[t, c] · W[r, c]` for `t in 0..<count`, i.e. `y = x · Wᵀ`, with
    /// `x` `[count, w.cols]` and `y` `[count, w.rows]` (both row-major fp32).
    /// With `accumulate`, adds into `y` instead of overwriting it. Rows are split across the
    /// shared `ThreadPool`. `y` must not alias `x`.
    public static func forward(
        _ w: Matrix, input x: UnsafePointer<Float>, count: Int,
        output y: UnsafeMutablePointer<Float>, accumulate: Bool = false
    ) {
        guard count > 0, w.rows > 0 else { return }
        switch w.dtype {
        case .bf16: dispatch(BF16Format.self, w, x, count, y, accumulate)
        case .f16: dispatch(F16Format.self, w, x, count, y, accumulate)
        case .f32: dispatch(F32Format.self, w, x, count, y, accumulate)
        }
    }

    @inline(__always)
    static func dispatch<F: WeightFormat>(_ f: F.Type, _ w: Matrix, _ x: UnsafePointer<Float>, _ n: Int,
                                          _ y: UnsafeMutablePointer<Float>, _ acc: Bool) {
        let cols = w.cols, vecEnd = cols & ~15
        // The even/odd input copy is made once per call (cols floats per token), not per row;
        // at decode sizes it may be a small malloc, under 0.1% of the time to stream the matrix.
        withUnsafeTemporaryAllocation(of: Float.self, capacity: F.evenOdd ? n * vecEnd : 0) { tmp in
            var xv = x
            if F.evenOdd && vecEnd > 0 {
                let p = tmp.baseAddress!
                for t in 0..<n {
                    let src = x + t * cols, dst = p + t * vecEnd
                    var c = 0
                    while c < vecEnd {
                        for i in 0..<8 {
                            dst[c + i] = src[c + 2 * i]
                            dst[c + 8 + i] = src[c + 2 * i + 1]
                        }
                        c += 16
                    }
                }
                xv = UnsafePointer(p)
            }
            let xvStride = F.evenOdd ? vecEnd : cols
            let work = w.rows * cols * n
            if work < parallelThreshold || w.rows < 8 {
                rowsKernel(f, w, xv, xvStride, x, n, y, acc, 0, w.rows)
            } else {
                ThreadPool.shared.parallelFor(w.rows, granularity: 4) { lo, hi in
                    rowsKernel(f, w, xv, xvStride, x, n, y, acc, lo, hi)
                }
            }
        }
    }

    @inline(__always)
    static func store(_ y: UnsafeMutablePointer<Float>, _ v: Float, _ acc: Bool) {
        if acc { y.pointee += v } else { y.pointee = v }
    }

    /// Rows `r0 ..< r1` for all `n` tokens: 4 weight rows × 2 tokens per register tile, so each
    /// widened weight vector feeds two FMAs and each input vector four. `xv` is the input as the
    /// format reads it (row stride `xvStride`), `x` the original for the column tail.
    @inline(__always)
    static func rowsKernel<F: WeightFormat>(_ f: F.Type, _ w: Matrix, _ xv: UnsafePointer<Float>, _ xvStride: Int,
                                            _ x: UnsafePointer<Float>, _ n: Int,
                                            _ y: UnsafeMutablePointer<Float>, _ acc: Bool, _ r0: Int, _ r1: Int) {
        let cols = w.cols, rows = w.rows, rb = cols * F.byteSize
        let vecEnd = cols & ~15
        var r = r0
        while r + 4 <= r1 {
            let p0 = w.data + r * rb, p1 = p0 + rb, p2 = p1 + rb, p3 = p2 + rb
            var t = 0
            while t + 2 <= n {
                let xa = xv + t * xvStride, xb = xa + xvStride
                var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
                var b0 = SIMD8<Float>(), b1 = SIMD8<Float>(), b2 = SIMD8<Float>(), b3 = SIMD8<Float>()
                var c = 0
                while c < vecEnd {
                    let o = c * F.byteSize
                    let (w0l, w0h) = F.load16(p0 + o), (w1l, w1h) = F.load16(p1 + o)
                    let (w2l, w2h) = F.load16(p2 + o), (w3l, w3h) = F.load16(p3 + o)
                    let val = UnsafeRawPointer(xa + c).loadUnaligned(as: SIMD8<Float>.self)
                    let vbl = UnsafeRawPointer(xb + c).loadUnaligned(as: SIMD8<Float>.self)
                    a0.addProduct(val, w0l); a1.addProduct(val, w1l); a2.addProduct(val, w2l); a3.addProduct(val, w3l)
                    b0.addProduct(vbl, w0l); b1.addProduct(vbl, w1l); b2.addProduct(vbl, w2l); b3.addProduct(vbl, w3l)
                    let vah = UnsafeRawPointer(xa + c + 8).loadUnaligned(as: SIMD8<Float>.self)
                    let vbh = UnsafeRawPointer(xb + c + 8).loadUnaligned(as: SIMD8<Float>.self)
                    a0.addProduct(vah, w0h); a1.addProduct(vah, w1h); a2.addProduct(vah, w2h); a3.addProduct(vah, w3h)
                    b0.addProduct(vbh, w0h); b1.addProduct(vbh, w1h); b2.addProduct(vbh, w2h); b3.addProduct(vbh, w3h)
                    c += 16
                }
                var sa = SIMD4<Float>(a0.sum(), a1.sum(), a2.sum(), a3.sum())
                var sb = SIMD4<Float>(b0.sum(), b1.sum(), b2.sum(), b3.sum())
                let ta = x + t * cols, tb = ta + cols
                while c < cols {
                    let o = c * F.byteSize
                    let wv = SIMD4<Float>(F.load1(p0 + o), F.load1(p1 + o), F.load1(p2 + o), F.load1(p3 + o))
                    sa += wv * ta[c]
                    sb += wv * tb[c]
                    c += 1
                }
                for i in 0..<4 {
                    store(y + t * rows + r + i, sa[i], acc)
                    store(y + (t + 1) * rows + r + i, sb[i], acc)
                }
                t += 2
            }
            if t < n {
                gemv4(f, p0, p1, p2, p3, cols, vecEnd, xv + t * xvStride, x + t * cols, y + t * rows + r, acc)
            }
            r += 4
        }
        while r < r1 {
            let p = w.data + r * rb
            for t in 0..<n {
                let xt = xv + t * xvStride, orig = x + t * cols
                var a = SIMD8<Float>(), b = SIMD8<Float>()
                var c = 0
                while c < vecEnd {
                    let (wl, wh) = F.load16(p + c * F.byteSize)
                    a.addProduct(UnsafeRawPointer(xt + c).loadUnaligned(as: SIMD8<Float>.self), wl)
                    b.addProduct(UnsafeRawPointer(xt + c + 8).loadUnaligned(as: SIMD8<Float>.self), wh)
                    c += 16
                }
                var s = (a + b).sum()
                while c < cols {
                    s += orig[c] * F.load1(p + c * F.byteSize)
                    c += 1
                }
                store(y + t * rows + r, s, acc)
            }
            r += 1
        }
    }

    /// One token, four rows: memory-bound, so eight independent accumulators keep loads in flight.
    @inline(__always)
    static func gemv4<F: WeightFormat>(_ f: F.Type, _ p0: UnsafeRawPointer, _ p1: UnsafeRawPointer,
                                       _ p2: UnsafeRawPointer, _ p3: UnsafeRawPointer, _ cols: Int, _ vecEnd: Int,
                                       _ xv: UnsafePointer<Float>, _ x: UnsafePointer<Float>,
                                       _ y: UnsafeMutablePointer<Float>, _ acc: Bool) {
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
        var b0 = SIMD8<Float>(), b1 = SIMD8<Float>(), b2 = SIMD8<Float>(), b3 = SIMD8<Float>()
        var c = 0
        while c < vecEnd {
            let xl = UnsafeRawPointer(xv + c).loadUnaligned(as: SIMD8<Float>.self)
            let xh = UnsafeRawPointer(xv + c + 8).loadUnaligned(as: SIMD8<Float>.self)
            let o = c * F.byteSize
            let (w0l, w0h) = F.load16(p0 + o), (w1l, w1h) = F.load16(p1 + o)
            a0.addProduct(xl, w0l); b0.addProduct(xh, w0h); a1.addProduct(xl, w1l); b1.addProduct(xh, w1h)
            let (w2l, w2h) = F.load16(p2 + o), (w3l, w3h) = F.load16(p3 + o)
            a2.addProduct(xl, w2l); b2.addProduct(xh, w2h); a3.addProduct(xl, w3l); b3.addProduct(xh, w3h)
            c += 16
        }
        var s = SIMD4<Float>((a0 + b0).sum(), (a1 + b1).sum(), (a2 + b2).sum(), (a3 + b3).sum())
        while c < cols {
            let o = c * F.byteSize
            s += SIMD4<Float>(F.load1(p0 + o), F.load1(p1 + o), F.load1(p2 + o), F.load1(p3 + o)) * x[c]
            c += 1
        }
        for i in 0..<4 { store(y + i, s[i], acc) }
    }
}

extension Matrix {
    /// Writes row `r` widened to fp32 into `out[0..<cols]` (embedding lookup).
    public func widenRow(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        switch dtype {
        case .bf16:
            let p = (data + r * rowBytes).assumingMemoryBound(to: UInt16.self)
            for c in 0..<cols { out[c] = Float(bitPattern: UInt32(p[c]) << 16) }
        case .f16:
            let p = (data + r * rowBytes).assumingMemoryBound(to: Float16.self)
            for c in 0..<cols { out[c] = Float(p[c]) }
        case .f32: UnsafeMutableRawPointer(out).copyMemory(from: data + r * rowBytes, byteCount: rowBytes)
        }
    }
}
