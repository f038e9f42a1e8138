import Coordinator
import ExpertNode
import Foundation
import Models
import Protocol
import Transport
import XCTest

/// Real expert-node processes (`farside expert`) on loopback, driven by a coordinator.
enum Harness {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let fixtures = root.appendingPathComponent("Tests/Fixtures")
    static let moeFixtures = ["mixtral", "qwen3_moe", "qwen2_moe", "deepseek_v3", "kimi_k2", "kimi_k2_int4"]

    static var binary: URL {
        get throws {
            if let p = ProcessInfo.processInfo.environment["FARSIDE_BIN"] { return URL(fileURLWithPath: p) }
            for c in [".build/release/farside", ".build/debug/farside"] {
                let u = root.appendingPathComponent(c)
                if FileManager.default.isExecutableFile(atPath: u.path) { return u }
            }
            throw NSError(domain: "ClusterTests", code: 1, userInfo: [NSLocalizedDescriptionKey: "farside binary not found: run scripts/test.sh"])
        }
    }

    static func run(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let p = Process()
        p.executableURL = try binary
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    static func json(_ s: String) -> [String: Any]? {
        (try? JSONSerialization.jsonObject(with: Data(s.utf8))) as? [String: Any]
    }

    struct Reference: Decodable {
        struct Case: Decodable { let tokens: [Int] }
        struct Greedy: Decodable { let prompt: [Int]; let new_tokens: [Int] }
        let cases: [Case]
        let greedy: Greedy
    }

    static func reference(_ name: String) throws -> Reference {
        try JSONDecoder().decode(Reference.self, from: Data(contentsOf: fixtures.appendingPathComponent(name + "/reference.json")))
    }

    /// Starts `count` node processes registering with `cluster`.
    static func startNodes(_ count: Int, model: String, cluster: ExpertCluster, extra: [String] = []) throws -> [Process] {
        try (0..<count).map { i in
            let p = Process()
            p.executableURL = try binary
            p.arguments = ["expert", "--insecure-links", "--listen", "tcp://127.0.0.1:*", "--coordinator", cluster.controlEndpoint,
                           "--model", model, "--node-id", "test-\(i + 1)", "--quiet"] + extra
            try p.run()
            return p
        }
    }

    /// The fixture at `dir` with its experts on three node processes (node timeout 0.5 s).
    static func threeNodeCluster(_ dir: URL) throws -> (DecoderModel, ExpertCluster, [Process]) {
        let (model, _) = try ModelRegistry.load(directory: dir)
        var opts = ExpertCluster.Options()
        opts.nodeTimeout = 0.5
        let cluster = try ExpertCluster(model: model, fingerprint: try ModelRegistry.fingerprint(directory: dir), options: opts)
        let nodes = try startNodes(3, model: dir.path, cluster: cluster)
        do {
            try cluster.start(expecting: 3, timeout: 30)
        } catch {
            stop(nodes)
            throw error
        }
        model.experts = cluster
        return (model, cluster, nodes)
    }

    /// The mixtral fixture with its experts on one node process started with `extra` flags,
    /// and that model's logits (every position) for a reference case computed through it.
    static func oneNodeMixtral(extra: [String]) throws -> (model: DecoderModel, cluster: ExpertCluster, nodes: [Process], tokens: [Int], logits: [Float]) {
        let dir = fixtures.appendingPathComponent("mixtral")
        let (model, _) = try ModelRegistry.load(directory: dir)
        let cluster = try ExpertCluster(model: model, fingerprint: try ModelRegistry.fingerprint(directory: dir))
        let nodes = try startNodes(1, model: dir.path, cluster: cluster, extra: extra)
        do {
            try cluster.start(expecting: 1, timeout: 30)
        } catch {
            stop(nodes)
            throw error
        }
        model.experts = cluster
        let tokens = try reference("mixtral").cases[1].tokens
        return (model, cluster, nodes, tokens, try model.forward(tokens, cache: model.makeCache(), logits: .all))
    }

    /// The fixture's directory, its reference, and the greedy tokens of its reference prompt
    /// computed in process.
    static func inProcessGreedy(_ name: String, maxTokens: Int) throws -> (URL, Reference, [Int]) {
        let dir = fixtures.appendingPathComponent(name)
        let ref = try reference(name)
        let (plain, _) = try ModelRegistry.load(directory: dir)
        plain.experts = try LocalExperts(model: plain)
        return (dir, ref, try Generator(model: plain).generate(prompt: ref.greedy.prompt, maxTokens: maxTokens, ignoreEOS: true))
    }

    /// Greedy tokens of `prompt` through `model`, calling `action` once `after` tokens came out.
    static func greedy(_ model: DecoderModel, _ prompt: [Int], maxTokens: Int, after: Int, _ action: () -> Void) throws -> [Int] {
        var produced = 0
        return try Generator(model: model).generate(prompt: prompt, maxTokens: maxTokens, ignoreEOS: true) { _ in
            produced += 1
            if produced == after { action() }
            return true
        }
    }

    static func stop(_ ps: [Process]) {
        for p in ps where p.isRunning { kill(p.processIdentifier, SIGKILL) }
        for p in ps { p.waitUntilExit() }
    }
}

final class ClusterTests: XCTestCase {
    /// Logits (every position; also with prompts in two micro-batches), greedy tokens and router
    /// choices through 1, 2 and 3 node processes equal the in-process engine's bit for bit.
    func testLocalNodesAreBitIdenticalToInProcess() throws {
        for name in Harness.moeFixtures {
            let dir = Harness.fixtures.appendingPathComponent(name).path
            let ref = try Harness.reference(name)
            let tokens = ref.cases[2].tokens.map(String.init).joined(separator: ",")
            let prompt = ref.greedy.prompt.map(String.init).joined(separator: ",")
            let commands: [[String]] = [
                ["logits", "--model", dir, "--tokens", tokens, "--all-positions"],
                ["logits", "--model", dir, "--tokens", tokens, "--all-positions", "--micro-batches", "2"],
                ["generate", "--model", dir, "--tokens", prompt, "--max-tokens", "16", "--format", "json", "--ignore-eos"],
                ["route", "--model", dir, "--tokens", tokens],
            ]
            for cmd in commands {
                let local = try Harness.run(cmd)
                XCTAssertEqual(local.status, 0, local.stderr)
                for n in 1...3 {
                    let remote = try Harness.run(cmd + ["--local-nodes", "\(n)"])
                    XCTAssertEqual(remote.status, 0, "\(name) \(cmd[0]) nodes=\(n): \(remote.stderr)")
                    // Shortest round-trip float text: equal text <=> equal bits.
                    XCTAssertEqual(remote.stdout, local.stdout, "\(name) \(cmd[0]) through \(n) nodes differs from in-process")
                }
            }
        }
    }

    /// SIGKILL one of three nodes in the middle of a 64-token greedy generation: the request
    /// completes with the tokens an undisturbed run produces.
    func testKilledNodeLosesNoRequest() throws {
        let (dir, ref, want) = try Harness.inProcessGreedy("deepseek_v3", maxTokens: 64)

        let (model, cluster, nodes) = try Harness.threeNodeCluster(dir)
        defer { Harness.stop(nodes) }
        let got = try Harness.greedy(model, ref.greedy.prompt, maxTokens: 64, after: 20) { kill(nodes[1].processIdentifier, SIGKILL) }
        XCTAssertEqual(got, want)
        XCTAssertGreaterThanOrEqual(cluster.retries, 1, "the kill should have forced a re-sent step")
        XCTAssertEqual(cluster.nodeStates.filter(\.alive).count, 2)

        // The node comes back under the same id: it re-registers and gets a share of the experts.
        let back = Process()
        back.executableURL = try Harness.binary
        back.arguments = ["expert", "--insecure-links", "--listen", "tcp://127.0.0.1:*", "--coordinator", cluster.controlEndpoint,
                          "--model", dir.path, "--node-id", "test-2", "--quiet"]
        try back.run()
        defer { Harness.stop([back]) }
        let deadline = Date().addingTimeInterval(20)
        var again: [Int] = []
        while Date() < deadline && cluster.nodeStates.filter(\.alive).count < 3 {
            again = try Generator(model: model).generate(prompt: ref.greedy.prompt, maxTokens: 4, ignoreEOS: true)
        }
        again = try Generator(model: model).generate(prompt: ref.greedy.prompt, maxTokens: 64, ignoreEOS: true)
        XCTAssertEqual(again, want)
        XCTAssertEqual(cluster.nodeStates.filter(\.alive).count, 3)
        XCTAssertTrue(cluster.nodeStates.allSatisfy { $0.experts > 0 }, "\(cluster.nodeStates)")
    }

    /// A node that stops answering (SIGSTOP) while another node is available is declared dead
    /// after the node timeout and its experts move; the last available node, stopped the same
    /// way while its connection stays up, is waited for instead (declaring it dead would leave
    /// no node to serve): generation after SIGCONT gives the undisturbed tokens. Stopped past
    /// `lastNodesGrace`, it is declared dead and the step fails with `noLiveNodes`.
    func testSlowLastNodeIsWaitedForAndOthersFailOver() throws {
        let (dir, ref, want) = try Harness.inProcessGreedy("deepseek_v3", maxTokens: 24)

        let (model, _) = try ModelRegistry.load(directory: dir)
        var opts = ExpertCluster.Options()
        opts.nodeTimeout = 0.3
        opts.lastNodesGrace = 4
        let lines = LockedLines()
        let cluster = try ExpertCluster(model: model, fingerprint: try ModelRegistry.fingerprint(directory: dir), options: opts,
                                        log: { lines.append($0) })
        let nodes = try Harness.startNodes(2, model: dir.path, cluster: cluster)
        defer {
            for p in nodes where p.isRunning { kill(p.processIdentifier, SIGCONT) }
            Harness.stop(nodes)
        }
        try cluster.start(expecting: 2, timeout: 30)
        model.experts = cluster

        // Node 2 stops with node 1 available: declared dead after 0.3 s, its experts move.
        let got = try Harness.greedy(model, ref.greedy.prompt, maxTokens: 24, after: 5) { kill(nodes[1].processIdentifier, SIGSTOP) }
        XCTAssertEqual(got, want)
        XCTAssertEqual(cluster.nodeStates.filter(\.alive).map(\.id), ["test-1"])
        XCTAssertTrue(lines.all.contains { $0.contains("node test-2 declared dead: no reply within") }, "\(lines.all)")

        // Node 1 is the last: stopped for 1.5 s (5x the node timeout), it is waited for.
        let start = Date()
        let again = try Harness.greedy(model, ref.greedy.prompt, maxTokens: 24, after: 5) {
            kill(nodes[0].processIdentifier, SIGSTOP)
            DispatchQueue.global().asyncAfter(deadline: .now() + 1.5) { kill(nodes[0].processIdentifier, SIGCONT) }
        }
        XCTAssertEqual(again, want)
        XCTAssertGreaterThan(Date().timeIntervalSince(start), 1.5)
        XCTAssertEqual(cluster.nodeStates.filter(\.alive).map(\.id), ["test-1"], "\(lines.all)")
        XCTAssertTrue(lines.all.contains { $0.contains("no other node could take their experts: waiting up to 4 s") }, "\(lines.all)")

        // Stopped for longer than the grace: declared dead, and the step fails with a clear error.
        kill(nodes[0].processIdentifier, SIGSTOP)
        XCTAssertThrowsError(try Generator(model: model).generate(prompt: ref.greedy.prompt, maxTokens: 4, ignoreEOS: true)) { error in
            XCTAssertEqual("\(error)", "\(ClusterError.noLiveNodes)")
        }
        XCTAssertTrue(lines.all.contains { $0.contains("node test-1 declared dead: no reply within") }, "\(lines.all)")
    }

    /// Two layer steps in flight at once (what ping-pong micro-batches do), finished in reverse
    /// order, give what one-at-a-time steps give; then a node is SIGKILLed while the two halves
    /// of a 48-token prompt are both at the experts: both halves are re-sent and the logits
    /// equal the in-process engine's bit for bit.
    func testOutstandingStepsFinishInAnyOrderAndSurviveAKilledNode() throws {
        let name = "deepseek_v3"
        let dir = Harness.fixtures.appendingPathComponent(name)
        let ref = try Harness.reference(name)
        let tokens = ref.cases[3].tokens
        XCTAssertGreaterThanOrEqual(tokens.count, 32, "the case must be long enough to run as two micro-batches")
        let (plain, _) = try ModelRegistry.load(directory: dir)
        plain.experts = try LocalExperts(model: plain)
        plain.pingPongMinTokens = 32
        let want = try plain.forward(tokens, cache: plain.makeCache(), logits: .all)

        let (model, cluster, nodes) = try Harness.threeNodeCluster(dir)
        defer { Harness.stop(nodes) }
        model.pingPongMinTokens = 32

        // Direct: two steps of one layer, finished second-first, against computeExperts.
        let layer = try XCTUnwrap(model.sparseLayers.first)
        let d = model.hidden, k = layer.router.topK, rows = 5
        func batch(_ seed: Int) -> RoutedBatch {
            RoutedBatch(rows: rows, hidden: d, topK: k,
                        experts: (0..<(rows * k)).map { Int32(($0 * 7 + seed + $0 / k) % layer.experts) },
                        weights: (0..<(rows * k)).map { Float($0 % 5 + seed) * 0.1 })
        }
        // Distinct experts within a token: shift duplicates.
        func distinct(_ b: RoutedBatch) -> RoutedBatch {
            var b = b
            for t in 0..<rows {
                var seen = Set<Int32>()
                for j in 0..<k {
                    var e = b.experts[t * k + j]
                    while seen.contains(e) { e = (e + 1) % Int32(layer.experts) }
                    seen.insert(e)
                    b.experts[t * k + j] = e
                }
            }
            return b
        }
        let b1 = distinct(batch(1)), b2 = distinct(batch(2))
        let x1 = (0..<(rows * d)).map { Float(sin(Double($0))) }, x2 = (0..<(rows * d)).map { Float(cos(Double($0) * 0.7)) }
        var one1 = [Float](repeating: 0, count: rows * d), one2 = one1, both1 = one1, both2 = one1
        try cluster.computeExperts(layer: layer.layer, batch: b1, input: x1, output: &one1)
        try cluster.computeExperts(layer: layer.layer, batch: b2, input: x2, output: &one2)
        try x1.withUnsafeBufferPointer { p1 in
            try x2.withUnsafeBufferPointer { p2 in
                try both1.withUnsafeMutableBufferPointer { o1 in
                    try both2.withUnsafeMutableBufferPointer { o2 in
                        let s1 = try cluster.beginExperts(layer: layer.layer, batch: b1, input: p1.baseAddress!, output: o1.baseAddress!)
                        let s2 = try cluster.beginExperts(layer: layer.layer, batch: b2, input: p2.baseAddress!, output: o2.baseAddress!)
                        try cluster.finishExperts(s2)
                        try cluster.finishExperts(s1)
                        XCTAssertThrowsError(try cluster.finishExperts(s1), "a finished step is not outstanding")
                    }
                }
            }
        }
        XCTAssertEqual(both1, one1)
        XCTAssertEqual(both2, one2)

        // A node dies unnoticed; the next prompt's two micro-batches both wait on it.
        XCTAssertEqual(try model.forward(tokens, cache: model.makeCache(), logits: .all), want, "before the kill")
        kill(nodes[0].processIdentifier, SIGKILL)
        nodes[0].waitUntilExit()
        let got = try model.forward(tokens, cache: model.makeCache(), logits: .all)
        XCTAssertEqual(got, want, "after the kill")
        XCTAssertGreaterThanOrEqual(cluster.retries, 1)
        XCTAssertEqual(cluster.nodeStates.filter(\.alive).count, 2)
    }

    /// With `recordsTimings`, every MoE layer step of a prompt and of a decoded token leaves one
    /// Paged KV through expert nodes: the MLA + MoE fixture's logits over block tables (block
    /// sizes 1, 3, 16, a prefix hit included) equal the contiguous cache's bit for bit, both
    /// computed through the same three nodes.
    func testPagedKVThroughNodesEqualsContiguous() throws {
        let dir = Harness.fixtures.appendingPathComponent("deepseek_v3")
        let (model, _, nodes) = try Harness.threeNodeCluster(dir)
        defer { Harness.stop(nodes) }
        let tokens = (0..<29).map { ($0 * 11 + 5) % model.vocabSize }
        let want = try model.forward(tokens, cache: model.makeCache(), logits: .all)
        let perPosition = model.layers.reduce(0) { $0 + ($1.attention.cacheWidths.0 + $1.attention.cacheWidths.1) * 4 }
        for bs in [1, 3, 16] {
            let kv = try model.makeKVAllocator(blockSize: bs, budgetBytes: 64 * bs * perPosition)
            let seq = kv.sequence()
            var got = try model.forward(Array(tokens[..<10]), cache: seq, logits: .all)
            got += try model.forward(Array(tokens[10...]), cache: seq, logits: .all)
            XCTAssertEqual(got, want, "block size \(bs)")
            kv.free(seq, tokens: tokens)
            let hit = kv.sequence(reusing: tokens, upTo: 20)
            XCTAssertEqual(hit.length, 20)
            XCTAssertEqual(try model.forward(Array(tokens[20...]), cache: hit, logits: .all), Array(want[(20 * model.vocabSize)...]),
                           "block size \(bs), prefix hit")
        }
    }

    /// `StepTiming` whose parts are consistent: the last reply's round trip contains its node's
    /// compute time and the wait after the last send. Without it nothing is recorded.
    func testStepTimingsAccountForEachStep() throws {
        let dir = Harness.fixtures.appendingPathComponent("deepseek_v3")
        let (model, cluster, nodes) = try Harness.threeNodeCluster(dir)
        defer { Harness.stop(nodes) }
        let moeLayers = model.sparseLayers.count
        XCTAssertGreaterThan(moeLayers, 0)
        let cache = model.makeCache()
        _ = try model.forward([1, 2, 3], cache: cache)
        XCTAssertTrue(cluster.timings.isEmpty, "recorded while off")
        cluster.recordsTimings = true
        _ = try model.forward([4, 5], cache: cache)
        _ = try model.forward([6], cache: cache)
        XCTAssertEqual(cluster.timings.count, 2 * moeLayers)
        for t in cluster.timings {
            for v in [t.dispatch, t.wait, t.lastRoundTrip, t.lastCompute, t.combine] {
                XCTAssertTrue(v.isFinite && v >= 0, "\(t)")
            }
            XCTAssertGreaterThan(t.lastCompute, 0, "\(t)")
            XCTAssertGreaterThanOrEqual(t.lastRoundTrip, t.lastCompute, "\(t)")
            XCTAssertGreaterThanOrEqual(t.lastRoundTrip, t.wait, "\(t)")
            XCTAssertLessThan(t.lastRoundTrip, 10, "\(t)")
        }
        cluster.clearTimings()
        XCTAssertTrue(cluster.timings.isEmpty)
    }

    /// A registration whose data endpoint libzmq cannot use (it comes from the node) is refused
    /// with a reason naming the endpoint, and the cluster goes on computing the same logits: the
    /// steps in flight are not ended by it.
    func testUnusableRegistrationIsRefusedAndHarmsNothing() throws {
        let dir = Harness.fixtures.appendingPathComponent("deepseek_v3")
        let (model, cluster, nodes) = try Harness.threeNodeCluster(dir)
        defer { Harness.stop(nodes) }
        let before = try model.forward([1, 2, 3], cache: model.makeCache())

        let intruder = try ZMQSocket(kind: .dealer)
        defer { intruder.close() }
        try intruder.setLinger(0)
        try intruder.setRoutingID(Data("intruder".utf8))
        try intruder.connect(cluster.controlEndpoint)
        let fingerprint = try ModelRegistry.fingerprint(directory: dir)
        for endpoint in ["not-an-endpoint", "carrier-pigeon://127.0.0.1:5", "tcp://"] {
            let hello = WireCodec.register(nodeID: "intruder", endpoint: endpoint, memoryBudgetBytes: 1 << 30,
                                           modelFingerprint: fingerprint)
            try intruder.send([.data(try WireCodec.encode(hello))])
            // The coordinator reads its control socket only while it waits for the nodes, and the
            // intruder's connection is made in the background: compute until the reply comes.
            var answer: [Frame]?
            for _ in 0..<100 where answer == nil {
                let after = try model.forward([1, 2, 3], cache: model.makeCache())
                XCTAssertEqual(after, before, "logits changed after a registration for \(endpoint)")
                answer = try intruder.receive(timeout: 50)
            }
            let frames = try XCTUnwrap(answer, "no reply to a registration for \(endpoint)")
            let env = try WireCodec.decodeEnvelope(frames[0].data)
            guard case .registerReply(let reply) = env.body else { return XCTFail("expected a register reply, got \(env)") }
            XCTAssertFalse(reply.accepted, endpoint)
            XCTAssertTrue(reply.reason.contains(endpoint), reply.reason)
        }
        XCTAssertEqual(cluster.nodeEndpoints.count, 3, "the refused node was added")
    }

    /// Thousands of random and mutated messages to a live node's data socket: each gets an error
    /// reply or is dropped, and the node keeps serving well-formed requests.
    func testNodeSurvivesFuzzedMessages() throws {
        let (model, cluster, nodes, tokens, before) = try Harness.oneNodeMixtral(extra: ["--max-message-bytes", "65536"])
        defer { Harness.stop(nodes) }

        // A valid request to mutate.
        var req = Farside_V1_ExpertRequest()
        req.requestID = 77
        req.layer = 0
        req.rows = 2
        req.hidden = UInt32(model.hidden)
        req.dtype = .f32
        var g = Farside_V1_ExpertRows()
        g.expert = 1
        g.rows = [0, 1]
        g.weights = [0.5, 0.25]
        req.groups = [g]
        var env = Farside_V1_Envelope()
        env.protocolVersion = WireCodec.protocolVersion
        env.body = .expertRequest(req)
        let header = [UInt8](try env.serializedData())
        let payload = [UInt8](repeating: 0x3f, count: 2 * model.hidden * 4)

        let endpoint = try XCTUnwrap(cluster.nodeEndpoints.first)
        let fuzz = try ZMQSocket(kind: .dealer)
        try fuzz.setLinger(0)
        try fuzz.connect(endpoint)
        defer { fuzz.close() }
        var rng = SystemRandomNumberGenerator()
        var replies = 0
        for i in 0..<3000 {
            var frames: [Frame]
            switch i % 6 {
            case 0: frames = [.bytes((0..<Int.random(in: 0...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) })]
            case 1:
                var h = header
                for _ in 0..<3 { h[Int.random(in: 0..<h.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
                frames = [.bytes(h), .bytes(payload)]
            case 2: frames = [.bytes(Array(header.prefix(Int.random(in: 0..<header.count, using: &rng)))), .bytes(payload)]
            case 3: frames = [.bytes(header), .bytes(Array(payload.prefix(Int.random(in: 0..<payload.count, using: &rng))))]
            case 4: frames = [.bytes(header)]
            default: frames = [.bytes(header), .bytes(payload), .bytes([1, 2, 3])]
            }
            try fuzz.send(frames)
            while try fuzz.receive(timeout: 0) != nil { replies += 1 }
        }
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline, try fuzz.receive(timeout: 200) != nil { replies += 1 }
        XCTAssertGreaterThan(replies, 1000, "malformed requests should mostly get error replies")

        // Specific faults get specific error codes.
        func expectError(_ frames: [Frame], _ code: Farside_V1_ErrorCode, _ what: String) throws {
            try fuzz.send(frames)
            let reply = try XCTUnwrap(try fuzz.receive(timeout: 5000), "\(what): no reply")
            let env = try WireCodec.decodeEnvelope(reply[0].data)
            guard case .error(let e) = env.body else { return XCTFail("\(what): expected an error reply, got \(env)") }
            XCTAssertEqual(e.code, code, "\(what): \(e.message)")
        }
        var wrongVersion = env
        wrongVersion.protocolVersion = 99
        try expectError([.data(try wrongVersion.serializedData()), .bytes(payload)], .versionMismatch, "protocol version")
        var badLayer = req
        badLayer.layer = 1000
        try expectError([.data(try WireCodec.encode(.expertRequest(badLayer))), .bytes(payload)], .unknownLayer, "unknown layer")
        var badExpert = req
        badExpert.groups[0].expert = 999
        try expectError([.data(try WireCodec.encode(.expertRequest(badExpert))), .bytes(payload)], .unknownExpert, "unknown expert")
        var badShape = req
        badShape.hidden += 1
        try expectError([.data(try WireCodec.encode(.expertRequest(badShape))), .bytes(payload)], .malformed, "shape vs payload")
        // Over the node's 64 KiB limit: libzmq drops that connection; the node itself goes on.
        let big = try ZMQSocket(kind: .dealer)
        try big.setLinger(0)
        try big.connect(endpoint)
        try big.send([.bytes(header), .bytes([UInt8](repeating: 0, count: 1 << 20))])
        XCTAssertNil(try big.receive(timeout: 500), "an oversize message gets no reply")
        big.close()
        XCTAssertTrue(nodes[0].isRunning, "the node must survive")
        let after = try model.forward(tokens, cache: model.makeCache(), logits: .all)
        XCTAssertEqual(after, before, "the node keeps serving correct results")
    }

    /// `cluster up` starts its nodes and stops every one of them on SIGTERM.
    func testClusterUpStopsAllNodesOnSIGTERM() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("farside-up-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: Harness.fixtures.appendingPathComponent("mixtral"), to: dir)
        defer { try? FileManager.default.removeItem(at: dir) }
        func processes() -> Int {
            let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
            return pids.filter { pid in
                guard Int(pid) != nil, let cmd = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline")) else { return false }
                let text = String(decoding: cmd, as: UTF8.self)
                return text.contains("expert") && text.contains(dir.path)
            }.count
        }
        let p = Process()
        p.executableURL = try Harness.binary
        p.arguments = ["cluster", "up", "--model", dir.path, "--nodes", "2", "--port", "0"]
        let err = Pipe(), out = Pipe()
        p.standardError = err
        p.standardOutput = out
        try p.run()
        // Serving once it prints its address; SIGTERM then drains instead of ending the load.
        var printed = ""
        while !printed.contains("on http://") {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            printed += String(decoding: chunk, as: UTF8.self)
        }
        XCTAssertTrue(printed.contains("on http://"), printed)
        XCTAssertEqual(processes(), 2, "two expert nodes should be running")
        p.terminate()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        XCTAssertEqual(processes(), 0, "every node stops with the cluster")
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertTrue(text.contains("cluster up"), text)
    }

    /// Attention–FFN disaggregation of a dense model: its FFNs cut into neuron slices on the
    /// expert side give the unsplit model's logits within fp32 rounding, the same greedy tokens,
    /// and through expert-node processes exactly the in-process split's results.
    func testDenseFFNSplitAcrossNodes() throws {
        for name in ["llama", "llama_untied"] {
            let dir = Harness.fixtures.appendingPathComponent(name).path
            let ref = try Harness.reference(name)
            let tokens = ref.cases[2].tokens.map(String.init).joined(separator: ",")
            let prompt = ref.greedy.prompt.map(String.init).joined(separator: ",")
            let logits = ["logits", "--model", dir, "--tokens", tokens, "--all-positions"]
            let generate = ["generate", "--model", dir, "--tokens", prompt, "--max-tokens", "16", "--format", "json", "--ignore-eos"]
            func values(_ r: (status: Int32, stdout: String, stderr: String)) -> [Double] {
                XCTAssertEqual(r.status, 0, r.stderr)
                return ((Harness.json(r.stdout)?["logits"] as? [[Double]]) ?? []).flatMap { $0 }
            }
            let whole = values(try Harness.run(logits))
            XCTAssertFalse(whole.isEmpty)
            for e in [1, 2, 4] {
                let split = try Harness.run(logits + ["--split-dense", "\(e)"])
                let v = values(split)
                XCTAssertEqual(v.count, whole.count)
                let worst = zip(v, whole).map { abs($0 - $1) }.max() ?? .infinity
                XCTAssertLessThan(worst, 1e-5, "\(name): --split-dense \(e) moves logits by \(worst)")
                for n in [1, 2, 3] {
                    let remote = try Harness.run(logits + ["--split-dense", "\(e)", "--local-nodes", "\(n)"])
                    XCTAssertEqual(remote.status, 0, remote.stderr)
                    XCTAssertEqual(remote.stdout, split.stdout, "\(name): \(e) slices through \(n) nodes differ from in-process")
                }
            }
            let greedy = try Harness.run(generate)
            XCTAssertEqual(greedy.status, 0, greedy.stderr)
            // --local-nodes alone splits the dense FFN into one slice per node.
            let remote = try Harness.run(generate + ["--local-nodes", "2"])
            XCTAssertEqual(remote.status, 0, remote.stderr)
            XCTAssertEqual(remote.stdout, greedy.stdout, "\(name): greedy tokens through 2 nodes differ")
        }
        let bad = try Harness.run(["logits", "--model", Harness.fixtures.appendingPathComponent("llama").path,
                                   "--tokens", "1,2", "--split-dense", "3"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("into 3"), bad.stderr)
        let zero = try Harness.run(["logits", "--model", Harness.fixtures.appendingPathComponent("llama").path,
                                    "--tokens", "1,2", "--split-dense", "0"])
        XCTAssertNotEqual(zero.status, 0)
        XCTAssertTrue(zero.stderr.contains("--split-dense"), zero.stderr)
    }
}

final class SharedExpertOverlapTests: XCTestCase {
    /// Whether the shared expert runs while the routed experts are at the nodes or after they
    /// return changes nothing, bit for bit (plain shared expert: DeepSeek-V3; gated: Qwen2-MoE);
    /// by default it runs after, since the nodes are on this machine.
    func testSharedExpertOverlapGivesTheSameLogits() throws {
        for name in ["deepseek_v3", "qwen2_moe"] {
            let dir = Harness.fixtures.appendingPathComponent(name)
            let ref = try Harness.reference(name)
            let tokens = ref.cases[2].tokens
            let (plain, _) = try ModelRegistry.load(directory: dir)
            plain.experts = try LocalExperts(model: plain)
            func run(_ m: DecoderModel) throws -> [Float] {
                let cache = m.makeCache()
                var out = try m.forward(tokens, cache: cache, logits: .all)
                for t in [3, 1, 4] { out += try m.forward([t], cache: cache, logits: .last) }
                return out
            }
            let want = try run(plain)
            let (model, cluster, nodes) = try Harness.threeNodeCluster(dir)
            defer { Harness.stop(nodes) }
            XCTAssertFalse(cluster.overlapsSharedExpert, "nodes on loopback share the coordinator's cores")
            for setting in [nil, true, false] as [Bool?] {
                cluster.overlapSharedExpert = setting
                XCTAssertEqual(cluster.overlapsSharedExpert, setting ?? false)
                let got = try run(model)
                XCTAssertEqual(got.map(\.bitPattern), want.map(\.bitPattern), "\(name), overlap \(String(describing: setting))")
            }
        }
    }

    func testEndpointsOnThisMachine() {
        for e in ["tcp://127.0.0.1:5600", "tcp://127.1.2.3:1", "tcp://localhost:9", "tcp://[::1]:5600", "tcp://0.0.0.0:5600",
                  "tcp://*:5600", "ipc:///tmp/farside.sock", "inproc://x"] {
            XCTAssertTrue(ExpertCluster.isLocal(endpoint: e), e)
        }
        for e in ["tcp://10.0.0.5:5600", "tcp://node-3.example:5600", "tcp://[2001:db8::1]:5600", "tcp://128.0.0.1:1", "garbage"] {
            XCTAssertFalse(ExpertCluster.isLocal(endpoint: e), e)
        }
    }
}

final class LocalExpertsRowBlockTests: XCTestCase {
    /// One-token experts cut into row blocks give the sums whole experts give, bit for bit,
    /// alone (decode) and beside experts with several tokens (a prompt).
    func testRowBlocksGiveTheSameSums() throws {
        for name in ["deepseek_v3", "qwen3_moe"] {
            let (model, _) = try ModelRegistry.load(directory: Harness.fixtures.appendingPathComponent(name))
            let layer = try XCTUnwrap(model.sparseLayers.first)
            let d = model.hidden, k = layer.router.topK
            var rng = SplitMix64(seed: 7)
            for rows in [1, 2, 5] {
                var experts: [Int32] = [], weights: [Float] = []
                for _ in 0..<rows {
                    var chosen = Set<Int32>()
                    while chosen.count < k { chosen.insert(Int32(rng.next() % UInt64(layer.experts))) }
                    experts += chosen.sorted()
                    weights += (0..<k).map { _ in Float(rng.next() % 1000) / 1000 }
                }
                let batch = RoutedBatch(rows: rows, hidden: d, topK: k, experts: experts, weights: weights)
                let x = (0..<(rows * d)).map { _ in Float(Int(rng.next() % 2001) - 1000) / 1000 }
                var outs: [[Float]] = []
                for split in [true, false] {
                    let le = try LocalExperts(model: model)
                    le.splitsRows = split
                    var y = [Float](repeating: .nan, count: rows * d)
                    try le.computeExperts(layer: layer.layer, batch: batch, input: x, output: &y)
                    outs.append(y)
                }
                XCTAssertEqual(outs[0].map(\.bitPattern), outs[1].map(\.bitPattern), "\(name), \(rows) rows")
                XCTAssertFalse(outs[0].contains { $0.isNaN })
            }
        }
    }
}

/// Log lines collected from any thread.
final class LockedLines: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []
    func append(_ line: String) { lock.lock(); lines.append(line); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return lines }
}
