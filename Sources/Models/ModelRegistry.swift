import Checkpoint
import Foundation

/// Maps config.json's `model_type` to the architecture that loads it.
public enum ModelRegistry {
    public typealias Loader = (ConfigJSON, WeightSource) throws -> DecoderModel

    /// Supported `model_type` values.
    public static let loaders: [String: Loader] = [
        "llama": LlamaForCausalLM.load,
        "qwen2": Qwen2ForCausalLM.load,
        "mixtral": MixtralForCausalLM.load,
        "qwen3_moe": Qwen3MoeForCausalLM.load,
        "qwen2_moe": Qwen2MoeForCausalLM.load,
        "deepseek_v3": DeepseekV3ForCausalLM.load,
        "kimi_k2": DeepseekV3ForCausalLM.load,
    ]

    /// Builds the model a checkpoint's config.json describes.
    public static func load(config: ConfigJSON, weights: WeightSource) throws -> DecoderModel {
        guard let type = try config.optionalString("model_type") else {
            throw ModelError.invalidConfig("config.json has no model_type")
        }
        guard let loader = loaders[type] else {
            throw ModelError.unknownModelType(type, known: loaders.keys.sorted())
        }
        try checkLayerCount(config, weights)
        return try loader(config, weights)
    }

    /// Refuses a `num_hidden_layers` (GGUF `block_count`) that the weights do not back, before a
    /// loader sizes anything by it: its last layer's input norm must be present.
    static func checkLayerCount(_ config: ConfigJSON, _ weights: WeightSource) throws {
        guard let n = try config.optionalInt("num_hidden_layers") else { return }  // the loader names the missing key
        try DecoderConfig.requireSize(n, "\(config.source): num_hidden_layers", limit: DecoderConfig.Limits.layers)
        let last = SharedNames.layer(n - 1) + SharedNames.inputNorm
        guard weights.contains(last) else {
            throw ModelError.invalidConfig(
                "\(config.source): num_hidden_layers is \(n) but the weights have no \(last), so they hold fewer layers")
        }
    }

    /// What a model path holds: a GGUF file or a directory (to be read as a Hugging Face
    /// checkpoint). Anything else is refused saying what it is: a missing path, a device, a file
    /// without the GGUF magic (a README, a safetensors file given alone).
    public enum PathKind { case gguf, directory }

    public static func kind(of url: URL) throws -> PathKind {
        var st = stat()
        guard stat(url.path, &st) == 0 else { throw ModelError.modelNotFound(path: url.path) }
        switch st.st_mode & S_IFMT {
        case S_IFDIR: return .directory
        case S_IFREG: break
        case S_IFCHR, S_IFBLK: throw ModelError.notAModel(path: url.path, what: "it is a device, not a regular file")
        default: throw ModelError.notAModel(path: url.path, what: "it is not a regular file or a directory")
        }
        guard let h = FileHandle(forReadingAtPath: url.path) else {
            throw ModelError.notAModel(path: url.path, what: "it cannot be opened for reading (\(String(cString: strerror(errno))))")
        }
        defer { try? h.close() }
        let head = (try? h.read(upToCount: 4)) ?? Data()
        guard head == Data("GGUF".utf8) else {
            let shown = String(decoding: head.map { $0 >= 32 && $0 < 127 ? $0 : UInt8(ascii: "?") }, as: UTF8.self)
            throw ModelError.notAModel(path: url.path, what: "it is a file but not a GGUF file (it starts with \"\(shown)\", not \"GGUF\")")
        }
        return .gguf
    }

    /// Opens a model: a Hugging Face checkpoint directory or a GGUF file.
    public static func load(path: URL) throws -> (model: DecoderModel, fingerprint: String) {
        if try kind(of: path) == .gguf {
            let (m, w) = try GGUFModel.load(url: path)
            return (m, GGUFModel.fingerprint(w.file))
        }
        let (m, _) = try load(directory: path)
        return (m, try fingerprint(directory: path))
    }

    /// Opens a Hugging Face checkpoint directory and builds its model.
    public static func load(directory: URL) throws -> (DecoderModel, CheckpointDirectory) {
        let ckpt = try CheckpointDirectory(url: directory)
        return (try load(config: ckpt.config, weights: ckpt), ckpt)
    }
}

extension ModelRegistry {
    /// Identifies a model across processes: FNV-1a 64 of its config.json bytes. Expert nodes and
    /// coordinators compare it so a node never serves a different model's experts.
    public static func fingerprint(directory: URL) throws -> String {
        let data = try Data(contentsOf: directory.appendingPathComponent("config.json"))
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in data {
            h ^= UInt64(b)
            h = h &* 0x100_0000_01b3
        }
        return String(h, radix: 16)
    }
}
