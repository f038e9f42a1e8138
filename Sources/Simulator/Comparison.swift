import Foundation
import Placement

/// What `farside simulate` reports: the inputs in short and one result per strategy.
public struct SimulationReport: Codable, Sendable, Equatable {
    public var model: String
    public var expertFormat: String
    public var cluster: String
    public var expertNodes: Int
    public var trace: String
    public var seed: UInt64
    public var results: [StrategyResult]
}

/// Plans each strategy with the real planner and simulates it.
public enum Comparison {
    /// Runs every strategy on the same trace and routing.
    ///
    /// The planner gets what the live server's routing statistics would show (`RoutingLoadFile`):
    /// routed tokens per expert, steps and seconds of a first run under `memory` placement, the
    /// placement a coordinator starts with before it rebalances.
    ///
    /// - Returns: the report and the events handled over all runs (pilot included).
    public static func run(model: ModelSpec, cluster: ClusterSpec, requests: [TraceRequest], traceName: String,
                           shares: RoutingShares, strategies: [PlacementStrategy], seed: UInt64,
                           released: ReleasedNodePower = .off) throws -> (report: SimulationReport, events: Int) {
        let layout = model.layout
        let placementNodes = cluster.nodes.map { PlacementNode(id: $0.id, memoryBytes: $0.memoryBytes, profile: $0.profile) }
        let needed = UInt64(layout.layers * layout.experts) * layout.expertBytes
        if cluster.nodes.allSatisfy({ $0.memoryBytes > 0 }) {
            let available = cluster.nodes.reduce(UInt64(0)) { $0 + $1.memoryBytes }
            if available < needed {
                throw SimulatorError.modelFitsNoNode(file: cluster.file, model: model.name, neededBytes: needed, availableBytes: available)
            }
        }
        if let small = cluster.nodes.first(where: { $0.memoryBytes > 0 && $0.memoryBytes < layout.expertBytes }) {
            throw SimulatorError.modelFitsNoNode(file: cluster.file, model: "\(model.name) (one expert, on \(small.id))",
                                                 neededBytes: layout.expertBytes, availableBytes: small.memoryBytes)
        }
        func plan(_ strategy: PlacementStrategy, load: ExpertLoad?) throws -> ExpertPlacement {
            do {
                return try Planner.plan(layout: layout, nodes: placementNodes, available: placementNodes.map { _ in true },
                                        load: load, strategy: strategy, current: nil, releasedNodes: released)
            } catch {
                throw SimulatorError.placement(file: cluster.file, problem: "\(strategy): \(error)")
            }
        }
        var events = 0
        let memory = try plan(.memory, load: nil)
        var pilotCost = CostModel(model: model, cluster: cluster, placement: memory, shares: shares)
        let pilot = Simulation.run(requests: requests, cost: &pilotCost, strategy: "memory", released: released, seed: seed)
        events += pilot.events
        let load = ExpertLoad(tokens: pilot.routed, steps: Double(max(pilot.result.steps, 1)),
                              seconds: pilot.result.simulatedSeconds > 0 ? pilot.result.simulatedSeconds : nil)
        var results: [StrategyResult] = []
        for strategy in strategies {
            if case .memory = strategy {
                results.append(pilot.result)
                continue
            }
            var cost = CostModel(model: model, cluster: cluster, placement: try plan(strategy, load: load), shares: shares)
            let run = Simulation.run(requests: requests, cost: &cost, strategy: strategy.description, released: released, seed: seed)
            events += run.events
            results.append(run.result)
        }
        let report = SimulationReport(model: model.name, expertFormat: model.expertFormat.rawValue, cluster: cluster.file,
                                      expertNodes: cluster.nodes.count, trace: traceName, seed: seed, results: results)
        return (report, events)
    }

    /// Strategies from "memory,balanced:32,power:cost".
    public static func strategies(parsing text: String) throws -> [PlacementStrategy] {
        let parts = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        guard !parts.isEmpty else { throw SimulatorError.invalidOption(name: "--strategies", problem: "no strategy given") }
        return try parts.map { p in
            do { return try PlacementStrategy(parsing: p) } catch {
                throw SimulatorError.invalidOption(name: "--strategies", problem: "'\(p)' is not memory, balanced[:R] or power[:energy|cost|carbon]")
            }
        }
    }
}
