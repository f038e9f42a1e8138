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
        return try loader(config, weights)
    }

    /// Opens a model: a Hugging Face checkpoint directory or a GGUF file.
    public static func load(path: URL) throws -> (model: DecoderModel, fingerprint: String) {
        if path.pathExtension.lowercased() == "gguf" || isGGUF(path) {
            let (m, w) = try GGUFModel.load(url: path)
            return (m, GGUFModel.fingerprint(w.file))
        }
        let (m, _) = try load(directory: path)
        return (m, try fingerprint(directory: path))
    }

    /// Whether `url` is a regular file that starts with the GGUF magic.
    static func isGGUF(_ url: URL) -> Bool {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir), !isDir.boolValue,
              let h = FileHandle(forReadingAtPath: url.path) else { return false }
        defer { try? h.close() }
        return (try? h.read(upToCount: 4)) == Data("GGUF".utf8)
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
