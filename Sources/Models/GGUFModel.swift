import Checkpoint
import Foundation
import Kernels

/// GGUF files load into the same architecture files as Hugging Face checkpoints (one model
/// definition, two loaders): `GGUFModel` turns the file's metadata into the config.json the
/// architecture reads and serves its tensors under their Hugging Face names, translated through
/// the architecture's GGUF name table (`GGUFNameTable`, one per architecture file).
public enum GGUFModel {
    /// GGUF `general.architecture` values that load, and the config.json each becomes.
    public static let architectures = ["llama"]

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
        let src = f.url.path
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
            return (ConfigJSON(object: o, source: src), LlamaForCausalLM.ggufNames)
        default:
            throw ModelError.invalidConfig(
                "\(src): GGUF architecture '\(arch)' is not supported; supported: \(architectures.joined(separator: ", "))")
        }
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
            guard type == "linear" else {
                throw ModelError.invalidConfig("\(f.url.path): rope scaling '\(type)' in GGUF metadata is not supported (only linear)")
            }
            o["rope_scaling"] = ["rope_type": "linear", "factor": try f.double("\(p).rope.scaling.factor")]
        }
        let vocab = try f.optionalInt("\(p).vocab_size") ?? f.optionalStringArray("tokenizer.ggml.tokens")?.count
        guard let vocab else { throw ModelError.invalidConfig("\(f.url.path): GGUF metadata gives no vocabulary size") }
        o["vocab_size"] = vocab
        o["tie_word_embeddings"] = f.tensors["output.weight"] == nil
        if let eos = try f.optionalInt("tokenizer.ggml.eos_token_id") { o["eos_token_id"] = eos }
        if let bos = try f.optionalInt("tokenizer.ggml.bos_token_id") { o["bos_token_id"] = bos }
        return o
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
