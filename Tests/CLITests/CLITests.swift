import Foundation
import XCTest

/// Runs the real `farside` binary as a separate process, as users and other tools do.
enum CLI {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let fixtures = packageRoot.appendingPathComponent("Tests/Fixtures")

    static var binary: URL {
        get throws {
            if let p = ProcessInfo.processInfo.environment["FARSIDE_BIN"] { return URL(fileURLWithPath: p) }
            for c in [".build/release/farside", ".build/debug/farside"] {
                let u = packageRoot.appendingPathComponent(c)
                if FileManager.default.isExecutableFile(atPath: u.path) { return u }
            }
            throw NSError(domain: "CLITests", code: 1, userInfo: [NSLocalizedDescriptionKey:
                "farside binary not found: run scripts/test.sh (it builds it and sets FARSIDE_BIN)"])
        }
    }

    struct Result {
        let status: Int32
        let stdout: String
        let stderr: String
        var json: [String: Any]? {
            (try? JSONSerialization.jsonObject(with: Data(stdout.utf8))) as? [String: Any]
        }
    }

    /// Runs the binary with `args`, feeding `input` (if any) on its stdin and closing it.
    static func run(_ args: [String], input: String? = nil) throws -> Result {
        let p = Process()
        p.executableURL = try binary
        p.arguments = args
        let out = Pipe(), err = Pipe(), inp = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = input == nil ? FileHandle.nullDevice : inp
        try p.run()
        if let input {
            inp.fileHandleForWriting.write(Data(input.utf8))
            try inp.fileHandleForWriting.close()
        }
        // stderr drains on its own thread so a chatty child never blocks on a full pipe.
        let e = drain(err)
        let o = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Result(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                      stderr: String(decoding: e(), as: UTF8.self))
    }

    /// Reads `pipe` to its end on another thread; the function returned waits for the end and
    /// gives everything read.
    static func drain(_ pipe: Pipe) -> () -> Data {
        final class Box: @unchecked Sendable { var data = Data() }  // written before signal, read after wait
        let box = Box()
        let drained = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            box.data = pipe.fileHandleForReading.readDataToEndOfFile()
            drained.signal()
        }
        return {
            drained.wait()
            drained.signal()  // a second call returns at once too
            return box.data
        }
    }

    /// A scratch copy of a fixture directory to damage.
    static func copyFixture(_ name: String) throws -> URL {
        let dst = FileManager.default.temporaryDirectory.appendingPathComponent("farside-cli-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: fixtures.appendingPathComponent(name), to: dst)
        return dst
    }
}

final class CLITests: XCTestCase {
    func reference(_ name: String) throws -> [String: Any] {
        let data = try Data(contentsOf: CLI.fixtures.appendingPathComponent(name).appendingPathComponent("reference.json"))
        return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    func testLogitsCommandPrintsReferenceLogits() throws {
        let ref = try reference("deepseek_v3")
        let c = try XCTUnwrap((ref["cases"] as? [[String: Any]])?[1])
        let tokens = try XCTUnwrap(c["tokens"] as? [Int])
        let want = try XCTUnwrap(c["logits"] as? [[Double]])
        let model = CLI.fixtures.appendingPathComponent("deepseek_v3").path
        let r = try CLI.run(["logits", "--model", model, "--tokens", tokens.map(String.init).joined(separator: ",")])
        XCTAssertEqual(r.status, 0, r.stderr)
        let rows = try XCTUnwrap(r.json?["logits"] as? [[Double]])
        XCTAssertEqual(rows.count, 1)
        for (g, w) in zip(rows[0], want.last!) { XCTAssertEqual(g, w, accuracy: 1e-4 * max(1, abs(w))) }

        let all = try CLI.run(["logits", "--model", model, "--tokens", tokens.map(String.init).joined(separator: ","), "--all-positions"])
        XCTAssertEqual((all.json?["logits"] as? [[Double]])?.count, tokens.count)
    }

    func testGenerateCommandPrintsGreedyTokens() throws {
        for name in ["llama", "qwen3_moe"] {
            let ref = try reference(name)
            let g = try XCTUnwrap(ref["greedy"] as? [String: Any])
            let prompt = try XCTUnwrap(g["prompt"] as? [Int])
            let want = try XCTUnwrap(g["new_tokens"] as? [Int])
            let r = try CLI.run(["generate", "--model", CLI.fixtures.appendingPathComponent(name).path,
                                 "--tokens", prompt.map(String.init).joined(separator: ","),
                                 "--max-tokens", "\(want.count)", "--temperature", "0", "--format", "json", "--ignore-eos"])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(r.json?["tokens"] as? [Int], want, name)
        }
    }

    /// GGUF MoE files (llama.cpp's converter) through 2 expert-node processes, which map their
    /// experts from the same file: transformers' greedy tokens, as in process.
    func testGGUFMoEGeneratesTheReferenceTokensThroughTwoNodes() throws {
        for name in ["deepseek_v3", "mixtral"] {
            let ref = try reference(name)
            let g = try XCTUnwrap(ref["greedy"] as? [String: Any])
            let prompt = try XCTUnwrap(g["prompt"] as? [Int])
            let want = try XCTUnwrap(g["new_tokens"] as? [Int])
            let r = try CLI.run(["generate", "--model", CLI.fixtures.appendingPathComponent("gguf/\(name).gguf").path,
                                 "--tokens", prompt.map(String.init).joined(separator: ","), "--local-nodes", "2",
                                 "--max-tokens", "\(want.count)", "--format", "json", "--ignore-eos"])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(r.json?["tokens"] as? [Int], want, name)
        }
    }

    func testRouteCommandPrintsRouterChoices() throws {
        let ref = try reference("mixtral")
        let routing = try XCTUnwrap(ref["router"] as? [[String: Any]])
        let cases = try XCTUnwrap(ref["cases"] as? [[String: Any]])
        let first = routing[0]
        let tokens = try XCTUnwrap(cases[first["case"] as! Int]["tokens"] as? [Int])
        let r = try CLI.run(["route", "--model", CLI.fixtures.appendingPathComponent("mixtral").path,
                             "--tokens", tokens.map(String.init).joined(separator: ",")])
        XCTAssertEqual(r.status, 0, r.stderr)
        let layers = try XCTUnwrap(r.json?["layers"] as? [[String: Any]])
        let layer = try XCTUnwrap(layers.first { $0["layer"] as? Int == first["layer"] as? Int })
        let got = try XCTUnwrap(layer["experts"] as? [[Int]]).map { $0.sorted() }
        let want = try XCTUnwrap(first["experts"] as? [[Int]]).map { $0.sorted() }
        XCTAssertEqual(got, want)
    }

    func testBenchAlternatesInProcessAndNodesRunByRun() throws {
        let dir = CLI.fixtures.appendingPathComponent("deepseek_v3").path
        let r = try CLI.run(["bench", "--model", dir, "--prompt-tokens", "4", "--decode-tokens", "3", "--runs", "3",
                             "--local-nodes", "2", "--alternate-in-process"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let json = try XCTUnwrap(r.json, r.stdout)
        let local = try XCTUnwrap(json["in_process_decode_runs"] as? [Double])
        let remote = try XCTUnwrap(json["decode_runs"] as? [Double])
        let ratios = try XCTUnwrap(json["decode_ratio_runs"] as? [Double])
        XCTAssertEqual(local.count, 3)
        XCTAssertEqual(remote.count, 3)
        XCTAssertEqual(ratios.count, 3)
        for i in 0..<3 {
            XCTAssertGreaterThan(local[i], 0)
            // Printed to three decimals: the ratio of the printed speeds within rounding.
            XCTAssertEqual(ratios[i], remote[i] / local[i], accuracy: 0.002 + 0.01 * ratios[i])
        }
        let median = try XCTUnwrap(json["decode_ratio_median"] as? Double)
        XCTAssertEqual(median, ratios.sorted()[1], accuracy: 0.0011)
        // Step timings of the decode through the nodes: each step's round trip holds its compute.
        let rtt = try XCTUnwrap(json["decode_step_last_round_trip_p50_us"] as? Double)
        let compute = try XCTUnwrap(json["decode_step_last_compute_p50_us"] as? Double)
        let transport = try XCTUnwrap(json["decode_step_last_transport_p50_us"] as? Double)
        XCTAssertGreaterThan(compute, 0)
        XCTAssertGreaterThanOrEqual(rtt, compute)
        XCTAssertGreaterThanOrEqual(transport, 0)
        XCTAssertNotNil(json["decode_step_dispatch_p50_us"] as? Double)
        try assertFails(["bench", "--model", dir, "--alternate-in-process"], mentioning: ["--alternate-in-process", "--local-nodes"])
    }

    func testBadExpertNodePollWindow() throws {
        for bad in ["-1", "1000001", "soon"] {
            try assertFails(["expert", "--listen", "tcp://127.0.0.1:*", "--coordinator", "tcp://127.0.0.1:1",
                             "--poll-yield-us", bad], mentioning: ["--poll-yield-us"])
        }
    }

    // MARK: malformed input: a clear message and a non-zero exit, never a trap

    func testBadMicroBatchCount() throws {
        let dir = CLI.fixtures.appendingPathComponent("mixtral").path
        try assertFails(["logits", "--model", dir, "--tokens", "1", "--micro-batches", "3"], mentioning: ["--micro-batches"])
        try assertFails(["bench", "--model", dir, "--micro-batches", "0"], mentioning: ["--micro-batches"])
    }

    func testMissingModelDirectory() throws {
        try assertFails(["logits", "--model", "/nonexistent/farside-model", "--tokens", "1"], mentioning: ["/nonexistent/farside-model", "no such file or directory"])
    }

    func testTruncatedSafetensors() throws {
        let dir = try CLI.copyFixture("llama")
        let f = dir.appendingPathComponent("model.safetensors")
        let data = try Data(contentsOf: f)
        try data.prefix(data.count / 2).write(to: f)
        try assertFails(["logits", "--model", dir.path, "--tokens", "1,2"], mentioning: ["model.safetensors"])
    }

    func testMissingSafetensors() throws {
        let dir = try CLI.copyFixture("llama")
        try FileManager.default.removeItem(at: dir.appendingPathComponent("model.safetensors"))
        try assertFails(["logits", "--model", dir.path, "--tokens", "1,2"], mentioning: ["safetensors"])
    }

    /// Rewrites the JSON header of a single-file checkpoint.
    func editHeader(_ dir: URL, _ edit: (inout [String: Any]) -> Void) throws {
        let f = dir.appendingPathComponent("model.safetensors")
        let data = try Data(contentsOf: f)
        let n = Int(data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        var header = try XCTUnwrap(JSONSerialization.jsonObject(with: data.subdata(in: 8 ..< 8 + n)) as? [String: Any])
        edit(&header)
        var h = try JSONSerialization.data(withJSONObject: header)
        while h.count < n { h.append(0x20) }
        XCTAssertEqual(h.count, n, "edited header must keep its length for this test")
        var out = Data(data.prefix(8))
        out.append(h)
        out.append(data.subdata(in: 8 + n ..< data.count))
        try out.write(to: f)
    }

    func testHeaderThatLiesAboutOffsets() throws {
        let dir = try CLI.copyFixture("llama")
        try editHeader(dir) { h in
            var t = h["model.norm.weight"] as! [String: Any]
            let o = t["data_offsets"] as! [Int]
            t["data_offsets"] = [o[0], o[1] + 1_000_000_000]
            h["model.norm.weight"] = t
        }
        try assertFails(["logits", "--model", dir.path, "--tokens", "1,2"], mentioning: ["model.norm.weight"])
    }

    func testShapeThatDisagreesWithConfig() throws {
        let dir = try CLI.copyFixture("mixtral")
        let cfgURL = dir.appendingPathComponent("config.json")
        var cfg = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: cfgURL)) as? [String: Any])
        cfg["intermediate_size"] = (cfg["intermediate_size"] as! Int) + 8
        try JSONSerialization.data(withJSONObject: cfg).write(to: cfgURL)
        try assertFails(["logits", "--model", dir.path, "--tokens", "1,2"], mentioning: ["shape", "config.json"])
    }

    func testUnknownModelType() throws {
        let dir = try CLI.copyFixture("llama")
        let cfgURL = dir.appendingPathComponent("config.json")
        var cfg = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: cfgURL)) as? [String: Any])
        cfg["model_type"] = "gpt_neox_moe_9000"
        try JSONSerialization.data(withJSONObject: cfg).write(to: cfgURL)
        try assertFails(["logits", "--model", dir.path, "--tokens", "1"], mentioning: ["gpt_neox_moe_9000", "model_type"])
    }

    func testUnsupportedDType() throws {
        let dir = try CLI.copyFixture("llama")
        try editHeader(dir) { h in
            var t = h["model.norm.weight"] as! [String: Any]
            t["dtype"] = "I16"   // same width as bf16, so offsets stay consistent
            h["model.norm.weight"] = t
        }
        try assertFails(["logits", "--model", dir.path, "--tokens", "1"], mentioning: ["I16", "model.norm.weight"])
    }

    func testTokenOutsideVocabulary() throws {
        let model = CLI.fixtures.appendingPathComponent("llama").path
        try assertFails(["logits", "--model", model, "--tokens", "1,99999"], mentioning: ["99999", "vocabulary"])
        try assertFails(["logits", "--model", model, "--tokens", "1,-3"], mentioning: ["-3"])
        try assertFails(["generate", "--model", model, "--tokens", "1,abc"], mentioning: ["abc"])
        try assertFails(["generate", "--model", model, "--tokens", "1", "--temperature", "-1"], mentioning: ["temperature"])
    }
}

final class SynthTests: XCTestCase {
    func tempDir() -> URL {
        FileManager.default.temporaryDirectory.appendingPathComponent("farside-synth-\(UUID().uuidString)")
    }

    func testEveryArchitectureSynthesisesAModelWithFiniteVariedLogits() throws {
        for arch in ["deepseek_v3", "kimi_k2", "mixtral", "qwen3_moe", "qwen2_moe", "llama"] {
            let dir = tempDir()
            defer { try? FileManager.default.removeItem(at: dir) }
            let w = try CLI.run(["synth", "--arch", arch, "--preset", "tiny", "--dtype", "f16", "--seed", "3", "--out", dir.path])
            XCTAssertEqual(w.status, 0, "\(arch): \(w.stderr)")
            let r = try CLI.run(["logits", "--model", dir.path, "--tokens", "1,2,3,4,5"])
            XCTAssertEqual(r.status, 0, "\(arch): \(r.stderr)")
            let row = try XCTUnwrap((r.json?["logits"] as? [[Double]])?.first, arch)
            XCTAssertTrue(row.allSatisfy(\.isFinite), arch)
            let mean = row.reduce(0, +) / Double(row.count)
            let sd = (row.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(row.count)).squareRoot()
            XCTAssertGreaterThan(sd, 0.1, "\(arch): logits should vary")
        }
    }

    /// `farside quantize` on the float Kimi K2 fixture: routed experts become INT4 (packed bytes
    /// ~3.6x fewer than bf16's would be, 7x fewer than the fixture's f32), the model serves,
    /// through expert nodes with the same bits as in process, and its logits stay near the
    /// float model's (INT4's rounding, not a wrong layout). An existing --out is refused without
    /// --force. (scripts/check-int4-checkpoint.py checks the same output with compressed-tensors.)
    func testQuantizeWritesAnInt4CheckpointThatServes() throws {
        let out = tempDir()
        defer { try? FileManager.default.removeItem(at: out) }
        let src = CLI.fixtures.appendingPathComponent("kimi_k2").path
        let q = try CLI.run(["quantize", "--model", src, "--out", out.path])
        XCTAssertEqual(q.status, 0, q.stderr)
        XCTAssertEqual(q.json?["quantized"] as? Int, 2 * 8 * 3, q.stdout)
        let again = try CLI.run(["quantize", "--model", src, "--out", out.path])
        XCTAssertNotEqual(again.status, 0)
        XCTAssertTrue(again.stderr.contains("--force"), again.stderr)
        let tokens = "5,17,3,99,250,1,42,8,8,200"
        let a = try CLI.run(["logits", "--model", src, "--tokens", tokens, "--all-positions"])
        let b = try CLI.run(["logits", "--model", out.path, "--tokens", tokens, "--all-positions"])
        let c = try CLI.run(["logits", "--model", out.path, "--tokens", tokens, "--all-positions", "--local-nodes", "2"])
        XCTAssertEqual(b.status, 0, b.stderr)
        XCTAssertEqual(c.status, 0, c.stderr)
        XCTAssertEqual(c.stdout, b.stdout, "through 2 nodes differs from in process")
        let fa = try XCTUnwrap(a.json?["logits"] as? [[Double]]).flatMap { $0 }
        let fb = try XCTUnwrap(b.json?["logits"] as? [[Double]]).flatMap { $0 }
        XCTAssertEqual(fa.count, fb.count)
        let mean = fa.reduce(0, +) / Double(fa.count)
        let sd = (fa.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(fa.count)).squareRoot()
        // Random N(0, 0.15²) experts in groups of 32 carry ~8% INT4 rounding noise each: the
        // logits moved by 0.12 sd on average (measured); a layout error moves them by ~1 sd.
        let meanError = zip(fa, fb).map { abs($0 - $1) }.reduce(0, +) / Double(fa.count)
        XCTAssertGreaterThan(meanError, 0, "experts were quantized")
        XCTAssertLessThan(meanError, 0.25 * sd, "INT4 experts moved the logits by \(meanError) on average (their sd is \(sd))")
    }

    func testSameSeedWritesIdenticalBytes() throws {
        let a = tempDir(), b = tempDir(), c = tempDir()
        defer { for d in [a, b, c] { try? FileManager.default.removeItem(at: d) } }
        for (d, seed) in [(a, "1"), (b, "1"), (c, "2")] {
            XCTAssertEqual(try CLI.run(["synth", "--arch", "mixtral", "--preset", "tiny", "--seed", seed, "--out", d.path]).status, 0)
        }
        let fa = try Data(contentsOf: a.appendingPathComponent("model.safetensors"))
        XCTAssertEqual(fa, try Data(contentsOf: b.appendingPathComponent("model.safetensors")))
        XCTAssertNotEqual(fa, try Data(contentsOf: c.appendingPathComponent("model.safetensors")))
    }

    func testConfigFileGivesTheShape() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let cfg = CLI.fixtures.appendingPathComponent("deepseek_v3/config.json").path
        let w = try CLI.run(["synth", "--arch", "deepseek_v3", "--config", cfg, "--out", dir.path])
        XCTAssertEqual(w.status, 0, w.stderr)
        let r = try CLI.run(["route", "--model", dir.path, "--tokens", "1,2,3"])
        XCTAssertEqual(r.status, 0, r.stderr)
        // The fixture's shape: 3 layers, first dense, top-2 of 8.
        let layers = try XCTUnwrap(r.json?["layers"] as? [[String: Any]])
        XCTAssertEqual(layers.compactMap { $0["layer"] as? Int }, [1, 2])
        XCTAssertEqual((layers[0]["experts"] as? [[Int]])?.first?.count, 2)
    }

    func testBadSynthArgumentsAreClearErrors() throws {
        let dir = tempDir()
        let r1 = try CLI.run(["synth", "--arch", "gpt2", "--preset", "tiny", "--out", dir.path])
        XCTAssertNotEqual(r1.status, 0)
        XCTAssertTrue(r1.stderr.contains("gpt2"), r1.stderr)
        let r2 = try CLI.run(["synth", "--arch", "llama", "--preset", "huge", "--out", dir.path])
        XCTAssertNotEqual(r2.status, 0)
        XCTAssertTrue(r2.stderr.contains("huge"), r2.stderr)
        let r3 = try CLI.run(["synth", "--arch", "llama", "--config", "/nonexistent/config.json", "--out", dir.path])
        XCTAssertNotEqual(r3.status, 0)
        XCTAssertTrue(r3.stderr.contains("/nonexistent/config.json"), r3.stderr)
        XCTAssertLessThan(r3.status, 128)
    }
}

/// The default model (GGUF) through the CLI: text in and out, and clear errors for bad files.
final class DefaultModelCLITests: XCTestCase {


    static var defaultModel: String { CLI.packageRoot.appendingPathComponent("models/SmolLM2-135M-Instruct.Q4_1.gguf").path }

    /// With no --model the default model answers a chat-formatted prompt in English, and the
    /// JSON output carries the new token ids and their text.
    func testGenerateFromTextWithTheDefaultModel() throws {
        let prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        let r = try CLI.run(["generate", "--prompt", prompt, "--max-tokens", "12", "--format", "json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let json = try XCTUnwrap(r.json, r.stdout)
        let tokens = try XCTUnwrap(json["tokens"] as? [Int])
        let text = try XCTUnwrap(json["text"] as? String)
        XCTAssertFalse(tokens.isEmpty)
        XCTAssertTrue(text.contains("Paris"), text)
        // Streaming text output prints the same text.
        let t = try CLI.run(["generate", "--model", Self.defaultModel, "--prompt", prompt, "--max-tokens", "12"])
        XCTAssertEqual(t.status, 0, t.stderr)
        XCTAssertEqual(t.stdout.trimmingCharacters(in: .whitespacesAndNewlines), text.trimmingCharacters(in: .whitespacesAndNewlines))
        // Through two expert nodes holding slices of the dense FFNs: the same tokens.
        let d = try CLI.run(["generate", "--prompt", prompt, "--max-tokens", "12", "--format", "json", "--local-nodes", "2"])
        XCTAssertEqual(d.status, 0, d.stderr)
        XCTAssertEqual(d.json?["tokens"] as? [Int], tokens)
    }

    func testTokenizeCommand() throws {
        let r = try CLI.run(["tokenize", "--text", "Hello world"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.json?["tokens"] as? [Int], [19556, 905])
        try assertFails(["tokenize", "--model", "/nonexistent/model.gguf", "--text", "x"], mentioning: ["/nonexistent/model.gguf"])
    }

    func testCorruptAndUnknownGGUFAreClearErrors() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("farside-gguf-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // The real file cut after its header: tensors run past the end.
        let whole = try Data(contentsOf: URL(fileURLWithPath: Self.defaultModel), options: .alwaysMapped)
        let cut = dir.appendingPathComponent("cut.gguf")
        try whole.prefix(4_000_000).write(to: cut)
        try assertFails(["generate", "--model", cut.path, "--tokens", "1"], mentioning: ["truncated"])
        // Garbage with a .gguf name.
        let junk = dir.appendingPathComponent("junk.gguf")
        try Data("not a gguf file at all".utf8).write(to: junk)
        try assertFails(["generate", "--model", junk.path, "--tokens", "1"], mentioning: ["not a GGUF file"])
        // A valid GGUF of an architecture Farside does not know: patch "llama" to "llamb".
        var bytes = [UInt8](whole.prefix(200_000))
        let needle = Array("llama".utf8)
        if let at = (0..<(bytes.count - 5)).first(where: { Array(bytes[$0..<$0 + 5]) == needle }) { bytes[at + 4] = UInt8(ascii: "b") }
        var patched = Data(bytes)
        patched.append(whole.suffix(from: 200_000))
        let arch = dir.appendingPathComponent("arch.gguf")
        try patched.write(to: arch)
        try assertFails(["generate", "--model", arch.path, "--tokens", "1"], mentioning: ["llamb", "not supported"])
    }

    /// `generate --chat` renders the prompt with the model's own template (the same ids as the
    /// hand-written ChatML prompt), so the answer is the same.
    func testGenerateWithChatTemplate() throws {
        let r = try CLI.run(["generate", "--chat", "--prompt", "What is the capital of France?", "--max-tokens", "12", "--format", "json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let text = try XCTUnwrap(r.json?["text"] as? String, r.stdout)
        XCTAssertTrue(text.contains("Paris"), text)
        try assertFails(["generate", "--chat", "--tokens", "1,2"], mentioning: ["--chat", "--prompt"])
        try assertFails(["generate", "--chat", "--prompt", "hi", "--chat-template", "/nonexistent/t.jinja"], mentioning: ["/nonexistent/t.jinja"])
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("farside-tpl-\(UUID().uuidString).jinja")
        defer { try? FileManager.default.removeItem(at: dir) }
        try Data("{% for m in messages %}{{ m.content }".utf8).write(to: dir)
        try assertFails(["generate", "--chat", "--prompt", "hi", "--chat-template", dir.path], mentioning: ["does not compile"])
    }

    /// `farside chat` through its default two expert nodes: each stdin line is a turn, the second
    /// turn sees the first (history in the template, KV prefix reused), `/reset` forgets it.
    func testChatKeepsTheConversationThroughTwoNodes() throws {
        let r = try CLI.run(["chat", "--max-tokens", "24"], input: "What is the capital of France?\nAnd of Germany?\n/reset\n\n/exit\nnever read\n")
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
        XCTAssertEqual(lines.count, 2, r.stdout)
        XCTAssertTrue(lines.first?.contains("Paris") ?? false, r.stdout)
        XCTAssertTrue(lines.last?.contains("Berlin") ?? false, r.stdout)
        try assertFails(["chat", "--local-nodes", "-1"], mentioning: ["--local-nodes"])
        try assertFails(["chat", "--local-nodes", "0", "--temperature", "-1"], mentioning: ["temperature"])
    }
}

extension XCTestCase {
    /// Runs the CLI expecting a clean failure: non-zero exit below 128 (no trap) and every word in stderr.
    func assertFails(_ args: [String], mentioning words: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try CLI.run(args)
        XCTAssertNotEqual(r.status, 0, "expected failure for \(args)", file: file, line: line)
        XCTAssertLessThan(r.status, 128, "terminated by a signal (a trap?): \(r.stderr)", file: file, line: line)
        for w in words {
            XCTAssertTrue(r.stderr.lowercased().contains(w.lowercased()), "stderr lacks '\(w)': \(r.stderr)", file: file, line: line)
        }
    }
}
