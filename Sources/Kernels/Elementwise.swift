/// Elementwise and reduction kernels over fp32 activations, eight lanes (one AVX2 register) at
/// a time. All are single-threaded: they are memory-light next to the linear layers, and callers
/// that want parallelism split rows across `ThreadPool` themselves.
///
/// Pointers need only `Float` alignment. Unless a function says otherwise, its output may alias
/// an input only exactly (same pointer), never partially.
public enum Elementwise {
    @inline(__always) @usableFromInline
    static func load(_ p: UnsafePointer<Float>, _ i: Int) -> SIMD8<Float> {
        UnsafeRawPointer(p + i).loadUnaligned(as: SIMD8<Float>.self)
    }

    @inline(__always) @usableFromInline
    static func store(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>, _ i: Int) {
        UnsafeMutableRawPointer(p + i).storeBytes(of: v, as: SIMD8<Float>.self)
    }

    /// `output = weight ⊙ (x · 1/sqrt(mean(x²) + eps))` over `dim` elements: transformers'
    /// `LlamaRMSNorm` (Zhang & Sennrich 2019) in fp32. The mean of squares is accumulated in
    /// fp32 (four 8-lane partial sums), as torch does in fp32. `x` and `output` may alias.
    @inlinable
    public static func rmsNorm(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, eps: Float, dim: Int,
                               output: UnsafeMutablePointer<Float>) {
        guard dim > 0 else { return }
        let ss = dot(x, x, count: dim)
        let r = 1 / (ss / Float(dim) + eps).squareRoot()
        let rv = SIMD8<Float>(repeating: r)
        var i = 0
        while i + 8 <= dim {
            store(load(weight, i) * (load(x, i) * rv), output, i)
            i += 8
        }
        while i < dim {
            output[i] = weight[i] * (x[i] * r)
            i += 1
        }
    }

    /// `gate[i] = silu(gate[i]) · up[i]` for `i < count`, with `silu(g) = g / (1 + e^-g)`
    /// (the SwiGLU MLP's activation). Uses `exp8`; `gate` and `up` must not overlap.
    @inlinable
    public static func siluMul(gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>, count: Int) {
        let one = SIMD8<Float>(repeating: 1)
        var i = 0
        while i + 8 <= count {
            let g = load(gate, i)
            store(g / (one + exp8(-g)) * load(up, i), gate, i)
            i += 8
        }
        if i < count {
            // Tail through the same SIMD exp, so every element gets identical rounding.
            var g = SIMD8<Float>(), u = SIMD8<Float>()
            for k in 0..<(count - i) { g[k] = gate[i + k]; u[k] = up[i + k] }
            let s = g / (one + exp8(-g)) * u
            for k in 0..<(count - i) { gate[i + k] = s[k] }
        }
    }

    /// In-place softmax over `count` elements: `x[i] = e^(x[i] - max) / Σ e^(x[j] - max)`.
    /// `-infinity` entries (masked positions) become 0; at least one entry must be finite.
    @inlinable
    public static func softmax(_ x: UnsafeMutablePointer<Float>, count: Int) {
        guard count > 0 else { return }
        var m = -Float.infinity
        var i = 0
        if count >= 8 {
            var mv = SIMD8<Float>(repeating: -.infinity)
            while i + 8 <= count {
                let v = load(x, i)
                mv = mv.replacing(with: v, where: v .> mv)
                i += 8
            }
            m = mv.max()
        }
        while i < count {
            m = Swift.max(m, x[i])
            i += 1
        }
        let mv = SIMD8<Float>(repeating: m)
        var sv = SIMD8<Float>()
        i = 0
        while i + 8 <= count {
            let e = exp8(load(x, i) - mv)
            store(e, x, i)
            sv += e
            i += 8
        }
        var s = sv.sum()
        if i < count {
            var v = SIMD8<Float>(repeating: -.infinity)
            for k in 0..<(count - i) { v[k] = x[i + k] }
            let e = exp8(v - mv)
            for k in 0..<(count - i) { x[i + k] = e[k]; s += e[k] }
        }
        let inv = 1 / s
        scale(x, by: inv, count: count)
    }

    /// `x[i] = e^x[i]` in place for `i < count`, through `exp8` (within 2 ulp).
    @inlinable
    public static func exp(_ x: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        while i + 8 <= count {
            store(exp8(load(x, i)), x, i)
            i += 8
        }
        if i < count {
            var v = SIMD8<Float>()
            for k in 0..<(count - i) { v[k] = x[i + k] }
            let e = exp8(v)
            for k in 0..<(count - i) { x[i + k] = e[k] }
        }
    }

    /// `x[i] *= s` for `i < count`.
    @inlinable
    public static func scale(_ x: UnsafeMutablePointer<Float>, by s: Float, count: Int) {
        let sv = SIMD8<Float>(repeating: s)
        var i = 0
        while i + 8 <= count {
            store(load(x, i) * sv, x, i)
            i += 8
        }
        while i < count {
            x[i] *= s
            i += 1
        }
    }

    /// `y[i] += x[i]` for `i < count`.
    @inlinable
    public static func add(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, count: Int) {
        var i = 0
        while i + 8 <= count {
            store(load(y, i) + load(x, i), y, i)
            i += 8
        }
        while i < count {
            y[i] += x[i]
            i += 1
        }
    }

    /// `y[i] += scale · x[i]` for `i < count` (one rounding per element: fused multiply-add).
    @inlinable
    public static func addScaled(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, scale: Float, count: Int) {
        let sv = SIMD8<Float>(repeating: scale)
        var i = 0
        while i + 8 <= count {
            store(load(y, i).addingProduct(load(x, i), sv), y, i)
            i += 8
        }
        while i < count {
            y[i] = y[i].addingProduct(x[i], scale)
            i += 1
        }
    }

    /// `Σ a[i]·b[i]` for `i < count`, in fp32 with four 8-lane partial sums.
    @inlinable
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int) -> Float {
        var s0 = SIMD8<Float>(), s1 = SIMD8<Float>(), s2 = SIMD8<Float>(), s3 = SIMD8<Float>()
        var i = 0
        while i + 32 <= count {
            s0.addProduct(load(a, i), load(b, i))
            s1.addProduct(load(a, i + 8), load(b, i + 8))
            s2.addProduct(load(a, i + 16), load(b, i + 16))
            s3.addProduct(load(a, i + 24), load(b, i + 24))
            i += 32
        }
        while i + 8 <= count {
            s0.addProduct(load(a, i), load(b, i))
            i += 8
        }
        var s = ((s0 + s1) + (s2 + s3)).sum()
        while i < count {
            s = s.addingProduct(a[i], b[i])
            i += 1
        }
        return s
    }

    /// `e^x` lane-wise, within 2 ulp of the correctly rounded result over the whole fp32 range
    /// (tested against a Double reference): Cody–Waite reduction `x = n·ln2 + r`,
    /// `|r| ≤ ln2/2`, Cephes' degree-5 minimax polynomial for `e^r`, then scaling by `2^n` in two
    /// exact power-of-two multiplies, so overflow gives `+inf`, underflow gradual denormals
    /// then 0, and NaN stays NaN. Only concrete SIMD operations (no generic conversions),
    /// so it always inlines to straight-line AVX2.
    @inline(__always) @usableFromInline
    static func exp8(_ x: SIMD8<Float>) -> SIMD8<Float> {
        // Clamp so that n stays within ±(2·126): beyond, the result is inf or 0 anyway.
        var v = x.replacing(with: 89, where: x .> 89)
        v = v.replacing(with: -104, where: v .< -104)
        // n = round(v / ln2) by the 1.5·2^23 trick (adding it rounds to an integer).
        let magic = SIMD8<Float>(repeating: 12_582_912)
        let n = (v * SIMD8(repeating: 1.442_695_040_888_963_4) + magic) - magic
        // r = v - n·ln2, ln2 split in two so that n·C1 is exact.
        var r = v.addingProduct(n, SIMD8(repeating: -0.693_359_375))
        r = r.addingProduct(n, SIMD8(repeating: 2.121_944_400_546_905_8e-4))
        let z = r * r
        var p = SIMD8<Float>(repeating: 1.987_569_150_0e-4)
        p = SIMD8<Float>(repeating: 1.398_199_950_7e-3).addingProduct(p, r)
        p = SIMD8<Float>(repeating: 8.333_451_907_3e-3).addingProduct(p, r)
        p = SIMD8<Float>(repeating: 4.166_579_589_4e-2).addingProduct(p, r)
        p = SIMD8<Float>(repeating: 1.666_666_545_9e-1).addingProduct(p, r)
        p = SIMD8<Float>(repeating: 5.000_000_120_1e-1).addingProduct(p, r)
        let e = r.addingProduct(p, z) + SIMD8(repeating: 1)
        // 2^n = 2^n1 · 2^n2 with n1 = ⌊n/2⌋, n2 = n - n1, each a normal exponent; the
        // exponent field (n_i + 127) is read off the 1.5·2^23 trick again and moved into place.
        let n1 = (n * 0.5).rounded(.down), n2 = n - n1
        let biased = SIMD8<Float>(repeating: 127) + magic
        let magicBits = unsafeBitCast(magic, to: SIMD8<Int32>.self), shift = SIMD8<Int32>(repeating: 1 << 23)
        let s1 = unsafeBitCast((unsafeBitCast(n1 + biased, to: SIMD8<Int32>.self) &- magicBits) &* shift, to: SIMD8<Float>.self)
        let s2 = unsafeBitCast((unsafeBitCast(n2 + biased, to: SIMD8<Int32>.self) &- magicBits) &* shift, to: SIMD8<Float>.self)
        return e * s1 * s2
    }
}
