import Checkpoint

/// `LlamaForCausalLM` (transformers `models/llama/modeling_llama.py`): GQA with RoPE (default,
/// linear or llama3 scaling), SwiGLU MLP, RMSNorm, tied or untied embeddings. SmolLM2 is one.
/// Dense models run their MLP on the attention side here; the cluster may move it to expert nodes.
public enum LlamaForCausalLM {
    /// config.json fields beyond `DecoderConfig`.
    public struct Config: Sendable {
        public var base: DecoderConfig
        public var attentionBias: Bool
        public var mlpBias: Bool

        public init(_ c: ConfigJSON) throws {
            base = try DecoderConfig(c, tieDefault: false, epsDefault: 1e-6)
            attentionBias = try c.bool("attention_bias", default: false)
            mlpBias = try c.bool("mlp_bias", default: false)
            if mlpBias { throw ModelError.invalidConfig("mlp_bias=true is not supported") }
            try DecoderConfig.requirePositive(base.intermediate, "intermediate_size")
        }
    }

    /// Weight names (besides `SharedNames`): the MLP's three projections under `model.layers.L.`.
    public static let mlpNames = (gate: "mlp.gate_proj", up: "mlp.up_proj", down: "mlp.down_proj")

    /// Hugging Face → GGUF tensor names (llama.cpp `LLM_ARCH_LLAMA`); q/k rows are permuted.
    public static let ggufNames = GGUFNameTable([
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
        ("model.layers.{L}.input_layernorm.weight", "blk.{L}.attn_norm.weight"),
        ("model.layers.{L}.post_attention_layernorm.weight", "blk.{L}.ffn_norm.weight"),
        ("model.layers.{L}.self_attn.q_proj.weight", "blk.{L}.attn_q.weight"),
        ("model.layers.{L}.self_attn.k_proj.weight", "blk.{L}.attn_k.weight"),
        ("model.layers.{L}.self_attn.v_proj.weight", "blk.{L}.attn_v.weight"),
        ("model.layers.{L}.self_attn.o_proj.weight", "blk.{L}.attn_output.weight"),
        // Biases: q/k are permuted like their rows, which pairwise RoPE then undoes.
        ("model.layers.{L}.self_attn.q_proj.bias", "blk.{L}.attn_q.bias"),
        ("model.layers.{L}.self_attn.k_proj.bias", "blk.{L}.attn_k.bias"),
        ("model.layers.{L}.self_attn.v_proj.bias", "blk.{L}.attn_v.bias"),
        ("model.layers.{L}.self_attn.o_proj.bias", "blk.{L}.attn_output.bias"),
        ("model.layers.{L}.mlp.gate_proj.weight", "blk.{L}.ffn_gate.weight"),
        ("model.layers.{L}.mlp.up_proj.weight", "blk.{L}.ffn_up.weight"),
        ("model.layers.{L}.mlp.down_proj.weight", "blk.{L}.ffn_down.weight"),
    ], permutedQK: true)

    public static func load(config json: ConfigJSON, weights w: WeightSource) throws -> DecoderModel {
        let cfg = try Config(json)
        return try build(cfg.base, w, architecture: "LlamaForCausalLM", qkvBias: cfg.attentionBias, oBias: cfg.attentionBias)
    }

    /// The Llama layer stack; Qwen2 reuses it with q/k/v biases and no o_proj bias.
    static func build(_ c: DecoderConfig, _ w: WeightSource, architecture: String, qkvBias: Bool, oBias: Bool) throws -> DecoderModel {
        // GGUF llama files hold q/k rows permuted for pairwise RoPE; rotating pairs then gives
        // the same attention scores as rotating halves of the unpermuted rows.
        let rope = RotaryEmbedding(dim: c.headDim, parameters: c.rope, interleaved: w.permutedQK)
        let layers = try (0..<c.layers).map { l -> DecoderLayer in
            let (n1, n2) = try DecoderBuilder.norms(c, w, layer: l)
            return DecoderLayer(
                inputNorm: n1,
                attention: try DecoderBuilder.gqa(c, w, layer: l, bias: qkvBias, oBias: oBias, rope: rope),
                postAttentionNorm: n2,
                feedForward: .dense(try DecoderBuilder.swiGLU(w, prefix: SharedNames.layer(l), names: mlpNames,
                                                              hidden: c.hidden, intermediate: c.intermediate)))
        }
        return try DecoderBuilder.assemble(c, w, architecture: architecture, layers: layers, rope: rope,
                                           expertLoader: { l, _ in throw ModelError.invalidConfig("layer \(l) of a dense \(architecture) model has no routed experts") })
    }
}
