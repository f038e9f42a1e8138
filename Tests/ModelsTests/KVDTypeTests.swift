import Checkpoint
import Coordinator
import ExpertNode
import Foundation
import Kernels
import Models
import XCTest

/// KV storage types (`--kv-dtype`): f32 is the untyped cache bit for bit; f16, bf16 and q8_0
/// stay within a stated distance of f32's logits, and each is exact against itself whatever the
/// block size or the batch a sequence runs in.
final class KVDTypeTests: XCTestCase {
    /// Largest |a − b| over the largest |b| (at least 1): the error relative to the logits' scale.
    static func relativeError(_ a: [Float], _ b: [Float]) -> Float {
        precondition(a.count == b.count)
        let scale = max(1, b.map(abs).max() ?? 0)
        return zip(a, b).map { abs($0 - $1) }.max()! / scale
    }

    /// Tolerances on `relativeError` against f32 (a chunked prefill, then decode steps): about
    /// 3× the worst these tests measured on the fixtures, the synthetic MLA model and the default
    /// model (the tests print it; BENCHMARKS.md, "KV storage types"), and still far below what a
    /// misread row (a wrong head, position or scale) does to logits.
    static let tolerance: [KVDType: Float] = [.f32: 0, .f16: 5e-3, .bf16: 4e-2, .q8_0: 4e-2]

    /// A DeepSeek-V3-shaped MLA model whose latent (64) and rotary key (32) are whole q8_0
    /// blocks (the fixtures' are not), written once per run.
    static let mlaDirectory: URL = {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("farside-kvdtype-mla-\(getpid())")
        var c = try! SyntheticModel.preset("tiny", arch: "deepseek_v3")
        c.merge(["vocab_size": 512, "hidden_size": 128, "num_hidden_layers": 2, "kv_lora_rank": 64,
                 "qk_rope_head_dim": 32, "qk_nope_head_dim": 32, "v_head_dim": 32, "q_lora_rank": 64]) { $1 }
        try! SyntheticModel.write(config: c, dtype: .f32, seed: 7, to: dir)
        return dir
    }()

    static func mla() throws -> DecoderModel {
        let m = try ModelRegistry.load(path: mlaDirectory).model
        m.experts = try LocalExperts(model: m)
        return m
    }

    /// f32 given explicitly is the cache as it was: contiguous and paged, bit for bit.
    func testF32IsTheUntypedCache() throws {
        for name in ["llama", "deepseek_v3"] {
            let m = try Fixtures.model(name)
            let tokens = try Fixtures.reference(name).cases.max { $0.tokens.count < $1.tokens.count }!.tokens
            let want = try PagedKVTests.run(m, tokens, cache: m.makeCache(capacity: 4), split: tokens.count / 2)
            XCTAssertEqual(try PagedKVTests.run(m, tokens, cache: m.makeCache(capacity: 4, dtype: .f32), split: tokens.count / 2), want)
            let kv = try m.makeKVAllocator(blockSize: 3, budgetBytes: 1 << 20, dtype: .f32)
            XCTAssertEqual(try PagedKVTests.run(m, tokens, cache: kv.sequence(), split: tokens.count / 2), want, name)
            XCTAssertEqual(kv.bytesPerPosition, m.kvBytesPerPosition())
        }
    }

    /// On every fixture and each dtype: logits within `tolerance` of f32; the paged cache (block
    /// sizes 1, 3, 16) equals the contiguous one of the same dtype bit for bit; the budget counts
    /// stored bytes. q8_0, whose 32-value blocks the fixtures' heads (8 or 16 values) cannot hold,
    /// is refused with an error naming the flag.
    func testTypedCachesOnEveryFixture() throws {
        var worst: [KVDType: Float] = [:]
        for name in Fixtures.names {
            let m = try Fixtures.model(name)
            let tokens = try Fixtures.reference(name).cases.max { $0.tokens.count < $1.tokens.count }!.tokens
            let split = tokens.count / 2
            let f32 = try PagedKVTests.run(m, tokens, cache: m.makeCache(capacity: 4), split: split)
            XCTAssertThrowsError(try m.makeKVAllocator(blockSize: 16, budgetBytes: 1 << 20, dtype: .q8_0)) { e in
                XCTAssertTrue("\(e)".contains("--kv-dtype q8_0") && "\(e)".contains("f16"), "\(e)")
            }
            XCTAssertThrowsError(try m.makeCache(dtype: .q8_0))
            for d in [KVDType.f16, .bf16] {
                let want = try PagedKVTests.run(m, tokens, cache: m.makeCache(capacity: 4, dtype: d), split: split)
                let err = Self.relativeError(want, f32)
                worst[d] = max(worst[d] ?? 0, err)
                XCTAssertLessThanOrEqual(err, Self.tolerance[d]!, "\(name), \(d)")
                for bs in [1, 3, 16] {
                    let kv = try m.makeKVAllocator(blockSize: bs, budgetBytes: 4096 * bs * m.kvBytesPerPosition(d), dtype: d)
                    XCTAssertEqual(kv.pool.blockCount, 4096, "\(name), \(d): the budget counts stored bytes")
                    XCTAssertEqual(kv.bytesPerPosition * 2, m.kvBytesPerPosition(.f32))
                    XCTAssertEqual(try PagedKVTests.run(m, tokens, cache: kv.sequence(), split: split), want, "\(name), \(d), block size \(bs)")
                }
            }
        }
        print("KVDTypeTests: worst relative logit error against f32 on the fixtures: \(worst.sorted { $0.key.rawValue < $1.key.rawValue })")
    }

    /// q8_0 where rows are whole blocks (a synthetic MLA model; the default model, heads of 64):
    /// within `tolerance` of f32, and exact against itself across block sizes.
    func testQ8_0OnModelsWithWholeBlocks() throws {
        var models = [("mla", try Self.mla())]
        if FileManager.default.fileExists(atPath: SmolLM2Tests.modelFile.path) { models.append(("smollm2", try SmolLM2Tests.model())) }
        for (name, m) in models {
            let tokens = (0..<20).map { ($0 * 37 + 11) % m.vocabSize }
            let f32 = try PagedKVTests.run(m, tokens, cache: m.makeCache(capacity: 4), split: 12)
            var bytes: [KVDType: Int] = [:]
            for d in KVDType.allCases {
                bytes[d] = m.kvBytesPerPosition(d)
                let want = try PagedKVTests.run(m, tokens, cache: m.makeCache(capacity: 4, dtype: d), split: 12)
                let err = Self.relativeError(want, f32)
                print("KVDTypeTests: \(name), \(d): \(bytes[d]!) bytes per position, relative logit error \(err)")
                XCTAssertLessThanOrEqual(err, Self.tolerance[d]!, "\(name), \(d)")
                for bs in [1, 16] {
                    let kv = try m.makeKVAllocator(blockSize: bs, budgetBytes: 64 * bs * m.kvBytesPerPosition(d), dtype: d)
                    XCTAssertEqual(try PagedKVTests.run(m, tokens, cache: kv.sequence(), split: 12), want, "\(name), \(d), block size \(bs)")
                }
            }
            XCTAssertEqual(bytes[.q8_0]! * 32, bytes[.f32]! * 34 / 4, "\(name): 34 bytes per 32 values")
        }
    }

    /// Batch invariance with a typed cache: each sequence's logits in a batch with others (its
    /// blocks interleaved with theirs in one pool) equal its logits alone.
    func testTypedCacheIsBatchInvariant() throws {
        let cases: [(String, DecoderModel, KVDType)] = [
            ("llama", try Fixtures.model("llama"), .f16), ("deepseek_v3", try Fixtures.model("deepseek_v3"), .bf16),
            ("mla", try Self.mla(), .q8_0),
        ]
        for (name, m, d) in cases {
            let prompts = [[5, 9, 2, 7, 1], [3, 3, 8], [11, 4, 6, 2, 9, 13, 1]]
            let kv = try m.makeKVAllocator(blockSize: 2, budgetBytes: 256 * 2 * m.kvBytesPerPosition(d), dtype: d)
            let together = prompts.map { _ in kv.sequence() }
            var alone: [[Float]] = []
            for p in prompts {
                let c = try m.makeCache(dtype: d)
                var out = try m.forward(p, cache: c, logits: .last)
                for step in 1..<3 { out += try m.forward([p[0] + step], cache: c, logits: .last) }
                alone.append(out)
            }
            var got = [[Float]](repeating: [], count: prompts.count)
            for step in 0..<3 {
                var batch = Batch()
                for (i, p) in prompts.enumerated() {
                    batch.append(step == 0 ? p : [p[0] + step], sequence: i, start: together[i].length, logitsForLast: true)
                }
                let logits = try m.forward(batch, caches: together)
                for i in prompts.indices { got[i] += Array(logits[i * m.vocabSize ..< (i + 1) * m.vocabSize]) }
            }
            XCTAssertEqual(got, alone, "\(name), \(d)")
        }
    }
}
