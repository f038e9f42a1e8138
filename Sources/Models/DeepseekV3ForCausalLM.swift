import Checkpoint

/// `DeepseekV3ForCausalLM` (transformers `models/deepseek_v3/modeling_deepseek_v3.py`), also the
/// class of Kimi K2 / K2 Thinking / Moonlight (`model_type: kimi_k2`): Multi-head Latent
/// Attention with or without a low-rank query (`q_lora_rank`), decoupled interleaved RoPE with
/// YaRN (its mscale also scales the softmax), sigmoid router with `e_score_correction_bias` for
/// selection only and group-limited top-k, shared experts, and the first `first_k_dense_replace`
/// layers dense.
public enum DeepseekV3ForCausalLM {
    public struct Config: Sendable {
        public var base: DecoderConfig
        public var qLoraRank: Int?
        public var kvLoraRank: Int
        public var qkNopeHeadDim: Int
        public var qkRopeHeadDim: Int
        public var vHeadDim: Int
        public var routedExperts: Int
        public var topK: Int
        public var sharedExperts: Int
        public var moeIntermediate: Int
        public var firstDense: Int
        public var groups: Int
        public var topKGroups: Int
        public var normTopK: Bool
        public var routedScaling: Float
        public var ropeInterleave: Bool
        public var attentionBias: Bool

        public init(_ c: ConfigJSON) throws {
            base = try DecoderConfig(c, tieDefault: false, epsDefault: 1e-6)
            qLoraRank = try c.optionalInt("q_lora_rank")
            kvLoraRank = try c.int("kv_lora_rank")
            qkNopeHeadDim = try c.int("qk_nope_head_dim")
            qkRopeHeadDim = try c.int("qk_rope_head_dim")
            vHeadDim = try c.int("v_head_dim")
            routedExperts = try c.int(c.firstKey(["n_routed_experts", "num_local_experts"]) ?? "n_routed_experts")
            topK = try c.int("num_experts_per_tok")
            sharedExperts = try c.int("n_shared_experts", default: 0)
            moeIntermediate = try c.int("moe_intermediate_size")
            firstDense = try c.int("first_k_dense_replace", default: 0)
            groups = try c.int("n_group", default: 1)
            topKGroups = try c.int("topk_group", default: 1)
            normTopK = try c.bool("norm_topk_prob", default: true)
            routedScaling = Float(try c.double("routed_scaling_factor", default: 1))
            // Published DeepSeek/Kimi configs have no key: interleaved is their layout.
            ropeInterleave = try c.bool("rope_interleave", default: true)
            attentionBias = try c.bool("attention_bias", default: false)
            if let f = try c.optionalString("scoring_func"), f != "sigmoid" {
                throw ModelError.invalidConfig("scoring_func '\(f)' is not supported for DeepseekV3 (only sigmoid)")
            }
            for (v, k) in [(kvLoraRank, "kv_lora_rank"), (qkNopeHeadDim, "qk_nope_head_dim"), (qkRopeHeadDim, "qk_rope_head_dim"),
                           (vHeadDim, "v_head_dim"), (groups, "n_group"), (topKGroups, "topk_group")] {
                try DecoderConfig.requireSize(v, k, limit: DecoderConfig.Limits.hidden)
            }
            if let q = qLoraRank { try DecoderConfig.requireSize(q, "q_lora_rank", limit: DecoderConfig.Limits.hidden) }
            if routedExperts != 0 { try DecoderConfig.requireSize(routedExperts, "n_routed_experts", limit: DecoderConfig.Limits.experts) }
            try DecoderConfig.requireSize(moeIntermediate, "moe_intermediate_size", limit: DecoderConfig.Limits.intermediate)
            try DecoderConfig.requireSize(sharedExperts + 1, "n_shared_experts + 1", limit: DecoderConfig.Limits.experts)
            try DecoderConfig.requireFinite(Double(routedScaling), "routed_scaling_factor")
            guard qkRopeHeadDim % 2 == 0 else { throw ModelError.invalidConfig("qk_rope_head_dim must be even") }
            if routedExperts > 0 {
                guard routedExperts % groups == 0 else {
                    throw ModelError.invalidConfig("n_routed_experts (\(routedExperts)) must be divisible by n_group (\(groups))")
                }
                guard topKGroups <= groups, topK > 0, topK <= (routedExperts / groups) * topKGroups else {
                    throw ModelError.invalidConfig("num_experts_per_tok (\(topK)) cannot be chosen from topk_group (\(topKGroups)) of n_group (\(groups)) groups of \(routedExperts / groups) experts")
                }
            }
        }

        public func isSparse(_ l: Int) -> Bool { routedExperts > 0 && l >= firstDense }

        /// Softmax scale: 1/sqrt(qk_head_dim), times mscale² under YaRN with `mscale_all_dim`.
        public var softmaxScale: Float {
            var s = 1 / Double(qkNopeHeadDim + qkRopeHeadDim).squareRoot()
            if base.rope.kind != .default, let all = base.rope.mscaleAllDim, all != 0 {
                let m = yarnMscale(base.rope.factor, all)
                s *= m * m
            }
            return Float(s)
        }
    }

    /// Weight names under `model.layers.L.` (besides `SharedNames`' norms).
    public enum Names {
        public static let qProj = "self_attn.q_proj.weight"
        public static let qA = "self_attn.q_a_proj", qANorm = "self_attn.q_a_layernorm.weight", qB = "self_attn.q_b_proj.weight"
        public static let kvA = "self_attn.kv_a_proj_with_mqa", kvANorm = "self_attn.kv_a_layernorm.weight"
        public static let kvB = "self_attn.kv_b_proj.weight", o = "self_attn.o_proj"
        public static let mlp = (gate: "mlp.gate_proj", up: "mlp.up_proj", down: "mlp.down_proj")
        public static let router = "mlp.gate.weight", routerBias = "mlp.gate.e_score_correction_bias"
        public static let experts = "mlp.experts."
        public static let expert = (gate: "gate_proj", up: "up_proj", down: "down_proj")
        public static let shared = "mlp.shared_experts."
        /// Not Hugging Face names: llama.cpp's converter splits `kv_b_proj` into these (under the
        /// same prefix) before naming them `attn_k_b` (W_UK transposed per head, `[heads, r, nope]`)
        /// and `attn_v_b` (W_UV, `[heads, v, r]`), so GGUF files carry them instead.
        public static let kB = "self_attn.k_b_proj.weight", vB = "self_attn.v_b_proj.weight"
    }

    /// Hugging Face → GGUF tensor names (llama.cpp `LLM_ARCH_DEEPSEEK2`, also used for Kimi K2).
    /// Current files hold `attn_k_b`/`attn_v_b` (see `Names.kB`); files converted before that
    /// split hold `attn_kv_b`. Routed experts are fused per layer (`ffn_*_exps`), the shared
    /// experts are `ffn_*_shexp`, the correction bias is `exp_probs_b.bias`. RoPE pairs are
    /// interleaved in both formats, so q/k rows are not permuted.
    public static let ggufNames = GGUFNameTable(LlamaForCausalLM.ggufNames.entries.filter {
        !$0.hf.contains(".self_attn.") && !$0.hf.contains(".mlp.")  // embeddings, norms, LM head
    } + [
        ("model.layers.{L}.self_attn.q_proj.weight", "blk.{L}.attn_q.weight"),
        ("model.layers.{L}.self_attn.q_a_proj.weight", "blk.{L}.attn_q_a.weight"),
        ("model.layers.{L}.self_attn.q_a_layernorm.weight", "blk.{L}.attn_q_a_norm.weight"),
        ("model.layers.{L}.self_attn.q_b_proj.weight", "blk.{L}.attn_q_b.weight"),
        ("model.layers.{L}.self_attn.kv_a_proj_with_mqa.weight", "blk.{L}.attn_kv_a_mqa.weight"),
        ("model.layers.{L}.self_attn.kv_a_layernorm.weight", "blk.{L}.attn_kv_a_norm.weight"),
        ("model.layers.{L}.self_attn.kv_b_proj.weight", "blk.{L}.attn_kv_b.weight"),
        ("model.layers.{L}.self_attn.k_b_proj.weight", "blk.{L}.attn_k_b.weight"),
        ("model.layers.{L}.self_attn.v_b_proj.weight", "blk.{L}.attn_v_b.weight"),
        ("model.layers.{L}.self_attn.o_proj.weight", "blk.{L}.attn_output.weight"),
        ("model.layers.{L}.mlp.gate_proj.weight", "blk.{L}.ffn_gate.weight"),
        ("model.layers.{L}.mlp.up_proj.weight", "blk.{L}.ffn_up.weight"),
        ("model.layers.{L}.mlp.down_proj.weight", "blk.{L}.ffn_down.weight"),
        ("model.layers.{L}.mlp.gate.weight", "blk.{L}.ffn_gate_inp.weight"),
        ("model.layers.{L}.mlp.gate.e_score_correction_bias", "blk.{L}.exp_probs_b.bias"),
        ("model.layers.{L}.mlp.experts.{E}.gate_proj.weight", "blk.{L}.ffn_gate_exps.weight"),
        ("model.layers.{L}.mlp.experts.{E}.up_proj.weight", "blk.{L}.ffn_up_exps.weight"),
        ("model.layers.{L}.mlp.experts.{E}.down_proj.weight", "blk.{L}.ffn_down_exps.weight"),
        ("model.layers.{L}.mlp.shared_experts.gate_proj.weight", "blk.{L}.ffn_gate_shexp.weight"),
        ("model.layers.{L}.mlp.shared_experts.up_proj.weight", "blk.{L}.ffn_up_shexp.weight"),
        ("model.layers.{L}.mlp.shared_experts.down_proj.weight", "blk.{L}.ffn_down_shexp.weight"),
    ], permutedQK: false)

    public static func load(config json: ConfigJSON, weights w: WeightSource) throws -> DecoderModel {
        let cfg = try Config(json)
        let c = cfg.base
        let h = c.heads, qk = cfg.qkNopeHeadDim + cfg.qkRopeHeadDim
        let rope = RotaryEmbedding(dim: cfg.qkRopeHeadDim, parameters: c.rope, interleaved: cfg.ropeInterleave)
        let layers = try (0..<c.layers).map { l -> DecoderLayer in
            let p = SharedNames.layer(l)
            let (n1, n2) = try DecoderBuilder.norms(c, w, layer: l)
            func bias(_ name: String, _ n: Int) throws -> [Float]? {
                cfg.attentionBias ? try w.vector(p + name + ".bias", count: n) : nil
            }
            let attention = MultiHeadLatentAttention(
                heads: h, kvLoraRank: cfg.kvLoraRank, nopeDim: cfg.qkNopeHeadDim, ropeDim: cfg.qkRopeHeadDim,
                vDim: cfg.vHeadDim,
                wq: cfg.qLoraRank == nil ? try w.matrix(p + Names.qProj, rows: h * qk, cols: c.hidden) : nil,
                qA: try cfg.qLoraRank.map { try w.matrix(p + Names.qA + ".weight", rows: $0, cols: c.hidden) },
                qANorm: try cfg.qLoraRank.map { try w.vector(p + Names.qANorm, count: $0) },
                qB: try cfg.qLoraRank.map { try w.matrix(p + Names.qB, rows: h * qk, cols: $0) },
                kvA: try w.matrix(p + Names.kvA + ".weight", rows: cfg.kvLoraRank + cfg.qkRopeHeadDim, cols: c.hidden),
                kvANorm: try w.vector(p + Names.kvANorm, count: cfg.kvLoraRank),
                up: w.contains(p + Names.kvB) || !w.contains(p + Names.kB)
                    ? .fused(try w.matrix(p + Names.kvB, rows: h * (cfg.qkNopeHeadDim + cfg.vHeadDim), cols: cfg.kvLoraRank))
                    : .split(kT: try w.matrix3D(p + Names.kB, experts: h, rows: cfg.kvLoraRank, cols: cfg.qkNopeHeadDim),
                             v: try w.matrix3D(p + Names.vB, experts: h, rows: cfg.vHeadDim, cols: cfg.kvLoraRank)),
                wo: try w.matrix(p + Names.o + ".weight", rows: c.hidden, cols: h * cfg.vHeadDim),
                qABias: try cfg.qLoraRank.flatMap { try bias(Names.qA, $0) },
                kvABias: try bias(Names.kvA, cfg.kvLoraRank + cfg.qkRopeHeadDim),
                oBias: try bias(Names.o, c.hidden),
                eps: c.normEps, rope: rope, scale: cfg.softmaxScale)
            let ffn: FeedForward
            if cfg.isSparse(l) {
                let router = Router(
                    weight: try w.matrix(p + Names.router, rows: cfg.routedExperts, cols: c.hidden),
                    scoring: .sigmoid, topK: cfg.topK, normalizeTopK: cfg.normTopK, scalingFactor: cfg.routedScaling,
                    correctionBias: w.contains(p + Names.routerBias) ? try w.vector(p + Names.routerBias, count: cfg.routedExperts) : nil,
                    groupCount: cfg.groups, topKGroups: cfg.topKGroups)
                let shared = cfg.sharedExperts > 0
                    ? try DecoderBuilder.swiGLU(w, prefix: p + Names.shared, names: Names.expert, hidden: c.hidden,
                                                intermediate: cfg.moeIntermediate * cfg.sharedExperts)
                    : nil
                ffn = .sparse(SparseMoE(router: router, shared: shared, sharedGate: nil, expertIntermediate: cfg.moeIntermediate))
            } else {
                try DecoderConfig.requirePositive(c.intermediate, "intermediate_size")
                ffn = .dense(try DecoderBuilder.swiGLU(w, prefix: p, names: Names.mlp, hidden: c.hidden, intermediate: c.intermediate))
            }
            return DecoderLayer(inputNorm: n1, attention: attention, postAttentionNorm: n2, feedForward: ffn)
        }
        return try DecoderBuilder.assemble(c, w, architecture: "DeepseekV3ForCausalLM", layers: layers, rope: rope) { l, e in
            try DecoderBuilder.expert(w, prefix: SharedNames.layer(l) + Names.experts, expert: e, experts: cfg.routedExperts,
                                      names: Names.expert, hidden: c.hidden, intermediate: cfg.moeIntermediate)
        }
    }
}
