/// DeepSeek's Expert Parallelism Load Balancer (EPLB, deepseek-ai/EPLB, `eplb.py`; DeepSeek-V3
/// technical report §3.4 "redundant experts"), written anew in Swift: replicate the experts with
/// the highest load per copy, then pack copies heaviest first onto packs of equal size.
///
/// `rebalance` is the published entry point with both of its policies; the planner's `balanced`
/// strategy uses `replicate` and the packing below with nodes as packs.
public enum EPLB {
    /// Item indices by weight, heaviest first; equal weights keep index order (a stable sort, as
    /// the reference's CPU sort leaves them).
    static func heaviestFirst(_ weights: [Double]) -> [Int] {
        weights.indices.sorted { weights[$0] != weights[$1] ? weights[$0] > weights[$1] : $0 < $1 }
    }

    /// Greedy packing: items heaviest first, each into the lightest pack that still has room (the
    /// first such on equal weight). With `keys`, a pack takes no two items of one key (two copies
    /// of one expert on one node would be one copy). Returns each item's pack (-1 if no pack could
    /// take it) and its rank (order of arrival) in that pack.
    static func pack(weights: [Double], capacities: [Int], keys: [Int]? = nil) -> (pack: [Int], rank: [Int]) {
        var packOf = [Int](repeating: -1, count: weights.count)
        var rank = [Int](repeating: -1, count: weights.count)
        var packWeight = [Double](repeating: 0, count: capacities.count)
        var packItems = [Int](repeating: 0, count: capacities.count)
        var packKeys = [Set<Int>](repeating: [], count: keys == nil ? 0 : capacities.count)
        for item in heaviestFirst(weights) {
            var best = -1
            for p in capacities.indices where packItems[p] < capacities[p] {
                if let keys, packKeys[p].contains(keys[item]) { continue }
                if best < 0 || packWeight[p] < packWeight[best] { best = p }
            }
            guard best >= 0 else { continue }
            if let keys { packKeys[best].insert(keys[item]) }
            packOf[item] = best
            rank[item] = packItems[best]
            packWeight[best] += weights[item]
            packItems[best] += 1
        }
        return (packOf, rank)
    }

    /// `balanced_packing`: `weights.count / packs` items per pack, as balanced as the greedy gets.
    /// With one item per pack the reference keeps items in place (item i in pack i); so does this.
    public static func balancedPacking(weights: [Double], packs: Int) -> (pack: [Int], rank: [Int]) {
        precondition(packs > 0 && weights.count % packs == 0, "items must divide into packs")
        let perPack = weights.count / packs
        if perPack == 1 { return (Array(weights.indices), [Int](repeating: 0, count: weights.count)) }
        return pack(weights: weights, capacities: [Int](repeating: perPack, count: packs))
    }

    /// `replicate_experts`: `replicas` ≥ `weights.count` copies; copy i < weights.count is expert i,
    /// each further copy goes to the expert with the highest load per copy (the first on equal load).
    /// Returns each copy's expert, its rank among that expert's copies, and copies per expert.
    public static func replicate(weights: [Double], replicas: Int) -> (expertOf: [Int], rank: [Int], count: [Int]) {
        precondition(replicas >= weights.count, "at least one copy per expert")
        var expertOf = Array(weights.indices)
        var rank = [Int](repeating: 0, count: weights.count)
        var count = [Int](repeating: 1, count: weights.count)
        for _ in weights.count..<replicas {
            var best = 0
            for e in weights.indices where weights[e] / Double(count[e]) > weights[best] / Double(count[best]) { best = e }
            expertOf.append(best)
            rank.append(count[best])
            count[best] += 1
        }
        return (expertOf, rank, count)
    }

    /// The result of `rebalance`, per MoE layer.
    public struct Plan: Sendable, Equatable {
        /// `physicalToLogical[layer][slot]`: the expert in each physical slot; slots
        /// `g·(replicas/gpus) ..< (g+1)·(replicas/gpus)` are GPU g's.
        public var physicalToLogical: [[Int]]
        /// `logicalToPhysical[layer][expert]`: that expert's slots, by replica rank.
        public var logicalToPhysical: [[[Int]]]
        /// `logicalCount[layer][expert]`: copies of each expert.
        public var logicalCount: [[Int]]
    }

    /// `rebalance_experts`: the hierarchical policy when `nodes` divides `groups` (expert groups
    /// packed onto nodes, copies made within each node, copies packed onto the node's GPUs), the
    /// global policy otherwise (the same with one group and one node). `weights[layer][expert]`.
    public static func rebalance(weights: [[Double]], replicas: Int, groups: Int, nodes: Int, gpus: Int) throws -> Plan {
        if groups > 0, nodes > 0, groups % nodes == 0 {
            return try hierarchical(weights: weights, replicas: replicas, groups: groups, nodes: nodes, gpus: gpus)
        }
        return try hierarchical(weights: weights, replicas: replicas, groups: 1, nodes: 1, gpus: gpus)
    }

    /// `rebalance_experts_hierarchical`.
    public static func hierarchical(weights: [[Double]], replicas: Int, groups: Int, nodes: Int, gpus: Int) throws -> Plan {
        let experts = weights.first?.count ?? 0
        guard experts > 0, weights.allSatisfy({ $0.count == experts }) else {
            throw PlacementError.eplbShape("weights must be a non-empty [layers][experts] table")
        }
        guard groups > 0, experts % groups == 0 else { throw PlacementError.eplbShape("\(groups) groups do not divide \(experts) experts") }
        guard nodes > 0, groups % nodes == 0 else { throw PlacementError.eplbShape("\(nodes) nodes do not divide \(groups) groups") }
        guard gpus > 0, gpus % nodes == 0 else { throw PlacementError.eplbShape("\(nodes) nodes do not divide \(gpus) GPUs") }
        guard replicas >= experts, replicas % gpus == 0 else {
            throw PlacementError.eplbShape("\(replicas) replicas must be at least \(experts) experts and a multiple of \(gpus) GPUs")
        }
        let groupSize = experts / groups, groupsPerNode = groups / nodes
        let perNode = experts / nodes, physicalPerNode = replicas / nodes, perGPU = replicas / gpus
        var plan = Plan(physicalToLogical: [], logicalToPhysical: [], logicalCount: [])
        for w in weights {
            // Step 1: expert groups onto nodes; `nodeOrder` lists experts node by node ("mlog" order).
            let groupTokens = (0..<groups).map { g in w[g * groupSize ..< (g + 1) * groupSize].reduce(0, +) }
            let (groupPack, groupRank) = balancedPacking(weights: groupTokens, packs: nodes)
            var nodeOrder = [Int](repeating: 0, count: experts)
            for g in 0..<groups {
                let base = (groupPack[g] * groupsPerNode + groupRank[g]) * groupSize
                for j in 0..<groupSize { nodeOrder[base + j] = g * groupSize + j }
            }
            var row = [Int](), count = [Int](repeating: 0, count: experts)
            var rankOfSlot = [Int]()
            for n in 0..<nodes {
                let local = Array(nodeOrder[n * perNode ..< (n + 1) * perNode])
                let tokens = local.map { w[$0] }
                // Step 2: copies within the node.
                let copies = replicate(weights: tokens, replicas: physicalPerNode)
                // Step 3: the node's copies onto its GPUs.
                let copyTokens = copies.expertOf.map { tokens[$0] / Double(copies.count[$0]) }
                let (gpu, slot) = balancedPacking(weights: copyTokens, packs: gpus / nodes)
                var slotCopy = [Int](repeating: 0, count: physicalPerNode)
                for c in 0..<physicalPerNode { slotCopy[gpu[c] * perGPU + slot[c]] = c }
                row += slotCopy.map { local[copies.expertOf[$0]] }
                rankOfSlot += slotCopy.map { copies.rank[$0] }
                for (i, e) in local.enumerated() { count[e] = copies.count[i] }
            }
            var logicalToPhysical = count.map { [Int](repeating: -1, count: $0) }
            for (s, e) in row.enumerated() { logicalToPhysical[e][rankOfSlot[s]] = s }
            plan.physicalToLogical.append(row)
            plan.logicalToPhysical.append(logicalToPhysical)
            plan.logicalCount.append(count)
        }
        return plan
    }
}
