import Kernels

/// The gated feed-forward network every supported family uses, dense or as one expert:
/// `down(silu(gate(x)) ⊙ up(x))` (Shazeer 2020, "GLU Variants Improve Transformer").
public struct SwiGLU: @unchecked Sendable {
    public let gate: Matrix
    public let up: Matrix
    public let down: Matrix

    public init(gate: Matrix, up: Matrix, down: Matrix) {
        self.gate = gate
        self.up = up
        self.down = down
    }

    public var hidden: Int { gate.cols }
    public var intermediate: Int { gate.rows }
    /// Bytes of weights one token reads through this FFN.
    public var weightBytes: Int { gate.byteCount + up.byteCount + down.byteCount }

    /// `out[n, hidden] (=|+=) FFN(x[n, hidden])`; `scratch` holds `2 · n · intermediate` floats.
    public func forward(_ x: UnsafePointer<Float>, count n: Int, output: UnsafeMutablePointer<Float>,
                        accumulate: Bool = false, scratch: UnsafeMutablePointer<Float>) {
        let g = scratch, u = scratch + n * intermediate
        Linear.forward(gate, up, input: x, count: n, outputs: g, u)
        Elementwise.siluMul(gate: g, up: u, count: n * intermediate)
        Linear.forward(down, input: g, count: n, output: output, accumulate: accumulate)
    }
}
