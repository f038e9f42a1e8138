import Foundation
import Models

/// Token sampling settings, with llama.cpp/vLLM semantics: temperature 0 is greedy (argmax,
/// lowest id on ties); otherwise logits are divided by the temperature, cut to the `topK` most
/// likely (0 = no cut), then to the smallest set whose probability reaches `topP`, and sampled
/// with a seeded generator so a seed reproduces a run.
public struct SamplingParameters: Sendable, Equatable {
    public var temperature: Float
    public var topK: Int
    public var topP: Float
    public var seed: UInt64

    public init(temperature: Float = 0, topK: Int = 0, topP: Float = 1, seed: UInt64 = 0) {
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.seed = seed
    }

    /// Checks ranges; the message names the flag to fix.
    public func validate() throws {
        guard temperature.isFinite, temperature >= 0 else {
            throw GenerationError.invalidParameter("temperature must be a finite number >= 0, got \(temperature)")
        }
        guard topK >= 0 else { throw GenerationError.invalidParameter("top-k must be >= 0, got \(topK)") }
        guard topP > 0, topP <= 1 else { throw GenerationError.invalidParameter("top-p must be in (0, 1], got \(topP)") }
    }
}

/// Picks next tokens from logits according to `SamplingParameters`.
public struct Sampler {
    public let parameters: SamplingParameters
    private var rng: SplitMix64
    private var candidates: [(id: Int, logit: Float)] = []

    public init(_ parameters: SamplingParameters) {
        self.parameters = parameters
        rng = SplitMix64(seed: parameters.seed)
    }

    /// Index of the largest logit (lowest index among equals).
    public static func argmax(_ logits: UnsafeBufferPointer<Float>) -> Int {
        var best = 0
        var bv = -Float.infinity
        for (i, v) in logits.enumerated() where v > bv {
            best = i
            bv = v
        }
        return best
    }

    public mutating func sample(_ logits: UnsafeBufferPointer<Float>) -> Int {
        let p = parameters
        if p.temperature == 0 { return Self.argmax(logits) }
        candidates.removeAll(keepingCapacity: true)
        var top = -Float.infinity
        for v in logits where v.isFinite && v > top { top = v }
        guard top.isFinite else { return Self.argmax(logits) }
        // The maximum is subtracted before dividing: (v - top) / T is <= 0, so a tiny temperature
        // gives 0 for the best token and -inf (probability 0) for the rest instead of inf - inf =
        // NaN; a huge one gives values near 0 (uniform). Both stay finite or -inf, never NaN.
        for (i, v) in logits.enumerated() where v.isFinite { candidates.append((i, (v - top) / p.temperature)) }
        candidates.sort { $0.logit > $1.logit || ($0.logit == $1.logit && $0.id < $1.id) }
        if p.topK > 0 && candidates.count > p.topK { candidates.removeLast(candidates.count - p.topK) }
        var probs = candidates.map { expf($0.logit) }
        let total = probs.reduce(0, +)
        for i in probs.indices { probs[i] /= total }
        var keep = probs.count
        if p.topP < 1 {
            var acc: Float = 0
            for (i, q) in probs.enumerated() {
                acc += q
                if acc >= p.topP { keep = i + 1; break }
            }
        }
        let mass = probs[..<keep].reduce(0, +)
        let u = Float(Double(rng.next() >> 11) / Double(1 << 53)) * mass
        var acc: Float = 0
        for i in 0..<keep {
            acc += probs[i]
            if u < acc { return candidates[i].id }
        }
        return candidates[keep - 1].id
    }
}
