import Foundation
import Placement

/// Tokens routed to each (MoE layer, expert) over a moving window, counted from the router's
/// choices as the coordinator dispatches them: the input of load-aware placement (EPLB's
/// "expert load"), and what `farside cluster load` exports for the simulator to replay.
///
/// The window is `buckets` intervals of `bucketSeconds`; counting adds to the newest, and a
/// bucket older than the window is cleared before it is reused. Counting allocates nothing.
public struct RoutingStatistics: Sendable {
    public let layers: Int
    public let experts: Int
    public let bucketSeconds: Double
    /// counts[bucket][position * experts + expert]
    private var counts: [[UInt64]]
    /// The interval number each bucket holds (-1: never used).
    private var interval: [Int]
    /// Forward steps counted in each bucket (a step is counted at its first MoE layer).
    private var steps: [UInt64]
    private var current = 0
    /// Tokens counted since the start (routes, i.e. token × top-k).
    public private(set) var total: UInt64 = 0

    public init(layers: Int, experts: Int, bucketSeconds: Double = 10, buckets: Int = 6) {
        self.layers = layers
        self.experts = experts
        self.bucketSeconds = bucketSeconds
        counts = Array(repeating: Array(repeating: 0, count: layers * experts), count: max(1, buckets))
        interval = Array(repeating: -1, count: max(1, buckets))
        steps = Array(repeating: 0, count: max(1, buckets))
    }

    /// Seconds the window spans.
    public var windowSeconds: Double { bucketSeconds * Double(counts.count) }

    /// Points counting at the bucket for time `now` (seconds, monotonic), clearing it if it held
    /// an older interval. Called once per layer step, not per route.
    public mutating func advance(to now: Double) {
        let k = Int(now / bucketSeconds)
        let b = k % counts.count
        if interval[b] != k {
            for i in counts[b].indices { counts[b][i] = 0 }
            steps[b] = 0
            interval[b] = k
        }
        current = b
    }

    /// Counts one forward step (call at its first MoE layer).
    public mutating func recordStep() { steps[current] &+= 1 }

    /// Counts one routed token for `expert` of the MoE layer at `position`.
    @inline(__always)
    public mutating func record(position: Int, expert: Int) {
        counts[current][position * experts + expert] &+= 1
        total &+= 1
    }

    /// Tokens per (layer position, expert) over the window ending at `now`.
    public func load(now: Double) -> ExpertLoad {
        let k = Int(now / bucketSeconds)
        var tokens = Array(repeating: Array(repeating: 0.0, count: experts), count: layers)
        var stepCount = 0.0, buckets = 0
        for b in counts.indices where interval[b] >= 0 && k - interval[b] < counts.count {
            for l in 0..<layers {
                for e in 0..<experts { tokens[l][e] += Double(counts[b][l * experts + e]) }
            }
            stepCount += Double(steps[b])
            buckets += 1
        }
        // The window's wall time: whole buckets, the newest counted as half gone.
        let seconds = buckets > 0 ? (Double(buckets) - 0.5) * bucketSeconds : nil
        return ExpertLoad(tokens: tokens, steps: max(1, stepCount), seconds: seconds)
    }
}
