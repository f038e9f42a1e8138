/// Errors raised while building or running a model. Messages name what was wrong and what to do.
public enum ModelError: Error, CustomStringConvertible {
    case unknownModelType(String, known: [String])
    case invalidConfig(String)
    case tokenOutOfRange(token: Int, vocab: Int)
    case contextOverflow(needed: Int, limit: Int)
    case emptyInput
    /// A `Batch` that breaks its layout contract (a caller's bug, not a user's input).
    case invalidBatch(String)

    public var description: String {
        switch self {
        case .unknownModelType(let t, let known):
            return "unknown model_type '\(t)' in config.json; supported: \(known.joined(separator: ", "))"
        case .invalidConfig(let s):
            return "invalid config.json: \(s)"
        case .tokenOutOfRange(let t, let v):
            return "token id \(t) is outside the vocabulary (valid ids are 0..<\(v))"
        case .contextOverflow(let n, let limit):
            return "sequence of \(n) tokens exceeds the model's context limit of \(limit) positions"
        case .emptyInput:
            return "no input tokens: give at least one token id"
        case .invalidBatch(let s):
            return "invalid batch: \(s)"
        }
    }
}
