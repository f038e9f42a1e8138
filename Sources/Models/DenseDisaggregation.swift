import Kernels
import Protocol

/// Attention–FFN disaggregation for dense layers (StepFun Step-3 AFD; MegaScale-Infer runs dense
/// models' FFNs on the FFN pool the same way): a dense SwiGLU `down(silu(gate x) ⊙ up x)` with
/// intermediate size `I` is a sum over its neurons, so cutting the neurons into `E` equal slices
/// gives `E` smaller SwiGLUs whose outputs add up to the whole FFN's:
/// `FFN(x) = Σ_e down[:, S_e] · (silu(gate[S_e] x) ⊙ up[S_e] x)`.
/// Each slice becomes an "expert" that every token visits with weight 1, so the expert side
/// (local or on expert nodes) computes dense FFNs with the machinery it uses for routed experts.
extension SwiGLU {
    /// Neuron slice `index` of `count` equal slices (rows of gate/up, columns of down; no copy).
    public func neuronSlice(_ index: Int, of count: Int) throws -> SwiGLU {
        let i = intermediate
        guard count >= 1, i % count == 0 else {
            throw ModelError.invalidConfig("cannot split a dense FFN of intermediate size \(i) into \(count) equal slices")
        }
        let per = i / count
        let block = down.dtype.blockElements
        guard per % block == 0 else {
            throw ModelError.invalidConfig(
                "cannot split a dense FFN of intermediate size \(i) into \(count) slices: a slice of \(per) neurons "
                + "is not a whole number of \(down.dtype.rawValue) blocks (\(block) values) of the down projection")
        }
        return SwiGLU(gate: gate.rows(index * per, count: per), up: up.rows(index * per, count: per),
                      down: try down.columns(index * per, count: per))
    }
}

extension DecoderModel {
    /// This model with every dense FFN cut into `slices` neuron slices that run as experts
    /// (`Router(everyExpert:)`): the attention side then sends dense layers to its
    /// `ExpertBackend` like MoE layers. MoE layers are unchanged. The result's outputs equal
    /// this model's up to fp32 rounding (slice partial sums are added in fp64 by the backends).
    public func disaggregated(denseSlices slices: Int) throws -> DecoderModel {
        guard slices >= 1 else {
            throw ModelError.invalidConfig("the number of dense FFN slices must be at least 1, found \(slices)")
        }
        var dense: [Int: SwiGLU] = [:]
        let newLayers = try layers.enumerated().map { li, layer -> DecoderLayer in
            guard case .dense(let ffn) = layer.feedForward else { return layer }
            _ = try ffn.neuronSlice(0, of: slices)  // validates the cut once, before any node loads a slice
            dense[li] = ffn
            let moe = SparseMoE(router: Router(everyExpert: slices), shared: nil, sharedGate: nil,
                                expertIntermediate: ffn.intermediate / slices)
            return DecoderLayer(inputNorm: layer.inputNorm, attention: layer.attention,
                                postAttentionNorm: layer.postAttentionNorm, feedForward: .sparse(moe))
        }
        let routed = expertLoader
        let model = DecoderModel(
            architecture: architecture, vocabSize: vocabSize, hidden: hidden, maxPositions: maxPositions,
            normEps: normEps, embedding: embedding, layers: newLayers, finalNorm: finalNorm, lmHead: lmHead,
            rope: rope, eosTokenIds: eosTokenIds, weightSource: weightSource,
            expertLoader: { l, e in
                if let ffn = dense[l] {
                    guard e >= 0, e < slices else { throw ExpertBackendError.unknownExpert(layer: l, expert: e) }
                    return try ffn.neuronSlice(e, of: slices)
                }
                return try routed(l, e)
            })
        model.experts = experts
        return model
    }
}
