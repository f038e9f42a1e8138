import ArgumentParser
import Checkpoint
import Foundation
import Models
import Tokenizer

/// Opens the tokenizer of a model: a GGUF file's metadata, or `tokenizer.json` in a Hugging Face directory.
func openTokenizer(path: String) throws -> BPETokenizer {
    let url = URL(fileURLWithPath: path)
    switch try ModelRegistry.kind(of: url) {
    case .directory:
        let json = url.appendingPathComponent("tokenizer.json")
        guard FileManager.default.fileExists(atPath: json.path) else { throw TokenizerMissing(model: path) }
        return try BPETokenizer(tokenizerJSON: json)
    case .gguf:
        let file = try GGUFFile(url: url)
        guard file.metadata["tokenizer.ggml.tokens"] != nil else { throw TokenizerMissing(model: path) }
        return try BPETokenizer(gguf: file)
    }
}

/// A model without a tokenizer (e.g. one `farside synth` wrote) asked to read or write text.
struct TokenizerMissing: Error, CustomStringConvertible {
    let model: String
    var description: String {
        "\(model) has no tokenizer (no tokenizer.json or GGUF tokenizer metadata), so it cannot read text; give the input as token ids with --tokens 5,17,3"
    }
}

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the token ids of a text as JSON: {\"tokens\": [...]}.")

    @Option(name: .long, help: "A GGUF file or a Hugging Face directory with tokenizer.json (default: the default model).")
    var model: String?

    @Option(name: .long, help: "The text to tokenize.")
    var text: String

    @Flag(name: .long, help: "Do not prepend BOS even when the tokenizer asks for it.")
    var noBos = false

    func run() throws {
        try runReportingErrors {
            let tok = try openTokenizer(path: try model ?? DefaultModel.path())
            let ids = tok.encode(text, withBOS: !noBos)
            printJSON("{\"tokens\": [\(ids.map(String.init).joined(separator: ", "))]}")
        }
    }
}
