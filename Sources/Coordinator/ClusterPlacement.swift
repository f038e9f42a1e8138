import Foundation
import Models
import Placement
import Protocol
import Transport

/// Errors of placement commands on a running cluster (`farside cluster drain|rebalance`).
public enum PlacementCommandError: Error, CustomStringConvertible {
    case unknownNode(String, known: [String])
    case nodeNotServing(String)
    case busy
    case failed(String)

    public var description: String {
        switch self {
        case let .unknownNode(id, known):
            return "no expert node \"\(id)\" (nodes: \(known.isEmpty ? "none" : known.joined(separator: ", ")))"
        case .nodeNotServing(let id):
            return "expert node \"\(id)\" is not serving (it is dead, draining or drained already)"
        case .busy:
            return "another re-placement is under way; try again when it has finished"
        case .failed(let why):
            return why
        }
    }
}

extension ExpertCluster {
    /// A placement being applied make-before-break: the nodes that gain experts have been sent
    /// their current experts plus the new ones (`epoch`); routing switches to `target` between
    /// steps once they have all loaded, then every node is sent its final set (dropping what
    /// moved away) and the retiring nodes are told to exit.
    struct Transition {
        var target: [Int: [[Int]]]
        var epoch: UInt64
        var members: [Int]
        var retiring: [Int]
        var deadline: Double
        var reason: String
        var done: [(PlacementCommandError?) -> Void]
    }

    /// Whether a node may hold experts in the next placement.
    func available(_ i: Int) -> Bool { nodes[i].alive && !nodes[i].draining }

    /// The model's routed experts as the planner sees them: MoE layers by position (in
    /// `model.sparseLayers` order), each expert's weight bytes (packed, as stored) and FLOPs.
    var layout: ExpertLayout {
        if let l = layoutCache { return l }
        let l = makeLayout()
        layoutCache = l
        return l
    }

    func makeLayout() -> ExpertLayout {
        let sparse = model.sparseLayers
        let experts = sparse.map(\.experts).max() ?? 0
        let ffn = sparse.first.flatMap { try? model.expertLoader($0.layer, 0) }
        return ExpertLayout(layers: sparse.count, experts: experts, expertBytes: UInt64(ffn?.weightBytes ?? 0),
                            expertFlopsPerToken: Double(6 * (ffn?.hidden ?? 0) * (ffn?.intermediate ?? 0)),
                            expertsPerToken: sparse.first?.router.topK ?? 1)
    }

    /// `placement` keyed by layer position, as the planner takes it (dead replicas left out).
    func currentPlacement(liveOnly: Bool) -> ExpertPlacement? {
        guard !placement.isEmpty else { return nil }
        return ExpertPlacement(replicas: model.sparseLayers.map { l in
            (placement[l.layer] ?? []).map { reps in liveOnly ? reps.filter { available($0) } : reps }
        })
    }

    func keyed(_ p: ExpertPlacement) -> [Int: [[Int]]] {
        var out: [Int: [[Int]]] = [:]
        for (pos, l) in model.sparseLayers.enumerated() { out[l.layer] = Array(p.replicas[pos].prefix(l.experts)) }
        return out
    }

    func planNodes() -> [PlacementNode] {
        nodes.map { PlacementNode(id: $0.id, memoryBytes: $0.memoryBudget, profile: $0.profile) }
    }

    /// A new placement by `strategy` over the available nodes, from the routing statistics.
    func plan(_ strategy: PlacementStrategy, keep: Bool) throws -> [Int: [[Int]]] {
        let load = statistics.total > 0 ? statistics.load(now: Self.now()) : nil
        let p = try Planner.plan(layout: layout, nodes: planNodes(), available: nodes.indices.map(available),
                                 load: load, strategy: strategy, current: keep ? currentPlacement(liveOnly: true) : nil)
        return keyed(p)
    }

    /// Experts per node in a placement.
    func experts(of p: [Int: [[Int]]], node: Int) -> [(layer: Int, expert: Int)] {
        var out: [(layer: Int, expert: Int)] = []
        for (layer, row) in p.sorted(by: { $0.key < $1.key }) {
            for (e, reps) in row.enumerated() where reps.contains(node) { out.append((layer, e)) }
        }
        return out
    }

    func sendAssignment(_ node: Int, _ experts: [(layer: Int, expert: Int)], epoch: UInt64) throws {
        let n = nodes[node]
        if n.streamsWeights {
            // Weights first, on the same connection: they arrive before the assignment names them.
            for key in experts where !n.streamed.contains(key.layer << 20 | key.expert) {
                try sendWeights(node, key)
            }
            // After this assignment the node holds exactly these (it releases the rest), or, if it
            // refuses it, at least these: so it is never sent an assignment it lacks weights for.
            n.streamed = Set(experts.map { $0.layer << 20 | $0.expert })
        }
        var a = Farside_V1_Assignment()
        a.epoch = epoch
        a.experts = experts.map { key in
            var k = Farside_V1_ExpertKey()
            k.layer = UInt32(key.layer)
            k.expert = UInt32(key.expert)
            return k
        }
        nodes[node].ackError = nil
        try control.send([.data(nodes[node].route), try envelope(.assignment(a))], flags: .dontWait)
    }

    /// Sends one expert's weights to a weight-streaming node: gate, up and down as stored in the
    /// model's memory, zero-copy (the model outlives the send; only a column slice is copied).
    func sendWeights(_ node: Int, _ key: (layer: Int, expert: Int)) throws {
        let ffn = try model.expertLoader(key.layer, key.expert)
        var w = Farside_V1_ExpertWeights()
        w.key.layer = UInt32(key.layer)
        w.key.expert = UInt32(key.expert)
        var payload: [Frame] = []
        for m in [ffn.gate, ffn.up, ffn.down] {
            var t = Farside_V1_TensorShape()
            t.format = m.dtype.rawValue
            t.rows = UInt32(m.rows)
            t.cols = UInt32(m.cols)
            w.tensors.append(t)
            if m.rowStride == m.rowBytes {
                payload.append(.noCopy(pointer: m.data, count: m.byteCount, owner: model))
            } else {
                var rows = Data(count: m.byteCount)
                rows.withUnsafeMutableBytes { dst in
                    for r in 0..<m.rows { (dst.baseAddress! + r * m.rowBytes).copyMemory(from: m.data + r * m.rowStride, byteCount: m.rowBytes) }
                }
                payload.append(.data(rows))
            }
        }
        try control.send([.data(nodes[node].route), try envelope(.expertWeights(w))] + payload, flags: .dontWait)
        streamedBytes += ffn.weightBytes
    }

    /// Seconds to allow nodes for loading an assignment: the node timeout, and for streamed
    /// weights the time to send them at 50 MB/s (a slow link) on top.
    func loadDeadline(streamedSince start: Int) -> Double {
        Self.now() + max(options.nodeTimeout * 5, 10) + Double(streamedBytes - start) / 50e6
    }

    /// Places every routed expert at once and waits for the nodes to load it: at start, and when
    /// a node died under a step (which cannot go on until every expert has a live replica).
    /// Experts whose replicas are all still alive stay where they are; only the orphans move
    /// (the `memory` rule), so recovery loads as little as possible.
    func place() throws {
        abandonTransition("a node died; the experts were placed again")
        let live = nodes.indices.filter(available)
        guard !live.isEmpty else { throw ClusterError.noLiveNodes }
        let target: [Int: [[Int]]]
        do {
            target = try plan(placement.isEmpty ? strategy : .memory, keep: true)
        } catch let e as PlacementError {
            throw ClusterError.placement("\(e)")
        }
        placement = target
        epoch += 1
        let streamedBefore = streamedBytes
        for i in live {
            nodes[i].experts = experts(of: placement, node: i)
            try sendAssignment(i, nodes[i].experts, epoch: epoch)
        }
        let deadline = loadDeadline(streamedSince: streamedBefore)
        while true {
            // A node that died meanwhile holds part of this placement: place again without it.
            if live.contains(where: { !nodes[$0].alive }) { return try place() }
            let pending = live.filter { nodes[$0].alive && nodes[$0].acknowledgedEpoch < epoch }
            if let bad = live.first(where: { nodes[$0].ackError != nil }) {
                throw ClusterError.nodeRefused(node: nodes[bad].id, reason: nodes[bad].ackError!)
            }
            if pending.isEmpty { break }
            if Self.now() > deadline {
                for i in pending { markDead(i, "did not load its assignment in time") }
                return try place()
            }
            try pumpControl(timeout: 0.05)
        }
        logPlacement()
    }

    func logPlacement() {
        log("placement epoch \(epoch): " + nodes.indices.filter(available).map { "\(nodes[$0].id)=\(nodes[$0].experts.count)" }
            .joined(separator: " "))
    }

    /// Starts applying `target` make-before-break (see `Transition`); `retiring` nodes hold
    /// nothing in it and are told to exit once routing has left them.
    func beginTransition(to target: [Int: [[Int]]], retiring: [Int], reason: String,
                         done: @escaping (PlacementCommandError?) -> Void) throws {
        epoch += 1
        var members: [Int] = []
        let streamedBefore = streamedBytes
        for i in nodes.indices where available(i) {
            let now = Set(nodes[i].experts.map { $0.layer << 20 | $0.expert })
            let gain = experts(of: target, node: i).filter { !now.contains($0.layer << 20 | $0.expert) }
            guard !gain.isEmpty else { continue }
            try sendAssignment(i, nodes[i].experts + gain, epoch: epoch)
            members.append(i)
        }
        transition = Transition(target: target, epoch: epoch, members: members, retiring: retiring,
                                deadline: loadDeadline(streamedSince: streamedBefore), reason: reason, done: [done])
        log("re-placement (\(reason)): \(members.count) node(s) loading experts first")
        advanceTransition()
    }

    /// Moves the transition on: switches when every member has loaded and no step is in flight.
    func advanceTransition() {
        guard let t = transition else { return }
        if let dead = t.members.first(where: { !nodes[$0].alive }) {
            return abandonTransition("node \(nodes[dead].id) died while loading its new experts")
        }
        if let bad = t.members.first(where: { nodes[$0].ackError != nil }) {
            return abandonTransition("node \(nodes[bad].id) could not load its new experts: \(nodes[bad].ackError!)")
        }
        let loaded = t.members.allSatisfy { nodes[$0].acknowledgedEpoch >= t.epoch }
        if !loaded {
            if Self.now() > t.deadline { abandonTransition("the nodes did not load their new experts in time") }
            return
        }
        guard steps.isEmpty else { return }
        // The switch: routing follows `target` from the next step on.
        transition = nil
        placement = t.target
        epoch += 1
        for i in nodes.indices where available(i) {
            nodes[i].experts = experts(of: placement, node: i)
            // The final set: what moved away is released (no reply awaited; routing no longer
            // sends it work for those experts).
            try? sendAssignment(i, nodes[i].experts, epoch: epoch)
        }
        for i in t.retiring where nodes[i].alive {
            nodes[i].experts = []
            sendShutdown(i)
            retire(i)
        }
        logPlacement()
        for d in t.done { d(nil) }
    }

    /// Gives up a transition: routing stays as it was, members drop what they loaded for it.
    func abandonTransition(_ why: String) {
        guard let t = transition else { return }
        transition = nil
        for i in t.members where available(i) {
            try? sendAssignment(i, nodes[i].experts, epoch: epoch + 1)
        }
        epoch += 1
        for i in t.retiring { nodes[i].draining = false }
        log("re-placement (\(t.reason)) abandoned: \(why)")
        for d in t.done { d(.failed("re-placement abandoned: \(why)")) }
    }

    /// Tells a node to exit (after a drain); best effort, as the node also stops when its
    /// coordinator goes.
    func sendShutdown(_ i: Int) {
        guard let frame = try? envelope(.shutdown(Farside_V1_Shutdown())) else { return }
        try? control.send([.data(nodes[i].route), frame], flags: .dontWait)
    }

    /// A drained node leaves: it is no longer a member of the cluster, and its closing
    /// connection is not a failure.
    func retire(_ i: Int) {
        nodes[i].alive = false
        nodes[i].left = true
        nodes[i].data?.close()
        nodes[i].data = nil
        nodes[i].events?.close()
        nodes[i].events = nil
        log("node \(nodes[i].id) drained: it holds no expert and was told to exit")
    }

    // MARK: commands (engine thread)

    /// Moves every expert off node `id` (make-before-break), then tells it to exit. `done` is
    /// called on this thread when it has left, or with why not.
    public func drain(node id: String, done: @escaping (PlacementCommandError?) -> Void) {
        guard let i = nodes.firstIndex(where: { $0.id == id && !$0.left }) else {
            return done(.unknownNode(id, known: nodes.filter { !$0.left }.map(\.id)))
        }
        guard available(i) else { return done(.nodeNotServing(id)) }
        guard transition == nil else { return done(.busy) }
        nodes[i].draining = true
        do {
            let target = try plan(strategy, keep: true)
            try beginTransition(to: target, retiring: [i], reason: "drain \(id)", done: done)
        } catch {
            nodes[i].draining = false
            done(.failed("cannot drain \(id): \(error)"))
        }
    }

    /// Places the experts anew by `strategy` (the configured one when nil) over the available
    /// nodes from the current routing statistics, make-before-break.
    public func rebalance(strategy requested: PlacementStrategy? = nil, done: @escaping (PlacementCommandError?) -> Void) {
        guard transition == nil else { return done(.busy) }
        do {
            let target = try plan(requested ?? strategy, keep: false)
            if let s = requested { strategy = s }
            guard target != placement else { return done(nil) }
            try beginTransition(to: target, retiring: [], reason: "rebalance", done: done)
        } catch {
            done(.failed("cannot place the experts: \(error)"))
        }
    }
}
