import Checkpoint

/// `Qwen2MoeForCausalLM` (transformers `models/qwen2_moe/modeling_qwen2_moe.py`): Qwen-MoE layers
/// with q/k/v biases and, in every sparse layer, a shared expert whose output is scaled by
/// `sigmoid(shared_expert_gate · x)` and added to the routed sum.
public enum Qwen2MoeForCausalLM {
    public struct Config: Sendable {
        public var moe: Qwen3MoeForCausalLM.Config
        public var sharedIntermediate: Int
        public var qkvBias: Bool

        public init(_ c: ConfigJSON) throws {
            moe = try Qwen3MoeForCausalLM.Config(c)
            sharedIntermediate = try c.int("shared_expert_intermediate_size", default: 0)
            qkvBias = try c.bool("qkv_bias", default: true)
        }
    }

    /// Weight names under `model.layers.L.` that Qwen3-MoE lacks.
    public static let sharedExpertPrefix = "mlp.shared_expert."
    public static let sharedExpertGate = "mlp.shared_expert_gate.weight"

    /// Hugging Face → GGUF tensor names (llama.cpp `LLM_ARCH_QWEN2MOE`): Llama's attention names
    /// (with the q/k/v biases), Qwen3-MoE's router and fused experts, and the shared expert (`*_shexp`)
    /// with its gate (`ffn_gate_inp_shexp`, ggml dims `[hidden, 1]`).
    public static let ggufNames = GGUFNameTable(
        LlamaForCausalLM.ggufNames.entries.filter { !$0.hf.contains(".mlp.") }
            + Qwen3MoeForCausalLM.sparseGGUFNames + [
                ("model.layers.{L}.mlp.shared_expert.gate_proj.weight", "blk.{L}.ffn_gate_shexp.weight"),
                ("model.layers.{L}.mlp.shared_expert.up_proj.weight", "blk.{L}.ffn_up_shexp.weight"),
                ("model.layers.{L}.mlp.shared_expert.down_proj.weight", "blk.{L}.ffn_down_shexp.weight"),
                ("model.layers.{L}.mlp.shared_expert_gate.weight", "blk.{L}.ffn_gate_inp_shexp.weight"),
            ], permutedQK: false)

    public static func load(config json: ConfigJSON, weights w: WeightSource) throws -> DecoderModel {
        let cfg = try Config(json)
        let m = cfg.moe, c = m.base
        return try Qwen3MoeForCausalLM.build(
            c, w, architecture: "Qwen2MoeForCausalLM", experts: m.experts, topK: m.topK, normTopK: m.normTopK,
            moeIntermediate: m.moeIntermediate, isSparse: m.isSparse, attentionBias: cfg.qkvBias, outputBias: false, qkNorm: false,
            shared: { l in
                guard cfg.sharedIntermediate > 0 else { return (nil, nil) }
                let p = SharedNames.layer(l)
                return (try DecoderBuilder.swiGLU(w, prefix: p + sharedExpertPrefix, names: ("gate_proj", "up_proj", "down_proj"),
                                                  hidden: c.hidden, intermediate: cfg.sharedIntermediate),
                        try w.matrix(p + sharedExpertGate, rows: 1, cols: c.hidden))
            })
    }
}
