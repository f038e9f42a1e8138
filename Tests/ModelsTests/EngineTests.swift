import Coordinator
import Foundation
import Models
import XCTest

/// The serving engine against the one-sequence `Generator`: a request's tokens must not depend on
/// which other requests share its steps, nor on how its prompt was cut into chunks.
final class EngineTests: XCTestCase {
    /// Prompts of assorted lengths (some longer than the step budget, so they are chunked).
    static func prompts(vocab: Int, count: Int, seed: UInt64) -> [[Int]] {
        var rng = SplitMix64(seed: seed)
        return (0..<count).map { i in
            let n = [1, 3, 7, 20, 33, 5, 41, 2][i % 8]
            return (0..<n).map { _ in Int(rng.next() % UInt64(vocab)) }
        }
    }

    /// Runs every request through one engine at once and returns each one's tokens and end.
    static func serve(_ model: DecoderModel, _ requests: [GenerationRequest], limits: Scheduler.Limits) throws
        -> [(tokens: [Int], reason: FinishReason?, usage: Usage?, logprobBits: [UInt32])] {
        var opts = Engine.Options()
        opts.limits = limits
        let engine = try Engine(model: model, options: opts)
        engine.start()
        defer { engine.shutdown(drainTimeout: 0) }
        let lock = NSLock()
        var results = [(tokens: [Int], reason: FinishReason?, usage: Usage?, logprobBits: [UInt32])](
            repeating: ([], nil, nil, []), count: requests.count)
        let done = DispatchGroup()
        for (i, r) in requests.enumerated() {
            done.enter()
            try engine.submit(r) { event in
                lock.lock()
                defer { lock.unlock() }
                switch event {
                case .token(let t):
                    results[i].tokens.append(t.id)
                    if let lp = t.logprob { results[i].logprobBits.append(lp.bitPattern) }
                case let .finished(reason, usage):
                    results[i].reason = reason
                    results[i].usage = usage
                    done.leave()
                case .failed(let why): XCTFail("request \(i) failed: \(why)")
                }
            }
        }
        XCTAssertEqual(done.wait(timeout: .now() + 300), .success, "engine did not finish every request")
        return results
    }

    /// 16 requests at once (chunked prompts, mixed prefill and decode rows in every step) give
    /// each request the tokens `Generator` gives it alone, and the same log-probability bits as
    /// the request alone in the engine: the logits rows are bit-identical whatever shares the step.
    func testBatchedRequestsMatchEachAlone() throws {
        for name in ["llama", "qwen3_moe", "deepseek_v3", "kimi_k2"] {
            let model = try Fixtures.model(name)
            let prompts = Self.prompts(vocab: model.vocabSize, count: 16, seed: 7)
            let alone = try prompts.map {
                try Generator(model: model).generate(prompt: $0, maxTokens: 12, ignoreEOS: true)
            }
            let request = { (p: [Int]) in GenerationRequest(prompt: p, maxTokens: 12, ignoreEOS: true, topLogprobs: 0) }
            let aloneBits = try prompts.map {
                try Self.serve(model, [request($0)], limits: .init(maxBatchTokens: 512, maxSequences: 1))[0].logprobBits
            }
            for limits in [Scheduler.Limits(maxBatchTokens: 16, maxSequences: 16),
                           Scheduler.Limits(maxBatchTokens: 512, maxSequences: 5)] {
                let served = try Self.serve(model, prompts.map(request), limits: limits)
                for (i, r) in served.enumerated() {
                    XCTAssertEqual(r.tokens, alone[i], "\(name) request \(i) (\(prompts[i].count) prompt tokens), \(limits)")
                    XCTAssertEqual(r.logprobBits, aloneBits[i], "\(name) request \(i): logits differ in a crowd, \(limits)")
                    XCTAssertEqual(r.reason, .length)
                    XCTAssertEqual(r.usage?.promptTokens, prompts[i].count)
                    XCTAssertEqual(r.usage?.completionTokens, 12)
                }
            }
        }
    }

    /// Seeded sampling gives each request its own stream: the same seed alone or in a crowd
    /// gives the same tokens.
    func testSeededSamplingIsPerRequest() throws {
        let model = try Fixtures.model("qwen3_moe")
        let prompts = Self.prompts(vocab: model.vocabSize, count: 6, seed: 11)
        let sampling = SamplingParameters(temperature: 0.9, topK: 20, topP: 0.95, seed: 42)
        let alone = try prompts.map {
            try Generator(model: model).generate(prompt: $0, maxTokens: 10, sampling: sampling, ignoreEOS: true)
        }
        let served = try Self.serve(model, prompts.map { GenerationRequest(prompt: $0, maxTokens: 10, sampling: sampling, ignoreEOS: true) },
                                    limits: .init(maxBatchTokens: 32, maxSequences: 8))
        XCTAssertEqual(served.map(\.tokens), alone)
    }

    /// A request that continues an earlier one (the next turn of a chat) reuses its KV: only the
    /// new tokens are computed, and the tokens equal a fresh run's.
    func testPrefixReuseAcrossRequests() throws {
        let model = try Fixtures.model("llama")
        let first = Self.prompts(vocab: model.vocabSize, count: 5, seed: 3)[4]
        var opts = Engine.Options()
        opts.limits = .init(maxBatchTokens: 64, maxSequences: 4)
        let engine = try Engine(model: model, options: opts)
        engine.start()
        defer { engine.shutdown(drainTimeout: 0) }
        func run(_ prompt: [Int]) throws -> ([Int], Usage) {
            let done = DispatchSemaphore(value: 0)
            var tokens: [Int] = []
            var usage: Usage?
            try engine.submit(GenerationRequest(prompt: prompt, maxTokens: 6, ignoreEOS: true)) { e in
                switch e {
                case .token(let t): tokens.append(t.id)
                case .finished(_, let u): usage = u; done.signal()
                case .failed(let why): XCTFail("\(prompt): \(why)")
                }
            }
            XCTAssertEqual(done.wait(timeout: .now() + 60), .success)
            return (tokens, usage!)
        }
        let (reply, u1) = try run(first)
        XCTAssertEqual(u1.cachedTokens, 0)
        let second = first + reply + [1, 2, 3]
        let (again, u2) = try run(second)
        XCTAssertEqual(u2.cachedTokens, first.count + reply.count - 1, "the first request's computed tokens are reused")
        XCTAssertEqual(again, try Generator(model: model).generate(prompt: second, maxTokens: 6, ignoreEOS: true))
        XCTAssertGreaterThan(engine.snapshot().prefixHits, 0)
    }

    /// Refusals name what is wrong, before anything runs.
    func testRequestsThatCannotRunAreRefused() throws {
        let model = try Fixtures.model("llama")
        let engine = try Engine(model: model)
        XCTAssertThrowsError(try engine.submit(GenerationRequest(prompt: [], maxTokens: 4)) { _ in })
        XCTAssertThrowsError(try engine.submit(GenerationRequest(prompt: [model.vocabSize], maxTokens: 4)) { _ in })
        XCTAssertThrowsError(try engine.submit(GenerationRequest(prompt: [1], maxTokens: 0)) { _ in })
        let long = [Int](repeating: 1, count: model.maxPositions)
        XCTAssertThrowsError(try engine.submit(GenerationRequest(prompt: long, maxTokens: 4)) { _ in }) { e in
            XCTAssertTrue("\(e)".contains("context"), "\(e)")
        }
    }
}
