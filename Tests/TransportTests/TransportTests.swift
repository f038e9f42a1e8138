import Foundation
import XCTest
@testable import Transport

/// Memory that only a zero-copy frame refers to, so its release shows when libzmq lets go.
private final class OwnedBuffer {
    let pointer: UnsafeMutableRawPointer
    let count: Int
    init(count: Int, seed: UInt8) {
        self.count = count
        pointer = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 64)
        let bytes = pointer.bindMemory(to: UInt8.self, capacity: count)
        for i in 0..<count { bytes[i] = UInt8(truncatingIfNeeded: i &* 31) &+ seed }
    }
    deinit { pointer.deallocate() }
    var frame: Frame { .noCopy(pointer: UnsafeRawPointer(pointer), count: count, owner: self) }
}

/// Polls `condition` until it holds or `seconds` pass; libzmq releases zero-copy owners on its
/// I/O thread, at a moment no API reports.
private func eventually(within seconds: Double = 2, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(1_000)
    }
    return condition()
}

private func elapsedMilliseconds(_ body: () throws -> Void) rethrows -> Double {
    let start = DispatchTime.now().uptimeNanoseconds
    try body()
    return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
}

/// Results written by worker threads and read by the test thread.
private final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    func update(_ body: (inout Value) -> Void) { lock.lock(); body(&value); lock.unlock() }
    var current: Value { lock.lock(); defer { lock.unlock() }; return value }
}

private func uniqueInproc() -> String { "inproc://transport-test-\(UUID().uuidString)" }

final class TransportTests: XCTestCase {
    /// A ROUTER bound on an ephemeral loopback port and a DEALER with `id` connected to it.
    private func routerAndDealer(id: String? = nil) throws -> (router: ZMQSocket, dealer: ZMQSocket, endpoint: String) {
        let router = try ZMQSocket(kind: .router)
        let endpoint = try router.bind("tcp://127.0.0.1:*")
        let dealer = try ZMQSocket(kind: .dealer)
        if let id { try dealer.setRoutingID(Data(id.utf8)) }
        try dealer.connect(endpoint)
        return (router, dealer, endpoint)
    }

    /// Two PAIR sockets connected over a fresh inproc endpoint: `a` bound, `b` connected.
    private func inprocPair() throws -> (a: ZMQSocket, b: ZMQSocket) {
        let endpoint = uniqueInproc()
        let a = try ZMQSocket(kind: .pair)
        try a.bind(endpoint)
        let b = try ZMQSocket(kind: .pair)
        try b.connect(endpoint)
        return (a, b)
    }

    func testBindReturnsTheEphemeralEndpoint() throws {
        let socket = try ZMQSocket(kind: .router)
        let endpoint = try socket.bind("tcp://127.0.0.1:*")
        XCTAssertTrue(endpoint.hasPrefix("tcp://127.0.0.1:"), endpoint)
        let port = Int(endpoint.split(separator: ":").last ?? "")
        XCTAssertNotNil(port, endpoint)
        XCTAssertGreaterThan(port ?? 0, 0)
        XCTAssertEqual(try socket.lastEndpoint(), endpoint)
        try socket.unbind(endpoint)
    }

    func testDealerRouterRoundTripWithRoutingIDEnvelope() throws {
        let (router, dealer, _) = try routerAndDealer(id: "expert-7")
        try dealer.send([Frame("request"), .bytes([1, 2, 3])])

        let request = try XCTUnwrap(try router.receive(timeout: 2000))
        XCTAssertEqual(request.count, 3)
        XCTAssertEqual(request[0].string, "expert-7", "ROUTER prefixes the sender's routing id")
        XCTAssertEqual(request[1].string, "request")
        XCTAssertEqual(request[2].bytes, [1, 2, 3])

        // The routing id goes back as received (a zmq_msg_copy, not a byte copy).
        try router.send([request[0], Frame("reply"), .data(Data([9]))])
        let reply = try XCTUnwrap(try dealer.receive(timeout: 2000))
        XCTAssertEqual(reply.map(\.data), [Data("reply".utf8), Data([9])], "DEALER sees no envelope")
        XCTAssertEqual(try dealer.routingID, Data("expert-7".utf8))
    }

    func testMultipartWithEmptyFramesAndSixteenMegabyteFrame() throws {
        let (router, dealer, _) = try routerAndDealer(id: "big")
        let big = OwnedBuffer(count: 16 << 20, seed: 3)
        let bigData = Data(bytes: big.pointer, count: big.count)
        try dealer.send([.empty, Frame("a"), .data(Data()), .data(bigData), .bytes([])])

        let frames = try XCTUnwrap(try router.receive(timeout: 5000))
        XCTAssertEqual(frames.map(\.count), [3, 0, 1, 0, 16 << 20, 0])
        XCTAssertEqual(frames[2].string, "a")
        let same = frames[4].withUnsafeBytes { received in
            memcmp(received.baseAddress!, big.pointer, big.count) == 0
        }
        XCTAssertTrue(same, "16 MB frame arrives intact")
    }

    func testZeroCopyFrameOwnerIsReleasedAfterTCPSend() throws {
        let (router, dealer, _) = try routerAndDealer(id: "zc")
        weak var weakOwner: OwnedBuffer?
        do {
            let owner = OwnedBuffer(count: 1 << 20, seed: 11)
            weakOwner = owner
            try dealer.send([Frame("header"), owner.frame])
        }
        let frames = try XCTUnwrap(try router.receive(timeout: 3000))
        XCTAssertEqual(frames.count, 3)
        XCTAssertEqual(frames[1].string, "header")
        let expected = OwnedBuffer(count: 1 << 20, seed: 11)
        XCTAssertEqual(frames[2].withUnsafeBytes { memcmp($0.baseAddress!, expected.pointer, expected.count) }, 0)
        XCTAssertTrue(eventually { weakOwner == nil }, "libzmq releases the owner once the bytes are written")
    }

    func testZeroCopyOverInprocHandsTheSameMemoryToTheReceiver() throws {
        let (server, client) = try inprocPair()

        weak var weakOwner: OwnedBuffer?
        var address: UnsafeRawPointer?
        do {
            let owner = OwnedBuffer(count: 4096, seed: 5)
            weakOwner = owner
            address = UnsafeRawPointer(owner.pointer)
            try client.send([owner.frame])
        }
        do {
            let frames = try XCTUnwrap(try server.receive(timeout: 2000))
            guard case .received(let received) = frames[0] else { return XCTFail("expected a received frame") }
            XCTAssertEqual(received.baseAddress, address, "inproc passes the sender's memory through")
            XCTAssertNotNil(weakOwner, "owner lives while the receiver holds the frame")
        }
        XCTAssertTrue(eventually { weakOwner == nil }, "dropping the received frame releases the owner")
    }

    func testFailedSendReleasesZeroCopyOwnerAndLeavesNothingBehind() throws {
        // A DEALER with no peer cannot take a message: EAGAIN with dontWait.
        let dealer = try ZMQSocket(kind: .dealer)
        weak var weakOwner: OwnedBuffer?
        do {
            let owner = OwnedBuffer(count: 1024, seed: 1)
            weakOwner = owner
            XCTAssertThrowsError(try dealer.send([Frame("head"), owner.frame, Frame("tail")], flags: .dontWait)) {
                XCTAssertEqual($0 as? TransportError, .timeout)
            }
        }
        XCTAssertNil(weakOwner, "the unsent zero-copy part was closed, releasing its owner at once")

        try dealer.setSendTimeout(30)
        let ms = try elapsedMilliseconds {
            XCTAssertThrowsError(try dealer.send([Frame("x")])) { XCTAssertEqual($0 as? TransportError, .timeout) }
        }
        XCTAssertGreaterThanOrEqual(ms, 20)
        XCTAssertThrowsError(try dealer.send([])) { XCTAssertEqual(($0 as? TransportError)?.errno, EINVAL) }
    }

    func testReceiveTimeoutReturnsNilWithinTheTimeout() throws {
        let socket = try ZMQSocket(kind: .router)
        try socket.bind("tcp://127.0.0.1:*")

        var result: [Frame]? = [.empty]
        var ms = try elapsedMilliseconds { result = try socket.receive(timeout: 150) }
        XCTAssertNil(result)
        XCTAssertGreaterThanOrEqual(ms, 140)
        XCTAssertLessThan(ms, 650)

        ms = try elapsedMilliseconds { result = try socket.receive(timeout: 0) }
        XCTAssertNil(result)
        XCTAssertLessThan(ms, 50)

        try socket.setReceiveTimeout(100)
        XCTAssertEqual(try socket.receiveTimeout, 100)
        ms = try elapsedMilliseconds { result = try socket.receive() }
        XCTAssertNil(result, "the socket's own receive timeout also yields nil")
        XCTAssertGreaterThanOrEqual(ms, 90)
        XCTAssertLessThan(ms, 600)
    }

    func testOversizeMessageIsNotDeliveredAndReceiverKeepsServing() throws {
        let router = try ZMQSocket(kind: .router)
        try router.setMaxMessageSize(1024)
        XCTAssertEqual(try router.maxMessageSize, 1024)
        let endpoint = try router.bind("tcp://127.0.0.1:*")

        let offender = try ZMQSocket(kind: .dealer)
        try offender.setRoutingID(Data("offender".utf8))
        try offender.setReconnectInterval(-1)  // stays dropped, so it cannot retry into the test
        try offender.connect(endpoint)
        try offender.send([.bytes([UInt8](repeating: 7, count: 4096))])
        XCTAssertNil(try router.receive(timeout: 300), "a part over maxMessageSize is never delivered")

        let goodPeer = try ZMQSocket(kind: .dealer)
        try goodPeer.setRoutingID(Data("good".utf8))
        try goodPeer.connect(endpoint)
        try goodPeer.send([.bytes([UInt8](repeating: 1, count: 1024)), Frame("ok")])
        let frames = try XCTUnwrap(try router.receive(timeout: 3000), "the router still serves new peers")
        XCTAssertEqual(frames[0].string, "good")
        XCTAssertEqual(frames[1].count, 1024)
        XCTAssertEqual(frames[2].string, "ok")
        XCTAssertNil(try router.receive(timeout: 50), "nothing from the offender leaked through")
    }

    func testBindToAPortInUseNamesTheEndpoint() throws {
        let first = try ZMQSocket(kind: .router)
        let endpoint = try first.bind("tcp://127.0.0.1:*")
        let second = try ZMQSocket(kind: .router)
        XCTAssertThrowsError(try second.bind(endpoint)) { error in
            guard let error = error as? TransportError else { return XCTFail("\(error)") }
            XCTAssertEqual(error.errno, EADDRINUSE)
            XCTAssertEqual(error.description, "bind \(endpoint): Address already in use")
        }
    }

    func testInvalidEndpointsAreReportedAsSuch() throws {
        let socket = try ZMQSocket(kind: .dealer)
        let bad = ["", "not-an-endpoint", "tcp://", "://x", "bogus://somewhere", "tcp://127.0.0.1:notaport", "tcp://127.0.0.1"]
        for endpoint in bad {
            XCTAssertThrowsError(try socket.connect(endpoint), "connect \(endpoint)") {
                XCTAssertEqual($0 as? TransportError, .invalidEndpoint(endpoint))
            }
            XCTAssertThrowsError(try socket.bind(endpoint), "bind \(endpoint)") {
                XCTAssertEqual($0 as? TransportError, .invalidEndpoint(endpoint))
            }
        }
        XCTAssertTrue(TransportError.invalidEndpoint("nope").description.contains("\"nope\""))
        XCTAssertThrowsError(try socket.disconnect("tcp://127.0.0.1:1")) { error in
            XCTAssertEqual((error as? TransportError)?.errno, ENOENT)
        }
    }

    /// Ports libzmq would not refuse but would not honour either: a number over 65535 (libzmq
    /// keeps its low 16 bits: 99999 would bind 34463) and "any port" given to connect.
    func testOutOfRangePortsAreRefusedNotWrapped() throws {
        let socket = try ZMQSocket(kind: .router)
        for endpoint in ["tcp://127.0.0.1:99999", "tcp://127.0.0.1:65536", "tcp://*:100000", "tcp://127.0.0.1:999999999999999999999"] {
            XCTAssertThrowsError(try socket.bind(endpoint), endpoint) { error in
                guard case .invalidPort(let e, let reason)? = error as? TransportError else { return XCTFail("\(error)") }
                XCTAssertEqual(e, endpoint)
                XCTAssertTrue(reason.contains("0...65535"), reason)
            }
            XCTAssertThrowsError(try socket.connect(endpoint), endpoint)
        }
        for endpoint in ["tcp://127.0.0.1:*", "tcp://127.0.0.1:0"] {
            XCTAssertThrowsError(try socket.connect(endpoint), endpoint) { error in
                guard case .invalidPort(_, let reason)? = error as? TransportError else { return XCTFail("\(error)") }
                XCTAssertTrue(reason.contains("only be bound"), reason)
            }
        }
        // Still fine: ephemeral binds, the top port, a source address with any port.
        XCTAssertTrue(try socket.bind("tcp://127.0.0.1:*").hasPrefix("tcp://127.0.0.1:"))
        XCTAssertTrue(try socket.bind("tcp://127.0.0.1:0").hasPrefix("tcp://127.0.0.1:"))
        XCTAssertNoThrow(try socket.connect("tcp://127.0.0.1:65535"))
        XCTAssertNoThrow(try socket.connect("tcp://127.0.0.1:0;127.0.0.1:65535"))
    }

    /// A monitor reports a connection's handshake and its loss when the peer closes.
    func testMonitorReportsHandshakeAndDisconnect() throws {
        let server = try ZMQSocket(kind: .router)
        let endpoint = try server.bind("tcp://127.0.0.1:*")
        let client = try ZMQSocket(kind: .dealer)
        let events = try client.monitor([.handshakeSucceeded, .disconnected])
        try client.connect(endpoint)
        func next() throws -> ZMQSocket.MonitorEvent? {
            guard try ZMQSocket.poll([events], timeout: 5000)[0] else { return nil }
            return try events.readMonitorEvent()
        }
        XCTAssertEqual(try next()?.event, .handshakeSucceeded)
        server.close()
        let lost = try XCTUnwrap(try next())
        XCTAssertEqual(lost.event, .disconnected)
        XCTAssertEqual(lost.endpoint, endpoint)
        client.close()
        events.close()
    }

    /// A monitor's reader closed before its socket's connection ends (a node dropped while its
    /// peer exits at the same moment) must not stall the context: libzmq's I/O thread blocks
    /// sending an event to a monitor with no reader, and every socket of the context with it.
    /// Both orders of closing are checked, each in a context of its own (one I/O thread) whose
    /// sockets must still talk afterwards.
    func testClosingAMonitorBeforeItsSocketDoesNotStallTheContext() throws {
        for readerFirst in [true, false] {
            let context = try ZMQContext(ioThreads: 1)
            let server = try ZMQSocket(kind: .router)   // the peer, in the shared context
            let endpoint = try server.bind("tcp://127.0.0.1:*")
            let client = try ZMQSocket(context: context, kind: .dealer)
            let events = try client.monitor([.handshakeSucceeded, .disconnected])
            try client.connect(endpoint)
            XCTAssertTrue(try ZMQSocket.poll([events], timeout: 5000)[0])
            XCTAssertEqual(try events.readMonitorEvent()?.event, .handshakeSucceeded)
            if readerFirst {
                events.close()
                // The peer goes away while the monitored socket is still open: its I/O thread
                // sees the connection end and would report it.
                server.close()
                usleep(200_000)
                client.close()
            } else {
                client.close()
                events.close()
                server.close()
            }
            usleep(200_000)
            // The context's I/O thread still moves messages.
            let a = try ZMQSocket(context: context, kind: .router)
            let there = try a.bind("tcp://127.0.0.1:*")
            let b = try ZMQSocket(context: context, kind: .dealer)
            try b.connect(there)
            try b.send([Frame("still alive")])
            guard try ZMQSocket.poll([a], timeout: 5000)[0] else {
                // Terminating a stalled context would hang the test run: leave it.
                _ = Unmanaged.passRetained(context)
                return XCTFail("the context stalled (reader closed first: \(readerFirst))")
            }
            XCTAssertEqual(try a.receive(timeout: 0)?.last?.string, "still alive")
            a.close()
            b.close()
        }
    }

    func testPollReportsWhichSocketIsReadable() throws {
        let (a1, b1) = try inprocPair()
        let (a2, b2) = try inprocPair()

        var ready: [Bool] = []
        let ms = try elapsedMilliseconds { ready = try ZMQSocket.poll([b1, b2], timeout: 60) }
        XCTAssertEqual(ready, [false, false])
        XCTAssertGreaterThanOrEqual(ms, 50)

        try a2.send([Frame("ping")])
        XCTAssertEqual(try ZMQSocket.poll([b1, b2], timeout: 2000), [false, true])
        XCTAssertEqual(try b2.receive(timeout: 0)?.first?.string, "ping")
        XCTAssertEqual(try ZMQSocket.poll([b1, b2], timeout: 0), [false, false])

        var poller = Poller()
        poller.add(a1, events: .writable)
        poller.add(b1)
        XCTAssertEqual(try poller.poll(timeout: 0), [.writable, []])

        b1.close()
        XCTAssertThrowsError(try poller.poll(timeout: 0)) { XCTAssertEqual($0 as? TransportError, .closed) }
    }

    /// Polling that yields before it blocks: sees a message that arrives during the yielding
    /// phase and one that arrives after it (while blocked), and still honours the timeout,
    /// whether the timeout ends inside the yielding window or after it.
    func testPollYieldingBeforeBlocking() throws {
        let (a, b) = try inprocPair()

        var ready: [Bool] = []
        var ms = try elapsedMilliseconds { ready = try ZMQSocket.poll([b], timeout: 60, yieldingFor: 0.01) }
        XCTAssertEqual(ready, [false])
        XCTAssertGreaterThanOrEqual(ms, 50)
        ms = try elapsedMilliseconds { ready = try ZMQSocket.poll([b], timeout: 30, yieldingFor: 5) }
        XCTAssertEqual(ready, [false], "the timeout ends the yielding phase too")
        XCTAssertGreaterThanOrEqual(ms, 25)
        XCTAssertLessThan(ms, 4000)
        XCTAssertEqual(try ZMQSocket.poll([b], timeout: 0, yieldingFor: 1), [false], "timeout 0 only looks")

        for delay in [0.002, 0.05] {  // inside, then after, a 10 ms yielding window
            let sender = Thread {
                Thread.sleep(forTimeInterval: delay)
                try? a.send([Frame("late")])
            }
            sender.start()
            XCTAssertEqual(try ZMQSocket.poll([b], timeout: 5000, yieldingFor: 0.01), [true], "sent after \(delay) s")
            XCTAssertEqual(try b.receive(timeout: 0)?.first?.string, "late")
        }
    }

    func testTwoDealerThreadsSendManyMessagesToOneRouter() throws {
        let router = try ZMQSocket(kind: .router)
        let endpoint = try router.bind("tcp://127.0.0.1:*")
        let perDealer = 5000
        let ids = ["dealer-0", "dealer-1"]

        let threadErrors = Locked<[String]>([])
        let finished = DispatchSemaphore(value: 0)
        for id in ids {
            let thread = Thread {
                // Each dealer is created, used and closed on its own thread.
                do {
                    let dealer = try ZMQSocket(kind: .dealer)
                    try dealer.setRoutingID(Data(id.utf8))
                    try dealer.connect(endpoint)
                    for seq in 0..<perDealer {
                        var value = UInt32(seq).littleEndian
                        try dealer.send([.data(Data(bytes: &value, count: 4)), Frame(id)])
                    }
                    // Linger is 0, so stay open until the router confirms it has everything.
                    let ack = try dealer.receive(timeout: 5000)
                    if ack?.first?.string != "done" { throw TransportError.timeout }
                    dealer.close()
                } catch {
                    threadErrors.update { $0.append("\(id): \(error)") }
                }
                finished.signal()
            }
            thread.start()
        }

        var nextSeq: [String: Int] = [:]
        for _ in 0..<(perDealer * ids.count) {
            guard let frames = try router.receive(timeout: 5000) else { break }
            XCTAssertEqual(frames.count, 3)
            let id = frames[0].string
            XCTAssertEqual(frames[2].string, id)
            let seq = frames[1].withUnsafeBytes { Int(UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self))) }
            XCTAssertEqual(seq, nextSeq[id, default: 0], "messages from one dealer arrive in order")
            nextSeq[id] = seq + 1
        }
        XCTAssertEqual(nextSeq, Dictionary(uniqueKeysWithValues: ids.map { ($0, perDealer) }))
        for id in ids { try router.send([Frame(id), Frame("done")]) }
        for _ in ids { XCTAssertEqual(finished.wait(timeout: .now() + 5), .success) }
        XCTAssertEqual(threadErrors.current, [])
    }

    func testCloseIsIdempotentAndLaterCallsReportClosed() throws {
        let socket = try ZMQSocket(kind: .dealer)
        XCTAssertFalse(socket.isClosed)
        socket.close()
        socket.close()
        XCTAssertTrue(socket.isClosed)
        XCTAssertThrowsError(try socket.send([Frame("x")])) { XCTAssertEqual($0 as? TransportError, .closed) }
        XCTAssertThrowsError(try socket.receive(timeout: 0)) { XCTAssertEqual($0 as? TransportError, .closed) }
        XCTAssertThrowsError(try socket.connect("tcp://127.0.0.1:1")) { XCTAssertEqual($0 as? TransportError, .closed) }
        XCTAssertThrowsError(try socket.linger) { XCTAssertEqual($0 as? TransportError, .closed) }
        XCTAssertThrowsError(try ZMQSocket.poll([socket], timeout: 0)) { XCTAssertEqual($0 as? TransportError, .closed) }
    }

    func testOptionsRoundTrip() throws {
        let socket = try ZMQSocket(kind: .router)
        XCTAssertEqual(try socket.linger, 0, "sockets default to linger 0")
        try socket.setLinger(250)
        XCTAssertEqual(try socket.linger, 250)
        try socket.setSendHighWaterMark(10)
        try socket.setReceiveHighWaterMark(20)
        XCTAssertEqual(try socket.sendHighWaterMark, 10)
        XCTAssertEqual(try socket.receiveHighWaterMark, 20)
        XCTAssertEqual(try socket.maxMessageSize, -1)
        try socket.setSendTimeout(70)
        XCTAssertEqual(try socket.sendTimeout, 70)
        try socket.setImmediate(true)
        XCTAssertTrue(try socket.immediate)
        try socket.setReconnectInterval(50, maximum: 1000)
        XCTAssertEqual(try socket.reconnectInterval, 50)
        try socket.setRouterMandatory(true)
        try socket.setRouterHandover(true)
        try socket.setTCPKeepalive(true, idle: 30, interval: 5, count: 3)
        try socket.setHeartbeat(interval: 1000, timeout: 3000, ttl: 6000)
        try socket.setKernelBufferSizes(send: 1 << 20, receive: 1 << 20)
        XCTAssertThrowsError(try socket.setRoutingID(Data())) { XCTAssertEqual(($0 as? TransportError)?.errno, EINVAL) }
        XCTAssertThrowsError(try socket.setLinger(Int(Int32.max) + 1)) { error in
            XCTAssertTrue("\(error)".hasPrefix("setsockopt ZMQ_LINGER="), "\(error)")
        }
        _ = ZMQContext.hasCurve
        XCTAssertEqual(ZMQContext.libraryVersion.major, 4)
    }

    func testRouterMandatoryReportsUnknownPeer() throws {
        let router = try ZMQSocket(kind: .router)
        try router.setRouterMandatory(true)
        XCTAssertThrowsError(try router.send([Frame("nobody"), Frame("x")])) { error in
            XCTAssertEqual((error as? TransportError)?.errno, EHOSTUNREACH)
            XCTAssertTrue("\(error)".hasPrefix("send part 1 of 2: "), "\(error)")
        }
    }

    func testSendMoreContinuesTheMessageAcrossCalls() throws {
        let (a, b) = try inprocPair()
        try a.send([Frame("one")], flags: .more)
        XCTAssertNil(try b.receive(timeout: 20), "an unfinished message is not delivered")
        try a.send([Frame("two"), Frame("three")])
        XCTAssertEqual(try b.receive(timeout: 1000)?.map(\.string), ["one", "two", "three"])
    }

    func testContextShutdownWakesABlockedReceiver() throws {
        let context = try ZMQContext()
        let woke = DispatchSemaphore(value: 0)
        let outcome = Locked("")
        let thread = Thread {
            do {
                let socket = try ZMQSocket(context: context, kind: .pair)
                try socket.bind(uniqueInproc())
                let frames = try socket.receive()  // blocks until shutdown
                outcome.update { $0 = "returned \(String(describing: frames))" }
            } catch {
                outcome.update { $0 = "\(error)" }
            }
            woke.signal()
        }
        thread.start()
        usleep(50_000)
        context.shutdown()
        XCTAssertEqual(woke.wait(timeout: .now() + 2), .success)
        XCTAssertEqual(outcome.current, TransportError.closed.description)
        XCTAssertThrowsError(try ZMQSocket(context: context, kind: .dealer)) {
            XCTAssertEqual($0 as? TransportError, .closed)
        }
        context.terminate()  // the thread's socket is closed, so this returns at once
        context.terminate()
    }
}
