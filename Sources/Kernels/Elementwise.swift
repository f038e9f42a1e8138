import Foundation

/// Elementwise and reduction kernels over fp32 activations (SIMD8 = one AVX2 register).
public enum Elementwise {
    /// `out = weight ⊙ (x / sqrt(mean(x²) + eps))`, transformers' LlamaRMSNorm (Zhang & Sennrich
    /// 2019) in fp32. `x` and `output` may alias.
    @inlinable
    public static func rmsNorm(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, eps: Float, dim: Int,
                               output: UnsafeMutablePointer<Float>) {
        let ss = dot(x, x, count: dim)
        let r = 1 / (ss / Float(dim) + eps).squareRoot()
        var i = 0
        while i + 8 <= dim {
            let v = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
            let w = UnsafeRawPointer(weight + i).loadUnaligned(as: SIMD8<Float>.self)
            UnsafeMutableRawPointer(output + i).storeBytes(of: w * (v * r), as: SIMD8<Float>.self)
            i += 8
        }
        while i < dim {
            output[i] = weight[i] * (x[i] * r)
            i += 1
        }
    }

    /// `gate[i] = silu(gate[i]) · up[i]` with silu(x) = x / (1 + e^-x).
    @inlinable
    public static func siluMul(gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>, count: Int) {
        for i in 0..<count {
            let g = gate[i]
            gate[i] = g / (1 + expf(-g)) * up[i]
        }
    }

    /// In-place softmax, max-subtracted.
    @inlinable
    public static func softmax(_ x: UnsafeMutablePointer<Float>, count: Int) {
        guard count > 0 else { return }
        var m = -Float.infinity
        for i in 0..<count where x[i] > m { m = x[i] }
        var s: Float = 0
        for i in 0..<count {
            let e = expf(x[i] - m)
            x[i] = e
            s += e
        }
        let inv = 1 / s
        for i in 0..<count { x[i] *= inv }
    }

    /// `y += x`.
    @inlinable
    public static func add(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, count: Int) {
        var i = 0
        while i + 8 <= count {
            let a = UnsafeRawPointer(y + i).loadUnaligned(as: SIMD8<Float>.self)
            let b = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
            UnsafeMutableRawPointer(y + i).storeBytes(of: a + b, as: SIMD8<Float>.self)
            i += 8
        }
        while i < count {
            y[i] += x[i]
            i += 1
        }
    }

    /// `y += scale · x`.
    @inlinable
    public static func addScaled(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, scale: Float, count: Int) {
        var i = 0
        while i + 8 <= count {
            var a = UnsafeRawPointer(y + i).loadUnaligned(as: SIMD8<Float>.self)
            a.addProduct(UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self), SIMD8(repeating: scale))
            UnsafeMutableRawPointer(y + i).storeBytes(of: a, as: SIMD8<Float>.self)
            i += 8
        }
        while i < count {
            y[i] += scale * x[i]
            i += 1
        }
    }

    /// `Σ a[i]·b[i]`, fp32 with two SIMD accumulators.
    @inlinable
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int) -> Float {
        var s0 = SIMD8<Float>(), s1 = SIMD8<Float>()
        var i = 0
        while i + 16 <= count {
            s0.addProduct(UnsafeRawPointer(a + i).loadUnaligned(as: SIMD8<Float>.self),
                          UnsafeRawPointer(b + i).loadUnaligned(as: SIMD8<Float>.self))
            s1.addProduct(UnsafeRawPointer(a + i + 8).loadUnaligned(as: SIMD8<Float>.self),
                          UnsafeRawPointer(b + i + 8).loadUnaligned(as: SIMD8<Float>.self))
            i += 16
        }
        if i + 8 <= count {
            s0.addProduct(UnsafeRawPointer(a + i).loadUnaligned(as: SIMD8<Float>.self),
                          UnsafeRawPointer(b + i).loadUnaligned(as: SIMD8<Float>.self))
            i += 8
        }
        var s = (s0 + s1).sum()
        while i < count {
            s += a[i] * b[i]
            i += 1
        }
        return s
    }
}
