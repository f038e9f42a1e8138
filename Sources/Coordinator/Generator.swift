import Checkpoint
import Kernels
import Models

/// Errors from request handling on the coordinator.
public enum GenerationError: Error, CustomStringConvertible {
    case invalidParameter(String)
    /// The prompt alone fills the model's context: no token can follow it.
    case promptTooLong(tokens: Int, context: Int)

    public var description: String {
        switch self {
        case .invalidParameter(let s): return "invalid generation parameter: \(s)"
        case .promptTooLong(let n, let c):
            return "the prompt has \(n) tokens but the model's context holds \(c) positions, so no token can follow it; shorten the prompt"
        }
    }
}

/// Why a generation ended, as OpenAI-style servers report it.
/// What a generation produced and why it ended.
public struct Generation: Sendable {
    public let tokens: [Int]
    public let finishReason: FinishReason
}

/// Runs one sequence: batched prefill of the prompt, then KV-cached decode one token at a time.
public final class Generator {
    public let model: DecoderModel
    /// How the KV cache stores its rows (`--kv-dtype`); a type the model's rows do not suit is
    /// refused by `run` (`KVCacheError.unsupportedDType`).
    public var kvDType = KVDType.f32

    public init(model: DecoderModel) { self.model = model }

    /// Generates up to `maxTokens` new tokens after `prompt`, stopping after an EOS token (which
    /// is included) unless `ignoreEOS`. Calls `onToken` as each token is produced; return false
    /// from it to stop early.
    @discardableResult
    public func generate(prompt: [Int], maxTokens: Int, sampling: SamplingParameters = .init(),
                         ignoreEOS: Bool = false, stopTokens: Set<Int> = [],
                         onToken: (Int) -> Bool = { _ in true }) throws -> [Int] {
        try run(prompt: prompt, maxTokens: maxTokens, sampling: sampling, ignoreEOS: ignoreEOS,
                stopTokens: stopTokens, onToken: onToken).tokens
    }

    /// As `generate`, also saying why it ended. Prompt plus output never exceed the model's
    /// context (`maxPositions`): any `maxTokens` is accepted, and generation that reaches the
    /// context ends with `.length` and the tokens produced so far. A prompt that fills the context
    /// by itself is refused before anything is computed.
    public func run(prompt: [Int], maxTokens: Int, sampling: SamplingParameters = .init(),
                    ignoreEOS: Bool = false, stopTokens: Set<Int> = [],
                    onToken: (Int) -> Bool = { _ in true }) throws -> Generation {
        try sampling.validate()
        guard maxTokens >= 0 else { throw GenerationError.invalidParameter("max tokens must be >= 0, got \(maxTokens)") }
        guard !prompt.isEmpty else { throw ModelError.emptyInput }
        let room = try contextRoom(model, prompt: prompt.count)
        guard maxTokens > 0 else { return Generation(tokens: [], finishReason: .length) }
        // Sized for what can actually be generated, never from maxTokens alone.
        let cache = try model.makeCache(capacity: prompt.count + min(maxTokens, room), dtype: kvDType)
        let stops = ignoreEOS ? stopTokens : stopTokens.union(model.eosTokenIds)
        let logits = try model.forward(prompt, cache: cache, logits: .last)
        return try decode(model, cache: cache, logits: logits, limit: min(maxTokens, room), sampling: sampling,
                          stops: stops, onToken: onToken, onFed: { _ in })
    }
}

/// Positions left in `model`'s context after a prompt of `count` tokens, or
/// `GenerationError.promptTooLong` when there are none.
func contextRoom(_ model: DecoderModel, prompt count: Int) throws -> Int {
    guard count < model.maxPositions else { throw GenerationError.promptTooLong(tokens: count, context: model.maxPositions) }
    return model.maxPositions - count
}

/// The decode loop `Generator` and `ChatSession` share: samples from `logits` (the prompt's last
/// row, already in `cache`), feeds each new token back until `limit` tokens, a stop token or
/// `onToken` returning false. `onFed` sees each token once its keys and values are cached.
/// `limit` never exceeds the context room, so no forward pass can overflow the cache.
func decode(_ model: DecoderModel, cache: KVCache, logits first: [Float], limit: Int, sampling: SamplingParameters,
            stops: Set<Int>, onToken: (Int) -> Bool, onFed: (Int) -> Void) throws -> Generation {
    var sampler = Sampler(sampling)
    var logits = first
    var out: [Int] = []
    while true {
        let next = logits.withUnsafeBufferPointer { sampler.sample($0) }
        out.append(next)
        if !onToken(next) || stops.contains(next) { return Generation(tokens: out, finishReason: .stop) }
        if out.count >= limit { return Generation(tokens: out, finishReason: .length) }
        logits = try model.forward([next], cache: cache, logits: .last)
        onFed(next)
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

    /// A session whose cache starts with room for `capacity` positions (capped by the model's
    /// context; it grows as needed up to the context).
    public init(model: DecoderModel, capacity: Int = 2048) {
        self.model = model
        cache = model.makeCache(capacity: min(capacity, model.maxPositions))
    }

    /// Generates a reply to `prompt` (the full conversation so far, rendered and tokenized),
    /// reusing the longest prefix of it already in the cache. The reply ends with `.length` when
    /// it reaches `maxTokens` or the model's context; a prompt that fills the context is refused
    /// (`GenerationError.promptTooLong`) before the cache changes, so the caller can shorten the
    /// conversation and ask again.
    @discardableResult
    public func respond(prompt: [Int], maxTokens: Int, sampling: SamplingParameters = .init(),
                        stopTokens: Set<Int> = [], onToken: (Int) -> Bool = { _ in true }) throws -> Generation {
        try sampling.validate()
        guard maxTokens > 0 else { throw GenerationError.invalidParameter("max tokens must be > 0, got \(maxTokens)") }
        guard !prompt.isEmpty else { throw ModelError.emptyInput }
        let room = try contextRoom(model, prompt: prompt.count)
        var keep = 0
        while keep < min(cached.count, prompt.count - 1) && cached[keep] == prompt[keep] { keep += 1 }
        cache.truncate(to: keep)
        cached.removeSubrange(keep...)
        let fresh = Array(prompt[keep...])
        let logits = try model.forward(fresh, cache: cache, logits: .last)
        cached += fresh
        return try decode(model, cache: cache, logits: logits, limit: min(maxTokens, room), sampling: sampling,
                          stops: stopTokens.union(model.eosTokenIds), onToken: onToken, onFed: { cached.append($0) })
    }
}
