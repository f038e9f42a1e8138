import Foundation

/// How much longer expert nodes that share one machine take over a layer than the roofline says
/// for the same work, as measured on that machine (`farside simulate calibrate --local-nodes N`).
///
/// Processor sharing (`CostModel.sharedFinishTimes`) assumes the nodes compute at the same
/// instants; on the 2-core VM three local nodes overlap only partly (the coordinator sends to them
/// one after another and a decode layer's compute is about as short as a send), and the roofline
/// leaves out what small expert calls cost beyond their bytes and FLOPs (thread hand-offs,
/// wake-ups of processes sharing the cores). A measurement of both, per step size, replaces the
/// assumption for a host whose nodes carry it: a node's busy time for a layer is the roofline's
/// work times `factor(tokens:)`, and its finish (what the layer waits for, beyond the link) the
/// roofline's work times `wallFactor(tokens:)`. The two differ: a node's reported compute counts
/// the time the others held the cores while it worked, and the layer waits for the last node,
/// which may have waited for the others' turns before it began.
public struct HostSharing: Sendable, Equatable, Codable {
    /// How many nodes shared the host while it was measured; it applies to hosts of as many.
    public var nodes: Int
    /// Measured factors by step size (tokens in the engine step), increasing in `tokens`.
    public var factors: [Point]

    public struct Point: Sendable, Equatable, Codable {
        public var tokens: Int
        /// The nodes' reported compute seconds for a layer step of `tokens` tokens (summed over
        /// the nodes, a mean over steps) divided by the cost model's busy seconds for it.
        public var factor: Double
        /// The layer step's wall time beyond the fixed round trip (`linkRoundTripSeconds`; a mean
        /// over steps, at least the compute the node answering last reported) divided by the
        /// cost model's slowest node's work for it. Nil in a profile written before it was
        /// measured: `factor` stands in.
        public var wallFactor: Double?
        public init(tokens: Int, factor: Double, wallFactor: Double? = nil) {
            self.tokens = tokens
            self.factor = factor
            self.wallFactor = wallFactor
        }
    }

    /// The routing statistics file whose shares drew the measured steps' routes; nil: uniform
    /// routes. Factors measured under a router's skew fit a simulation of that skew better: a
    /// node runs each expert holding several rows on one of its threads, so a hot expert's
    /// many rows leave its other threads idle, which the roofline does not see.
    public var routing: String?

    /// The live server's step log (`farside serve --step-log`) whose steps gave the busy
    /// and wall factors where it held enough of a size (`StepLog.fit`); nil: the probes' alone.
    public var stepLog: String?

    public init(nodes: Int, factors: [Point], routing: String? = nil, stepLog: String? = nil) {
        self.nodes = nodes
        self.factors = factors
        self.routing = routing
        self.stepLog = stepLog
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
            if let w = p.wallFactor, !(w.isFinite && w > 0) { return "hostSharing.factors[\(i)].wallFactor must be a positive number, got \(w)" }
        }
        return nil
    }

    /// The busy-time factor for a step of `tokens` tokens: linear in log(tokens) between the
    /// measured points, the end points' beyond them.
    public func factor(tokens: Int) -> Double { interpolate(tokens) { $0.factor } }

    /// The finish-time factor for a step of `tokens` tokens, interpolated as `factor(tokens:)`;
    /// `factor` where a point has no `wallFactor`.
    public func wallFactor(tokens: Int) -> Double { interpolate(tokens) { $0.wallFactor ?? $0.factor } }

    private func interpolate(_ tokens: Int, _ value: (Point) -> Double) -> Double {
        guard let first = factors.first, let last = factors.last else { return 1 }
        if tokens <= first.tokens { return value(first) }
        if tokens >= last.tokens { return value(last) }
        let t = log(Double(tokens))
        for (a, b) in zip(factors, factors.dropFirst()) where tokens <= b.tokens {
            let u = (t - log(Double(a.tokens))) / (log(Double(b.tokens)) - log(Double(a.tokens)))
            return value(a) + u * (value(b) - value(a))
        }
        return value(last)
    }
}

/// The keys a calibrated profile file carries beside the `PowerProfile` ones.
struct CalibratedExtras: Decodable {
    var hostSharing: HostSharing?
}
