/// Errors raised while building or running a model. Messages name what was wrong and what to do.
public enum ModelError: Error, CustomStringConvertible {
    case unknownModelType(String, known: [String])
    case invalidConfig(String)
    case tokenOutOfRange(token: Int, vocab: Int)
    case contextOverflow(needed: Int, limit: Int)
    case emptyInput
    /// A `Batch` that breaks its layout contract (a caller's bug, not a user's input).
    case invalidBatch(String)
    /// `--model` (or `FARSIDE_MODEL`) names nothing that exists.
    case modelNotFound(path: String)
    /// The path exists but is neither a GGUF file nor a checkpoint directory; `what` says what it is.
    case notAModel(path: String, what: String)

    public var description: String {
        switch self {
        case .unknownModelType(let t, let known):
            return "unknown model_type '\(t)' in config.json; supported: \(known.joined(separator: ", "))"
        case .invalidConfig(let s):
            return "invalid model configuration: \(s)"
        case .tokenOutOfRange(let t, let v):
            return "token id \(t) is outside the vocabulary (valid ids are 0..<\(v))"
        case .contextOverflow(let n, let limit):
            return "sequence of \(n) tokens exceeds the model's context limit of \(limit) positions"
        case .emptyInput:
            return "no input tokens: give at least one token id"
        case .invalidBatch(let s):
            return "invalid batch: \(s)"
        case .modelNotFound(let p):
            return "\(p): no such file or directory; the model must be a GGUF file or a Hugging Face checkpoint directory"
        case .notAModel(let p, let what):
            return "\(p) is not a model: \(what); give a GGUF file or a Hugging Face checkpoint directory (config.json and safetensors)"
        }
    }
}
