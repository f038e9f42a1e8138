/// The expert side of Farside's attention–FFN split, as the attention side sees it.
///
/// The attention side (embeddings, attention, KV cache, router, dense layers, shared experts,
/// LM head) computes, for each MoE layer, which routed experts every token goes to and with what
/// weight; an `ExpertBackend` turns that into one output row per token:
/// `out[t] = Σ_j weight[t, j] · Expert_{layer, expert[t, j]}(x[t])`.
/// In one process this is `LocalExperts`; across processes the same call travels over ZeroMQ.
public protocol ExpertBackend: AnyObject {
    /// Computes the routed-expert sum for a batch of `batch.rows` tokens at MoE layer `layer`.
    /// - `input`: `[rows, hidden]` fp32 activations (already normalised by the layer's
    ///   post-attention norm).
    /// - `output`: `[rows, hidden]` fp32, overwritten.
    func computeExperts(layer: Int, batch: RoutedBatch, input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>) throws
}

/// The routing decisions for one MoE layer and a batch of tokens: token `t` goes to experts
/// `experts[t * topK ..< (t + 1) * topK]` with the matching `weights` (the exact factor the
/// expert's output is multiplied by, after renormalisation and any routed scaling factor).
public struct RoutedBatch: Sendable {
    public var rows: Int
    public var hidden: Int
    public var topK: Int
    public var experts: [Int32]
    public var weights: [Float]

    public init(rows: Int, hidden: Int, topK: Int, experts: [Int32], weights: [Float]) {
        self.rows = rows
        self.hidden = hidden
        self.topK = topK
        self.experts = experts
        self.weights = weights
    }
}

/// Errors raised on the expert side.
public enum ExpertBackendError: Error, CustomStringConvertible {
    case unknownLayer(Int)
    case unknownExpert(layer: Int, expert: Int)
    case shapeMismatch(String)

    public var description: String {
        switch self {
        case .unknownLayer(let l): return "expert backend: layer \(l) has no routed experts here"
        case .unknownExpert(let l, let e): return "expert backend: expert \(e) of layer \(l) is not held here"
        case .shapeMismatch(let s): return "expert backend: \(s)"
        }
    }
}
