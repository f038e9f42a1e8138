/// Storage formats the linear kernels read, widened to fp32 in registers.
@usableFromInline
protocol WeightFormat {
    static var byteSize: Int { get }
    static func load8(_ p: UnsafeRawPointer) -> SIMD8<Float>
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

@usableFromInline
enum F16Format: WeightFormat {
    @usableFromInline static var byteSize: Int { 2 }
    @inline(__always) @usableFromInline
    static func load8(_ p: UnsafeRawPointer) -> SIMD8<Float> {
        let bits = p.loadUnaligned(as: SIMD8<UInt16>.self)
        return SIMD8<Float>(unsafeBitCast(bits, to: SIMD8<Float16>.self))
    }
    @inline(__always) @usableFromInline
    static func load1(_ p: UnsafeRawPointer) -> Float { Float(Float16(bitPattern: p.loadUnaligned(as: UInt16.self))) }
}

/// bfloat16 is the top half of an IEEE float: widening is a zero-extend and a 16-bit shift.
@usableFromInline
enum BF16Format: WeightFormat {
    @usableFromInline static var byteSize: Int { 2 }
    @inline(__always) @usableFromInline
    static func load8(_ p: UnsafeRawPointer) -> SIMD8<Float> {
        let h = p.loadUnaligned(as: SIMD8<UInt16>.self)
        return unsafeBitCast(SIMD8<UInt32>(truncatingIfNeeded: h) &<< 16, to: SIMD8<Float>.self)
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
        let work = w.rows * w.cols * n
        if work < parallelThreshold || w.rows < 8 {
            rowsKernel(f, w, x, n, y, acc, 0, w.rows)
        } else {
            ThreadPool.shared.parallelFor(w.rows, granularity: 4) { lo, hi in
                rowsKernel(f, w, x, n, y, acc, lo, hi)
            }
        }
    }

    @inline(__always)
    static func store(_ y: UnsafeMutablePointer<Float>, _ v: Float, _ acc: Bool) {
        if acc { y.pointee += v } else { y.pointee = v }
    }

    /// Rows `r0 ..< r1` for all `n` tokens: 4 weight rows × 2 tokens per register tile, so each
    /// widened weight vector feeds two FMAs and each input vector four.
    @inline(__always)
    static func rowsKernel<F: WeightFormat>(_ f: F.Type, _ w: Matrix, _ x: UnsafePointer<Float>, _ n: Int,
                                            _ y: UnsafeMutablePointer<Float>, _ acc: Bool, _ r0: Int, _ r1: Int) {
        let cols = w.cols, rows = w.rows, rb = cols * F.byteSize
        let vecEnd = cols & ~7
        var r = r0
        while r + 4 <= r1 {
            let p0 = w.data + r * rb, p1 = p0 + rb, p2 = p1 + rb, p3 = p2 + rb
            var t = 0
            if n == 1 {
                gemv4(f, p0, p1, p2, p3, cols, vecEnd, x, y + r, acc)
                r += 4
                continue
            }
            while t + 2 <= n {
                let xa = x + t * cols, xb = xa + cols
                var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
                var b0 = SIMD8<Float>(), b1 = SIMD8<Float>(), b2 = SIMD8<Float>(), b3 = SIMD8<Float>()
                var c = 0
                while c < vecEnd {
                    let va = UnsafeRawPointer(xa + c).loadUnaligned(as: SIMD8<Float>.self)
                    let vb = UnsafeRawPointer(xb + c).loadUnaligned(as: SIMD8<Float>.self)
                    let o = c * F.byteSize
                    let w0 = F.load8(p0 + o), w1 = F.load8(p1 + o), w2 = F.load8(p2 + o), w3 = F.load8(p3 + o)
                    a0.addProduct(va, w0); a1.addProduct(va, w1); a2.addProduct(va, w2); a3.addProduct(va, w3)
                    b0.addProduct(vb, w0); b1.addProduct(vb, w1); b2.addProduct(vb, w2); b3.addProduct(vb, w3)
                    c += 8
                }
                var sa = SIMD4<Float>(a0.sum(), a1.sum(), a2.sum(), a3.sum())
                var sb = SIMD4<Float>(b0.sum(), b1.sum(), b2.sum(), b3.sum())
                while c < cols {
                    let o = c * F.byteSize
                    let wv = SIMD4<Float>(F.load1(p0 + o), F.load1(p1 + o), F.load1(p2 + o), F.load1(p3 + o))
                    sa += wv * xa[c]
                    sb += wv * xb[c]
                    c += 1
                }
                for i in 0..<4 {
                    store(y + t * rows + r + i, sa[i], acc)
                    store(y + (t + 1) * rows + r + i, sb[i], acc)
                }
                t += 2
            }
            if t < n { gemv4(f, p0, p1, p2, p3, cols, vecEnd, x + t * cols, y + t * rows + r, acc) }
            r += 4
        }
        while r < r1 {
            let p = w.data + r * rb
            for t in 0..<n {
                let xt = x + t * cols
                var a = SIMD8<Float>()
                var c = 0
                while c < vecEnd {
                    a.addProduct(UnsafeRawPointer(xt + c).loadUnaligned(as: SIMD8<Float>.self), F.load8(p + c * F.byteSize))
                    c += 8
                }
                var s = a.sum()
                while c < cols {
                    s += xt[c] * F.load1(p + c * F.byteSize)
                    c += 1
                }
                store(y + t * rows + r, s, acc)
            }
            r += 1
        }
    }

    /// One token, four rows: memory-bound, so two accumulators per row keep enough loads in flight.
    @inline(__always)
    static func gemv4<F: WeightFormat>(_ f: F.Type, _ p0: UnsafeRawPointer, _ p1: UnsafeRawPointer,
                                       _ p2: UnsafeRawPointer, _ p3: UnsafeRawPointer, _ cols: Int, _ vecEnd: Int,
                                       _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ acc: Bool) {
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
        var b0 = SIMD8<Float>(), b1 = SIMD8<Float>(), b2 = SIMD8<Float>(), b3 = SIMD8<Float>()
        var c = 0
        while c + 16 <= vecEnd {
            let va = UnsafeRawPointer(x + c).loadUnaligned(as: SIMD8<Float>.self)
            let vb = UnsafeRawPointer(x + c + 8).loadUnaligned(as: SIMD8<Float>.self)
            let o = c * F.byteSize, o2 = o + 8 * F.byteSize
            a0.addProduct(va, F.load8(p0 + o)); a1.addProduct(va, F.load8(p1 + o))
            a2.addProduct(va, F.load8(p2 + o)); a3.addProduct(va, F.load8(p3 + o))
            b0.addProduct(vb, F.load8(p0 + o2)); b1.addProduct(vb, F.load8(p1 + o2))
            b2.addProduct(vb, F.load8(p2 + o2)); b3.addProduct(vb, F.load8(p3 + o2))
            c += 16
        }
        if c < vecEnd {
            let va = UnsafeRawPointer(x + c).loadUnaligned(as: SIMD8<Float>.self)
            let o = c * F.byteSize
            a0.addProduct(va, F.load8(p0 + o)); a1.addProduct(va, F.load8(p1 + o))
            a2.addProduct(va, F.load8(p2 + o)); a3.addProduct(va, F.load8(p3 + o))
            c += 8
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
        case .bf16: widen(BF16Format.self, r, out)
        case .f16: widen(F16Format.self, r, out)
        case .f32: UnsafeMutableRawPointer(out).copyMemory(from: data + r * rowBytes, byteCount: rowBytes)
        }
    }

    @inline(__always)
    func widen<F: WeightFormat>(_ f: F.Type, _ r: Int, _ out: UnsafeMutablePointer<Float>) {
        let p = data + r * rowBytes
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
