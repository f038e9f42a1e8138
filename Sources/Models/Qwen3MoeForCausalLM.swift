import Checkpoint
import Kernels

/// `Qwen3MoeForCausalLM` (transformers `models/qwen3_moe/modeling_qwen3_moe.py`): GQA with
/// per-head q/k RMSNorm before RoPE, softmax router with optional top-k renormalisation
/// (`norm_topk_prob`), dense MLP layers where `mlp_only_layers` or `decoder_sparse_step` say so.
public enum Qwen3MoeForCausalLM {
    public struct Config: Sendable {
        public var base: DecoderConfig
        public var experts: Int
        public var topK: Int
        public var moeIntermediate: Int
        public var normTopK: Bool
        public var sparseStep: Int
        public var mlpOnlyLayers: [Int]
        public var attentionBias: Bool

        public init(_ c: ConfigJSON) throws {
            base = try DecoderConfig(c, tieDefault: false, epsDefault: 1e-6)
            experts = try c.int(c.firstKey(["num_experts", "num_local_experts"]) ?? "num_experts", default: 128)
            topK = try c.int("num_experts_per_tok", default: 8)
            moeIntermediate = try c.int("moe_intermediate_size", default: 768)
            normTopK = try c.bool("norm_topk_prob", default: false)
            sparseStep = try c.int("decoder_sparse_step", default: 1)
            mlpOnlyLayers = try c.intArray("mlp_only_layers", default: [])
            attentionBias = try c.bool("attention_bias", default: false)
            try DecoderConfig.requirePositive(sparseStep, "decoder_sparse_step")
            try DecoderConfig.requireSize(moeIntermediate, "moe_intermediate_size", limit: DecoderConfig.Limits.intermediate)
            if experts != 0 { try DecoderConfig.requireSize(experts, "num_experts", limit: DecoderConfig.Limits.experts) }
            guard topK > 0 && topK <= max(experts, 1) else {
                throw ModelError.invalidConfig("num_experts_per_tok (\(topK)) must be in 1...num_experts (\(experts))")
            }
        }

        /// transformers' rule for which layers are sparse.
        public func isSparse(_ l: Int) -> Bool {
            !mlpOnlyLayers.contains(l) && experts > 0 && (l + 1) % sparseStep == 0
        }
    }

    /// Weight names under `model.layers.L.`: the dense MLP and the sparse block's router and experts.
    public static let mlpNames = (gate: "mlp.gate_proj", up: "mlp.up_proj", down: "mlp.down_proj")
    public static let routerName = "mlp.gate.weight"
    public static let expertsPrefix = "mlp.experts."
    public static let expertNames = (gate: "gate_proj", up: "up_proj", down: "down_proj")

    /// Hugging Face → GGUF tensor names (llama.cpp `LLM_ARCH_QWEN3MOE`): Llama's attention names
    /// plus per-head q/k norms, and the sparse block with experts fused per layer
    /// (`ffn_{gate,up,down}_exps`, ggml dims `[cols, rows, experts]`). q/k rows are not permuted
    /// (llama.cpp rotates halves for Qwen). llama.cpp's converter writes no dense-MLP layers for
    /// this architecture (it refuses `mlp_only_layers`), so there are none here either.
    public static let ggufNames = GGUFNameTable(LlamaForCausalLM.ggufNames.entries.filter { !$0.hf.contains(".mlp.") } + [
        ("model.layers.{L}.self_attn.q_norm.weight", "blk.{L}.attn_q_norm.weight"),
        ("model.layers.{L}.self_attn.k_norm.weight", "blk.{L}.attn_k_norm.weight"),
    ] + sparseGGUFNames, permutedQK: false)

    /// The router and fused routed experts, shared with Qwen2-MoE.
    static let sparseGGUFNames: [(hf: String, gguf: String)] = [
        ("model.layers.{L}.mlp.gate.weight", "blk.{L}.ffn_gate_inp.weight"),
        ("model.layers.{L}.mlp.experts.{E}.gate_proj.weight", "blk.{L}.ffn_gate_exps.weight"),
        ("model.layers.{L}.mlp.experts.{E}.up_proj.weight", "blk.{L}.ffn_up_exps.weight"),
        ("model.layers.{L}.mlp.experts.{E}.down_proj.weight", "blk.{L}.ffn_down_exps.weight"),
    ]

    public static func load(config json: ConfigJSON, weights w: WeightSource) throws -> DecoderModel {
        let cfg = try Config(json)
        return try build(cfg.base, w, architecture: "Qwen3MoeForCausalLM", experts: cfg.experts, topK: cfg.topK,
                         normTopK: cfg.normTopK, moeIntermediate: cfg.moeIntermediate, isSparse: cfg.isSparse,
                         attentionBias: cfg.attentionBias, outputBias: cfg.attentionBias, qkNorm: true, shared: { _ in (nil, nil) })
    }

    /// The Qwen-MoE layer stack; Qwen2-MoE reuses it with biases, no q/k norm and a gated shared expert.
    static func build(_ c: DecoderConfig, _ w: WeightSource, architecture: String, experts: Int, topK: Int,
                      normTopK: Bool, moeIntermediate: Int, isSparse: (Int) -> Bool, attentionBias: Bool, outputBias: Bool,
                      qkNorm: Bool, shared: (Int) throws -> (SwiGLU?, Matrix?)) throws -> DecoderModel {
        let rope = RotaryEmbedding(dim: c.headDim, parameters: c.rope, interleaved: false)
        let layers = try (0..<c.layers).map { l -> DecoderLayer in
            let (n1, n2) = try DecoderBuilder.norms(c, w, layer: l)
            let p = SharedNames.layer(l)
            let ffn: FeedForward
            if isSparse(l) {
                let router = Router(weight: try w.matrix(p + routerName, rows: experts, cols: c.hidden),
                                    scoring: .softmax, topK: topK, normalizeTopK: normTopK)
                let (s, g) = try shared(l)
                ffn = .sparse(SparseMoE(router: router, shared: s, sharedGate: g, expertIntermediate: moeIntermediate))
            } else {
                try DecoderConfig.requirePositive(c.intermediate, "intermediate_size")
                ffn = .dense(try DecoderBuilder.swiGLU(w, prefix: p, names: mlpNames, hidden: c.hidden, intermediate: c.intermediate))
            }
            return DecoderLayer(
                inputNorm: n1,
                attention: try DecoderBuilder.gqa(c, w, layer: l, bias: attentionBias, oBias: outputBias, qkNorm: qkNorm, rope: rope),
                postAttentionNorm: n2, feedForward: ffn)
        }
        return try DecoderBuilder.assemble(c, w, architecture: architecture, layers: layers, rope: rope) { l, e in
            try DecoderBuilder.expert(w, prefix: SharedNames.layer(l) + expertsPrefix, expert: e, experts: experts,
                                      names: expertNames, hidden: c.hidden, intermediate: moeIntermediate)
        }
    }
}
