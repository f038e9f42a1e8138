/// Dense linear layers over weights in any `DType`, accumulating in fp32.
public enum Linear {
    /// `y[t, r] = sum_c x[t, c] * W[r, c]` for `t in 0..<count`, i.e. `y = x · Wᵀ`, with
    /// `x` `[count, w.cols]` and `y` `[count, w.rows]` (both row-major fp32).
    /// With `accumulate`, adds into `y` instead of overwriting it.
    /// Splits the work across the shared `ThreadPool`.
    public static func forward(
        _ w: Matrix, input x: UnsafePointer<Float>, count: Int,
        output y: UnsafeMutablePointer<Float>, accumulate: Bool = false
    ) {
        // Naive reference; replaced by the SIMD kernel.
        for t in 0..<count {
            for r in 0..<w.rows {
                var s: Float = 0
                for c in 0..<w.cols { s += x[t * w.cols + c] * w.element(r, c) }
                if accumulate { y[t * w.rows + r] += s } else { y[t * w.rows + r] = s }
            }
        }
    }
}

extension Matrix {
    /// Writes row `r` widened to fp32 into `out[0..<cols]` (embedding lookup).
    public func widenRow(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        for c in 0..<cols { out[c] = element(r, c) }
    }
}
