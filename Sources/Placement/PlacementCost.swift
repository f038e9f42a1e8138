import Foundation

/// What a placement is predicted to cost at a load: per-node work per step, the step time, the
/// throughput bound, and energy, $ and gCO2 over the load's window and per token.
public struct PlacementPrediction: Sendable, Equatable {
    /// `layerTokens[layer][node]`: tokens per step node `node` computes in the layer.
    public var layerTokens: [[Double]]
    /// `layerWork[layer][node]`: seconds per step node `node` works in the layer.
    public var layerWork: [[Double]]
    /// Per node, seconds of work per step over all layers.
    public var nodeWork: [Double]
    /// Seconds per step: every layer waits for its slowest node, so Σ over layers of the slowest
    /// node's work in that layer (the experts' part of the critical path; attention not counted).
    public var stepSeconds: Double
    /// The largest `nodeWork`.
    public var slowestNodeWork: Double
    /// Tokens per step (routed tokens of a layer over `expertsPerToken`).
    public var tokensPerStep: Double
    /// Tokens per second the experts allow: `tokensPerStep / stepSeconds`.
    public var tokensPerSecond: Double
    /// Wall seconds of the window: the load's `seconds`, or steps back to back when it has none,
    /// or the steps' total time when that is longer (the placement cannot keep up: `keepsUp`).
    public var windowSeconds: Double
    /// Whether `steps × stepSeconds` fits in the load's `seconds` (always true without them).
    public var keepsUp: Bool
    /// Per node, wall joules over the window (nodes holding nothing per `ReleasedNodePower`).
    public var nodeJoules: [Double]
    /// Totals over the window.
    public var joules: Double, dollars: Double, grams: Double
    /// Totals per token of the window (infinite with no tokens).
    public var joulesPerToken: Double, dollarsPerToken: Double, gramsPerToken: Double

    /// The total in the unit of `objective`.
    public func total(_ objective: PowerObjective) -> Double {
        switch objective {
        case .energy: return joules
        case .cost: return dollars
        case .carbon: return grams
        }
    }
}

/// The roofline cost model the planner uses and the simulator can reuse.
///
/// An expert copy given t tokens per step on a node costs, per step,
/// `bytes · (1 − e^(−t)) / bandwidth + t · flops / compute`: tokens arriving at random (Poisson)
/// leave the expert idle in a step with probability e^(−t), and an idle expert's weights are not
/// read. A replicated expert's tokens are split evenly over its copies (what `Dispatch` tends to).
public enum PlacementCost {
    /// Seconds per step one expert copy given `tokens` tokens per step costs on `profile`.
    public static func expertWork(layout: ExpertLayout, profile: PowerProfile, tokens: Double) -> Double {
        guard tokens > 0 else { return 0 }
        let active = -expm1(-tokens)
        return profile.seconds(bytes: Double(layout.expertBytes) * active, flops: tokens * layout.expertFlopsPerToken)
    }

    /// Tokens per step of each node in each layer, `[layer][node]`, copies sharing evenly.
    public static func layerTokens(placement: ExpertPlacement, load: ExpertLoad, nodeCount: Int) -> [[Double]] {
        placement.replicas.enumerated().map { l, row in
            var t = [Double](repeating: 0, count: nodeCount)
            for (e, nodes) in row.enumerated() where !nodes.isEmpty {
                let share = load.tokens[l][e] / load.steps / Double(nodes.count)
                for n in nodes { t[n] += share }
            }
            return t
        }
    }

    /// Predicts `placement` on `nodes` under `load` (uniform one token per expert per step when
    /// nil). Nodes holding nothing are charged per `released`. The placement's node indices index
    /// `nodes`, and its and the load's shapes are the layout's (as `Planner.plan` returns them).
    public static func predict(layout: ExpertLayout, nodes: [PlacementNode], placement: ExpertPlacement,
                               load: ExpertLoad?, released: ReleasedNodePower = .off) -> PlacementPrediction {
        let load = load ?? .uniform(layout)
        let n = nodes.count
        var layerWork = [[Double]](repeating: [Double](repeating: 0, count: n), count: layout.layers)
        for (l, row) in placement.replicas.enumerated() {
            for (e, copies) in row.enumerated() where !copies.isEmpty {
                let t = load.tokens[l][e] / load.steps / Double(copies.count)
                for i in copies { layerWork[l][i] += expertWork(layout: layout, profile: nodes[i].profile, tokens: t) }
            }
        }
        let nodeWork = (0..<n).map { i in layerWork.reduce(0) { $0 + $1[i] } }
        let step = layerWork.reduce(0) { $0 + ($1.max() ?? 0) }
        let tokensPerStep = (load.tokens.first?.reduce(0, +) ?? 0) / load.steps / Double(layout.expertsPerToken)
        let busy = step * load.steps
        let window = max(load.seconds ?? busy, busy)
        let holds = placement.copies(nodeCount: n).map { $0 > 0 }
        var nodeJoules = [Double](repeating: 0, count: n)
        var dollars = 0.0, grams = 0.0
        for i in 0..<n where holds[i] || released == .idle {
            let j = EnergyModel.joules(nodes[i].profile, busySeconds: nodeWork[i] * load.steps, intervalSeconds: window)
            nodeJoules[i] = j
            dollars += EnergyModel.dollars(joules: j, nodes[i].profile)
            grams += EnergyModel.grams(joules: j, nodes[i].profile)
        }
        let joules = nodeJoules.reduce(0, +)
        let tokens = tokensPerStep * load.steps
        return PlacementPrediction(
            layerTokens: layerTokens(placement: placement, load: load, nodeCount: n),
            layerWork: layerWork, nodeWork: nodeWork, stepSeconds: step,
            slowestNodeWork: nodeWork.max() ?? 0, tokensPerStep: tokensPerStep,
            tokensPerSecond: step > 0 ? tokensPerStep / step : .infinity,
            windowSeconds: window, keepsUp: load.seconds.map { busy <= $0 * (1 + 1e-12) } ?? true,
            nodeJoules: nodeJoules, joules: joules, dollars: dollars, grams: grams,
            joulesPerToken: tokens > 0 ? joules / tokens : .infinity,
            dollarsPerToken: tokens > 0 ? dollars / tokens : .infinity,
            gramsPerToken: tokens > 0 ? grams / tokens : .infinity)
    }
}
