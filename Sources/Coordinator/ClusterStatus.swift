import Foundation
import Placement

/// What `farside cluster status` and `GET /admin/cluster` show: nodes, what they hold, their
/// load, round trip and modelled power, energy, cost and carbon (from their declared profiles
/// and the busy time they report), per node and per million generated tokens.
public struct ClusterStatus: Codable, Sendable {
    public struct Node: Codable, Sendable {
        public var id: String
        public var endpoint: String
        /// serving, draining, dead or drained.
        public var state: String
        public var experts: Int
        /// Of `experts`, those that have another replica elsewhere.
        public var replicated: Int
        public var memoryBudgetBytes: UInt64
        public var expertBytes: UInt64
        public var device: String
        public var idleWatts: Double
        public var busyWatts: Double
        public var memoryBandwidth: Double
        /// Routed tokens sent to the node over the statistics window.
        public var routedTokens: Double
        public var roundTripMs: Double
        /// Fraction of the accounted time the node reported busy.
        public var utilisation: Double
        /// Seconds the node reported busy computing experts since it joined.
        public var busySeconds: Double
        /// Modelled draw over the last heartbeat interval (W, PUE included).
        public var watts: Double
        public var joules: Double
        public var dollars: Double
        public var gramsCO2: Double
    }
    public var strategy: String
    public var epoch: UInt64
    /// The planner's prediction for the current placement at the load of the statistics window
    /// (`PlacementCost.predict`, the model every strategy optimises): routed-expert seconds per
    /// step of the busiest node, and of a step's critical path (the slowest node of each layer).
    /// Nil before any traffic.
    public var predictedSlowestNodeStepSeconds: Double?
    public var predictedExpertStepSeconds: Double?
    public var replacing: Bool
    public var statisticsWindowSeconds: Double
    public var nodes: [Node]
    public var generatedTokens: Int
    public var joules: Double
    public var dollars: Double
    public var gramsCO2: Double
    /// Per million generated tokens (nil before the first token).
    public var joulesPerMillionTokens: Double?
    public var dollarsPerMillionTokens: Double?
    public var gramsCO2PerMillionTokens: Double?
    /// Measured package energy from RAPL (/sys/class/powercap) where the machine exposes it:
    /// the coordinator's machine, for comparison with the modelled figures. Nil elsewhere.
    public var measuredJoules: Double?
}

extension ExpertCluster {
    /// The status, with `generatedTokens` (the engine's count) for per-token figures.
    public func status(generatedTokens: Int) -> ClusterStatus {
        let load = statistics.load(now: Self.now())
        let bytes = layout.expertBytes
        var replicasOf: [Int: Int] = [:]   // layer << 20 | expert -> replica count
        for (layer, row) in placement { for (e, reps) in row.enumerated() { replicasOf[layer << 20 | e] = reps.count } }
        var out: [ClusterStatus.Node] = []
        for (i, n) in nodes.enumerated() {
            let state = n.left ? "drained" : !n.alive ? "dead" : n.draining ? "draining" : "serving"
            var routed = 0.0
            for (layer, e) in n.experts {
                guard let pos = layerPosition[layer], let reps = placement[layer]?[e], reps.contains(i) else { continue }
                routed += load.tokens[pos][e] / Double(reps.count)
            }
            out.append(ClusterStatus.Node(
                id: n.id, endpoint: n.endpoint, state: state, experts: n.experts.count,
                replicated: n.experts.filter { (replicasOf[$0.layer << 20 | $0.expert] ?? 1) > 1 }.count,
                memoryBudgetBytes: n.memoryBudget, expertBytes: UInt64(n.experts.count) * bytes, device: n.profile.device,
                idleWatts: n.profile.idleWatts, busyWatts: n.profile.busyWatts, memoryBandwidth: n.profile.memoryBandwidth,
                routedTokens: routed, roundTripMs: n.roundTrip * 1000, utilisation: n.energy.utilisation, busySeconds: n.energy.busySeconds,
                watts: n.energy.lastWatts, joules: n.energy.joules, dollars: n.energy.dollars, gramsCO2: n.energy.gramsCO2))
        }
        let j = out.reduce(0) { $0 + $1.joules }, d = out.reduce(0) { $0 + $1.dollars }, g = out.reduce(0) { $0 + $1.gramsCO2 }
        let perMillion = generatedTokens > 0 ? 1e6 / Double(generatedTokens) : nil
        var prediction: PlacementPrediction?
        if statistics.total > 0, let current = currentPlacement(liveOnly: false) {
            prediction = PlacementCost.predict(layout: layout, nodes: planNodes(), placement: current, load: load)
        }
        return ClusterStatus(strategy: strategy.description, epoch: epoch,
                             predictedSlowestNodeStepSeconds: prediction?.slowestNodeWork,
                             predictedExpertStepSeconds: prediction?.stepSeconds, replacing: transition != nil,
                             statisticsWindowSeconds: statistics.windowSeconds, nodes: out, generatedTokens: generatedTokens,
                             joules: j, dollars: d, gramsCO2: g,
                             joulesPerMillionTokens: perMillion.map { j * $0 }, dollarsPerMillionTokens: perMillion.map { d * $0 },
                             gramsCO2PerMillionTokens: perMillion.map { g * $0 }, measuredJoules: Self.raplJoules())
    }

    /// Sum of the RAPL package counters (µJ) in joules, or nil where there are none (most VMs).
    static func raplJoules() -> Double? {
        let root = "/sys/class/powercap"
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: root) else { return nil }
        var total = 0.0, found = false
        for e in entries where e.hasPrefix("intel-rapl:") && e.split(separator: ":").count == 2 {
            guard let text = try? String(contentsOfFile: "\(root)/\(e)/energy_uj", encoding: .utf8),
                  let uj = Double(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { continue }
            total += uj * 1e-6
            found = true
        }
        return found ? total : nil
    }
}

/// One node's modelled energy, cost and carbon since it joined, from the busy time its
/// heartbeats report (`EnergyModel`: its profile at its utilisation, times PUE).
struct NodeEnergy {
    var joules = 0.0, dollars = 0.0, gramsCO2 = 0.0
    var busySeconds = 0.0, seconds = 0.0
    /// Wall watts over the last interval.
    var lastWatts = 0.0

    var utilisation: Double { seconds > 0 ? min(1, busySeconds / seconds) : 0 }

    mutating func add(profile: PowerProfile, busySeconds busy: Double, intervalSeconds dt: Double) {
        guard dt > 0 else { return }
        let j = EnergyModel.joules(profile, busySeconds: busy, intervalSeconds: dt)
        joules += j
        dollars += EnergyModel.dollars(joules: j, profile)
        gramsCO2 += EnergyModel.grams(joules: j, profile)
        busySeconds += min(busy, dt)
        seconds += dt
        lastWatts = j / dt
    }
}
