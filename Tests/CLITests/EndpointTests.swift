import Foundation
import XCTest

/// `farside expert` refuses endpoints it cannot honour before it starts, naming the flag and
/// the reason, instead of binding or connecting somewhere else.
final class EndpointTests: XCTestCase {
    func testBadEndpointsAreRefusedWithTheReason() throws {
        let model = CLI.fixtures.appendingPathComponent("mixtral").path
        let good = "tcp://127.0.0.1:5555"
        for (flag, value, words) in [("--listen", "tcp://127.0.0.1:99999", ["--listen", "99999", "0...65535"]),
                                     ("--listen", "tcp://127.0.0.1:123456789012345678901", ["--listen", "0...65535"]),
                                     ("--coordinator", "tcp://127.0.0.1:70000", ["--coordinator", "70000", "0...65535"]),
                                     ("--coordinator", "tcp://127.0.0.1:*", ["--coordinator", "only be bound"]),
                                     ("--coordinator", "tcp://127.0.0.1:0", ["--coordinator", "only be bound"]),
                                     ("--listen", "udp://127.0.0.1:5", ["--listen", "not a ZeroMQ endpoint"]),
                                     ("--listen", "tcp://", ["--listen", "invalid endpoint"])] {
            let other = flag == "--listen" ? "--coordinator" : "--listen"
            try assertFails(["expert", flag, value, other, good, "--model", model], mentioning: words)
        }
    }
}
