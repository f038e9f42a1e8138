/// One expert node as the planner sees it.
public struct PlacementNode: Sendable, Equatable {
    /// The node's id, unique in the cluster.
    public var id: String
    /// Bytes of expert weights the node may hold; 0 = unlimited.
    public var memoryBytes: UInt64
    public var profile: PowerProfile

    public init(id: String, memoryBytes: UInt64, profile: PowerProfile) {
        self.id = id
        self.memoryBytes = memoryBytes
        self.profile = profile
    }
}

/// The routed experts of a model: `layers` MoE layers (positions 0..<layers, not the model's layer
/// numbers) of `experts` experts each, all of one size.
public struct ExpertLayout: Sendable, Equatable {
    /// Number of MoE layers.
    public var layers: Int
    /// Routed experts per MoE layer.
    public var experts: Int
    /// Bytes of one expert's weights.
    public var expertBytes: UInt64
    /// Floating-point operations one token costs in one expert (≈ 2 × its parameter count).
    public var expertFlopsPerToken: Double
    /// Experts each token is routed to per layer (top-k); turns routed token counts into tokens.
    public var expertsPerToken: Int

    public init(layers: Int, experts: Int, expertBytes: UInt64, expertFlopsPerToken: Double, expertsPerToken: Int = 1) {
        self.layers = layers
        self.experts = experts
        self.expertBytes = expertBytes
        self.expertFlopsPerToken = expertFlopsPerToken
        self.expertsPerToken = expertsPerToken
    }

    func validate() throws {
        guard layers >= 1 else { throw PlacementError.invalidLayout(field: "layers", value: Double(layers)) }
        guard experts >= 1 else { throw PlacementError.invalidLayout(field: "experts", value: Double(experts)) }
        guard expertsPerToken >= 1 else {
            throw PlacementError.invalidLayout(field: "expertsPerToken", value: Double(expertsPerToken))
        }
        guard expertFlopsPerToken.isFinite, expertFlopsPerToken >= 0 else {
            throw PlacementError.invalidLayout(field: "expertFlopsPerToken", value: expertFlopsPerToken)
        }
    }
}

/// Tokens routed to each expert over an observation window.
public struct ExpertLoad: Sendable, Equatable {
    /// `tokens[layer position][expert]`: tokens routed there over the window.
    public var tokens: [[Double]]
    /// Forward steps the window covers (the counts per step are `tokens / steps`).
    public var steps: Double
    /// Wall-clock length of the window in seconds, or nil when unknown. With it the cost model
    /// charges idle power over real time (a lightly loaded cluster waits between steps) and the
    /// power strategy refuses placements that could not keep up; without it the cluster is taken
    /// to run steps back to back.
    public var seconds: Double?

    public init(tokens: [[Double]], steps: Double = 1, seconds: Double? = nil) {
        self.tokens = tokens
        self.steps = steps
        self.seconds = seconds
    }

    func validate(_ layout: ExpertLayout) throws {
        guard tokens.count == layout.layers, tokens.allSatisfy({ $0.count == layout.experts }) else {
            throw PlacementError.loadShapeMismatch(layers: layout.layers, experts: layout.experts)
        }
        for (l, row) in tokens.enumerated() {
            for (e, t) in row.enumerated() where !(t.isFinite && t >= 0) {
                throw PlacementError.invalidLoad(field: "tokens[\(l)][\(e)]", value: t)
            }
        }
        guard steps.isFinite, steps > 0 else { throw PlacementError.invalidLoad(field: "steps", value: steps) }
        if let s = seconds, !(s.isFinite && s > 0) { throw PlacementError.invalidLoad(field: "seconds", value: s) }
    }

    /// One token per expert per step: what the planner assumes when no load has been observed.
    static func uniform(_ layout: ExpertLayout) -> ExpertLoad {
        ExpertLoad(tokens: Array(repeating: Array(repeating: 1, count: layout.experts), count: layout.layers))
    }
}

/// Where every expert's copies are.
public struct ExpertPlacement: Sendable, Equatable {
    /// `replicas[layer position][expert]`: indices (into the planner's `nodes`) of the nodes holding
    /// a copy; at least one each, no index twice.
    public var replicas: [[[Int]]]

    public init(replicas: [[[Int]]]) { self.replicas = replicas }

    /// The experts node `node` holds, layer by layer, expert by expert.
    public func experts(on node: Int) -> [(layer: Int, expert: Int)] {
        var out: [(layer: Int, expert: Int)] = []
        for (l, row) in replicas.enumerated() {
            for (e, nodes) in row.enumerated() where nodes.contains(node) { out.append((l, e)) }
        }
        return out
    }

    /// Bytes of expert weights node `node` holds.
    public func bytes(on node: Int, layout: ExpertLayout) -> UInt64 {
        UInt64(experts(on: node).count) * layout.expertBytes
    }

    /// Expert copies per node, for `nodeCount` nodes.
    public func copies(nodeCount: Int) -> [Int] {
        var count = [Int](repeating: 0, count: nodeCount)
        for row in replicas { for nodes in row { for n in nodes where n >= 0 && n < nodeCount { count[n] += 1 } } }
        return count
    }

    /// Expert copies that `self` has and `previous` had not: what nodes must load to move from
    /// `previous` to `self`.
    public func loads(from previous: ExpertPlacement) -> Int {
        var n = 0
        for (l, row) in replicas.enumerated() {
            for (e, nodes) in row.enumerated() {
                let old = l < previous.replicas.count && e < previous.replicas[l].count ? previous.replicas[l][e] : []
                n += nodes.filter { !old.contains($0) }.count
            }
        }
        return n
    }
}

/// What the power strategy minimises per token.
public enum PowerObjective: String, Sendable, CaseIterable {
    /// Joules (at the wall, PUE included).
    case energy
    /// Dollars at each node's price.
    case cost
    /// Grams of CO2 at each node's grid intensity.
    case carbon
}

/// How nodes that hold nothing are charged by the cost model and the power strategy.
public enum ReleasedNodePower: String, Sendable {
    /// They keep running at idle power (the cluster does not stop them).
    case idle
    /// They are stopped and draw nothing (the live side stops them or scales them in).
    case off
}

/// How the planner places experts.
public enum PlacementStrategy: Sendable, Equatable, CustomStringConvertible {
    /// One copy of each expert, spread over nodes in proportion to their memory budgets.
    case memory
    /// DeepSeek's EPLB: `redundantExperts` extra copies per layer of the most loaded experts, then
    /// copies packed heaviest first onto nodes with equal slot counts.
    case balanced(redundantExperts: Int)
    /// Lowest predicted energy, $ or gCO2 per token under memory limits and a step-time bound.
    case power(PowerObjective)

    /// Reads "memory", "balanced" (no redundant experts), "balanced:R", "power" (energy),
    /// "power:energy", "power:cost", "power:carbon"; case-insensitive. `description` writes the
    /// same forms back.
    public init(parsing text: String) throws {
        let parts = text.lowercased().split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        switch (parts[0], parts.count == 2 ? parts[1] : nil) {
        case ("memory", nil): self = .memory
        case ("balanced", nil): self = .balanced(redundantExperts: 0)
        case let ("balanced", r?):
            // A negative count parses; the planner refuses it with the range for its nodes.
            guard let n = Int(r) else { throw PlacementError.unknownStrategy(text) }
            self = .balanced(redundantExperts: n)
        case ("power", nil): self = .power(.energy)
        case let ("power", o?):
            guard let objective = PowerObjective(rawValue: o) else { throw PlacementError.unknownStrategy(text) }
            self = .power(objective)
        default: throw PlacementError.unknownStrategy(text)
        }
    }

    public var description: String {
        switch self {
        case .memory: return "memory"
        case let .balanced(r): return "balanced:\(r)"
        case let .power(o): return "power:\(o.rawValue)"
        }
    }
}
