import Foundation

/// How much longer expert nodes that share one machine take over a layer than the roofline says
/// for the same work, as measured on that machine (`farside simulate calibrate --local-nodes N`).
///
/// Processor sharing (`CostModel.sharedFinishTimes`) assumes the nodes compute at the same
/// instants; on the 2-core VM three local nodes overlap only partly (the coordinator sends to them
/// one after another and a decode layer's compute is about as short as a send), and the roofline
/// leaves out what small expert calls cost beyond their bytes and FLOPs (thread hand-offs,
/// wake-ups of processes sharing the cores). A measurement of both, per step size, replaces the
/// assumption for a host whose nodes carry it: a node's layer work (and so its busy time and
/// its finish) is the roofline's times `factor(tokens:)`.
public struct HostSharing: Sendable, Equatable, Codable {
    /// How many nodes shared the host while it was measured; it applies to hosts of as many.
    public var nodes: Int
    /// Measured factors by step size (tokens in the engine step), increasing in `tokens`.
    public var factors: [Point]

    public struct Point: Sendable, Equatable, Codable {
        public var tokens: Int
        /// The nodes' reported compute seconds for a layer step of `tokens` tokens (summed over
        /// the nodes, median over steps) divided by the cost model's busy seconds for it.
        public var factor: Double
        public init(tokens: Int, factor: Double) {
            self.tokens = tokens
            self.factor = factor
        }
    }

    public init(nodes: Int, factors: [Point]) {
        self.nodes = nodes
        self.factors = factors
    }

    /// Why the measurement cannot be used (nil: it can): no points, tokens not increasing from
    /// 1, a factor not positive and finite, fewer than two nodes.
    public var problem: String? {
        guard nodes >= 2 else { return "hostSharing.nodes must be ≥ 2 (nodes sharing one machine), got \(nodes)" }
        guard !factors.isEmpty else { return "hostSharing.factors is empty" }
        for (i, p) in factors.enumerated() {
            guard p.tokens >= 1 else { return "hostSharing.factors[\(i)].tokens must be ≥ 1, got \(p.tokens)" }
            guard i == 0 || p.tokens > factors[i - 1].tokens else { return "hostSharing.factors must be in increasing tokens (entry \(i): \(p.tokens))" }
            guard p.factor.isFinite && p.factor > 0 else { return "hostSharing.factors[\(i)].factor must be a positive number, got \(p.factor)" }
        }
        return nil
    }

    /// The factor for a step of `tokens` tokens: linear in log(tokens) between the measured
    /// points, the end points' beyond them.
    public func factor(tokens: Int) -> Double {
        guard let first = factors.first, let last = factors.last else { return 1 }
        if tokens <= first.tokens { return first.factor }
        if tokens >= last.tokens { return last.factor }
        let t = log(Double(tokens))
        for (a, b) in zip(factors, factors.dropFirst()) where tokens <= b.tokens {
            let u = (t - log(Double(a.tokens))) / (log(Double(b.tokens)) - log(Double(a.tokens)))
            return a.factor + u * (b.factor - a.factor)
        }
        return last.factor
    }
}

/// The keys a calibrated profile file carries beside the `PowerProfile` ones.
struct CalibratedExtras: Decodable {
    var hostSharing: HostSharing?
}
