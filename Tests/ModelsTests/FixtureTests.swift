import Checkpoint
import Coordinator
import ExpertNode
import Foundation
import Models
import XCTest

/// Reference data written by scripts/make-fixtures.py from Hugging Face transformers.
struct Reference: Decodable {
    struct Case: Decodable {
        let tokens: [Int]
        let logits: [[Float]]
    }
    struct Greedy: Decodable {
        let prompt: [Int]
        let new_tokens: [Int]
    }
    struct Routing: Decodable {
        let `case`: Int
        let layer: Int
        let experts: [[Int]]
        let weights: [[Float]]
    }
    let model_class: String
    let cases: [Case]
    let greedy: Greedy
    let router: [Routing]?
}

enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    static let names = ["llama", "llama_untied", "mixtral", "qwen3_moe", "qwen3_moe_sparse", "qwen2_moe", "qwen2", "deepseek_v3", "kimi_k2", "kimi_k2_int4"]

    static func directory(_ name: String) -> URL { root.appendingPathComponent(name) }

    static func reference(_ name: String) throws -> Reference {
        let data = try Data(contentsOf: directory(name).appendingPathComponent("reference.json"))
        return try JSONDecoder().decode(Reference.self, from: data)
    }

    /// The model with its routed experts computed in-process.
    static func model(_ name: String) throws -> DecoderModel {
        let (m, _) = try ModelRegistry.load(directory: directory(name))
        if !m.sparseLayers.isEmpty { m.experts = try LocalExperts(model: m) }
        return m
    }
}

/// transformers' tolerance for this suite: 1e-4 absolute, or relative where |logit| > 1.
func assertClose(_ got: [Float], _ want: [Float], _ what: String, tolerance: Float = 1e-4,
                 file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(got.count, want.count, "\(what): length", file: file, line: line)
    var worst: Float = 0
    var worstAt = -1
    for i in 0..<min(got.count, want.count) {
        let err = abs(got[i] - want[i]) / max(1, abs(want[i]))
        if !(err <= worst) { worst = err; worstAt = i }
    }
    XCTAssertLessThanOrEqual(worst, tolerance, "\(what): worst error \(worst) at \(worstAt)", file: file, line: line)
}

/// A layer's traced routes (`entries`, one per position in order) against transformers' choices
/// `r`: same experts with the same weights at every position. Order within a token's top-k is not
/// meaningful (DeepSeek uses sorted=False), so both sides are sorted by expert. `against` ends the
/// failure messages ("experts\(against)").
func assertRoutes(_ entries: [RouteTrace.Entry], match r: Reference.Routing, _ name: String, against: String = "",
                  tolerance: Float = 1e-4, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(entries.count, r.experts.count, "\(name) layer \(r.layer): positions", file: file, line: line)
    for (p, e) in entries.enumerated() where p < r.experts.count {
        let got = zip(e.experts, e.weights).sorted { $0.0 < $1.0 }
        let want = zip(r.experts[p], r.weights[p]).sorted { $0.0 < $1.0 }
        XCTAssertEqual(got.map(\.0), want.map(\.0), "\(name) layer \(r.layer) position \(p): experts\(against)", file: file, line: line)
        assertClose(got.map(\.1), want.map(\.1), "\(name) layer \(r.layer) position \(p): weights\(against)", tolerance: tolerance,
                    file: file, line: line)
    }
}

final class FixtureTests: XCTestCase {
    func testLogitsMatchTransformersAtEveryPosition() throws {
        for name in Fixtures.names {
            let ref = try Fixtures.reference(name)
            let model = try Fixtures.model(name)
            XCTAssertEqual(model.architecture, ref.model_class, name)
            for (ci, c) in ref.cases.enumerated() {
                let logits = try model.forward(c.tokens, cache: model.makeCache(), logits: .all)
                assertClose(logits, c.logits.flatMap { $0 }, "\(name) case \(ci) (\(c.tokens.count) tokens)")
            }
        }
    }

    /// Prompts run as two micro-batches (ping-pong, `pingPongMinTokens`) give transformers'
    /// logits too, at every split point the cases allow.
    func testMicroBatchedPromptsMatchTransformers() throws {
        var split = 0
        for name in Fixtures.names {
            let ref = try Fixtures.reference(name)
            let model = try Fixtures.model(name)
            guard !model.sparseLayers.isEmpty else { continue }
            model.pingPongMinTokens = 2
            for (ci, c) in ref.cases.enumerated() where c.tokens.count >= 2 {
                let logits = try model.forward(c.tokens, cache: model.makeCache(), logits: .all)
                assertClose(logits, c.logits.flatMap { $0 }, "\(name) case \(ci) (\(c.tokens.count) tokens) in two micro-batches")
                split += 1
            }
        }
        XCTAssertGreaterThanOrEqual(split, 18, "MoE fixtures × cases of 2+ tokens")
    }

    func testKVCachedDecodeMatchesFullRecompute() throws {
        for name in Fixtures.names {
            let ref = try Fixtures.reference(name)
            let model = try Fixtures.model(name)
            let tokens = ref.cases.max { $0.tokens.count < $1.tokens.count }!.tokens
            // Prefill a prefix in one batch, then one token at a time: each step's logits must
            // equal the reference row for that position (which transformers computed in one pass).
            let full = ref.cases.first { $0.tokens == tokens }!.logits
            let cache = model.makeCache(capacity: 4)
            let split = tokens.count / 3
            let first = try model.forward(Array(tokens[..<split]), cache: cache, logits: .all)
            assertClose(first, full[..<split].flatMap { $0 }, "\(name) prefill")
            for p in split..<tokens.count {
                let step = try model.forward([tokens[p]], cache: cache, logits: .last)
                assertClose(step, full[p], "\(name) decode at position \(p)")
            }
            XCTAssertEqual(cache.length, tokens.count)
        }
    }

    func testGreedyContinuationIsIdentical() throws {
        for name in Fixtures.names {
            let ref = try Fixtures.reference(name)
            let model = try Fixtures.model(name)
            let out = try Generator(model: model).generate(
                prompt: ref.greedy.prompt, maxTokens: ref.greedy.new_tokens.count, ignoreEOS: true)
            XCTAssertEqual(out, ref.greedy.new_tokens, name)
        }
    }

    func testRouterChoicesAreIdentical() throws {
        var checked = 0
        for name in Fixtures.names {
            let ref = try Fixtures.reference(name)
            guard let routing = ref.router, !routing.isEmpty else { continue }
            let model = try Fixtures.model(name)
            for r in routing {
                let trace = RouteTrace()
                _ = try model.forward(ref.cases[r.case].tokens, cache: model.makeCache(), logits: .none, trace: trace)
                let entries = trace.entries.filter { $0.layer == r.layer }.sorted { $0.position < $1.position }
                assertRoutes(entries, match: r, name)
                checked += 1
            }
        }
        XCTAssertGreaterThan(checked, 5, "router fixtures missing")
    }

    /// kimi_k2_int4 keeps its routed experts packed (compressed-tensors INT4, 18 bytes per 32
    /// values) and the rest as the file has it (bf16), and the expert side counts packed bytes.
    func testInt4FixtureHoldsPackedExperts() throws {
        let model = try Fixtures.model("kimi_k2_int4")
        let e = try model.expertLoader(1, 0)
        XCTAssertEqual([e.gate.dtype, e.up.dtype, e.down.dtype], [.int4, .int4, .int4])
        XCTAssertEqual(e.weightBytes, 3 * 64 * (64 / 32) * 18)
        let experts = try LocalExperts(model: model)
        XCTAssertEqual(experts.weightBytes, 2 * 8 * e.weightBytes, "2 MoE layers of 8 experts, packed")
        guard case .sparse(let moe) = model.layers[1].feedForward else { return XCTFail("layer 1 is not sparse") }
        XCTAssertEqual(moe.shared?.gate.dtype, .bf16, "shared experts stay bf16")
    }
}
