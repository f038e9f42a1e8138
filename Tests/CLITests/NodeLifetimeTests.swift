import Foundation
import XCTest

/// Expert-node processes never outlive the command that started them, however it ends, and a
/// node whose coordinator is gone gives up.
final class NodeLifetimeTests: XCTestCase {
    /// A link to the default model under a path no other run uses, so this run's nodes can be
    /// found by their `--model` argument in /proc/*/cmdline (also once re-parented).
    func uniqueModel() throws -> (dir: URL, model: String) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("farside-lifetime-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let link = dir.appendingPathComponent("model.gguf")
        try FileManager.default.createSymbolicLink(at: link, withDestinationURL:
            CLI.packageRoot.appendingPathComponent("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
        return (dir, link.path)
    }

    /// Live (not zombie) `farside expert` processes whose command line names `model`.
    func nodes(serving model: String) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry -> Int32? in
            guard let pid = Int32(entry),
                  let cmd = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline")),
                  let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return nil }
            let args = cmd.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            guard args.contains("expert"), args.contains(model) else { return nil }
            // The state follows the parenthesised command name: Z is a zombie (dead, not reaped).
            guard let close = stat.lastIndex(of: ")") else { return nil }
            let state = stat[stat.index(close, offsetBy: 2)...].prefix(1)
            return state == "Z" ? nil : pid
        }
    }

    func waitFor(_ what: String, seconds: Double, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            usleep(50_000)
        }
        return condition()
    }

    /// Starts `farside <args>` with stdin a pipe kept open (so `chat` waits for input) and waits
    /// until `expected` nodes serving `model` run.
    func start(_ args: [String], model: String, expected: Int) throws -> (Process, Pipe) {
        let p = Process()
        p.executableURL = try CLI.binary
        p.arguments = args
        let input = Pipe()
        p.standardInput = input
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        XCTAssertTrue(waitFor("nodes", seconds: 60) { nodes(serving: model).count == expected },
                      "\(args): expected \(expected) nodes, found \(nodes(serving: model))")
        usleep(300_000)  // registered and idle: the parent now waits for input or for Ctrl-C
        return (p, input)
    }

    /// SIGTERM, SIGINT and SIGKILL of a command with --local-nodes (chat waiting for input), and
    /// SIGKILL of `cluster up`: afterwards none of its nodes is alive.
    func testNodesDieWithTheirParentOnEverySignal() throws {
        for (args, sig) in [(["chat", "--local-nodes", "2"], SIGTERM), (["chat", "--local-nodes", "2"], SIGINT),
                            (["chat", "--local-nodes", "2"], SIGKILL), (["cluster", "up", "--nodes", "2", "--port", "0"], SIGKILL)] {
            let (dir, model) = try uniqueModel()
            defer { try? FileManager.default.removeItem(at: dir) }
            let (p, input) = try start(args + ["--model", model], model: model, expected: 2)
            let before = nodes(serving: model)
            kill(p.processIdentifier, sig)
            p.waitUntilExit()
            XCTAssertEqual(p.terminationReason, .uncaughtSignal, "\(args) \(sig) should end by the signal")
            XCTAssertEqual(p.terminationStatus, sig, "\(args)")
            XCTAssertTrue(waitFor("nodes gone", seconds: 5) { nodes(serving: model).isEmpty },
                          "\(args) killed by signal \(sig) left nodes \(nodes(serving: model)) of \(before)")
            for pid in nodes(serving: model) { kill(pid, SIGKILL) }
            try? input.fileHandleForWriting.close()
        }
    }

    /// `farside generate --local-nodes 2 ... | head -c1`: the command ends cleanly (status 0)
    /// when its reader goes away, and takes its nodes with it.
    func testClosedStdoutStopsTheNodes() throws {
        let (dir, model) = try uniqueModel()
        defer { try? FileManager.default.removeItem(at: dir) }
        let status = dir.appendingPathComponent("status")
        let sh = Process()
        sh.executableURL = URL(fileURLWithPath: "/bin/sh")
        sh.arguments = ["-c", "{ \"$0\" generate --model \"$1\" --prompt 'Tell me a long story' --max-tokens 400 --ignore-eos --local-nodes 2; echo $? > \"$2\"; } | head -c1",
                        try CLI.binary.path, model, status.path]
        let out = Pipe()
        sh.standardOutput = out
        sh.standardError = FileHandle.nullDevice
        try sh.run()
        let first = out.fileHandleForReading.readDataToEndOfFile()
        sh.waitUntilExit()
        XCTAssertEqual(first.count, 1, "head prints one byte")
        XCTAssertTrue(waitFor("status", seconds: 30) { FileManager.default.fileExists(atPath: status.path) && !((try? String(contentsOf: status, encoding: .utf8)) ?? "").isEmpty })
        let code = (try? String(contentsOf: status, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(code, "0", "a closed stdout is a normal end, not death by SIGPIPE (141) or a crash")
        XCTAssertTrue(waitFor("nodes gone", seconds: 5) { nodes(serving: model).isEmpty }, "left nodes \(nodes(serving: model))")
        for pid in nodes(serving: model) { kill(pid, SIGKILL) }
    }

    /// A node started by hand whose coordinator never answers warns, gives up after
    /// --coordinator-timeout and exits with status 1.
    func testNodeGivesUpOnAnUnreachableCoordinator() throws {
        // A port nobody listens on: bind one, note it, close it.
        let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(probe, $0, len) } }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(probe, $0, &len) } }
        let port = UInt16(bigEndian: addr.sin_port)
        close(probe)
        let started = Date()
        let r = try CLI.run(["expert", "--insecure-links", "--listen", "tcp://127.0.0.1:*", "--coordinator", "tcp://127.0.0.1:\(port)",
                             "--model", CLI.fixtures.appendingPathComponent("mixtral").path, "--quiet",
                             "--coordinator-timeout", "2"])
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertLessThan(Date().timeIntervalSince(started), 30)
        XCTAssertTrue(r.stderr.contains("gave up"), r.stderr)
        XCTAssertTrue(r.stderr.contains("tcp://127.0.0.1:\(port)"), r.stderr)
    }

    /// Every node SIGKILLed in the middle of a generation: the command fails naming the cause
    /// within about --node-timeout (2 s), not 12 s later (the step's 2 s timeout for one node,
    /// then the placement's 10 s wait for the other's acknowledgement).
    func testLosingEveryNodeFailsTheRequestWithinTheNodeTimeout() throws {
        let (dir, model) = try uniqueModel()
        defer { try? FileManager.default.removeItem(at: dir) }
        let p = Process()
        p.executableURL = try CLI.binary
        p.arguments = ["generate", "--model", model, "--prompt", "Tell me a long story", "--max-tokens", "400",
                       "--ignore-eos", "--local-nodes", "2"]
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let stderr = CLI.drain(err)
        XCTAssertFalse(out.fileHandleForReading.availableData.isEmpty, "generation should have started")
        let victims = nodes(serving: model)
        XCTAssertEqual(victims.count, 2)
        // One node, then the other a moment later: the second has answered the step in flight
        // by then, so only the first is missed by that step, and the second is found gone while
        // the experts are placed anew (which waited 10 s for its acknowledgement before).
        let killed = Date()
        kill(victims[0], SIGKILL)
        usleep(300_000)
        kill(victims[1], SIGKILL)
        _ = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let elapsed = Date().timeIntervalSince(killed)
        let text = String(decoding: stderr(), as: UTF8.self)
        XCTAssertEqual(p.terminationStatus, 1, text)
        XCTAssertTrue(text.contains("no live expert node"), text)
        XCTAssertLessThan(elapsed, 6, "losing every node took \(elapsed) s")
    }
}
