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

    public static func load(config json: ConfigJSON, weights w: WeightSource) throws -> DecoderModel {
        let cfg = try Config(json)
        let c = cfg.base
        let rope = RotaryEmbedding(dim: c.headDim, parameters: c.rope, interleaved: false)
        let layers = try (0..<c.layers).map { l -> DecoderLayer in
            let (n1, n2) = try DecoderBuilder.norms(c, w, layer: l)
            return DecoderLayer(
                inputNorm: n1,
                attention: try DecoderBuilder.gqa(c, w, layer: l, bias: cfg.attentionBias, oBias: cfg.attentionBias, rope: rope),
                postAttentionNorm: n2,
                feedForward: .dense(try DecoderBuilder.swiGLU(w, prefix: SharedNames.layer(l), names: mlpNames,
                                                              hidden: c.hidden, intermediate: c.intermediate)))
        }
        return try DecoderBuilder.assemble(c, w, architecture: "LlamaForCausalLM", layers: layers, rope: rope,
                                           expertLoader: { l, _ in throw ModelError.invalidConfig("layer \(l) of a dense Llama model has no routed experts") })
    }
}
