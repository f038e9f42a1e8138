import Coordinator
import Foundation
import Models
import Protocol
import Transport
import XCTest

/// Registration survives a coordinator restart, refuses a second node under a live node's id,
/// and a node whose coordinator is unreachable says so.
final class RegistrationTests: XCTestCase {
    /// A coordinator that exits and comes back at the same endpoint gets its node back: the node
    /// notices the lost connection and registers again.
    func testNodeRegistersAgainWithARestartedCoordinator() throws {
        let dir = Harness.fixtures.appendingPathComponent("mixtral")
        let (model, _) = try ModelRegistry.load(directory: dir)
        let fingerprint = try ModelRegistry.fingerprint(directory: dir)
        let tokens = try Harness.reference("mixtral").cases[1].tokens
        var first: ExpertCluster? = try ExpertCluster(model: model, fingerprint: fingerprint)
        let endpoint = first!.controlEndpoint
        let nodes = try Harness.startNodes(1, model: dir.path, cluster: first!)
        defer { Harness.stop(nodes) }
        try first!.start(expecting: 1, timeout: 30)
        model.experts = first
        let before = try model.forward(tokens, cache: model.makeCache(), logits: .all)
        model.experts = nil
        first = nil  // its sockets close: the coordinator is gone

        var opts = ExpertCluster.Options()
        opts.controlEndpoint = endpoint
        // libzmq releases the port in the background: try again for a moment.
        var second: ExpertCluster?
        let deadline = Date().addingTimeInterval(10)
        while second == nil {
            do {
                second = try ExpertCluster(model: model, fingerprint: fingerprint, options: opts)
            } catch {
                if Date() > deadline { throw error }
                usleep(100_000)
            }
        }
        try second!.start(expecting: 1, timeout: 20)
        model.experts = second
        XCTAssertEqual(try model.forward(tokens, cache: model.makeCache(), logits: .all), before)
    }

    /// A second process under the id of a live node is refused with a reason, says so and exits
    /// with status 1; the cluster keeps its three nodes and its results.
    func testSecondNodeUnderALiveNodesIDIsRefused() throws {
        let dir = Harness.fixtures.appendingPathComponent("deepseek_v3")
        let (model, cluster, nodes) = try Harness.threeNodeCluster(dir)
        defer { Harness.stop(nodes) }
        let before = try model.forward([1, 2, 3], cache: model.makeCache())
        let dup = Process()
        dup.executableURL = try Harness.binary
        dup.arguments = ["expert", "--insecure-links", "--listen", "tcp://127.0.0.1:*", "--coordinator", cluster.controlEndpoint,
                         "--model", dir.path, "--node-id", "test-2", "--quiet"]
        let err = Pipe()
        dup.standardError = err
        try dup.run()
        defer { Harness.stop([dup]) }
        // The coordinator reads registrations while it computes.
        let deadline = Date().addingTimeInterval(60)
        while dup.isRunning && Date() < deadline {
            XCTAssertEqual(try model.forward([1, 2, 3], cache: model.makeCache()), before)
        }
        XCTAssertFalse(dup.isRunning, "the duplicate node should give up")
        dup.waitUntilExit()
        XCTAssertEqual(dup.terminationStatus, 1)
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertTrue(text.contains("already in use"), text)
        XCTAssertTrue(text.contains("test-2"), text)
        XCTAssertEqual(cluster.nodeStates.filter(\.alive).count, 3)
        XCTAssertTrue(nodes.allSatisfy(\.isRunning))
        XCTAssertEqual(try model.forward([1, 2, 3], cache: model.makeCache()), before)
    }

    /// A node that cannot reach its coordinator warns every 10 s, even with --quiet.
    func testUnreachableCoordinatorIsReportedPeriodically() throws {
        let r = try Harness.run(["expert", "--insecure-links", "--listen", "tcp://127.0.0.1:*", "--coordinator", "tcp://127.0.0.1:1",
                                 "--model", Harness.fixtures.appendingPathComponent("mixtral").path, "--quiet",
                                 "--coordinator-timeout", "11"])
        XCTAssertEqual(r.status, 1, r.stderr)
        let lines = r.stderr.split(separator: "\n")
        XCTAssertEqual(lines.count, 2, r.stderr)
        XCTAssertTrue(lines.first?.contains("warning: the coordinator at tcp://127.0.0.1:1 has been unreachable for 10 s; still trying") ?? false, r.stderr)
        XCTAssertTrue(lines.last?.hasPrefix("error: gave up") ?? false, r.stderr)
    }
}
