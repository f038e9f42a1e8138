import Checkpoint
import Coordinator
import ExpertNode
import Foundation
import Models
import XCTest

/// GGUF files written by llama.cpp's own converter (scripts/make-gguf-fixtures.py) from the
/// safetensors fixtures load through the same architecture files and compute the same model.
final class GGUFFixtureTests: XCTestCase {
    /// Fixtures with a GGUF copy in Tests/Fixtures/gguf: llama (BF16, attention biases),
    /// llama_untied (Llama 3 RoPE, which the file carries as `rope_freqs`), Mixtral (`llama` with
    /// experts) and the others' architectures. (qwen3_moe has none: the converter
    /// refuses its dense `mlp_only_layers` layer; qwen3_moe_sparse is all-sparse Qwen3-MoE.)
    static let names = ["llama", "llama_untied", "mixtral", "qwen2", "qwen2_moe", "qwen3_moe_sparse", "deepseek_v3", "kimi_k2"]

    static func url(_ name: String) -> URL {
        Fixtures.root.appendingPathComponent("gguf").appendingPathComponent(name + ".gguf")
    }

    /// The GGUF model, loaded the way users open a file, with its routed experts in-process.
    static func model(_ name: String) throws -> DecoderModel {
        let m = try ModelRegistry.load(path: url(name)).model
        if !m.sparseLayers.isEmpty { m.experts = try LocalExperts(model: m) }
        return m
    }

    /// Logits at every position of every reference case equal the safetensors model's and
    /// transformers' (FixtureTests' tolerance: 1e-4, relative above |logit| 1).
    func testLogitsMatchSafetensorsAndTransformersAtEveryPosition() throws {
        for name in Self.names {
            let ref = try Fixtures.reference(name)
            let gguf = try Self.model(name)
            let st = try Fixtures.model(name)
            XCTAssertEqual(gguf.architecture, ref.model_class, name)
            var vsST: Float = 0, vsRef: Float = 0
            for (ci, c) in ref.cases.enumerated() {
                let got = try gguf.forward(c.tokens, cache: gguf.makeCache(), logits: .all)
                let want = try st.forward(c.tokens, cache: st.makeCache(), logits: .all)
                let hf = c.logits.flatMap { $0 }
                assertClose(got, want, "\(name) GGUF vs safetensors, case \(ci)")
                assertClose(got, hf, "\(name) GGUF vs transformers, case \(ci)")
                for i in got.indices where i < want.count && i < hf.count {
                    vsST = max(vsST, abs(got[i] - want[i]))
                    vsRef = max(vsRef, abs(got[i] - hf[i]))
                }
            }
            print("GGUF \(name): max |logit difference| vs safetensors \(vsST), vs transformers \(vsRef)")
        }
    }

    /// Every MoE layer picks the same experts with the same weights as the safetensors model and
    /// as transformers (reference.json), at every position of the 33-token case.
    func testRouterChoicesMatchSafetensorsAndTransformers() throws {
        var checked = 0
        for name in Self.names {
            let ref = try Fixtures.reference(name)
            guard let routing = ref.router, !routing.isEmpty else { continue }
            let gguf = try Self.model(name)
            let st = try Fixtures.model(name)
            let tokens = ref.cases[routing[0].case].tokens
            func trace(_ m: DecoderModel) throws -> [RouteTrace.Entry] {
                let t = RouteTrace()
                _ = try m.forward(tokens, cache: m.makeCache(), logits: .none, trace: t)
                return t.entries.sorted { ($0.layer, $0.position) < ($1.layer, $1.position) }
            }
            let g = try trace(gguf), s = try trace(st)
            XCTAssertEqual(g.count, s.count, "\(name): routed positions")
            for (a, b) in zip(g, s) {
                XCTAssertEqual(a.experts, b.experts, "\(name) layer \(a.layer) position \(a.position): experts vs safetensors")
                assertClose(a.weights, b.weights, "\(name) layer \(a.layer) position \(a.position): weights vs safetensors")
            }
            for r in routing {
                assertRoutes(g.filter { $0.layer == r.layer }, match: r, name, against: " vs transformers")
                checked += 1
            }
        }
        XCTAssertEqual(checked, 13, "MoE layers checked: mixtral 3, qwen2_moe 3, qwen3_moe_sparse 3, deepseek_v3 2, kimi_k2 2")
    }

    /// Greedy decoding with the KV cache gives transformers' tokens.
    func testGreedyContinuationIsIdentical() throws {
        for name in Self.names {
            let ref = try Fixtures.reference(name)
            let out = try Generator(model: try Self.model(name)).generate(
                prompt: ref.greedy.prompt, maxTokens: ref.greedy.new_tokens.count, ignoreEOS: true)
            XCTAssertEqual(out, ref.greedy.new_tokens, name)
        }
    }

    /// A copy of a fixture's metadata (no tensors: configuration is read before any tensor),
    /// changed by `edit`, written to a temporary .gguf file.
    func metadataCopy(of name: String, _ edit: (inout [(String, GGUFValue)]) -> Void) throws -> URL {
        let f = try GGUFFile(url: Self.url(name))
        var w = GGUFWriter()
        w.metadata = f.metadata.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        edit(&w.metadata)
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("farside-\(UUID().uuidString).gguf")
        try w.write(to: out)
        addTeardownBlock { try? FileManager.default.removeItem(at: out) }
        return out
    }

    func testUnknownArchitectureErrorNamesItAndTheSupportedOnes() throws {
        let url = try metadataCopy(of: "qwen2") { m in
            m = m.map { $0.0 == "general.architecture" ? ($0.0, .string("mamba")) : $0 }
        }
        XCTAssertThrowsError(try ModelRegistry.load(path: url)) { e in
            let s = "\(e)"
            XCTAssertTrue(s.contains("'mamba'") && s.contains("qwen2moe") && s.contains("deepseek2"), s)
        }
    }

    func testMissingRequiredKeyErrorNamesTheKey() throws {
        for (name, key) in [("qwen2", "qwen2.embedding_length"), ("qwen2_moe", "qwen2moe.expert_feed_forward_length"),
                            ("qwen3_moe_sparse", "qwen3moe.expert_used_count"),
                            ("deepseek_v3", "deepseek2.attention.kv_lora_rank"), ("kimi_k2", "deepseek2.rope.dimension_count")] {
            let url = try metadataCopy(of: name) { m in m.removeAll { $0.0 == key } }
            XCTAssertThrowsError(try ModelRegistry.load(path: url), name) { e in
                XCTAssertTrue("\(e)".contains("has no key \(key)"), "\(e)")
            }
        }
    }
}
