import Checkpoint
import Coordinator
import ExpertNode
import Foundation
import Models
import XCTest

/// The default model end to end against transformers on the same GGUF file (which dequantizes
/// the Q4_1/Q8_0 blocks to fp32): references from scripts/make-smollm2-fixtures.py.
final class SmolLM2Tests: XCTestCase {
    struct Reference: Decodable {
        struct Step: Decodable { let top_ids: [Int]; let top_logits: [Float] }
        struct Run: Decodable { let prompt: String; let prompt_ids: [Int]; let greedy: [Int]; let steps: [Step] }
        let runs: [Run]
    }

    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let modelFile = repo.appendingPathComponent("models/SmolLM2-135M-Instruct.Q4_1.gguf")

    static func model() throws -> DecoderModel {
        guard FileManager.default.fileExists(atPath: modelFile.path) else {
            throw NSError(domain: "SmolLM2Tests", code: 1, userInfo: [NSLocalizedDescriptionKey:
                "the default model is not at \(modelFile.path): run scripts/setup.sh (scripts/test.sh does) to fetch it"])
        }
        return try ModelRegistry.load(path: modelFile).model
    }

    /// Logits at every greedy step of three chat prompts match transformers' (after the prompt:
    /// 1.5e-2; decode steps: 3e-2) and the 32 greedy tokens are identical.
    ///
    /// Tolerances: both sides compute with the same dequantized weights (a Q4_1 value d·q + m is
    /// exact in fp32), so the weights' quantization error cancels. Every quantized matrix product
    /// (prompt and decode alike, so that a token's result does not depend on its batch) goes
    /// through the integer block dot, which rounds activations to int16 per 32-value block
    /// (llama.cpp rounds them to int8): the step is max|x_block|/32767, and SmolLM2's outlier
    /// channels make it large for the small values sharing their block. After the prompt:
    /// measured 5.4e-3 (4.7e-4 when only the LM head rounded, before batch invariance; the fp32
    /// path alone gave 4e-5), so 1.5e-2. Decode steps: measured 1.0e-2, so 3e-2 — still far
    /// below what one Q4_1 quantization step (1/15 of a block's range) does to logits, so a
    /// decoding bug cannot hide under it.
    func testLogitsAndGreedyTokensMatchTransformers() throws {
        let m = try Self.model()
        m.experts = nil
        let ref = try JSONDecoder().decode(Reference.self, from: Data(contentsOf: Self.repo.appendingPathComponent("Tests/Fixtures/smollm2/reference.json")))
        XCTAssertEqual(ref.runs.count, 3)
        var worstPrompt: Float = 0, worstDecode: Float = 0
        for run in ref.runs {
            let cache = m.makeCache(capacity: run.prompt_ids.count + 40)
            var logits = try m.forward(run.prompt_ids, cache: cache, logits: .last)
            var produced: [Int] = []
            for (i, step) in run.steps.enumerated() {
                for (id, v) in zip(step.top_ids, step.top_logits) {
                    let d = abs(logits[id] - v)
                    if i == 0 { worstPrompt = max(worstPrompt, d) } else { worstDecode = max(worstDecode, d) }
                }
                let next = logits.indices.max { logits[$0] < logits[$1] }!
                produced.append(next)
                logits = try m.forward([next], cache: cache, logits: .last)
            }
            XCTAssertEqual(produced, run.greedy, "greedy tokens for \(run.prompt.debugDescription)")
            XCTAssertEqual(produced.count, 32)
        }
        XCTAssertLessThan(worstPrompt, 1.5e-2, "worst logit difference from transformers after the prompt")
        XCTAssertLessThan(worstDecode, 3e-2, "worst logit difference from transformers at decode steps")
        print("SmolLM2: worst top-10 logit difference from transformers: prompt \(worstPrompt), decode steps \(worstDecode)")
    }

    /// The dense FFN split into slices on the expert side (here in process, the path the
    /// cluster runs) gives the same greedy tokens.
    func testSplitDenseFFNKeepsGreedyTokens() throws {
        let whole = try Self.model()
        let ref = try JSONDecoder().decode(Reference.self, from: Data(contentsOf: Self.repo.appendingPathComponent("Tests/Fixtures/smollm2/reference.json")))
        let split = try whole.disaggregated(denseSlices: 3)
        split.experts = try LocalExperts(model: split)
        let run = ref.runs[0]
        let gen = Generator(model: split)
        let out = try gen.generate(prompt: run.prompt_ids, maxTokens: 32, ignoreEOS: true)
        XCTAssertEqual(out, run.greedy)
        XCTAssertThrowsError(try whole.disaggregated(denseSlices: 5)) { e in
            XCTAssertTrue("\(e)".contains("into 5"), "\(e)")
        }
        // 1536 / 64 = 24 neurons per slice: not a whole number of 32-value Q4_1 blocks.
        XCTAssertThrowsError(try whole.disaggregated(denseSlices: 64)) { e in
            XCTAssertTrue("\(e)".contains("Q4_1"), "\(e)")
        }
    }
}
