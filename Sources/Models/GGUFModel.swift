import Checkpoint
import Foundation
import Kernels

/// GGUF files load into the same architecture files as Hugging Face checkpoints (one model
/// definition, two loaders): `GGUFModel` turns the file's metadata into the config.json the
/// architecture reads and serves its tensors under their Hugging Face names, translated through
/// the architecture's GGUF name table (`GGUFNameTable`, one per architecture file).
public enum GGUFModel {
    /// GGUF `general.architecture` values that load, and the config.json each becomes.
    public static let architectures = ["llama", "qwen2", "qwen2moe", "qwen3moe", "deepseek2"]

    /// Opens a GGUF file and builds its model.
    public static func load(url: URL) throws -> (DecoderModel, GGUFWeights) {
        let file = try GGUFFile(url: url)
        let arch = try file.string("general.architecture")
        let (config, table) = try configuration(file, architecture: arch)
        let weights = GGUFWeights(file: file, table: table)
        return (try ModelRegistry.load(config: config, weights: weights), weights)
    }

    /// The config.json a GGUF file's metadata describes, and the name table for its tensors.
    static func configuration(_ f: GGUFFile, architecture arch: String) throws -> (ConfigJSON, GGUFNameTable) {
        // Errors about the derived config name the file and say the keys are translated.
        let src = f.url.path + " (GGUF metadata read as config.json keys)"
        switch arch {
        case "llama":
            // llama.cpp stores Mixtral as `llama` with experts.
            let experts = try f.optionalInt("llama.expert_count") ?? 0
            var o = try commonConfig(f, prefix: "llama")
            if experts > 0 {
                o["model_type"] = "mixtral"
                o["num_local_experts"] = experts
                o["num_experts_per_tok"] = try f.int("llama.expert_used_count")
                return (ConfigJSON(object: o, source: src), MixtralForCausalLM.ggufNames)
            }
            o["model_type"] = "llama"
            // No metadata key says a file has attention biases; the tensors do (all four
            // projections, as Hugging Face's attention_bias means).
            o["attention_bias"] = f.tensors["blk.0.attn_q.bias"] != nil
            if f.tensors["blk.0.ffn_up.bias"] != nil {
                throw ModelError.invalidConfig("\(src): FFN biases (blk.0.ffn_up.bias) are not supported")
            }
            // Llama 3.1+ files carry the scaled frequencies as a tensor, not as rope_scaling keys.
            if f.tensors["rope_freqs.weight"] != nil {
                let half = (try f.optionalInt("llama.rope.dimension_count") ?? (o["head_dim"] as? Int ?? 0)) / 2
                let weights = GGUFWeights(file: f, table: GGUFNameTable([("rope_freqs", "rope_freqs.weight")], permutedQK: false))
                let factors = try weights.vector("rope_freqs", count: half)
                var s = o["rope_scaling"] as? [String: Any] ?? ["rope_type": "default"]
                s["freq_factors"] = factors.map(Double.init)
                o["rope_scaling"] = s
            }
            return (ConfigJSON(object: o, source: src), LlamaForCausalLM.ggufNames)
        case "qwen2":
            var o = try commonConfig(f, prefix: arch)
            o["model_type"] = "qwen2"
            return (ConfigJSON(object: o, source: src), Qwen2ForCausalLM.ggufNames)
        case "qwen2moe", "qwen3moe":
            var o = try commonConfig(f, prefix: arch)
            o["model_type"] = arch == "qwen2moe" ? "qwen2_moe" : "qwen3_moe"
            o["num_experts"] = try f.int("\(arch).expert_count")
            o["num_experts_per_tok"] = try f.int("\(arch).expert_used_count")
            o["moe_intermediate_size"] = try f.int("\(arch).expert_feed_forward_length")
            // The files carry no norm_topk_prob: llama.cpp fixes it per architecture (qwen2moe
            // never renormalises the top-k weights, qwen3moe always does), and so do we.
            o["norm_topk_prob"] = arch == "qwen3moe"
            if arch == "qwen2moe" {
                o["shared_expert_intermediate_size"] = try f.optionalInt("qwen2moe.expert_shared_feed_forward_length") ?? 0
                return (ConfigJSON(object: o, source: src), Qwen2MoeForCausalLM.ggufNames)
            }
            return (ConfigJSON(object: o, source: src), Qwen3MoeForCausalLM.ggufNames)
        case "deepseek2":
            return (ConfigJSON(object: try deepseek2Config(f), source: src), DeepseekV3ForCausalLM.ggufNames)
        default:
            throw ModelError.invalidConfig(
                "\(src): GGUF architecture '\(arch)' is not supported; supported: \(architectures.joined(separator: ", "))")
        }
    }

    /// DeepSeek-V3 / Kimi K2 (llama.cpp `deepseek2`) metadata as a `deepseek_v3` config.json.
    static func deepseek2Config(_ f: GGUFFile) throws -> [String: Any] {
        let p = "deepseek2"
        var o = try commonConfig(f, prefix: p)
        o["model_type"] = "deepseek_v3"
        // The converter writes head_count_kv = 1 (llama.cpp runs MLA as MQA over the latent);
        // the Hugging Face config has one key/value head per query head.
        o["num_key_value_heads"] = o["num_attention_heads"]
        let ropeDim = try f.int("\(p).rope.dimension_count")
        // Files since the k_b/v_b split keep the per-head q·k and v sizes under *_mla
        // (key_length is then kv_lora_rank + rope); older files have them in key/value_length.
        let qkHead = try f.optionalInt("\(p).attention.key_length_mla") ?? f.int("\(p).attention.key_length")
        o["qk_rope_head_dim"] = ropeDim
        o["qk_nope_head_dim"] = qkHead - ropeDim
        o["v_head_dim"] = try f.optionalInt("\(p).attention.value_length_mla") ?? f.int("\(p).attention.value_length")
        o["head_dim"] = ropeDim  // as transformers' DeepseekV3Config has it
        o["kv_lora_rank"] = try f.int("\(p).attention.kv_lora_rank")
        if let q = try f.optionalInt("\(p).attention.q_lora_rank") { o["q_lora_rank"] = q }
        o["n_routed_experts"] = try f.int("\(p).expert_count")
        o["num_experts_per_tok"] = try f.int("\(p).expert_used_count")
        o["moe_intermediate_size"] = try f.int("\(p).expert_feed_forward_length")
        o["n_shared_experts"] = try f.optionalInt("\(p).expert_shared_count") ?? 0
        o["first_k_dense_replace"] = try f.optionalInt("\(p).leading_dense_block_count") ?? 0
        o["n_group"] = try f.optionalInt("\(p).expert_group_count") ?? 1
        o["topk_group"] = try f.optionalInt("\(p).expert_group_used_count") ?? 1
        // Absent keys mean what llama.cpp takes them to mean: no renormalisation, scale 1.
        o["norm_topk_prob"] = try f.optionalBool("\(p).expert_weights_norm") ?? false
        o["routed_scaling_factor"] = try f.optionalDouble("\(p).expert_weights_scale") ?? 1
        // llama.cpp: 1 = softmax, 2 = sigmoid. The converter writes the key only when config.json
        // names scoring_func, which transformers 5's DeepseekV3Config does not, so V3 files
        // converted from such configs lack it. llama.cpp then assumes softmax (DeepSeek-V2), but a
        // file with the sigmoid router's correction bias (`exp_probs_b`) is V3-style: sigmoid.
        let gating = try f.optionalInt("\(p).expert_gating_func")
        let hasCorrectionBias = f.tensorNames.contains { $0.hasSuffix(".exp_probs_b.bias") }
        guard gating == 2 || (gating == nil && hasCorrectionBias) else {
            throw ModelError.invalidConfig(
                "\(f.url.path): \(p).expert_gating_func is \(gating.map(String.init) ?? "absent (softmax, DeepSeek-V2 style)"); "
                + "only the sigmoid router of DeepSeek-V3 / Kimi K2 (2) is supported")
        }
        o["scoring_func"] = "sigmoid"
        // deepseek2 RoPE rotates adjacent pairs in llama.cpp, as transformers does with rope_interleave.
        o["rope_interleave"] = true
        if var s = o["rope_scaling"] as? [String: Any], s["rope_type"] as? String == "yarn" {
            // llama.cpp's deepseek2 scales cos/sin by attn_factor (1) and the softmax by
            // (1 + 0.1·mscale_all_dim·ln factor)²; the converter stores 0.1·mscale_all_dim as
            // yarn_log_multiplier (llama.cpp divides the 0.1 back out in fp32, as here).
            s["attention_factor"] = 1.0
            if let m = try f.optionalDouble("\(p).rope.scaling.yarn_log_multiplier") {
                s["mscale_all_dim"] = Double(Float(m) / Float(0.1))
            }
            o["rope_scaling"] = s
        }
        return o
    }

    /// The config.json keys every Llama-lineage GGUF gives under `<arch>.`
    /// (llama.cpp's `LLM_KV_*` names).
    static func commonConfig(_ f: GGUFFile, prefix p: String) throws -> [String: Any] {
        var o: [String: Any] = [:]
        let hidden = try f.int("\(p).embedding_length")
        let heads = try f.int("\(p).attention.head_count")
        o["hidden_size"] = hidden
        o["num_hidden_layers"] = try f.int("\(p).block_count")
        o["num_attention_heads"] = heads
        o["num_key_value_heads"] = try f.optionalInt("\(p).attention.head_count_kv") ?? heads
        if let hd = try f.optionalInt("\(p).attention.key_length") { o["head_dim"] = hd }
        o["intermediate_size"] = try f.int("\(p).feed_forward_length")
        o["rms_norm_eps"] = try f.double("\(p).attention.layer_norm_rms_epsilon")
        o["max_position_embeddings"] = try f.int("\(p).context_length")
        o["rope_theta"] = try f.optionalDouble("\(p).rope.freq_base") ?? 10000
        if let type = try f.optionalString("\(p).rope.scaling.type"), type != "none" {
            o["rope_scaling"] = try ropeScaling(f, prefix: p, type: type)
        }
        let vocab = try f.optionalInt("\(p).vocab_size") ?? f.optionalStringArray("tokenizer.ggml.tokens")?.count
        guard let vocab else { throw ModelError.invalidConfig("\(f.url.path): GGUF metadata gives no vocabulary size") }
        o["vocab_size"] = vocab
        o["tie_word_embeddings"] = f.tensors["output.weight"] == nil
        if let eos = try f.optionalInt("tokenizer.ggml.eos_token_id") { o["eos_token_id"] = eos }
        if let bos = try f.optionalInt("tokenizer.ggml.bos_token_id") { o["bos_token_id"] = bos }
        return o
    }

    /// `rope_scaling` for GGUF `<arch>.rope.scaling.*`: linear, or YaRN with llama.cpp's defaults
    /// (beta_fast 32, beta_slow 1, which are also transformers'). Settings whose llama.cpp meaning
    /// has no config.json equivalent here are refused rather than approximated.
    static func ropeScaling(_ f: GGUFFile, prefix p: String, type: String) throws -> [String: Any] {
        let factor = try f.double("\(p).rope.scaling.factor")
        switch type {
        case "linear":
            return ["rope_type": "linear", "factor": factor]
        case "yarn":
            var s: [String: Any] = ["rope_type": "yarn", "factor": factor,
                                    "original_max_position_embeddings": try f.int("\(p).rope.scaling.original_context_length")]
            if let b = try f.optionalDouble("\(p).rope.scaling.yarn_beta_fast") { s["beta_fast"] = b }
            if let b = try f.optionalDouble("\(p).rope.scaling.yarn_beta_slow") { s["beta_slow"] = b }
            for key in ["yarn_ext_factor", "yarn_attn_factor"] {
                if let v = try f.optionalDouble("\(p).rope.scaling.\(key)"), v != 1 {
                    throw ModelError.invalidConfig("\(f.url.path): \(p).rope.scaling.\(key) = \(v) is not supported (only 1)")
                }
            }
            return s
        default:
            throw ModelError.invalidConfig("\(f.url.path): rope scaling '\(type)' in GGUF metadata is not supported (only linear and yarn)")
        }
    }

    /// Identifies a GGUF model across processes: FNV-1a 64 of the header (metadata and tensor
    /// layout), so nodes compare models without hashing the weights.
    public static func fingerprint(_ file: GGUFFile) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in file.headerData {
            h ^= UInt64(b)
            h = h &* 0x100_0000_01b3
        }
        return "gguf-" + String(h, radix: 16)
    }
}

/// How an architecture's Hugging Face tensor names map to GGUF names. Patterns are dotted
/// names where `{L}` matches a layer index and `{E}` an expert index; an HF name with `{E}`
/// maps to a fused 3-D GGUF tensor (`[experts, rows, cols]`) of which it is one expert's slice.
public struct GGUFNameTable: Sendable {
    public let entries: [(hf: String, gguf: String)]
    /// Whether q/k projection rows are stored permuted for pairwise (interleaved) RoPE, as
    /// llama.cpp's converter does for `llama`.
    public let permutedQK: Bool

    public init(_ entries: [(hf: String, gguf: String)], permutedQK: Bool) {
        self.entries = entries
        self.permutedQK = permutedQK
    }

    /// The GGUF name (and expert index, for per-expert HF names) of an HF tensor name.
    func translate(_ name: String) -> (gguf: String, expert: Int?)? {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        outer: for (hf, gguf) in entries {
            let pat = hf.split(separator: ".", omittingEmptySubsequences: false)
            guard pat.count == parts.count else { continue }
            var layer: Substring?, expert: Int?
            for (p, s) in zip(pat, parts) {
                switch p {
                case "{L}":
                    guard Int(s) != nil else { continue outer }
                    layer = s
                case "{E}":
                    guard let e = Int(s) else { continue outer }
                    expert = e
                default:
                    guard p == s else { continue outer }
                }
            }
            return (layer.map { gguf.replacingOccurrences(of: "{L}", with: $0) } ?? gguf, expert)
        }
        return nil
    }
}

/// A GGUF file's tensors served under Hugging Face names (`WeightSource`).
public final class GGUFWeights: WeightSource {
    public let file: GGUFFile
    let table: GGUFNameTable

    init(file: GGUFFile, table: GGUFNameTable) {
        self.file = file
        self.table = table
    }

    public var permutedQK: Bool { table.permutedQK }

    public func contains(_ name: String) -> Bool {
        guard let (g, _) = table.translate(name) else { return false }
        return file.tensors[g] != nil
    }

    func lookup(_ name: String) throws -> (GGUFTensorInfo, DType, Int?) {
        guard let (g, e) = table.translate(name) else {
            throw ModelError.invalidConfig("\(file.url.path): no GGUF tensor corresponds to \(name)")
        }
        let (info, dtype) = try file.tensor(g)
        return (info, dtype, e)
    }

    public func matrix(_ name: String, rows: Int, cols: Int) throws -> Matrix {
        let (t, dtype, expert) = try lookup(name)
        if let e = expert {
            guard t.dims.count == 3, t.dims[0] == cols, t.dims[1] == rows, e < t.dims[2] else {
                throw ModelError.invalidConfig("\(file.url.path): tensor \(t.name) has dims \(t.dims) but the metadata implies [\(cols), \(rows), >\(e)]")
            }
            let whole = Matrix(data: t.data, dtype: dtype, rows: rows * t.dims[2], cols: cols)
            return whole.rows(e * rows, count: rows)
        }
        guard t.dims == [cols, rows] || (rows == 1 && t.dims == [cols]) else {
            throw ModelError.invalidConfig("\(file.url.path): tensor \(t.name) has dims \(t.dims) but the metadata implies [\(cols), \(rows)]")
        }
        return Matrix(data: t.data, dtype: dtype, rows: rows, cols: cols)
    }

    public func vector(_ name: String, count: Int) throws -> [Float] {
        let (t, dtype, _) = try lookup(name)
        guard t.dims == [count] else {
            throw ModelError.invalidConfig("\(file.url.path): tensor \(t.name) has dims \(t.dims) but the metadata implies [\(count)]")
        }
        let m = Matrix(data: t.data, dtype: dtype, rows: 1, cols: count)
        var out = [Float](repeating: 0, count: count)
        out.withUnsafeMutableBufferPointer { m.widenRow(0, into: $0.baseAddress!) }
        return out
    }

    public func matrix3D(_ name: String, experts: Int, rows: Int, cols: Int) throws -> Matrix {
        let (t, dtype, _) = try lookup(name)
        guard t.dims == [cols, rows, experts] else {
            throw ModelError.invalidConfig("\(file.url.path): tensor \(t.name) has dims \(t.dims) but the metadata implies [\(cols), \(rows), \(experts)]")
        }
        return Matrix(data: t.data, dtype: dtype, rows: experts * rows, cols: cols)
    }
}
