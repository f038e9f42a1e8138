import Foundation
import Placement

/// Step time and busy time per node for one placement: the roofline of `PowerProfile.seconds`
/// plus fixed overheads, as Vidur models an iteration from per-operator costs (Agrawal et al.,
/// MLSys 2024), here with the operators' costs from public hardware figures or `calibrate`.
///
/// Routing uses expected counts: a step of T tokens sends T·k·share[l][e] tokens to expert e of
/// layer l, split evenly over its copies, and each copy costs `PlacementCost.expertWork` (which
/// already charges an expert's weights only with the probability that a token reaches it). So the
/// experts' part of a step depends on T alone and is tabulated once per T.
public struct CostModel {
    public let model: ModelSpec
    public let cluster: ClusterSpec
    public let placement: ExpertPlacement
    let shares: RoutingShares
    /// Per layer, per node: (expert share of the layer's routed tokens, divided by its copies).
    let perNode: [[[Double]]]
    /// Nodes that share a host with others (`SimulatedNode.host`), one list per host, under
    /// processor sharing.
    let hosts: [[Int]]
    /// Per node: the measured slow-down of its host's nodes (`HostSharing`), for nodes whose host
    /// holds as many nodes as were measured; nil for the others.
    let measuredSharing: [HostSharing?]
    /// Tabulated experts' phase per step size T: seconds on the critical path, busy seconds per node.
    private var table: [(seconds: Double, busy: [Double])?]

    public init(model: ModelSpec, cluster: ClusterSpec, placement: ExpertPlacement, shares: RoutingShares) {
        self.model = model
        self.cluster = cluster
        self.placement = placement
        self.shares = shares
        var perNode = [[[Double]]](repeating: [[Double]](repeating: [], count: cluster.nodes.count), count: model.moeLayers)
        for (l, row) in placement.replicas.enumerated() {
            for (e, copies) in row.enumerated() where !copies.isEmpty {
                for n in copies { perNode[l][n].append(shares.shares[l][e] / Double(copies.count)) }
            }
        }
        self.perNode = perNode
        var groups: [String: [Int]] = [:]
        for (n, node) in cluster.nodes.enumerated() { if let h = node.host { groups[h, default: []].append(n) } }
        var measured = [HostSharing?](repeating: nil, count: cluster.nodes.count)
        var shared: [[Int]] = []
        for group in groups.values.sorted(by: { $0[0] < $1[0] }) where group.count > 1 {
            // Every node of the host must carry the measurement, made with as many nodes.
            let m = group.compactMap { cluster.nodes[$0].hostSharing }
            if m.count == group.count, m.allSatisfy({ $0.nodes == group.count }) {
                for n in group { measured[n] = cluster.nodes[n].hostSharing }
            } else {
                shared.append(group)
            }
        }
        hosts = shared
        measuredSharing = measured
        table = [(seconds: Double, busy: [Double])?](repeating: nil, count: cluster.limits.maxBatchTokens + 1)
    }

    /// Seconds the coordinator needs for a step's attention and other non-expert work: its
    /// weights read once, 2 FLOPs per weight per token, each running sequence's KV read once, and
    /// attention FLOPs over the positions each new token sees; plus its fixed step overhead.
    /// `positions` is Σ over the step's tokens of the positions each attends to; `kvTokens` the
    /// KV tokens of the sequences in the step.
    public func attentionSeconds(tokens: Int, positions: Double, kvTokens: Double) -> Double {
        let p = model.coordinatorParameters
        let c = cluster.coordinator
        return c.profile.seconds(bytes: 2 * p + kvTokens * model.kvBytesPerToken,
                                 flops: 2 * p * Double(tokens) + model.attentionFlopsPerPosition * positions) + c.overhead
    }

    /// When each node finishes a layer's `work` (seconds it would take with its machine to
    /// itself) started at the same time: a node alone on its machine at `work`; nodes on one
    /// host (`hosts`) share it equally while they work (processor sharing, as the kernel's
    /// scheduler shares cores between busy processes), so with works w1 ≤ w2 ≤ … ≤ wk the i-th
    /// finishes at Σ_{j<i} w_j + (k − i + 1)·w_i, and the last at Σ w.
    static func sharedFinishTimes(work: [Double], hosts: [[Int]]) -> [Double] {
        var finish = work
        for group in hosts {
            let busy = group.filter { work[$0] > 0 }.sorted { work[$0] < work[$1] }
            var done = 0.0
            for (i, n) in busy.enumerated() {
                finish[n] = done + Double(busy.count - i) * work[n]
                done += work[n]
            }
        }
        return finish
    }

    /// The experts' phase of a step of `tokens` tokens: Σ over MoE layers of the slowest node's
    /// compute plus its link time (latency both ways, activations out and back), and each node's
    /// busy (compute) seconds; nodes sharing a host take their finish times under processor
    /// sharing (`sharedFinishTimes`) for both, or, where the host's sharing was measured
    /// (`HostSharing`), their work times its busy factor as busy time and times its wall factor
    /// as finish time.
    public mutating func expertSeconds(tokens: Int) -> (seconds: Double, busy: [Double]) {
        if tokens < table.count, let hit = table[tokens] { return hit }
        let layout = model.layout
        let routed = Double(tokens) * Double(model.expertsPerToken)
        var busy = [Double](repeating: 0, count: cluster.nodes.count)
        var total = 0.0
        var work = [Double](repeating: 0, count: cluster.nodes.count), link = work
        let busyFactor = measuredSharing.map { $0?.factor(tokens: tokens) ?? 1 }
        let wallFactor = measuredSharing.map { $0?.wallFactor(tokens: tokens) ?? 1 }
        for layer in perNode {
            for (n, copies) in layer.enumerated() {
                work[n] = 0
                link[n] = 0
                guard !copies.isEmpty else { continue }
                let node = cluster.nodes[n]
                var w = node.overhead, rows = 0.0
                for share in copies {
                    let t = routed * share
                    rows += t
                    w += PlacementCost.expertWork(layout: layout, profile: node.profile, tokens: t)
                }
                work[n] = w
                link[n] = 2 * node.linkLatency + (node.linkBandwidth > 0 ? 2 * rows * model.activationBytes / node.linkBandwidth : 0)
            }
            // Nodes sharing a host compute at once on its cores: each takes its finish time.
            // Elsewhere (a machine each, or a measured host) busy and finish are the work's
            // times their factors (1 on a machine of its own).
            let finish = Self.sharedFinishTimes(work: work, hosts: hosts)
            var slowest = 0.0
            for n in 0..<work.count where work[n] > 0 {
                let measured = measuredSharing[n] != nil
                busy[n] += measured ? work[n] * busyFactor[n] : finish[n]
                slowest = max(slowest, (measured ? work[n] * wallFactor[n] : finish[n]) + link[n])
            }
            total += slowest
        }
        if tokens < table.count { table[tokens] = (total, busy) }
        return (total, busy)
    }
}
