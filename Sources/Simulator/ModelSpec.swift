import Foundation
import Placement

/// A MoE model's sizes as the cost model needs them: what the experts weigh and cost per token,
/// and what the coordinator's part (attention, shared experts, dense layers, LM head) reads and
/// computes. From a named preset (the models' published `config.json` figures) or a config.json.
public struct ModelSpec: Sendable, Equatable {
    /// Multi-head latent attention's ranks (DeepSeek-V2 §2.1): what the KV cache and the absorbed
    /// attention cost per position.
    public struct LatentAttention: Sendable, Equatable {
        public var qLoraRank: Int, kvLoraRank: Int, qkNopeHeadDim: Int, qkRopeHeadDim: Int, vHeadDim: Int
    }

    /// How routed experts are stored.
    public enum ExpertFormat: String, Sendable, CaseIterable {
        /// bf16: 2 bytes per parameter.
        case bf16
        /// 4-bit weights with a bf16 scale per 32 (the project's `int4` layout): 4.5 bits per parameter.
        case int4

        public var bytesPerParameter: Double { self == .bf16 ? 2 : 0.5 + 2.0 / 32 }
    }

    public var name: String
    public var layers: Int
    /// Leading dense (non-MoE) layers (`first_k_dense_replace`).
    public var denseLayers: Int
    public var experts: Int
    public var expertsPerToken: Int
    public var sharedExperts: Int
    public var hidden: Int
    public var moeIntermediate: Int
    public var denseIntermediate: Int
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int
    public var latent: LatentAttention?
    public var vocab: Int
    public var expertFormat: ExpertFormat

    public var moeLayers: Int { layers - denseLayers }
    /// Parameters of one routed expert (gate, up and down projections).
    public var expertParameters: Double { 3 * Double(hidden) * Double(moeIntermediate) }
    public var expertBytes: UInt64 { UInt64((expertParameters * expertFormat.bytesPerParameter).rounded(.up)) }

    /// The routed experts as the placement planner sees them.
    public var layout: ExpertLayout {
        ExpertLayout(layers: moeLayers, experts: experts, expertBytes: expertBytes,
                     expertFlopsPerToken: 2 * expertParameters, expertsPerToken: expertsPerToken)
    }

    /// Attention weights of one layer.
    var attentionParameters: Double {
        let h = Double(hidden)
        if let a = latent {
            let qk = Double(a.qkNopeHeadDim + a.qkRopeHeadDim), n = Double(heads)
            let q = a.qLoraRank > 0 ? h * Double(a.qLoraRank) + Double(a.qLoraRank) * n * qk : h * n * qk
            return q + h * Double(a.kvLoraRank + a.qkRopeHeadDim)
                + Double(a.kvLoraRank) * n * Double(a.qkNopeHeadDim + a.vHeadDim) + n * Double(a.vHeadDim) * h
        }
        return h * Double(heads + 2 * kvHeads) * Double(headDim) + Double(heads * headDim) * h
    }

    /// Weights the coordinator computes with every step (bf16): attention, shared experts, dense
    /// layers' FFN, router and LM head. The embedding is a lookup, not counted.
    public var coordinatorParameters: Double {
        let h = Double(hidden)
        return Double(layers) * attentionParameters
            + Double(moeLayers) * (Double(sharedExperts) * 3 * h * Double(moeIntermediate) + h * Double(experts))
            + Double(denseLayers) * 3 * h * Double(denseIntermediate)
            + Double(vocab) * h
    }

    /// KV cache bytes per token over all layers (bf16).
    public var kvBytesPerToken: Double {
        let perLayer = latent.map { Double($0.kvLoraRank + $0.qkRopeHeadDim) } ?? Double(2 * kvHeads * headDim)
        return 2 * perLayer * Double(layers)
    }

    /// Attention FLOPs one new token spends per earlier position, over all layers (scores and
    /// the weighted sum; MLA with the absorbed projections, as its decode runs).
    public var attentionFlopsPerPosition: Double {
        let perLayer: Double
        if let a = latent {
            perLayer = 2 * Double(heads) * Double(a.kvLoraRank + a.qkRopeHeadDim) + 2 * Double(heads) * Double(a.kvLoraRank)
        } else {
            perLayer = 4 * Double(heads * headDim)
        }
        return perLayer * Double(layers)
    }

    /// Bytes of one token's hidden state on a link (bf16), each way.
    public var activationBytes: Double { 2 * Double(hidden) }

    // MARK: presets

    static let deepseekLatent = LatentAttention(qLoraRank: 1536, kvLoraRank: 512, qkNopeHeadDim: 128, qkRopeHeadDim: 64, vHeadDim: 128)

    /// The presets, from each model's published config.json.
    public static let presets: [String: ModelSpec] = [
        // moonshotai/Kimi-K2-Instruct config.json.
        "kimi-k2": ModelSpec(name: "kimi-k2", layers: 61, denseLayers: 1, experts: 384, expertsPerToken: 8, sharedExperts: 1,
                             hidden: 7168, moeIntermediate: 2048, denseIntermediate: 18432, heads: 64, kvHeads: 64,
                             headDim: 128, latent: deepseekLatent, vocab: 163_840, expertFormat: .int4),
        // deepseek-ai/DeepSeek-V3 config.json.
        "deepseek-v3": ModelSpec(name: "deepseek-v3", layers: 61, denseLayers: 3, experts: 256, expertsPerToken: 8, sharedExperts: 1,
                                 hidden: 7168, moeIntermediate: 2048, denseIntermediate: 18432, heads: 128, kvHeads: 128,
                                 headDim: 128, latent: deepseekLatent, vocab: 129_280, expertFormat: .int4),
        // mistralai/Mixtral-8x7B-v0.1 config.json (the experts' size is its intermediate_size).
        "mixtral-8x7b": ModelSpec(name: "mixtral-8x7b", layers: 32, denseLayers: 0, experts: 8, expertsPerToken: 2, sharedExperts: 0,
                                  hidden: 4096, moeIntermediate: 14336, denseIntermediate: 0, heads: 32, kvHeads: 8,
                                  headDim: 128, latent: nil, vocab: 32_000, expertFormat: .bf16),
        // Qwen/Qwen3-30B-A3B config.json.
        "qwen3-30b-a3b": ModelSpec(name: "qwen3-30b-a3b", layers: 48, denseLayers: 0, experts: 128, expertsPerToken: 8, sharedExperts: 0,
                                   hidden: 2048, moeIntermediate: 768, denseIntermediate: 6144, heads: 32, kvHeads: 4,
                                   headDim: 128, latent: nil, vocab: 151_936, expertFormat: .bf16),
    ]

    /// A preset by name (case-insensitive), or a config.json at `nameOrPath`; `format` overrides
    /// the preset's expert format (a config.json's experts are bf16 unless it says otherwise).
    public static func load(_ nameOrPath: String, format: ExpertFormat? = nil) throws -> ModelSpec {
        if var m = presets[nameOrPath.lowercased()] {
            if let format { m.expertFormat = format }
            return m
        }
        guard nameOrPath.hasSuffix(".json") || FileManager.default.fileExists(atPath: nameOrPath) else {
            throw SimulatorError.unknownModel(name: nameOrPath, known: presets.keys.sorted())
        }
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: nameOrPath)) } catch {
            throw SimulatorError.unreadableFile(file: nameOrPath, reason: error.localizedDescription)
        }
        return try parse(config: data, file: nameOrPath, format: format ?? .bf16)
    }

    /// A Hugging Face config.json of a DeepSeek-V3/Kimi-K2, Mixtral or Qwen3-MoE model.
    public static func parse(config data: Data, file: String, format: ExpertFormat) throws -> ModelSpec {
        guard let any = try? JSONSerialization.jsonObject(with: data), let c = any as? [String: Any] else {
            throw SimulatorError.invalidModelConfig(file: file, problem: "not a JSON object")
        }
        func int(_ keys: String...) -> Int? {
            for k in keys { if let v = c[k] as? NSNumber { return v.intValue } }
            return nil
        }
        func need(_ keys: String...) throws -> Int {
            for k in keys { if let v = c[k] as? NSNumber, v.intValue > 0 { return v.intValue } }
            throw SimulatorError.invalidModelConfig(file: file, problem: "no positive '\(keys.joined(separator: "' or '"))'")
        }
        let layers = try need("num_hidden_layers")
        let hidden = try need("hidden_size")
        let experts = try need("n_routed_experts", "num_experts", "num_local_experts")
        let topK = try need("num_experts_per_tok")
        let heads = try need("num_attention_heads")
        let kvHeads = int("num_key_value_heads") ?? heads
        let moeIntermediate = try need("moe_intermediate_size", "intermediate_size")
        let dense = int("first_k_dense_replace") ?? 0
        guard dense < layers else {
            throw SimulatorError.invalidModelConfig(file: file, problem: "first_k_dense_replace \(dense) leaves no MoE layer of \(layers)")
        }
        var latent: LatentAttention?
        if let kv = int("kv_lora_rank"), kv > 0 {
            latent = LatentAttention(qLoraRank: int("q_lora_rank") ?? 0, kvLoraRank: kv, qkNopeHeadDim: int("qk_nope_head_dim") ?? 128,
                                     qkRopeHeadDim: int("qk_rope_head_dim") ?? 64, vHeadDim: int("v_head_dim") ?? 128)
        }
        let name = (c["model_type"] as? String) ?? URL(fileURLWithPath: file).deletingLastPathComponent().lastPathComponent
        return ModelSpec(name: name, layers: layers, denseLayers: dense, experts: experts, expertsPerToken: topK,
                         sharedExperts: int("n_shared_experts") ?? 0, hidden: hidden, moeIntermediate: moeIntermediate,
                         denseIntermediate: c["moe_intermediate_size"] == nil ? 0 : (int("intermediate_size") ?? 0),
                         heads: heads, kvHeads: kvHeads, headDim: int("head_dim") ?? hidden / heads, latent: latent,
                         vocab: int("vocab_size") ?? 0, expertFormat: format)
    }
}
