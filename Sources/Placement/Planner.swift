import Foundation

/// The pure placement planner: from a layout, nodes, their availability, an observed load and a
/// strategy to where every expert's copies go. No I/O; equal input gives equal output.
public enum Planner {
    /// The default bound on the step time the power strategy may trade for energy: twice that of
    /// a balanced spread over all available nodes.
    public static let defaultMaxStepWorkRatio: Double = 2

    /// Plans a placement.
    ///
    /// - Parameters:
    ///   - available: per node, false for a dead or draining node: it is given nothing.
    ///   - load: tokens per expert over a window; nil = one token per expert per step.
    ///   - current: the placement in force. `memory` keeps every copy whose node is available and
    ///     has room and places only the rest; `balanced` and `power` return `current` unchanged
    ///     when it is valid and predicted as good as the new plan, and otherwise prefer, among
    ///     equally good choices, nodes that already hold the expert.
    ///   - maxStepWorkRatio: for `power`, each layer's slowest node may work at most this many
    ///     times as long per step as the slowest node of that layer under `balanced` (no redundant
    ///     experts) over all available nodes; so the step is at most that much slower. With the
    ///     load's `seconds`, the bound is tightened further until the steps fit in the window (never
    ///     below the balanced spread's). ≥ 1; `.infinity` leaves only memory and keeping up.
    ///   - releasedNodes: for `power`, how nodes left with nothing are charged: at idle power, or
    ///     as stopped (0 W).
    /// - Throws: `PlacementError` for unusable input (see its cases).
    public static func plan(layout: ExpertLayout, nodes: [PlacementNode], available: [Bool], load: ExpertLoad?,
                            strategy: PlacementStrategy, current: ExpertPlacement?,
                            maxStepWorkRatio: Double = defaultMaxStepWorkRatio,
                            releasedNodes: ReleasedNodePower = .off) throws -> ExpertPlacement {
        let c = try Context(layout: layout, nodes: nodes, available: available, load: load, current: current,
                            maxStepWorkRatio: maxStepWorkRatio)
        switch strategy {
        case .memory:
            return c.memory()
        case let .balanced(r):
            let maximum = layout.experts * (nodes.count - 1)
            guard r >= 0, r <= maximum else { throw PlacementError.redundantExpertsOutOfRange(value: r, maximum: maximum) }
            return c.keepingCurrent(c.balanced(redundant: r), score: c.bottleneckTokens)
        case let .power(objective):
            for i in c.live where nodes[i].profile.memoryBandwidth == 0 && nodes[i].profile.flopsPerSecond == 0 {
                throw PlacementError.unknownNodeSpeed(node: nodes[i].id)
            }
            return c.power(objective, ratio: maxStepWorkRatio, released: releasedNodes)
        }
    }
}

/// Validated input and what every strategy needs from it.
struct Context {
    let layout: ExpertLayout
    let nodes: [PlacementNode]
    let load: ExpertLoad
    let current: ExpertPlacement?
    /// Indices of available nodes, ascending.
    let live: [Int]
    /// Per node, expert copies it may hold: 0 when unavailable, `unlimited` when it has no budget.
    let capacity: [Int]
    static let unlimited = Int.max / 4

    init(layout: ExpertLayout, nodes: [PlacementNode], available: [Bool], load: ExpertLoad?, current: ExpertPlacement?,
         maxStepWorkRatio: Double) throws {
        try layout.validate()
        guard available.count == nodes.count else {
            throw PlacementError.availabilityCountMismatch(nodes: nodes.count, available: available.count)
        }
        var ids = Set<String>()
        for n in nodes {
            guard ids.insert(n.id).inserted else { throw PlacementError.duplicateNodeID(n.id) }
            try n.profile.validate()
        }
        guard maxStepWorkRatio >= 1 else { throw PlacementError.invalidStepWorkRatio(maxStepWorkRatio) }
        let load = load ?? .uniform(layout)
        try load.validate(layout)
        if let current { try Self.check(current, layout: layout, nodeCount: nodes.count) }
        let live = nodes.indices.filter { available[$0] }
        guard !live.isEmpty else { throw PlacementError.noAvailableNode }
        let bytes = layout.expertBytes
        for i in live where nodes[i].memoryBytes > 0 && nodes[i].memoryBytes < bytes {
            throw PlacementError.nodeFitsNoExpert(node: nodes[i].id, memoryBytes: nodes[i].memoryBytes, expertBytes: bytes)
        }
        let capacity = nodes.indices.map { i in
            guard available[i] else { return 0 }
            return nodes[i].memoryBytes == 0 || bytes == 0 ? Self.unlimited : Int(nodes[i].memoryBytes / bytes)
        }
        let needed = layout.layers * layout.experts
        if live.reduce(0, { min($0 + capacity[$1], Self.unlimited) }) < needed {
            let availableBytes = live.reduce(UInt64(0)) { $0 + nodes[$1].memoryBytes }
            throw PlacementError.insufficientMemory(neededBytes: UInt64(needed) * bytes, availableBytes: availableBytes)
        }
        self.layout = layout
        self.nodes = nodes
        self.load = load
        self.current = current
        self.live = live
        self.capacity = capacity
    }

    static func check(_ p: ExpertPlacement, layout: ExpertLayout, nodeCount: Int) throws {
        guard p.replicas.count == layout.layers, p.replicas.allSatisfy({ $0.count == layout.experts }) else {
            throw PlacementError.currentPlacementMismatch("it is not \(layout.layers) layers of \(layout.experts) experts")
        }
        for (l, row) in p.replicas.enumerated() {
            for (e, copies) in row.enumerated() {
                if let bad = copies.first(where: { !(0..<nodeCount).contains($0) }) {
                    throw PlacementError.currentPlacementMismatch("layer \(l) expert \(e) names node \(bad) of \(nodeCount)")
                }
                guard Set(copies).count == copies.count else {
                    throw PlacementError.currentPlacementMismatch("layer \(l) expert \(e) lists a node twice")
                }
            }
        }
    }

    /// Whether `p` gives every expert a copy, only on available nodes, within every budget.
    func isUsable(_ p: ExpertPlacement) -> Bool {
        guard p.replicas.allSatisfy({ $0.allSatisfy { !$0.isEmpty && $0.allSatisfy { capacity[$0] > 0 } } }) else { return false }
        return zip(p.copies(nodeCount: nodes.count), capacity).allSatisfy { $0 <= $1 }
    }

    /// `current` when it is usable and `score` rates it no worse than `plan`, else `plan`.
    func keepingCurrent(_ plan: ExpertPlacement, score: (ExpertPlacement) -> Double) -> ExpertPlacement {
        guard let current, current != plan, isUsable(current) else { return plan }
        return score(current) <= score(plan) * (1 + 1e-12) ? current : plan
    }

    /// Σ over layers of the most tokens per step any node computes in that layer.
    func bottleneckTokens(_ p: ExpertPlacement) -> Double {
        PlacementCost.layerTokens(placement: p, load: load, nodeCount: nodes.count).reduce(0) { $0 + ($1.max() ?? 0) }
    }

    // MARK: memory

    /// Today's coordinator placement: one copy each, greedily to the available node with the
    /// fewest bytes per unit of budget, layer by layer, expert by expert. Nodes without a budget
    /// count as having the largest budget given (equal shares when none has one).
    func memory() -> ExpertPlacement {
        let largest = live.map { nodes[$0].memoryBytes }.max() ?? 0
        let share = nodes.map { n in Double(n.memoryBytes == 0 ? max(largest, 1) : n.memoryBytes) }
        var used = [Int](repeating: 0, count: nodes.count)
        var rows = [[[Int]]](repeating: [[Int]](repeating: [], count: layout.experts), count: layout.layers)
        if let current {
            for l in 0..<layout.layers {
                for e in 0..<layout.experts {
                    if let keep = current.replicas[l][e].first(where: { used[$0] < capacity[$0] }) {
                        rows[l][e] = [keep]
                        used[keep] += 1
                    }
                }
            }
        }
        for l in 0..<layout.layers {
            for e in 0..<layout.experts where rows[l][e].isEmpty {
                var best = -1
                for i in live where used[i] < capacity[i] {
                    if best < 0 || Double(used[i]) / share[i] < Double(used[best]) / share[best] { best = i }
                }
                rows[l][e] = [best]  // the total-memory check leaves room somewhere
                used[best] += 1
            }
        }
        return ExpertPlacement(replicas: rows)
    }

    // MARK: balanced

    /// EPLB over the available nodes: per layer, `redundant` extra copies of the experts with the
    /// most tokens per copy, packed heaviest first onto nodes with equal slot counts. Where budgets
    /// are unequal, a node's slots are capped by its budget and the rest spread over the others;
    /// redundancy is cut to what the budgets and distinct nodes allow.
    func balanced(redundant: Int) -> ExpertPlacement {
        let (L, E, n) = (layout.layers, layout.experts, live.count)
        // No node takes more than one copy of each expert.
        let cap = live.map { min(capacity[$0], L * E) }
        let spare = cap.reduce(0, +) - L * E
        let r = min(redundant, E * (n - 1), spare / L)
        let slots = E + r
        var remaining = waterFill(total: L * slots, caps: cap)
        var rows = [[[Int]]]()
        for l in 0..<L {
            let quota = layerQuota(remaining: remaining, layersLeft: L - l, slots: slots)
            for k in 0..<n { remaining[k] -= quota[k] }
            let w = load.tokens[l]
            let copies = EPLB.replicate(weights: w, replicas: slots)
            let copyTokens = copies.expertOf.map { w[$0] / Double(copies.count[$0]) }
            let packed = EPLB.pack(weights: copyTokens, capacities: quota, keys: copies.expertOf).pack
            var contents = [[Int]](repeating: [], count: n)
            for (c, k) in packed.enumerated() where k >= 0 { contents[k].append(copies.expertOf[c]) }
            contents = relabel(contents, quota: quota, layer: l)
            var row = [[Int]](repeating: [], count: E)
            for k in 0..<n { for e in contents[k] { row[e].append(live[k]) } }
            rows.append(row)
        }
        return ExpertPlacement(replicas: rows)
    }

    /// Splits `total` slots over nodes as equally as their caps allow; the remainder of an uneven
    /// split goes to the first nodes.
    func waterFill(total: Int, caps: [Int]) -> [Int] {
        var out = [Int](repeating: 0, count: caps.count)
        var open = Array(caps.indices), left = total
        while !open.isEmpty {
            let share = left / open.count
            let capped = open.filter { caps[$0] <= share }
            if capped.isEmpty {
                for (j, k) in open.enumerated() { out[k] = share + (j < left % open.count ? 1 : 0) }
                break
            }
            for k in capped { out[k] = caps[k]; left -= caps[k] }
            open.removeAll { caps[$0] <= share }
        }
        return out
    }

    /// One layer's slots per node: each node's remaining slots over the layers left, rounded down,
    /// and the layer's leftover slots to the largest remainders (first node on a tie).
    func layerQuota(remaining: [Int], layersLeft: Int, slots: Int) -> [Int] {
        var quota = remaining.map { $0 / layersLeft }
        let order = remaining.indices.sorted {
            remaining[$0] % layersLeft != remaining[$1] % layersLeft ? remaining[$0] % layersLeft > remaining[$1] % layersLeft : $0 < $1
        }
        for k in order.prefix(slots - quota.reduce(0, +)) { quota[k] += 1 }
        return quota
    }

    /// Fewer loads for the same balance: nodes with equal slots in this layer are interchangeable,
    /// so each pack goes to the node that already holds most of it (greedy, largest overlap first).
    func relabel(_ contents: [[Int]], quota: [Int], layer: Int) -> [[Int]] {
        guard let current else { return contents }
        var out = contents
        for q in Set(quota).sorted() {
            let group = quota.indices.filter { quota[$0] == q }
            let held = group.map { k in Set(current.replicas[layer].indices.filter { current.replicas[layer][$0].contains(live[k]) }) }
            var pairs: [(overlap: Int, pack: Int, node: Int)] = []
            for (a, k) in group.enumerated() {
                for b in group.indices {
                    let overlap = contents[k].filter { held[b].contains($0) }.count
                    if overlap > 0 { pairs.append((overlap, a, b)) }
                }
            }
            pairs.sort { $0.overlap != $1.overlap ? $0.overlap > $1.overlap : ($0.pack, $0.node) < ($1.pack, $1.node) }
            var packTo = [Int?](repeating: nil, count: group.count), nodeTaken = [Bool](repeating: false, count: group.count)
            for p in pairs where packTo[p.pack] == nil && !nodeTaken[p.node] {
                packTo[p.pack] = p.node
                nodeTaken[p.node] = true
            }
            var free = group.indices.filter { !nodeTaken[$0] }.makeIterator()
            for a in group.indices {
                let b = packTo[a] ?? free.next()!
                out[group[b]] = contents[group[a]]
            }
        }
        return out
    }

    // MARK: power

    /// The lowest predicted objective: for k = 1...n, the k available nodes cheapest per token at
    /// full use each take, layer by layer and hottest expert first, the experts they add least
    /// objective for while the layer's slowest node stays within the bound; the k whose placement
    /// meets the bound and keeps up at the least objective wins (the fastest when none does).
    func power(_ objective: PowerObjective, ratio: Double, released: ReleasedNodePower) -> ExpertPlacement {
        let spread = PlacementCost.predict(layout: layout, nodes: nodes, placement: balanced(redundant: 0), load: load)
        var scale = ratio
        if let seconds = load.seconds, spread.stepSeconds > 0 {
            scale = min(scale, max(1, seconds / (load.steps * spread.stepSeconds)))
        }
        let bound = spread.layerWork.map { ($0.max() ?? 0) * scale }
        let perStep = load.tokens.map { $0.map { $0 / load.steps } }
        let all = perStep.joined()
        let mean = all.isEmpty ? 1 : max(all.reduce(0, +) / Double(all.count), 1e-9)
        func costAtFullUse(_ i: Int) -> Double {
            let p = nodes[i].profile
            let j = p.busyWatts * p.pue * PlacementCost.expertWork(layout: layout, profile: p, tokens: mean) / mean
            return EnergyModel.amount(joules: j, p, objective)
        }
        let cost = live.map(costAtFullUse)
        let order = live.indices.sorted { cost[$0] != cost[$1] ? cost[$0] < cost[$1] : $0 < $1 }.map { live[$0] }

        var best: (placement: ExpertPlacement, feasible: Bool, total: Double, step: Double, loads: Int)?
        for k in 1...order.count {
            guard let p = consolidate(onto: Array(order.prefix(k)), perStep: perStep, bound: bound, objective: objective) else { continue }
            let pred = PlacementCost.predict(layout: layout, nodes: nodes, placement: p, load: load, released: released)
            let within = zip(pred.layerWork, bound).allSatisfy { ($0.max() ?? 0) <= $1 * (1 + 1e-9) }
            let candidate = (p, within && pred.keepsUp, pred.total(objective), pred.stepSeconds, current.map { p.loads(from: $0) } ?? 0)
            guard let b = best else { best = candidate; continue }
            let better = candidate.1 != b.feasible ? candidate.1
                : candidate.1 ? (candidate.2, candidate.4) < (b.total, b.loads)
                : (candidate.3, candidate.2) < (b.step, b.total)
            if better { best = candidate }
        }
        // `order` starts with every available node's own prefix; the full set always has memory.
        let chosen = best!
        guard let current, current != chosen.placement, isUsable(current) else { return chosen.placement }
        let pred = PlacementCost.predict(layout: layout, nodes: nodes, placement: current, load: load, released: released)
        let within = zip(pred.layerWork, bound).allSatisfy { ($0.max() ?? 0) <= $1 * (1 + 1e-9) }
        let keep = chosen.feasible ? within && pred.keepsUp && pred.total(objective) <= chosen.total * (1 + 1e-9)
            : pred.stepSeconds <= chosen.step * (1 + 1e-9)
        return keep ? current : chosen.placement
    }

    /// One copy per expert on `set`: each expert (hottest first, per layer) to the node where it
    /// adds the least objective (busy minus idle power over its work) while the layer's slowest
    /// node stays within `bound`; on a tie a node already holding it, then the least loaded, then
    /// the lowest index. Beyond the bound, to the node that would finish the layer first. Nil
    /// when `set` runs out of memory.
    func consolidate(onto set: [Int], perStep: [[Double]], bound: [Double], objective: PowerObjective) -> ExpertPlacement? {
        var used = [Int](repeating: 0, count: nodes.count)
        var rows = [[[Int]]]()
        for l in 0..<layout.layers {
            var work = [Double](repeating: 0, count: nodes.count)
            var row = [[Int]](repeating: [], count: layout.experts)
            let t = perStep[l]
            for e in EPLB.heaviestFirst(t) {
                var pick: (key: (Double, Int, Double, Int), node: Int)?
                var fallback: (finish: Double, node: Int)?
                for i in set where used[i] < capacity[i] {
                    let p = nodes[i].profile
                    let delta = PlacementCost.expertWork(layout: layout, profile: p, tokens: t[e])
                    let finish = work[i] + delta
                    if fallback == nil || finish < fallback!.finish { fallback = (finish, i) }
                    guard finish <= bound[l] * (1 + 1e-9) else { continue }
                    let marginal = EnergyModel.amount(joules: (p.busyWatts - p.idleWatts) * p.pue * delta, p, objective)
                    let held = current?.replicas[l][e].contains(i) == true ? 0 : 1
                    let key = (marginal, held, finish, i)
                    if pick == nil || key < pick!.key { pick = (key, i) }
                }
                guard let node = pick?.node ?? fallback?.node else { return nil }
                row[e] = [node]
                used[node] += 1
                work[node] += PlacementCost.expertWork(layout: layout, profile: nodes[node].profile, tokens: t[e])
            }
            rows.append(row)
        }
        return ExpertPlacement(replicas: rows)
    }
}
