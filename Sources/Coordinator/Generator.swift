import Models

/// Errors from request handling on the coordinator.
public enum GenerationError: Error, CustomStringConvertible {
    case invalidParameter(String)

    public var description: String {
        switch self {
        case .invalidParameter(let s): return "invalid generation parameter: \(s)"
        }
    }
}

/// Runs one sequence: batched prefill of the prompt, then KV-cached decode one token at a time.
public final class Generator {
    public let model: DecoderModel

    public init(model: DecoderModel) { self.model = model }

    /// Generates up to `maxTokens` new tokens after `prompt`, stopping after an EOS token (which
    /// is included) unless `ignoreEOS`. Calls `onToken` as each token is produced; return false
    /// from it to stop early.
    @discardableResult
    public func generate(prompt: [Int], maxTokens: Int, sampling: SamplingParameters = .init(),
                         ignoreEOS: Bool = false, stopTokens: Set<Int> = [],
                         onToken: (Int) -> Bool = { _ in true }) throws -> [Int] {
        try sampling.validate()
        guard maxTokens >= 0 else { throw GenerationError.invalidParameter("max tokens must be >= 0, got \(maxTokens)") }
        guard !prompt.isEmpty else { throw ModelError.emptyInput }
        guard maxTokens > 0 else { return [] }
        let cache = model.makeCache(capacity: prompt.count + maxTokens)
        var sampler = Sampler(sampling)
        let stops = ignoreEOS ? stopTokens : stopTokens.union(model.eosTokenIds)
        var logits = try model.forward(prompt, cache: cache, logits: .last)
        var out: [Int] = []
        while out.count < maxTokens {
            let next = logits.withUnsafeBufferPointer { sampler.sample($0) }
            out.append(next)
            if !onToken(next) || stops.contains(next) || out.count == maxTokens { break }
            logits = try model.forward([next], cache: cache, logits: .last)
        }
        return out
    }
}
