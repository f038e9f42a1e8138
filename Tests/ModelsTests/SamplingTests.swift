import Coordinator
import Foundation
import Models
import XCTest

final class SamplingTests: XCTestCase {
    func sample(_ logits: [Float], _ p: SamplingParameters, times: Int) -> [Int] {
        var s = Sampler(p)
        return (0..<times).map { _ in logits.withUnsafeBufferPointer { s.sample($0) } }
    }

    func testGreedyIsArgmaxWithLowestIndexOnTies() {
        XCTAssertEqual(sample([0.1, 3, -2, 3], SamplingParameters(temperature: 0), times: 3), [1, 1, 1])
    }

    func testSeedReproducesAndDifferentSeedsDiffer() {
        let logits = (0..<50).map { Float(sin(Double($0))) }
        let a = sample(logits, SamplingParameters(temperature: 1, seed: 11), times: 64)
        let b = sample(logits, SamplingParameters(temperature: 1, seed: 11), times: 64)
        let c = sample(logits, SamplingParameters(temperature: 1, seed: 12), times: 64)
        XCTAssertEqual(a, b)
        XCTAssertNotEqual(a, c)
    }

    func testTopKOneAndTinyTopPAreGreedy() {
        let logits: [Float] = [0.5, 2.0, 1.9, -1]
        XCTAssertEqual(Set(sample(logits, SamplingParameters(temperature: 5, topK: 1, seed: 3), times: 50)), [1])
        XCTAssertEqual(Set(sample(logits, SamplingParameters(temperature: 1, topP: 0.01, seed: 3), times: 50)), [1])
    }

    func testTopKLimitsTheCandidates() {
        let logits: [Float] = [3, 2.9, 2.8, -5, -6]
        XCTAssertEqual(Set(sample(logits, SamplingParameters(temperature: 10, topK: 2, seed: 1), times: 400)), [0, 1])
    }

    func testFrequenciesFollowTheSoftmax() {
        // p = 1/7, 2/7, 4/7.
        let logits: [Float] = [0, logf(2), logf(4)]
        let draws = sample(logits, SamplingParameters(temperature: 1, seed: 5), times: 20_000)
        for (i, p) in [1.0 / 7, 2.0 / 7, 4.0 / 7].enumerated() {
            let f = Double(draws.filter { $0 == i }.count) / 20_000
            XCTAssertEqual(f, p, accuracy: 0.015, "token \(i)")
        }
    }

    func testInvalidParametersAreRejected() {
        XCTAssertThrowsError(try SamplingParameters(temperature: -1).validate())
        XCTAssertThrowsError(try SamplingParameters(temperature: .nan).validate())
        XCTAssertThrowsError(try SamplingParameters(topK: -2).validate())
        XCTAssertThrowsError(try SamplingParameters(topP: 0).validate())
        XCTAssertThrowsError(try SamplingParameters(topP: 1.5).validate())
    }

    func testGenerationStopsAtAStopTokenAndIncludesIt() throws {
        let ref = try Fixtures.reference("qwen3_moe")
        let model = try Fixtures.model("qwen3_moe")
        let gen = Generator(model: model)
        let stop = ref.greedy.new_tokens[2]
        let firstStop = ref.greedy.new_tokens.firstIndex(of: stop)!
        let out = try gen.generate(prompt: ref.greedy.prompt, maxTokens: 16, stopTokens: [stop])
        XCTAssertEqual(out, Array(ref.greedy.new_tokens[...firstStop]))
        XCTAssertThrowsError(try gen.generate(prompt: [], maxTokens: 4))
        XCTAssertThrowsError(try gen.generate(prompt: [model.vocabSize], maxTokens: 4))
    }

    func testContextLimitIsAnErrorNotATrap() throws {
        let model = try Fixtures.model("llama")
        let cache = model.makeCache()
        XCTAssertThrowsError(try model.forward([Int](repeating: 1, count: model.maxPositions + 1), cache: cache)) { e in
            XCTAssertTrue("\(e)".contains("context"), "\(e)")
        }
        XCTAssertEqual(cache.length, 0, "a refused step leaves the cache as it was")
    }
}
