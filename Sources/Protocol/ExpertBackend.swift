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

    /// Starts the same computation and returns before it is done, so the attention side can work
    /// meanwhile (the shared expert; the next micro-batch's attention: ping-pong, as in
    /// MegaScale-Infer §4 and DeepSeek-V3's dual micro-batch overlap). `input` and `output` must
    /// stay valid and untouched until `finishExperts` returns for this step. Several steps may be
    /// outstanding; they may be finished in any order.
    func beginExperts(layer: Int, batch: RoutedBatch, input: UnsafePointer<Float>,
                      output: UnsafeMutablePointer<Float>) throws -> ExpertStep

    /// Waits for a step started by `beginExperts`; `output` then holds what `computeExperts` writes.
    func finishExperts(_ step: ExpertStep) throws

    /// Forgets an outstanding step (after an error elsewhere); its late replies are ignored.
    func cancelExperts(_ step: ExpertStep)

    /// Whether the attention side should compute its shared expert while this backend's routed
    /// experts are away (between `beginExperts` and `finishExperts`) rather than after they
    /// return. Worth it when the routed experts run on cores the attention side does not use;
    /// when they share its cores (expert nodes on the coordinator's machine) the two only fight
    /// for the same cores and delay the nodes. The result is the same either way, bit for bit.
    var overlapsSharedExpert: Bool { get }
}

/// A step started with `ExpertBackend.beginExperts`.
public struct ExpertStep: Sendable, Hashable {
    public let id: UInt64
    public init(id: UInt64) { self.id = id }
}

/// Backends that compute synchronously get the asynchronous calls for free: `beginExperts` does
/// the work.
extension ExpertBackend {
    public func beginExperts(layer: Int, batch: RoutedBatch, input: UnsafePointer<Float>,
                             output: UnsafeMutablePointer<Float>) throws -> ExpertStep {
        try computeExperts(layer: layer, batch: batch, input: input, output: output)
        return ExpertStep(id: 0)
    }
    public func finishExperts(_ step: ExpertStep) throws {}
    public func cancelExperts(_ step: ExpertStep) {}
    /// Synchronous backends are done when `beginExperts` returns: nothing to overlap.
    public var overlapsSharedExpert: Bool { false }
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
