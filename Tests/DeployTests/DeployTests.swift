import Foundation
import XCTest
@testable import Deploy

final class SystemdNotifyTests: XCTestCase {
    /// A datagram socket bound where `$NOTIFY_SOCKET` will point, read back after each send.
    final class Listener {
        let fd: Int32
        let name: String

        init(abstract: Bool) throws {
            fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
            name = abstract ? "@farside-notify-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
                            : NSTemporaryDirectory() + "farside-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            let (addr, len) = try XCTUnwrap(SystemdNotify.address(name))
            var a = addr
            let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
            XCTAssertEqual(rc, 0, "bind errno \(errno)")
            var tv = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }

        func receive() -> String? {
            var buf = [UInt8](repeating: 0, count: 4096)
            let n = recv(fd, &buf, buf.count, 0)
            return n > 0 ? String(decoding: buf[..<n], as: UTF8.self) : nil
        }

        deinit {
            close(fd)
            if !name.hasPrefix("@") { unlink(name) }
        }
    }

    func testSendsToAPathAndToAnAbstractName() throws {
        for abstract in [true, false] {
            let l = try Listener(abstract: abstract)
            let n = SystemdNotify(environment: ["NOTIFY_SOCKET": l.name])
            XCTAssertTrue(n.isActive)
            n.ready(status: "serving\nwith a newline")
            XCTAssertEqual(l.receive(), "READY=1\nSTATUS=serving with a newline\nMAINPID=\(getpid())")
            n.watchdog()
            XCTAssertEqual(l.receive(), "WATCHDOG=1")
            n.stopping(status: "draining")
            XCTAssertEqual(l.receive(), "STOPPING=1\nSTATUS=draining")
        }
    }

    func testWithoutTheVariableNothingIsSent() {
        let n = SystemdNotify(environment: [:])
        XCTAssertFalse(n.isActive)
        XCTAssertFalse(n.send("READY=1"))
        XCTAssertNil(n.watchdogInterval)
    }

    func testBadSocketNamesAreIgnored() {
        for name in ["relative/path", "", "@", "/" + String(repeating: "x", count: 200)] {
            XCTAssertFalse(SystemdNotify(environment: ["NOTIFY_SOCKET": name]).isActive, name)
        }
        // A socket nobody listens on: the send fails quietly.
        XCTAssertFalse(SystemdNotify(environment: ["NOTIFY_SOCKET": "@farside-nobody-\(getpid())"]).send("READY=1"))
    }

    func testWatchdogIntervalIsForThisProcessOnly() {
        XCTAssertEqual(SystemdNotify(environment: ["WATCHDOG_USEC": "30000000"]).watchdogInterval, 30)
        XCTAssertEqual(SystemdNotify(environment: ["WATCHDOG_USEC": "500000", "WATCHDOG_PID": "\(getpid())"]).watchdogInterval, 0.5)
        XCTAssertNil(SystemdNotify(environment: ["WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"]).watchdogInterval)
        XCTAssertNil(SystemdNotify(environment: ["WATCHDOG_USEC": "soon"]).watchdogInterval)
        XCTAssertNil(SystemdNotify(environment: ["WATCHDOG_USEC": "0"]).watchdogInterval)
    }
}

final class ClusterConfigTests: XCTestCase {
    func parse(_ text: String) throws -> ClusterConfig.File { try ClusterConfig.parse(text, file: "c.yaml") }

    func testKeysBecomeFlagsInFileOrder() throws {
        let f = try parse("""
            coordinator:
              http:
                port: 8080
                drain_timeout: 5
              kv:
                budget: 2GiB
                prefix_cache: false
              placement: memory
            node:
              coordinator: tcp://10.0.0.1:5500
              memory_budget: 4GiB
              keys:
                insecure_links: false
            """)
        let c = try ClusterConfig.arguments(f, section: .coordinator)
        XCTAssertEqual(c.map(\.argument), ["--port=8080", "--drain-timeout=5", "--kv-budget=2GiB", "--no-prefix-cache", "--placement=memory"])
        XCTAssertEqual(c.map(\.line), [3, 4, 6, 7, 8])
        XCTAssertEqual(c[2].key, "coordinator.kv.budget")
        let n = try ClusterConfig.arguments(f, section: .node)
        XCTAssertEqual(n.map(\.argument), ["--coordinator=tcp://10.0.0.1:5500", "--memory-budget=4GiB"])
    }

    func testNullAndEmptyValuesKeepTheDefault() throws {
        let f = try parse("coordinator:\n  served_model_name: ~\n  http:\n    port:\nnode:\n")
        XCTAssertEqual(try ClusterConfig.arguments(f, section: .coordinator), [])
        XCTAssertEqual(try ClusterConfig.arguments(f, section: .node), [])
        XCTAssertEqual(try parse("").sections.count, 0)
    }

    func testErrorsNameTheKeyAndLine() {
        let cases: [(String, ConfigError)] = [
            ("coordinator:\n  htp:\n    port: 1\n", .unknownKey(file: "c.yaml", line: 2, key: "coordinator.htp",
                                                             known: ["batching", "chat_template", "http", "keys", "kv", "model", "nodes", "placement", "rebalance_every", "redundant_experts", "served_model_name", "threads"])),
            ("coordinator:\n  http:\n    port: \"80\"\n", .wrongType(file: "c.yaml", line: 3, key: "coordinator.http.port", expected: "an integer", got: "'80'")),
            ("coordinator:\n  http: 5\n", .notMapping(file: "c.yaml", line: 2, key: "coordinator.http")),
            ("coordinator:\n  kv:\n    budget: lots\n", .wrongType(file: "c.yaml", line: 3, key: "coordinator.kv.budget", expected: "a size such as 4GiB or 512MiB", got: "'lots'")),
            ("coordinator:\n  http:\n    port: [1]\n", .wrongType(file: "c.yaml", line: 3, key: "coordinator.http.port", expected: "an integer", got: "a list")),
            ("coordinator:\n  nodes:\n    timeout: .nan\n", .wrongType(file: "c.yaml", line: 3, key: "coordinator.nodes.timeout", expected: "a number", got: "'.nan'")),
            ("coordinator:\n  redundant_experts: some\n", .wrongType(file: "c.yaml", line: 2, key: "coordinator.redundant_experts", expected: "an integer", got: "'some'")),
            ("coordinator:\n  model: /nonexistent/m.gguf\n", .missingModel(file: "c.yaml", line: 2, key: "coordinator.model", path: "/nonexistent/m.gguf")),
        ]
        for (text, want) in cases {
            XCTAssertThrowsError(try parse(text), text) { XCTAssertEqual($0 as? ConfigError, want, text) }
        }
        XCTAssertThrowsError(try parse("a: [")) { e in
            guard case .syntax(_, let line, _, _)? = e as? ConfigError else { return XCTFail("\(e)") }
            XCTAssertEqual(line, 2)
        }
        XCTAssertThrowsError(try ClusterConfig.arguments(try parse("node:\n  id: a\n"), section: .coordinator)) {
            XCTAssertEqual($0 as? ConfigError, .missingSection(file: "c.yaml", section: "coordinator"))
        }
        XCTAssertThrowsError(try ClusterConfig.load("/nonexistent/farside.yaml")) { e in
            guard case .unreadable? = e as? ConfigError else { return XCTFail("\(e)") }
        }
    }

    func testTheFlagARejectionNamesLeadsBackToItsKey() throws {
        let args = try ClusterConfig.arguments(try parse("coordinator:\n  kv:\n    block_size: 0\n    budget: 1GiB\n"), section: .coordinator)
        XCTAssertEqual(ClusterConfig.origin(of: "--kv-block-size must be in 1...4096, got 0", in: args)?.key, "coordinator.kv.block_size")
        XCTAssertEqual(ClusterConfig.origin(of: "--kv-budget '1GiB' is too much", in: args)?.line, 4)
        XCTAssertNil(ClusterConfig.origin(of: "--port must be in 0...65535", in: args))
    }
}
