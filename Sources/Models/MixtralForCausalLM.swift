import Checkpoint

/// `MixtralForCausalLM` (transformers `models/mixtral/modeling_mixtral.py`): Llama attention with
/// a sparse MoE in every layer: softmax router over all experts, top-k, renormalised.
public enum MixtralForCausalLM {
    public struct Config: Sendable {
        public var base: DecoderConfig
        public var experts: Int
        public var topK: Int

        public init(_ c: ConfigJSON) throws {
            base = try DecoderConfig(c, tieDefault: false, epsDefault: 1e-5)
            experts = try c.int("num_local_experts", default: 8)
            topK = try c.int("num_experts_per_tok", default: 2)
            try DecoderConfig.requirePositive(base.intermediate, "intermediate_size")
            try DecoderConfig.requireSize(experts, "num_local_experts", limit: DecoderConfig.Limits.experts)
            guard topK > 0 && topK <= experts else {
                throw ModelError.invalidConfig("num_experts_per_tok (\(topK)) must be in 1...num_local_experts (\(experts))")
            }
        }
    }

    /// Weight names under `model.layers.L.`: the MoE block (`block_sparse_moe.` in published
    /// checkpoints, `mlp.` as transformers 5 names it), its router `gate.weight`, and per-expert
    /// projections `experts.E.{w1 gate, w3 up, w2 down}.weight` (or fused `experts.gate_up_proj`).
    public static let blockPrefixes = ["block_sparse_moe.", "mlp."]
    public static let routerName = "gate.weight"
    public static let expertNames = (gate: "w1", up: "w3", down: "w2")

    /// Hugging Face → GGUF tensor names: llama.cpp stores Mixtral as `llama` with experts fused
    /// per layer (`ffn_{gate,up,down}_exps`, ggml dims `[cols, rows, experts]`).
    public static let ggufNames = GGUFNameTable(LlamaForCausalLM.ggufNames.entries.filter { !$0.hf.contains(".mlp.") } + [
        ("model.layers.{L}.block_sparse_moe.gate.weight", "blk.{L}.ffn_gate_inp.weight"),
        ("model.layers.{L}.block_sparse_moe.experts.{E}.w1.weight", "blk.{L}.ffn_gate_exps.weight"),
        ("model.layers.{L}.block_sparse_moe.experts.{E}.w3.weight", "blk.{L}.ffn_up_exps.weight"),
        ("model.layers.{L}.block_sparse_moe.experts.{E}.w2.weight", "blk.{L}.ffn_down_exps.weight"),
    ], permutedQK: true)

    static func blockPrefix(_ w: WeightSource, layer l: Int) -> String {
        let p = SharedNames.layer(l)
        return p + (blockPrefixes.first { w.contains(p + $0 + routerName) } ?? blockPrefixes[0])
    }

    public static func load(config json: ConfigJSON, weights w: WeightSource) throws -> DecoderModel {
        let cfg = try Config(json)
        let c = cfg.base
        // GGUF files hold q/k rows permuted for pairwise RoPE (see LlamaForCausalLM).
        let rope = RotaryEmbedding(dim: c.headDim, parameters: c.rope, interleaved: w.permutedQK)
        let layers = try (0..<c.layers).map { l -> DecoderLayer in
            let (n1, n2) = try DecoderBuilder.norms(c, w, layer: l)
            let router = Router(weight: try w.matrix(blockPrefix(w, layer: l) + routerName, rows: cfg.experts, cols: c.hidden),
                                scoring: .softmax, topK: cfg.topK, normalizeTopK: true)
            return DecoderLayer(
                inputNorm: n1, attention: try DecoderBuilder.gqa(c, w, layer: l, rope: rope), postAttentionNorm: n2,
                feedForward: .sparse(SparseMoE(router: router, shared: nil, sharedGate: nil, expertIntermediate: c.intermediate)))
        }
        return try DecoderBuilder.assemble(c, w, architecture: "MixtralForCausalLM", layers: layers, rope: rope) { l, e in
            try DecoderBuilder.expert(w, prefix: blockPrefix(w, layer: l) + "experts.", expert: e, experts: cfg.experts,
                                      names: expertNames, hidden: c.hidden, intermediate: c.intermediate)
        }
    }
}
