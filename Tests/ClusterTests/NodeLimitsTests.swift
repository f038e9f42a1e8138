import Coordinator
import Foundation
import Models
import Protocol
import Transport
import XCTest

/// A node bounds what one request or one client can make it allocate, and refuses the rest
/// with an error reply, keeping nothing of it.
final class NodeLimitsTests: XCTestCase {
    /// Resident memory of `pid` in bytes (VmRSS).
    func residentBytes(_ pid: Int32) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) * 1024
    }

    /// CPU ticks `pid` has used (user + system).
    func cpuTicks(_ pid: Int32) -> Int {
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        guard let close = stat.lastIndex(of: ")") else { return 0 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return (Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0)
    }

    /// Waits until `pid` has used no CPU for a second (it has worked off its queue).
    func waitUntilIdle(_ pid: Int32) {
        let deadline = Date().addingTimeInterval(60)
        var last = cpuTicks(pid)
        while Date() < deadline {
            sleep(1)
            let now = cpuTicks(pid)
            if now == last { return }
            last = now
        }
    }

    func request(rows: UInt32, hidden: Int, groups: [(expert: UInt32, rows: [UInt32])]) throws -> [Frame] {
        var req = Farside_V1_ExpertRequest()
        req.requestID = 5
        req.layer = 0
        req.rows = rows
        req.hidden = UInt32(hidden)
        req.dtype = .f32
        req.groups = groups.map { g in
            var e = Farside_V1_ExpertRows()
            e.expert = g.expert
            e.rows = g.rows
            e.weights = [Float](repeating: 0.5, count: g.rows.count)
            return e
        }
        return [.data(try WireCodec.encode(.expertRequest(req))), .bytes([UInt8](repeating: 0x3f, count: Int(rows) * hidden * 4))]
    }

    func testNodeBoundsEveryRequestAndUnreadReplies() throws {
        let (model, cluster, nodes, tokens, before) = try Harness.oneNodeMixtral(extra: ["--max-unread-reply-bytes", "4MiB"])
        defer { Harness.stop(nodes) }
        let pid = nodes[0].processIdentifier
        let d = model.hidden
        let endpoint = try XCTUnwrap(cluster.nodeEndpoints.first)

        let client = try ZMQSocket(kind: .dealer)
        defer { client.close() }
        try client.connect(endpoint)
        func expectError(_ frames: [Frame], _ code: Farside_V1_ErrorCode, mentioning words: String, _ what: String) throws {
            try client.send(frames)
            let reply = try XCTUnwrap(try client.receive(timeout: 10_000), "\(what): no reply")
            let env = try WireCodec.decodeEnvelope(reply[0].data)
            guard case .error(let e) = env.body else { return XCTFail("\(what): expected an error reply, got \(env)") }
            XCTAssertEqual(e.code, code, "\(what): \(e.message)")
            XCTAssertTrue(e.message.contains(words), "\(what): \(e.message)")
        }
        // Warm up the node's own buffers with one accepted request of the size used below.
        try client.send(try request(rows: 4, hidden: d, groups: [(1, [0, 1, 2, 3])]))
        _ = try XCTUnwrap(try client.receive(timeout: 10_000))
        let baseline = residentBytes(pid)

        // 300,000 copies of one row for one expert: refused, nothing computed or kept.
        try expectError(try request(rows: 1, hidden: d, groups: [(1, [UInt32](repeating: 0, count: 300_000))]),
                        .malformed, mentioning: "strictly increasing", "duplicate rows")
        // More routes than rows × top-k (2 for this model): every expert for one row.
        try expectError(try request(rows: 1, hidden: d, groups: [(0, [0]), (1, [0]), (2, [0]), (3, [0])]),
                        .tooLarge, mentioning: "routes", "routes over top-k")
        // Expert ids beyond the layer's experts.
        try expectError(try request(rows: 1, hidden: d, groups: [(4_000_000, [0])]),
                        .unknownExpert, mentioning: "4000000", "expert id")
        // A header over the node's 16 MiB limit.
        try expectError([.bytes([UInt8](repeating: 0, count: 17 << 20)), .bytes([0])], .tooLarge, mentioning: "header", "header size")
        waitUntilIdle(pid)
        let afterRefusals = residentBytes(pid)
        XCTAssertLessThan(afterRefusals - baseline, 24 << 20, "refused requests left memory behind: \(baseline) -> \(afterRefusals)")

        // A client that sends 40 requests of 8 MB replies each and reads nothing: the node
        // computes only what fits its 4 MiB of unread replies (plus one), refuses the rest.
        let lazy = try ZMQSocket(kind: .dealer)
        defer { lazy.close() }
        try lazy.setReceiveHighWaterMark(1)
        try lazy.setKernelBufferSizes(receive: 4096)
        try lazy.connect(endpoint)
        let rows: UInt32 = 16384
        let big = try request(rows: rows, hidden: d, groups: [(1, Array(0..<rows))])
        for _ in 0..<40 { try lazy.send(big) }
        waitUntilIdle(pid)
        let stalled = residentBytes(pid)
        XCTAssertLessThan(stalled - afterRefusals, 120 << 20,
                          "a client that reads nothing made the node hold \((stalled - afterRefusals) >> 20) MiB (40 replies are 320 MiB)")
        var computed = 0, refused = 0
        while let reply = try lazy.receive(timeout: 5_000) {
            let env = try WireCodec.decodeEnvelope(reply[0].data)
            switch env.body {
            case .expertReply: computed += 1
            case .error(let e):
                XCTAssertEqual(e.code, .tooLarge, e.message)
                XCTAssertTrue(e.message.contains("not read"), e.message)
                refused += 1
            default: XCTFail("unexpected \(env)")
            }
        }
        XCTAssertGreaterThanOrEqual(computed, 1)
        XCTAssertGreaterThanOrEqual(refused, 20, "computed \(computed), refused \(refused)")
        XCTAssertEqual(computed + refused, 40)

        XCTAssertTrue(nodes[0].isRunning, "the node must survive")
        let after = try model.forward(tokens, cache: model.makeCache(), logits: .all)
        XCTAssertEqual(after, before, "the node keeps serving correct results")
    }
}
