import ArgumentParser
import Checkpoint
import Foundation
import Tokenizer

/// Opens the tokenizer of a model: a GGUF file's metadata, or `tokenizer.json` in a Hugging Face directory.
func openTokenizer(path: String) throws -> BPETokenizer {
    let url = URL(fileURLWithPath: path)
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
        throw TokenizerError.malformed("no such file or directory", source: path)
    }
    if isDir.boolValue {
        return try BPETokenizer(tokenizerJSON: url.appendingPathComponent("tokenizer.json"))
    }
    return try BPETokenizer(gguf: try GGUFFile(url: url))
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
