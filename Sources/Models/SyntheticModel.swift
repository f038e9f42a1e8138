import Checkpoint
import Foundation
import Kernels
// SplitMix64 lives in its own pure module (the simulator uses it too); users of Models keep seeing it.
@_exported import SeededRandom

/// Seeded random models of any supported architecture and shape, in Hugging Face layout, for
/// benchmarks and scale tests.
///
/// The tensor list is not written down a second time: the architecture's own loader is run
/// against a `TensorRecorder`, which notes every tensor (name and config-implied shape) it asks
/// for, so a synthetic checkpoint always has exactly the tensors its loader reads.
public enum SyntheticModel {
    /// Named shapes. `tiny` ones are for smoke runs; `1g` ones are ~1 GB in bf16 for benchmarks;
    /// `k2` (deepseek_v3/kimi_k2 only) has Kimi K2's routing (384 routed experts, top 8, one
    /// group, one shared expert, first layer dense) at a small width (~300 MB in bf16), for
    /// placement benchmarks.
    public static func preset(_ name: String, arch: String) throws -> [String: Any] {
        var c: [String: Any] = [
            "vocab_size": 4096, "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 8,
            "num_key_value_heads": 4, "intermediate_size": 768, "rms_norm_eps": 1e-5,
            "max_position_embeddings": 4096, "rope_theta": 10000.0, "tie_word_embeddings": false,
            "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        ]
        let big = name == "1g", k2 = name == "k2"
        guard name == "tiny" || big || (k2 && (arch == "deepseek_v3" || arch == "kimi_k2")) else {
            throw ModelError.invalidConfig("unknown preset '\(name)' (known: tiny, 1g; k2 for deepseek_v3 and kimi_k2)")
        }
        switch arch {
        case "llama":
            c["architectures"] = ["LlamaForCausalLM"]
            if big {
                c.merge(["vocab_size": 32000, "hidden_size": 2048, "num_hidden_layers": 10, "num_attention_heads": 16,
                         "num_key_value_heads": 4, "intermediate_size": 5632]) { $1 }
            }
        case "mixtral":
            c["architectures"] = ["MixtralForCausalLM"]
            c.merge(["num_local_experts": 8, "num_experts_per_tok": 2]) { $1 }
            if big {
                c.merge(["vocab_size": 32000, "hidden_size": 1024, "num_hidden_layers": 8, "num_attention_heads": 16,
                         "num_key_value_heads": 4, "intermediate_size": 2048]) { $1 }
            }
        case "qwen3_moe", "qwen2_moe":
            c["architectures"] = [arch == "qwen3_moe" ? "Qwen3MoeForCausalLM" : "Qwen2MoeForCausalLM"]
            c.merge(["num_experts": 16, "num_experts_per_tok": 4, "moe_intermediate_size": 256, "norm_topk_prob": true,
                     "decoder_sparse_step": 1, "mlp_only_layers": [Int](), "head_dim": 32,
                     "shared_expert_intermediate_size": 512]) { $1 }
            if big {
                c.merge(["vocab_size": 32000, "hidden_size": 1024, "num_hidden_layers": 8, "num_attention_heads": 16,
                         "num_key_value_heads": 4, "head_dim": 64, "num_experts": 64, "num_experts_per_tok": 8,
                         "moe_intermediate_size": 512, "shared_expert_intermediate_size": 1024]) { $1 }
            }
        case "deepseek_v3", "kimi_k2":
            c["architectures"] = ["DeepseekV3ForCausalLM"]
            c.merge(["q_lora_rank": 128, "kv_lora_rank": 64, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16,
                     "v_head_dim": 32, "n_routed_experts": 16, "num_experts_per_tok": 4, "n_shared_experts": 1,
                     "moe_intermediate_size": 128, "first_k_dense_replace": 1, "n_group": 4, "topk_group": 2,
                     "norm_topk_prob": true, "routed_scaling_factor": 2.5, "num_key_value_heads": 8,
                     "rope_scaling": ["type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024,
                                      "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0]]) { $1 }
            if big {
                // DeepSeek-V3's proportions scaled down: 8 layers (1 dense), 40 experts top-6 in 8 groups.
                c.merge(["vocab_size": 32000, "hidden_size": 1024, "num_hidden_layers": 8, "num_attention_heads": 16,
                         "num_key_value_heads": 16, "q_lora_rank": 384, "kv_lora_rank": 256, "qk_nope_head_dim": 64,
                         "qk_rope_head_dim": 32, "v_head_dim": 64, "n_routed_experts": 40, "num_experts_per_tok": 6,
                         "moe_intermediate_size": 512, "intermediate_size": 2816, "n_group": 8, "topk_group": 4]) { $1 }
            }
            if k2 {
                // Kimi K2's config: 384 routed experts, 8 per token, n_group 1, 1 shared, first
                // layer dense; routed_scaling_factor 2.827. Width and depth scaled down.
                c.merge(["vocab_size": 8192, "hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8,
                         "num_key_value_heads": 8, "q_lora_rank": 192, "kv_lora_rank": 128, "qk_nope_head_dim": 32,
                         "qk_rope_head_dim": 16, "v_head_dim": 32, "n_routed_experts": 384, "num_experts_per_tok": 8,
                         "moe_intermediate_size": 128, "intermediate_size": 1024, "n_group": 1, "topk_group": 1,
                         "routed_scaling_factor": 2.827]) { $1 }
            }
        default:
            throw ModelError.unknownModelType(arch, known: ModelRegistry.loaders.keys.sorted())
        }
        c["model_type"] = arch
        return c
    }

    /// Writes `config` (model_type set) and random weights of `dtype` to `directory`.
    /// Returns the number of parameters written.
    @discardableResult
    /// `routerSkew` > 0 makes routing uneven, as real traffic is: the expert of rank r in a seeded
    /// random order of each layer's experts gets `routerSkew · exp(-4r/E)` added to its router
    /// bias (DeepSeek's `e_score_correction_bias`, which steers selection only), so a few
    /// experts, at random ids as in trained models, are hot.
    public static func write(config: [String: Any], dtype: TensorDType, seed: UInt64, routerSkew: Float = 0,
                             to directory: URL) throws -> Int {
        guard [.f32, .f16, .bf16].contains(dtype) else {
            throw ModelError.invalidConfig("synthetic weights must be F32, F16 or BF16, not \(dtype.rawValue)")
        }
        let json = ConfigJSON(object: config, source: "synthetic config")
        let recorder = TensorRecorder()
        let model = try ModelRegistry.load(config: json, weights: recorder)
        for (layer, experts, _) in model.sparseLayers {
            for e in 0..<experts { _ = try model.expertLoader(layer, e) }
        }
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let cfgData = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
        try cfgData.write(to: directory.appendingPathComponent("config.json"))

        var writer = SafetensorsWriter()
        var params = 0
        for (i, t) in recorder.tensors.enumerated() {
            let count = t.shape.reduce(1, *)
            params += count
            var rng = SplitMix64(seed: seed &+ UInt64(i) &* 0x9E37_79B9_7F4A_7C15)
            var values = t.values(count: count, rng: &rng)
            if t.kind == .routerBias && routerSkew != 0 {
                var order = Array(0..<count)
                order.shuffle(using: &rng)
                for (rank, e) in order.enumerated() { values[e] += routerSkew * expf(-4 * Float(rank) / Float(count)) }
            }
            writer.add(name: t.name, dtype: dtype, shape: t.shape, bytes: encode(values, dtype))
        }
        try writer.write(to: directory.appendingPathComponent("model.safetensors"))
        return params
    }

    static func encode(_ v: [Float], _ dtype: TensorDType) -> [UInt8] {
        switch dtype {
        case .f16:
            return v.withUnsafeBufferPointer { _ in
                var out = [UInt8](repeating: 0, count: v.count * 2)
                out.withUnsafeMutableBytes { o in
                    for (i, x) in v.enumerated() { o.storeBytes(of: Float16(x).bitPattern, toByteOffset: 2 * i, as: UInt16.self) }
                }
                return out
            }
        case .bf16:
            var out = [UInt8](repeating: 0, count: v.count * 2)
            out.withUnsafeMutableBytes { o in
                for (i, x) in v.enumerated() {
                    // Round to nearest even, as torch's float→bfloat16 conversion does.
                    let b = x.bitPattern
                    let r = (b &+ 0x7FFF &+ ((b >> 16) & 1)) >> 16
                    o.storeBytes(of: UInt16(truncatingIfNeeded: r), toByteOffset: 2 * i, as: UInt16.self)
                }
            }
            return out
        default:
            return v.withUnsafeBytes { Array($0) }
        }
    }

}

/// A `WeightSource` that hands out placeholders and remembers what was asked for.
final class TensorRecorder: WeightSource {
    struct Tensor {
        enum Kind { case matrix, norm, bias, routerBias }
        let name: String
        let shape: [Int]
        let kind: Kind

        /// Values keep activations O(1): uniform weights with std 1/sqrt(fan-in), norms near 1,
        /// so logits come out finite and varied at any depth.
        func values(count: Int, rng: inout SplitMix64) -> [Float] {
            var v = [Float](repeating: 0, count: count)
            switch kind {
            case .matrix:
                let fanIn = Float(shape.last ?? 1)
                let a = (3 / fanIn).squareRoot() * (name.contains("embed_tokens") ? 8 : 1)
                for i in 0..<count { v[i] = rng.symmetric() * a }
            case .norm:
                for i in 0..<count { v[i] = 1 + 0.1 * rng.symmetric() }
            case .bias, .routerBias:
                for i in 0..<count { v[i] = 0.1 * rng.symmetric() }
            }
            return v
        }
    }
    private(set) var tensors: [Tensor] = []
    private var seen: Set<String> = []
    private let placeholder = UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 16)

    deinit { placeholder.deallocate() }

    private func note(_ name: String, _ shape: [Int], _ kind: Tensor.Kind) {
        if seen.insert(name).inserted { tensors.append(Tensor(name: name, shape: shape, kind: kind)) }
    }

    /// Everything optional exists, except transformers 5's fused expert tensors (the published
    /// per-expert layout is written instead).
    func contains(_ name: String) -> Bool { !name.hasSuffix("gate_up_proj") }

    func matrix(_ name: String, rows: Int, cols: Int) throws -> Matrix {
        note(name, [rows, cols], .matrix)
        return Matrix(data: UnsafeRawPointer(placeholder), dtype: .f32, rows: rows, cols: cols)
    }

    func vector(_ name: String, count: Int) throws -> [Float] {
        let kind: Tensor.Kind = name.hasSuffix("e_score_correction_bias") ? .routerBias : name.hasSuffix(".bias") ? .bias : .norm
        note(name, [count], kind)
        return [Float](repeating: kind == .norm ? 1 : 0, count: count)
    }

    func matrix3D(_ name: String, experts: Int, rows: Int, cols: Int) throws -> Matrix {
        note(name, [experts, rows, cols], .matrix)
        return Matrix(data: UnsafeRawPointer(placeholder), dtype: .f32, rows: experts * rows, cols: cols)
    }
}


extension SplitMix64 {
    /// Uniform in [-1, 1), from the top 24 bits.
    mutating func symmetric() -> Float { Float(Int64(bitPattern: next()) >> 40) / Float(1 << 23) }
}
