import Coordinator
import XCTest

/// The moving window of routed tokens the placement strategies read.
final class RoutingStatisticsTests: XCTestCase {
    func testCountsWithinTheWindowAndForgetsOlderBuckets() {
        var s = RoutingStatistics(layers: 2, experts: 4, bucketSeconds: 10, buckets: 3)
        XCTAssertEqual(s.windowSeconds, 30)
        s.advance(to: 5)
        s.recordStep()
        for e in [0, 0, 3] { s.record(position: 0, expert: e) }
        s.record(position: 1, expert: 2)
        var load = s.load(now: 5)
        XCTAssertEqual(load.tokens, [[2, 0, 0, 1], [0, 0, 1, 0]])
        XCTAssertEqual(load.steps, 1)
        XCTAssertEqual(load.seconds, 5)
        // Two buckets later the first still counts; a third pushes it out of the window.
        s.advance(to: 25)
        s.recordStep()
        s.record(position: 0, expert: 1)
        load = s.load(now: 25)
        XCTAssertEqual(load.tokens[0], [2, 1, 0, 1])
        XCTAssertEqual(load.steps, 2)
        s.advance(to: 35)
        s.record(position: 0, expert: 1)
        load = s.load(now: 35)
        XCTAssertEqual(load.tokens, [[0, 2, 0, 0], [0, 0, 0, 0]], "the bucket of t=5 has left the window and is reused")
        XCTAssertEqual(s.total, 6)
        // Long idle: nothing in the window, and reading does not count anything.
        XCTAssertEqual(s.load(now: 1000).tokens, [[0, 0, 0, 0], [0, 0, 0, 0]])
        XCTAssertNil(s.load(now: 1000).seconds)
    }
}
