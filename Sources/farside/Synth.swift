import ArgumentParser
import Checkpoint
import Foundation
import Models

struct Synth: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a seeded random model of any supported shape in Hugging Face layout.")

    @Option(name: .long, help: "Architecture: deepseek_v3, kimi_k2, mixtral, qwen3_moe, qwen2_moe or llama.")
    var arch: String

    @Option(name: .long, help: "Named shape: tiny, 1g (~1 GB in bf16), or k2 (Kimi K2's 384-expert top-8 routing at a small width; deepseek_v3, kimi_k2).")
    var preset: String?

    @Option(name: .long, help: "A Hugging Face config.json giving the shape instead of a preset.")
    var config: String?

    @Option(name: .long, help: "Weight dtype: bf16, f16 or f32.")
    var dtype: String = "bf16"

    @Option(name: .long, help: "Random seed.")
    var seed: UInt64 = 0

    @Option(name: .long, help: "Skewed routing: adds S·exp(-4r/E) to the router bias of the expert of rank r in a seeded random order (deepseek_v3, kimi_k2), so a few experts are hot (0: uniform).")
    var routerSkew: Float = 0

    @Option(name: .long, help: "Output directory (created; must be empty or absent unless --force).")
    var out: String

    @Flag(name: .long, help: "Write into a non-empty --out, first removing the checkpoint files there (config.json, *.safetensors, the index, tokenizer and generation files).")
    var force = false

    func validate() throws {
        guard (preset == nil) != (config == nil) else { throw ValidationError("give exactly one of --preset or --config") }
        guard routerSkew.isFinite && abs(routerSkew) <= 100 else { throw ValidationError("--router-skew must be a number in -100...100, got \(routerSkew)") }
        guard ["bf16", "f16", "f32"].contains(dtype) else { throw ValidationError("--dtype must be bf16, f16 or f32, got '\(dtype)'") }
        guard ModelRegistry.loaders[arch] != nil else {
            throw ValidationError("--arch '\(arch)' is not supported; choose one of \(ModelRegistry.loaders.keys.sorted().joined(separator: ", "))")
        }
    }

    func run() throws {
        try runReportingErrors {
            var cfg: [String: Any]
            if let preset {
                cfg = try SyntheticModel.preset(preset, arch: arch)
            } else {
                let url = URL(fileURLWithPath: config!)
                let data: Data
                do { data = try Data(contentsOf: url) } catch {
                    throw ValidationError("--config: cannot read \(url.path): \(error.localizedDescription)")
                }
                cfg = try ConfigJSON(data: data, source: url.path).object
                cfg["model_type"] = arch
            }
            try Self.prepareOutput(URL(fileURLWithPath: out), force: force)
            let t: TensorDType = dtype == "f32" ? .f32 : dtype == "f16" ? .f16 : .bf16
            let params = try SyntheticModel.write(config: cfg, dtype: t, seed: seed, routerSkew: routerSkew, to: URL(fileURLWithPath: out))
            printJSON("{\"out\": \"\(out)\", \"parameters\": \(params), \"bytes\": \(params * (t == .f32 ? 4 : 2))}")
        }
    }

    /// Files of a Hugging Face checkpoint that `--force` clears from `--out` so nothing stale (an
    /// old shard index, another model's tokenizer) is read together with the new weights.
    static func isCheckpointFile(_ name: String) -> Bool {
        name.hasSuffix(".safetensors") || ["config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
                                           "chat_template.jinja", "generation_config.json", "special_tokens_map.json"].contains(name)
    }

    /// Refuses an existing non-empty `dir` (a checkpoint would be overwritten and mixed with
    /// stale files) unless `force` (`--force`), which removes its checkpoint files first.
    /// `farside quantize` shares it.
    static func prepareOutput(_ dir: URL, force: Bool) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir.path, isDirectory: &isDir) else { return }
        guard isDir.boolValue else { throw ValidationError("--out \(dir.path) exists and is not a directory") }
        let names = try FileManager.default.contentsOfDirectory(atPath: dir.path)
        guard !names.isEmpty else { return }
        guard force else {
            throw ValidationError("--out \(dir.path) is not empty (\(names.sorted().prefix(3).joined(separator: ", "))\(names.count > 3 ? ", ..." : "")); "
                + "choose an empty or new directory, or pass --force to replace the checkpoint in it")
        }
        for n in names where Self.isCheckpointFile(n) {
            try FileManager.default.removeItem(at: dir.appendingPathComponent(n))
        }
    }
}
