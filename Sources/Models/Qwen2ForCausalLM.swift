import Checkpoint

/// `Qwen2ForCausalLM` (transformers `models/qwen2/modeling_qwen2.py`), e.g. Qwen2.5: Llama's
/// layers with biases on the q/k/v projections only (never on o_proj), usually tied embeddings.
public enum Qwen2ForCausalLM {
    /// config.json fields beyond `DecoderConfig`.
    public struct Config: Sendable {
        public var base: DecoderConfig

        public init(_ c: ConfigJSON) throws {
            base = try DecoderConfig(c, tieDefault: false, epsDefault: 1e-6)
            try DecoderConfig.requirePositive(base.intermediate, "intermediate_size")
            // Sliding-window layers would attend to fewer positions than full attention does.
            if try c.bool("use_sliding_window", default: false) {
                throw ModelError.invalidConfig("use_sliding_window=true is not supported for Qwen2 (only full attention)")
            }
        }
    }

    /// Hugging Face → GGUF tensor names (llama.cpp `LLM_ARCH_QWEN2`): Llama's names, biases
    /// included; q/k rows are stored as Hugging Face has them (llama.cpp rotates halves for Qwen2).
    public static let ggufNames = GGUFNameTable(LlamaForCausalLM.ggufNames.entries, permutedQK: false)

    public static func load(config json: ConfigJSON, weights w: WeightSource) throws -> DecoderModel {
        let cfg = try Config(json)
        return try LlamaForCausalLM.build(cfg.base, w, architecture: "Qwen2ForCausalLM", qkvBias: true, oBias: false)
    }
}
