import ExpertNode
import Foundation
import Models
import XCTest

/// A sequence's logits do not depend on how its tokens were batched: a prompt processed at once,
/// token by token, or in chunks of 5 or 48 (and as ping-pong micro-batches), then decoded token
/// by token, gives the same logit bits after the prompt and at every decode step. This is what a
/// continuous-batching server needs (a request's chunking depends on the other requests).
final class BatchInvarianceModelTests: XCTestCase {
    /// A 61-token prompt (past the kernels' 48-token panel path, not a multiple of any chunk) and
    /// four decode steps.
    static let promptLength = 61, decodeSteps = 4

    func testChunkedPrefillAndDecodeGiveTheSameLogitBits() throws {
        for name in ["llama", "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3", "kimi_k2"] {
            try check(Fixtures.model(name), name)
        }
        // GGUF copies: BF16 llama (the even/odd path), and the MoE layouts as llama.cpp writes them.
        for name in ["llama", "deepseek_v3", "kimi_k2", "mixtral"] {
            try check(GGUFFixtureTests.model(name), name + ".gguf")
        }
    }

    private func check(_ m: DecoderModel, _ name: String) throws {
        let tokens = (0..<(Self.promptLength + Self.decodeSteps)).map { ($0 * 37 + 11) % m.vocabSize }
        let prompt = Array(tokens.prefix(Self.promptLength)), decode = tokens.dropFirst(Self.promptLength)

        /// Logit bits after the prompt and after each decode step, the prompt cut into `chunks`
        /// (repeated until the prompt is used up).
        func run(_ chunks: [Int], pingPong: Bool = false) throws -> [[UInt32]] {
            m.pingPongMinTokens = pingPong ? 8 : Int.max
            defer { m.pingPongMinTokens = Int.max }
            let cache = m.makeCache()
            var at = 0, i = 0
            var last: [Float] = []
            while at < prompt.count {
                let c = min(chunks[i % chunks.count], prompt.count - at)
                last = try m.forward(Array(prompt[at..<(at + c)]), cache: cache)
                at += c
                i += 1
            }
            var out = [last.map(\.bitPattern)]
            for t in decode { out.append(try m.forward([t], cache: cache).map(\.bitPattern)) }
            return out
        }

        let whole = try run([prompt.count])
        XCTAssertEqual(whole.count, Self.decodeSteps + 1)
        XCTAssertEqual(whole[0].count, m.vocabSize)
        let variants: [(String, [Int], Bool)] = [
            ("chunks of 1", [1], false), ("chunks of 5", [5], false), ("48 then the rest", [48], false),
            ("chunks of 2, 7, 3", [2, 7, 3], false),
        ] + (m.sparseLayers.isEmpty ? [] : [("whole as ping-pong micro-batches", [Self.promptLength], true)])
        for (label, chunks, pingPong) in variants {
            let got = try run(chunks, pingPong: pingPong)
            for step in 0..<whole.count where got[step] != whole[step] {
                let j = (0..<whole[step].count).first { got[step][$0] != whole[step][$0] }!
                XCTFail("\(name), \(label): logits \(step == 0 ? "after the prompt" : "at decode step \(step)") differ from the "
                    + "whole prompt's at token \(j) (\(Float(bitPattern: got[step][j])) vs \(Float(bitPattern: whole[step][j])))")
                break
            }
        }
    }
}
