import ArgumentParser
import Checkpoint
import Foundation

struct Quantize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Rewrite a bf16/f16/f32 Hugging Face checkpoint with its routed experts in INT4 (compressed-tensors pack-quantized, symmetric, group 32, as Kimi K2 Thinking ships).",
        discussion: """
            Routed-expert weights (….experts.<E>.<projection>.weight) become weight_packed, weight_scale (bf16) and \
            weight_shape; every other tensor is copied unchanged, and config.json gains the quantization_config that \
            compressed-tensors writes. Farside serves the result with its INT4 kernels; transformers with \
            compressed-tensors loads it too.
            """)

    @Option(name: .long, help: "The Hugging Face checkpoint directory to quantize.")
    var model: String

    @Option(name: .long, help: "Output directory (created; must be empty or absent unless --force).")
    var out: String

    @Flag(name: .long, help: "Write into a non-empty --out, first removing the checkpoint files there.")
    var force = false

    func run() throws {
        try runReportingErrors {
            let input = try CheckpointDirectory(url: URL(fileURLWithPath: model))
            let output = URL(fileURLWithPath: out)
            guard output.standardizedFileURL.path != input.url.standardizedFileURL.path else {
                throw ValidationError("--out must differ from --model: the output replaces checkpoint files")
            }
            try Synth.prepareOutput(output, force: force)
            let s = try Int4Quantizer.write(input, to: output)
            printJSON("{\"out\": \"\(out)\", \"quantized\": \(s.quantized), \"copied\": \(s.copied), \"bytes_in\": \(s.bytesIn), \"bytes_out\": \(s.bytesOut)}")
        }
    }
}
