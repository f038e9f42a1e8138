import Foundation
import XCTest

/// Hostile and careless input through the real binary (issue 13): sizes from flags and files are
/// checked before use, generation respects the model's context, and every refusal is a clear
/// message with a non-zero exit below 128 (no trap, no crash).
final class HardeningTests: XCTestCase {
    static var defaultModel: String { DefaultModelCLITests.defaultModel }
    let llama = CLI.fixtures.appendingPathComponent("llama").path  // max_position_embeddings 128, no EOS

    func tempDir() throws -> URL {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("farside-hard-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: d) }
        return d
    }

    /// A copy of the default model with one u32 or f32 metadata value replaced (bit pattern `bits`).
    func patchedDefaultModel(_ key: String, bits: UInt32) throws -> URL {
        var data = try Data(contentsOf: URL(fileURLWithPath: Self.defaultModel))
        let k = Data(key.utf8)
        let at = try XCTUnwrap(data.range(of: k, in: 0 ..< 1_000_000), "no key \(key)").upperBound
        let type = data.subdata(in: at ..< at + 4).withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
        XCTAssertTrue(type == 4 || type == 6, "\(key) is not u32/f32 (type \(type))")
        withUnsafeBytes(of: bits.littleEndian) { data.replaceSubrange(at + 4 ..< at + 8, with: $0) }
        let out = try tempDir().appendingPathComponent("patched.gguf")
        try data.write(to: out)
        return out
    }

    /// A copy of a fixture directory with config.json edited.
    func editedFixture(_ name: String, _ edit: (inout [String: Any]) -> Void) throws -> String {
        let dir = try CLI.copyFixture(name)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("config.json")
        var cfg = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        edit(&cfg)
        try JSONSerialization.data(withJSONObject: cfg).write(to: url)
        return dir.path
    }

    func ids(_ n: Int) -> String { (0..<n).map { String(1 + $0 % 200) }.joined(separator: ",") }

    // MARK: 1, 2, 5: --max-tokens and the context

    /// Any --max-tokens is accepted; output stops where prompt + output fill the context (128),
    /// with finish_reason "length" and every token printed.
    func testHugeMaxTokensStopsAtTheContext() throws {
        for huge in ["9223372036854775807", "4611686018427387904", "100000000"] {
            let r = try CLI.run(["generate", "--model", llama, "--tokens", "1,2,3", "--max-tokens", huge,
                                 "--ignore-eos", "--format", "json"])
            XCTAssertEqual(r.status, 0, "\(huge): \(r.stderr)")
            XCTAssertEqual((r.json?["tokens"] as? [Int])?.count, 125, huge)
            XCTAssertEqual(r.json?["finish_reason"] as? String, "length", huge)
            XCTAssertTrue(r.stderr.contains("context"), r.stderr)
        }
        // The same in text format: 125 ids streamed.
        let t = try CLI.run(["generate", "--model", llama, "--tokens", "1,2,3", "--max-tokens", "9223372036854775807", "--ignore-eos"])
        XCTAssertEqual(t.status, 0, t.stderr)
        XCTAssertEqual(t.stdout.split(separator: " ").filter { Int($0) != nil }.count, 125, t.stdout)
    }

    /// A prompt near the context: the tokens that fit are returned, not lost.
    func testPromptPlusMaxTokensBeyondTheContextKeepsWhatWasGenerated() throws {
        let r = try CLI.run(["generate", "--model", llama, "--tokens", ids(120), "--max-tokens", "20", "--format", "json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual((r.json?["tokens"] as? [Int])?.count, 8, r.stdout)
        XCTAssertEqual(r.json?["finish_reason"] as? String, "length")
        // Below the context the limit is --max-tokens, also "length".
        let s = try CLI.run(["generate", "--model", llama, "--tokens", ids(10), "--max-tokens", "4", "--format", "json"])
        XCTAssertEqual((s.json?["tokens"] as? [Int])?.count, 4, s.stderr)
        XCTAssertEqual(s.json?["finish_reason"] as? String, "length")
    }

    func testPromptLongerThanTheContextIsRefusedUpFront() throws {
        for n in [128, 129, 1000] {
            try assertFails(["generate", "--model", llama, "--tokens", ids(n), "--max-tokens", "1"],
                            mentioning: ["\(n) tokens", "128 positions", "shorten the prompt"])
        }
    }

    /// The default model (context 8192) with a huge --max-tokens stops at its EOS: "stop".
    func testHugeMaxTokensOnTheDefaultModelStopsAtEOS() throws {
        let r = try CLI.run(["generate", "--chat", "--prompt", "What is the capital of France?", "--max-tokens", "100000000",
                             "--format", "json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.json?["finish_reason"] as? String, "stop", r.stdout)
        XCTAssertTrue((r.json?["text"] as? String ?? "").contains("Paris"), r.stdout)
    }

    // MARK: 12: hyperparameters and sampling

    /// A tiny temperature is greedy in effect, not inf/NaN logits sampling the least likely token.
    func testTinyTemperatureSamplesLikeGreedy() throws {
        let greedy = try CLI.run(["generate", "--model", llama, "--tokens", "1,2,3", "--max-tokens", "12", "--format", "json"])
        XCTAssertEqual(greedy.status, 0, greedy.stderr)
        let want = try XCTUnwrap(greedy.json?["tokens"] as? [Int])
        for t in ["1e-38", "1e-45", "1e-30"] {
            let r = try CLI.run(["generate", "--model", llama, "--tokens", "1,2,3", "--max-tokens", "12", "--format", "json",
                                 "--temperature", t, "--seed", "7"])
            XCTAssertEqual(r.json?["tokens"] as? [Int], want, "temperature \(t): \(r.stderr)")
        }
        // A huge temperature still samples valid ids.
        let hot = try CLI.run(["generate", "--model", llama, "--tokens", "1,2,3", "--max-tokens", "12", "--format", "json",
                               "--temperature", "1e38"])
        XCTAssertEqual(hot.status, 0, hot.stderr)
        XCTAssertTrue((hot.json?["tokens"] as? [Int] ?? [-1]).allSatisfy { (0..<256).contains($0) }, hot.stdout)
    }

    func testSamplingRangesAreValidated() throws {
        for (flag, bad) in [("--top-p", "0"), ("--top-p", "1.5"), ("--top-p", "nan"), ("--top-k", "-1"),
                            ("--temperature", "nan"), ("--temperature", "inf")] {
            try assertFails(["generate", "--model", llama, "--tokens", "1", flag, bad], mentioning: [String(flag.dropFirst(2))])
        }
    }

    /// NaN, negative, zero or infinite rms epsilon in a GGUF file is refused, naming the field.
    func testGGUFWithBadNormEpsilonIsRefused() throws {
        for bits in [Float.nan.bitPattern, Float(-1e-5).bitPattern, Float(0).bitPattern, Float.infinity.bitPattern] {
            let f = try patchedDefaultModel("llama.attention.layer_norm_rms_epsilon", bits: bits)
            try assertFails(["generate", "--model", f.path, "--tokens", "1"], mentioning: ["rms_norm_eps", f.path, "GGUF"])
        }
        let theta = try patchedDefaultModel("llama.rope.freq_base", bits: Float.nan.bitPattern)
        try assertFails(["generate", "--model", theta.path, "--tokens", "1"], mentioning: ["rope_theta"])
    }

    func testConfigWithBadHyperparametersIsRefused() throws {
        let eps = try editedFixture("llama") { $0["rms_norm_eps"] = -1e-6 }
        try assertFails(["logits", "--model", eps, "--tokens", "1"], mentioning: ["rms_norm_eps", "config.json"])
        let theta = try editedFixture("llama") { $0["rope_parameters"] = ["rope_theta": 0, "rope_type": "default"] }
        try assertFails(["logits", "--model", theta, "--tokens", "1"], mentioning: ["rope_theta"])
        let scale = try editedFixture("deepseek_v3") { $0["routed_scaling_factor"] = -2.5 }
        try assertFails(["logits", "--model", scale, "--tokens", "1"], mentioning: ["routed_scaling_factor"])
    }

    // MARK: 4: absurd sizes in metadata

    /// block_count 10^9 (and one more than the file holds) is refused before anything is sized by it.
    func testGGUFWithAbsurdBlockCountIsRefused() throws {
        let huge = try patchedDefaultModel("llama.block_count", bits: 1_000_000_000)
        try assertFails(["generate", "--model", huge.path, "--tokens", "1"], mentioning: ["num_hidden_layers", "1000000000"])
        let more = try patchedDefaultModel("llama.block_count", bits: 31)
        try assertFails(["generate", "--model", more.path, "--tokens", "1"], mentioning: ["num_hidden_layers is 31", "fewer layers"])
        let ctx = try patchedDefaultModel("llama.context_length", bits: 4_000_000_000)
        try assertFails(["generate", "--model", ctx.path, "--tokens", "1"], mentioning: ["max_position_embeddings"])
    }

    func testConfigWithAbsurdSizesIsRefused() throws {
        let cases: [(String, Any, [String])] = [
            ("num_hidden_layers", 1_000_000_000, ["num_hidden_layers"]),
            ("num_hidden_layers", 4, ["fewer layers"]),
            ("vocab_size", 1_000_000_000_000, ["vocab_size"]),
            ("hidden_size", 1 << 40, ["hidden_size"]),
            ("num_attention_heads", 1 << 30, ["num_attention_heads"]),
            ("max_position_embeddings", 1 << 50, ["max_position_embeddings"]),
            ("intermediate_size", -5, ["intermediate_size"]),
        ]
        for (key, value, words) in cases {
            let dir = try editedFixture("llama") { $0[key] = value }
            try assertFails(["logits", "--model", dir, "--tokens", "1"], mentioning: words + ["config.json"])
        }
        let experts = try editedFixture("mixtral") { $0["num_local_experts"] = 1 << 40 }
        try assertFails(["logits", "--model", experts, "--tokens", "1"], mentioning: ["num_local_experts"])
    }

    // MARK: 3: sizes from flags

    func testMemoryBudgetRejectsWhatIsNotASize() throws {
        for bad in ["1e30GiB", "nanGiB", "nan", "-1GiB", "-5", "infGiB", "9223372036854775807GiB", "8 GiB", "lots"] {
            try assertFails(["expert", "--listen", "tcp://127.0.0.1:*", "--coordinator", "tcp://127.0.0.1:1", "--memory-budget=\(bad)"],
                            mentioning: ["--memory-budget", bad])
        }
    }

    // MARK: 14: messages a user can act on, and the missing flags

    func testModelPathMistakesSayWhatIsWrong() throws {
        try assertFails(["generate", "--model", "/nonexistent/modle.gguf", "--prompt", "hi"], mentioning: ["no such file or directory"])
        try assertFails(["tokenize", "--model", "/nonexistent/modle.gguf", "--text", "hi"], mentioning: ["no such file or directory"])
        let readme = CLI.packageRoot.appendingPathComponent("README.md").path
        try assertFails(["generate", "--model", readme, "--tokens", "1"], mentioning: ["not a GGUF file", "is not a model"])
        try assertFails(["generate", "--model", "/dev/zero", "--tokens", "1"], mentioning: ["/dev/zero", "device"])
        // A GGUF error is not labelled as config.json's.
        let eps = try patchedDefaultModel("llama.attention.layer_norm_rms_epsilon", bits: Float.nan.bitPattern)
        let r = try CLI.run(["generate", "--model", eps.path, "--tokens", "1"])
        XCTAssertFalse(r.stderr.contains("invalid config.json"), r.stderr)
    }

    func testModelWithoutTokenizerSaysToUseTokens() throws {
        try assertFails(["generate", "--model", llama, "--prompt", "hi"], mentioning: ["has no tokenizer", "--tokens"])
    }

    /// An error found while running prints the subcommand's usage, not the top-level one.
    func testErrorsPrintTheSubcommandsUsage() throws {
        let r = try CLI.run(["generate", "--model", llama, "--tokens", "1,abc"])
        XCTAssertEqual(r.status, 64, r.stderr)
        XCTAssertTrue(r.stderr.contains("Usage: farside generate"), r.stderr)
        XCTAssertTrue(r.stderr.contains("See 'farside generate --help'"), r.stderr)
        XCTAssertFalse(r.stderr.contains("<subcommand>"), r.stderr)
    }

    func testVersionThreadsAndPromptFile() throws {
        let v = try CLI.run(["--version"])
        XCTAssertEqual(v.status, 0)
        XCTAssertFalse(v.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
        // --threads gives the same tokens; out of range is refused.
        let want = try CLI.run(["generate", "--model", llama, "--tokens", "1,2,3", "--max-tokens", "6", "--format", "json"])
        let one = try CLI.run(["generate", "--model", llama, "--tokens", "1,2,3", "--max-tokens", "6", "--format", "json", "--threads", "1"])
        XCTAssertEqual(one.status, 0, one.stderr)
        XCTAssertEqual(one.json?["tokens"] as? [Int], want.json?["tokens"] as? [Int])
        try assertFails(["generate", "--model", llama, "--tokens", "1", "--threads", "0"], mentioning: ["--threads"])
        // Text starting with '-': --prompt=-text, --prompt-file FILE and --prompt-file - (stdin) agree.
        let text = "-1 is less than zero"
        let direct = try CLI.run(["generate", "--prompt=\(text)", "--max-tokens", "3", "--format", "json"])
        XCTAssertEqual(direct.status, 0, direct.stderr)
        let want3 = try XCTUnwrap(direct.json?["tokens"] as? [Int])
        let file = try tempDir().appendingPathComponent("prompt.txt")
        try Data(text.utf8).write(to: file)
        let fromFile = try CLI.run(["generate", "--prompt-file", file.path, "--max-tokens", "3", "--format", "json"])
        XCTAssertEqual(fromFile.json?["tokens"] as? [Int], want3, fromFile.stderr)
        let fromStdin = try CLI.run(["generate", "--prompt-file", "-", "--max-tokens", "3", "--format", "json"], input: text)
        XCTAssertEqual(fromStdin.json?["tokens"] as? [Int], want3, fromStdin.stderr)
        try assertFails(["generate", "--prompt-file", "/nonexistent/p.txt"], mentioning: ["--prompt-file", "/nonexistent/p.txt"])
        try assertFails(["generate", "--prompt-file", file.path, "--prompt", "x"], mentioning: ["--prompt-file"])
    }

    // MARK: 7: synth --out

    func testSynthRefusesToOverwriteUnlessForced() throws {
        let dir = try tempDir()
        let stale = dir.appendingPathComponent("model.safetensors.index.json")
        try Data("{}".utf8).write(to: stale)
        let notes = dir.appendingPathComponent("notes.txt")
        try Data("mine".utf8).write(to: notes)
        try assertFails(["synth", "--arch", "llama", "--preset", "tiny", "--out", dir.path], mentioning: ["not empty", "--force"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("config.json").path))
        let w = try CLI.run(["synth", "--arch", "llama", "--preset", "tiny", "--out", dir.path, "--force"])
        XCTAssertEqual(w.status, 0, w.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: stale.path), "stale index left behind")
        XCTAssertTrue(FileManager.default.fileExists(atPath: notes.path), "--force removed a file that is not part of a checkpoint")
        let r = try CLI.run(["logits", "--model", dir.path, "--tokens", "1,2"])
        XCTAssertEqual(r.status, 0, r.stderr)
        // An empty existing directory is fine without --force.
        let empty = try tempDir()
        XCTAssertEqual(try CLI.run(["synth", "--arch", "llama", "--preset", "tiny", "--out", empty.path]).status, 0)
    }

    // MARK: 6: chat past the context

    /// With a 160-position context, five turns outgrow it: the oldest turns are dropped (said on
    /// stderr) and every question is still answered.
    func testChatDropsOldTurnsWhenTheContextIsFull() throws {
        let model = try patchedDefaultModel("llama.context_length", bits: 160)
        let questions = ["What is the capital of France?", "What is the capital of Italy?", "What is the capital of Spain?",
                         "What is the capital of Japan?", "What is the capital of Germany?"]
        let r = try CLI.run(["chat", "--model", model.path, "--local-nodes", "0", "--max-tokens", "40"],
                            input: questions.joined(separator: "\n") + "\n")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("dropped"), r.stderr)
        XCTAssertTrue(r.stdout.contains("Berlin"), r.stdout)
        // A message that cannot fit at all is refused with a message; the chat goes on.
        let long = String(repeating: "word ", count: 400)
        let l = try CLI.run(["chat", "--model", model.path, "--local-nodes", "0", "--max-tokens", "16"],
                            input: long + "\nWhat is the capital of Germany?\n")
        XCTAssertEqual(l.status, 0, l.stderr)
        XCTAssertTrue(l.stderr.contains("send a shorter one"), l.stderr)
        XCTAssertTrue(l.stdout.contains("Berlin"), l.stdout)
    }

    // MARK: 13: logits --all-positions streams

    /// Runs the binary with stdout counted and discarded, returning (exit status, stdout bytes,
    /// '[' count, peak resident memory in bytes).
    func runMeasuringPeakMemory(_ args: [String]) throws -> (Int32, Int, Int, Int) {
        let bin = try CLI.binary.path
        var fds: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&fds), 0)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_addclose(&actions, fds[0])
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        let argv: [UnsafeMutablePointer<CChar>?] = ([bin] + args).map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        var pid: pid_t = 0
        XCTAssertEqual(posix_spawn(&pid, bin, &actions, nil, argv, environ), 0)
        close(fds[1])
        var total = 0, brackets = 0
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = read(fds[0], &buf, buf.count)
            if n <= 0 { break }
            total += n
            for b in buf[0..<n] where b == UInt8(ascii: "[") { brackets += 1 }
        }
        close(fds[0])
        var status: Int32 = 0
        var usage = rusage()
        XCTAssertEqual(wait4(pid, &status, 0, &usage), pid)
        return ((status >> 8) & 0xff, total, brackets, usage.ru_maxrss * 1024)
    }

    func testAllPositionsLogitsAreStreamed() throws {
        let tokens = ids(512)
        let (s1, _, rows1, last) = try runMeasuringPeakMemory(["logits", "--tokens", tokens])
        XCTAssertEqual(s1, 0)
        XCTAssertEqual(rows1, 2)
        let (s2, bytes, rows2, all) = try runMeasuringPeakMemory(["logits", "--tokens", tokens, "--all-positions"])
        XCTAssertEqual(s2, 0)
        XCTAssertEqual(rows2, 513)
        // 512 rows of 49152 logits: ~100 MB as floats and over 250 MB as JSON text. Streamed,
        // the peak stays within 64 MB of the last-row run's.
        XCTAssertGreaterThan(bytes, 200_000_000)
        XCTAssertLessThan(all - last, 64 << 20, "peak RSS \(all >> 20) MB with --all-positions vs \(last >> 20) MB without")
    }
}
