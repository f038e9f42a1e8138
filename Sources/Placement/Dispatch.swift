/// Splitting one replicated expert's tokens over its copies.
///
/// Call it once per expert per layer of a step, in a fixed order (e.g. expert index), with one
/// `nodeWork` array for the layer that starts at zero and carries over from expert to expert: each
/// call adds the work it hands out, so later experts see the load the earlier ones placed.
public enum Dispatch {
    /// Picks a node for each of `tokens` tokens routed to an expert whose copies are on `replicas`
    /// (node indices). Each token goes to the copy whose node would finish it soonest:
    /// `nodeWork[node] + tokenCost[node]`, plus `activationCost[node]` for the first token a copy
    /// receives (its weights must be read; pass the expert's bytes / the node's bandwidth, or nil
    /// to ignore). Equal finishes go to the copy listed first. `nodeWork` is advanced by what is
    /// handed out. Deterministic: the same input gives the same output.
    ///
    /// - Parameters:
    ///   - tokenCost: per node index, the work one token of this expert costs there (all 1 to
    ///     balance token counts).
    /// - Returns: for each token in order, the node index it goes to (one of `replicas`).
    public static func assign(tokens: Int, replicas: [Int], nodeWork: inout [Double], tokenCost: [Double],
                              activationCost: [Double]? = nil) -> [Int] {
        precondition(!replicas.isEmpty, "an expert has at least one copy")
        var out = [Int]()
        out.reserveCapacity(max(tokens, 0))
        var started = [Bool](repeating: false, count: replicas.count)
        for _ in 0..<max(tokens, 0) {
            var best = 0, bestFinish = Double.infinity
            for (r, node) in replicas.enumerated() {
                let start = started[r] ? 0 : (activationCost?[node] ?? 0)
                let finish = nodeWork[node] + start + tokenCost[node]
                if finish < bestFinish { best = r; bestFinish = finish }
            }
            let node = replicas[best]
            nodeWork[node] = bestFinish
            started[best] = true
            out.append(node)
        }
        return out
    }

    /// `assign` as counts: how many of the tokens each copy (in `replicas` order) receives.
    public static func split(tokens: Int, replicas: [Int], nodeWork: inout [Double], tokenCost: [Double],
                             activationCost: [Double]? = nil) -> [Int] {
        let nodes = assign(tokens: tokens, replicas: replicas, nodeWork: &nodeWork, tokenCost: tokenCost,
                           activationCost: activationCost)
        return replicas.map { r in nodes.reduce(0) { $0 + ($1 == r ? 1 : 0) } }
    }
}
