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

/// A conversation that keeps its KV cache between turns: each turn's prompt (the whole chat
/// rendered again) shares a prefix with what the cache already holds, so only the new part is
/// prefilled — the prefix reuse vLLM and llama.cpp's server do for chat.
public final class ChatSession {
    public let model: DecoderModel
    let cache: KVCache
    /// The tokens whose keys and values `cache` holds, in order.
    public private(set) var cached: [Int] = []

    public init(model: DecoderModel, capacity: Int = 2048) {
        self.model = model
        cache = model.makeCache(capacity: capacity)
    }

    /// Generates a reply to `prompt` (the full conversation so far, rendered and tokenized),
    /// reusing the longest prefix of it already in the cache.
    @discardableResult
    public func respond(prompt: [Int], maxTokens: Int, sampling: SamplingParameters = .init(),
                        stopTokens: Set<Int> = [], onToken: (Int) -> Bool = { _ in true }) throws -> [Int] {
        try sampling.validate()
        guard maxTokens > 0 else { throw GenerationError.invalidParameter("max tokens must be > 0, got \(maxTokens)") }
        guard !prompt.isEmpty else { throw ModelError.emptyInput }
        var keep = 0
        while keep < min(cached.count, prompt.count - 1) && cached[keep] == prompt[keep] { keep += 1 }
        cache.truncate(to: keep)
        cached.removeSubrange(keep...)
        let fresh = Array(prompt[keep...])
        var logits = try model.forward(fresh, cache: cache, logits: .last)
        cached += fresh
        var sampler = Sampler(sampling)
        let stops = stopTokens.union(model.eosTokenIds)
        var out: [Int] = []
        while out.count < maxTokens {
            let next = logits.withUnsafeBufferPointer { sampler.sample($0) }
            out.append(next)
            if !onToken(next) || stops.contains(next) || out.count == maxTokens { break }
            logits = try model.forward([next], cache: cache, logits: .last)
            cached.append(next)
        }
        return out
    }
}
