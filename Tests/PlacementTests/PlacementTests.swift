import Foundation
import XCTest
import Placement

/// SplitMix64: a seeded generator, so randomised cases are the same on every run.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Tokens per expert falling off as 1/rank^s (Zipf), the hot experts at shuffled positions.
func zipfLoad(layers: Int, experts: Int, exponent: Double, total: Double, rng: inout SeededGenerator) -> [[Double]] {
    (0..<layers).map { _ in
        let weights = (1...experts).map { 1 / pow(Double($0), exponent) }
        let sum = weights.reduce(0, +)
        return weights.map { ($0 / sum * total).rounded() }.shuffled(using: &rng)
    }
}

func nodes(_ profiles: [PowerProfile], memory: UInt64 = 0) -> [PlacementNode] {
    profiles.enumerated().map { PlacementNode(id: "node\($0.offset)", memoryBytes: memory, profile: $0.element) }
}

/// Every invariant a placement must keep, whatever the strategy.
func assertValid(_ p: ExpertPlacement, layout: ExpertLayout, nodes: [PlacementNode], available: [Bool],
                 file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(p.replicas.count, layout.layers, file: file, line: line)
    for (l, row) in p.replicas.enumerated() {
        XCTAssertEqual(row.count, layout.experts, file: file, line: line)
        for (e, copies) in row.enumerated() {
            XCTAssertFalse(copies.isEmpty, "layer \(l) expert \(e) has no copy", file: file, line: line)
            XCTAssertEqual(Set(copies).count, copies.count, "layer \(l) expert \(e) lists a node twice", file: file, line: line)
            for n in copies {
                XCTAssertTrue(available[n], "layer \(l) expert \(e) on unavailable node \(n)", file: file, line: line)
            }
        }
    }
    for (i, node) in nodes.enumerated() where node.memoryBytes > 0 {
        XCTAssertLessThanOrEqual(p.bytes(on: i, layout: layout), node.memoryBytes, "node \(i) over budget", file: file, line: line)
    }
}

final class EPLBTests: XCTestCase {
    // deepseek-ai/EPLB README, "Interface and Example": 2 layers of 12 experts, 16 replicas,
    // 4 groups, 2 nodes, 8 GPUs. 4 groups divide over 2 nodes, so this is the hierarchical policy.
    let weight: [[Double]] = [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                              [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]]

    func testReproducesPublishedHierarchicalExample() throws {
        let plan = try EPLB.rebalance(weights: weight, replicas: 16, groups: 4, nodes: 2, gpus: 8)
        // The README's printed `phy2log`.
        XCTAssertEqual(plan.physicalToLogical, [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                                                [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]])
        // The other two outputs agree with it.
        for l in 0..<2 {
            for e in 0..<12 {
                let slots = plan.physicalToLogical[l].indices.filter { plan.physicalToLogical[l][$0] == e }
                XCTAssertEqual(plan.logicalCount[l][e], slots.count)
                XCTAssertEqual(plan.logicalToPhysical[l][e].sorted(), slots)
            }
        }
    }

    func testRefusesCountsThatDoNotDivide() {
        XCTAssertThrowsError(try EPLB.rebalance(weights: weight, replicas: 15, groups: 4, nodes: 2, gpus: 8)) { error in
            guard case PlacementError.eplbShape = error else { return XCTFail("\(error)") }
        }
    }

    /// The planner's `balanced` with the GPUs as nodes is EPLB's global policy (one group, one
    /// node) plus one rule: no node holds two copies of one expert. The global policy breaks that
    /// rule on the README's own loads (two copies of one expert on one GPU in both layers), so the
    /// two are compared on seeded Zipf loads: where the global policy doubles no copy, both must
    /// put the same experts on each GPU/node.
    func testPlannerBalancedIsTheGlobalPolicy() throws {
        var rng = SeededGenerator(state: 42)
        let layout = ExpertLayout(layers: 40, experts: 24, expertBytes: 1, expertFlopsPerToken: 1)
        let load = zipfLoad(layers: 40, experts: 24, exponent: 1, total: 10_000, rng: &rng)
        let global = try EPLB.rebalance(weights: load, replicas: 32, groups: 1, nodes: 1, gpus: 8)
        let cluster = nodes(Array(repeating: try HardwareClass.profile(named: "h100"), count: 8))
        let all = Array(repeating: true, count: 8)
        let plan = try Planner.plan(layout: layout, nodes: cluster, available: all, load: ExpertLoad(tokens: load),
                                    strategy: .balanced(redundantExperts: 8), current: nil)
        assertValid(plan, layout: layout, nodes: cluster, available: all)
        var compared = 0
        for l in 0..<40 {
            let gpuSets = (0..<8).map { g in global.physicalToLogical[l][g * 4 ..< g * 4 + 4].sorted() }
            guard gpuSets.allSatisfy({ Set($0).count == $0.count }) else { continue }
            compared += 1
            for g in 0..<8 {
                XCTAssertEqual(plan.experts(on: g).filter { $0.layer == l }.map(\.expert).sorted(), gpuSets[g], "layer \(l) node \(g)")
            }
        }
        XCTAssertGreaterThan(compared, 10)
    }
}

final class PlannerTests: XCTestCase {
    let h100 = try! HardwareClass.profile(named: "h100")
    let cpu = try! HardwareClass.profile(named: "cpu-2s")
    let strategies: [PlacementStrategy] = [.memory, .balanced(redundantExperts: 0), .balanced(redundantExperts: 3),
                                           .power(.energy), .power(.cost), .power(.carbon)]

    func testRandomisedPlacementsKeepEveryInvariant() throws {
        var rng = SeededGenerator(state: 15)
        let kinds = try HardwareClass.names.map { try HardwareClass.profile(named: $0) }
        var planned = 0, refused = 0
        for _ in 0..<150 {
            let layout = ExpertLayout(layers: Int.random(in: 1...5, using: &rng), experts: Int.random(in: 1...24, using: &rng),
                                      expertBytes: UInt64.random(in: 1...1000, using: &rng) * 1000,
                                      expertFlopsPerToken: Double.random(in: 1e6...1e9, using: &rng),
                                      expertsPerToken: Int.random(in: 1...4, using: &rng))
            let count = Int.random(in: 1...7, using: &rng)
            // Budgets: 0 (unlimited), or room for 1 to ~1.5× an even share of the experts.
            let most = UInt64(max(1, layout.layers * layout.experts * 3 / (2 * count)))
            var cluster: [PlacementNode] = []
            for i in 0..<count {
                let slots: UInt64 = Bool.random(using: &rng) ? 0 : UInt64.random(in: 1...most, using: &rng)
                cluster.append(PlacementNode(id: "n\(i)", memoryBytes: slots * layout.expertBytes,
                                             profile: kinds.randomElement(using: &rng)!))
            }
            var available = cluster.map { _ in Double.random(in: 0..<1, using: &rng) < 0.8 }
            if !available.contains(true) { available[0] = true }
            let load = ExpertLoad(tokens: zipfLoad(layers: layout.layers, experts: layout.experts, exponent: 1.1,
                                                   total: Double.random(in: 0...5000, using: &rng), rng: &rng),
                                  steps: Double.random(in: 1...100, using: &rng))
            var strategy = strategies.randomElement(using: &rng)!
            if case .balanced = strategy {
                strategy = .balanced(redundantExperts: Int.random(in: 0...layout.experts * (count - 1), using: &rng))
            }
            let previous = try? Planner.plan(layout: layout, nodes: cluster, available: cluster.map { _ in true },
                                             load: nil, strategy: .memory, current: nil)
            let live = cluster.indices.filter { available[$0] }
            let fits = live.contains { cluster[$0].memoryBytes == 0 }
                || live.reduce(0) { $0 + Int(cluster[$1].memoryBytes / layout.expertBytes) } >= layout.layers * layout.experts
            do {
                let p = try Planner.plan(layout: layout, nodes: cluster, available: available, load: load, strategy: strategy,
                                         current: Bool.random(using: &rng) ? previous : nil)
                XCTAssertTrue(fits, "planned although the budgets cannot hold every expert")
                assertValid(p, layout: layout, nodes: cluster, available: available)
                planned += 1
            } catch PlacementError.insufficientMemory {
                XCTAssertFalse(fits, "refused although the budgets hold every expert")
                refused += 1
            }
        }
        XCTAssertGreaterThan(planned, 100)
        XCTAssertGreaterThan(refused, 0)
    }

    func testBalancedCutsTheBusiestNodeOnZipfLoad() throws {
        var rng = SeededGenerator(state: 3)
        let layout = ExpertLayout(layers: 4, experts: 64, expertBytes: 1 << 20, expertFlopsPerToken: 1e7, expertsPerToken: 8)
        let cluster = nodes(Array(repeating: h100, count: 8))
        let load = ExpertLoad(tokens: zipfLoad(layers: 4, experts: 64, exponent: 1.2, total: 8000, rng: &rng))
        func busiest(_ s: PlacementStrategy) throws -> Double {
            let p = try Planner.plan(layout: layout, nodes: cluster, available: Array(repeating: true, count: 8), load: load,
                                     strategy: s, current: nil)
            return PlacementCost.layerTokens(placement: p, load: load, nodeCount: 8).reduce(0) { $0 + $1.max()! }
        }
        let memory = try busiest(.memory), balanced = try busiest(.balanced(redundantExperts: 8))
        // A perfect spread would be total/8 per layer.
        XCTAssertLessThan(balanced, 0.6 * memory, "memory \(memory) balanced \(balanced)")
        XCTAssertLessThan(try busiest(.balanced(redundantExperts: 0)), memory)
    }

    func testPowerLowersEnergyOnHeterogeneousNodes() throws {
        var rng = SeededGenerator(state: 7)
        let layout = ExpertLayout(layers: 6, experts: 32, expertBytes: 44 << 20, expertFlopsPerToken: 88e6, expertsPerToken: 6)
        let cluster = nodes([h100, cpu, h100, cpu, cpu])
        let available = Array(repeating: true, count: 5)
        let load = ExpertLoad(tokens: zipfLoad(layers: 6, experts: 32, exponent: 1, total: 6 * 600, rng: &rng), steps: 10)
        for released in [ReleasedNodePower.off, .idle] {
            func perToken(_ s: PlacementStrategy, _ o: PowerObjective) throws -> Double {
                let p = try Planner.plan(layout: layout, nodes: cluster, available: available, load: load, strategy: s,
                                         current: nil, releasedNodes: released)
                assertValid(p, layout: layout, nodes: cluster, available: available)
                let pred = PlacementCost.predict(layout: layout, nodes: cluster, placement: p, load: load, released: released)
                return [PowerObjective.energy: pred.joulesPerToken, .cost: pred.dollarsPerToken, .carbon: pred.gramsPerToken][o]!
            }
            for o in PowerObjective.allCases {
                let memory = try perToken(.memory, o), power = try perToken(.power(o), o)
                XCTAssertLessThan(power, 0.8 * memory, "\(o) released \(released): memory \(memory) power \(power)")
            }
        }
    }

    func testPowerFollowsThePriceOfEachSite() throws {
        // Two identical GPUs, one where electricity costs ten times more: `power:cost` moves work
        // to the cheap site, `power:energy` has no reason to prefer either.
        var dear = h100
        dear.pricePerKWh = 1.5
        let cluster = [PlacementNode(id: "dear", memoryBytes: 0, profile: dear), PlacementNode(id: "cheap", memoryBytes: 0, profile: h100)]
        let layout = ExpertLayout(layers: 2, experts: 8, expertBytes: 1 << 24, expertFlopsPerToken: 1e8)
        let p = try Planner.plan(layout: layout, nodes: cluster, available: [true, true], load: nil, strategy: .power(.cost),
                                 current: nil, maxStepWorkRatio: 2)
        XCTAssertGreaterThan(p.experts(on: 1).count, p.experts(on: 0).count)
    }

    func testPowerConsolidatesAtLowLoadAndSpreadsAsLoadRises() throws {
        let layout = ExpertLayout(layers: 4, experts: 32, expertBytes: 44 << 20, expertFlopsPerToken: 88e6, expertsPerToken: 4)
        let cluster = nodes(Array(repeating: try HardwareClass.profile(named: "l40s"), count: 8))
        let available = Array(repeating: true, count: 8)
        func nodesUsed(stepsPerSecond: Double) throws -> Int {
            let load = ExpertLoad(tokens: Array(repeating: Array(repeating: 400, count: 32), count: 4), steps: 100,
                                  seconds: 100 / stepsPerSecond)
            let p = try Planner.plan(layout: layout, nodes: cluster, available: available, load: load, strategy: .power(.energy),
                                     current: nil, maxStepWorkRatio: .infinity)
            let pred = PlacementCost.predict(layout: layout, nodes: cluster, placement: p, load: load)
            XCTAssertTrue(pred.keepsUp, "\(stepsPerSecond) steps/s")
            return p.copies(nodeCount: 8).filter { $0 > 0 }.count
        }
        let low = try nodesUsed(stepsPerSecond: 1), high = try nodesUsed(stepsPerSecond: 150)
        XCTAssertEqual(low, 1)
        XCTAssertGreaterThan(high, low)
    }

    func testUnavailableNodesGetNothing() throws {
        let layout = ExpertLayout(layers: 3, experts: 10, expertBytes: 100, expertFlopsPerToken: 1)
        let cluster = nodes([h100, cpu, h100, cpu])
        let available = [true, false, true, false]
        for s in strategies {
            let p = try Planner.plan(layout: layout, nodes: cluster, available: available, load: nil, strategy: s, current: nil)
            XCTAssertTrue(p.experts(on: 1).isEmpty && p.experts(on: 3).isEmpty, "\(s)")
            assertValid(p, layout: layout, nodes: cluster, available: available)
        }
    }

    func testMemoryWithCurrentMovesOnlyTheOrphans() throws {
        let layout = ExpertLayout(layers: 4, experts: 12, expertBytes: 100, expertFlopsPerToken: 1)
        let cluster = nodes(Array(repeating: cpu, count: 4))
        let before = try Planner.plan(layout: layout, nodes: cluster, available: [true, true, true, true], load: nil,
                                      strategy: .memory, current: nil)
        XCTAssertEqual(before.copies(nodeCount: 4), [12, 12, 12, 12])
        let after = try Planner.plan(layout: layout, nodes: cluster, available: [true, false, true, true], load: nil,
                                     strategy: .memory, current: before)
        XCTAssertEqual(after.loads(from: before), before.experts(on: 1).count)
        XCTAssertEqual(after.copies(nodeCount: 4), [16, 0, 16, 16])
        // Node 1 back: nothing moves until a rebalance (planning without `current`).
        let back = try Planner.plan(layout: layout, nodes: cluster, available: [true, true, true, true], load: nil,
                                    strategy: .memory, current: after)
        XCTAssertEqual(back, after)
    }

    func testMemorySharesFollowBudgets() throws {
        let layout = ExpertLayout(layers: 2, experts: 30, expertBytes: 10, expertFlopsPerToken: 1)
        let cluster = [PlacementNode(id: "a", memoryBytes: 400, profile: cpu), PlacementNode(id: "b", memoryBytes: 200, profile: cpu)]
        let p = try Planner.plan(layout: layout, nodes: cluster, available: [true, true], load: nil, strategy: .memory, current: nil)
        XCTAssertEqual(p.copies(nodeCount: 2), [40, 20])
    }

    func testBalancedKeepsAnEquallyGoodCurrentPlacement() throws {
        var rng = SeededGenerator(state: 11)
        let layout = ExpertLayout(layers: 3, experts: 16, expertBytes: 100, expertFlopsPerToken: 1)
        let cluster = nodes(Array(repeating: h100, count: 4))
        let all = [true, true, true, true]
        let load = ExpertLoad(tokens: zipfLoad(layers: 3, experts: 16, exponent: 1, total: 1000, rng: &rng))
        let plan = try Planner.plan(layout: layout, nodes: cluster, available: all, load: load,
                                    strategy: .balanced(redundantExperts: 4), current: nil)
        // The same plan with nodes 0 and 1 swapped is as good: it is kept, nothing loads.
        let swapped = ExpertPlacement(replicas: plan.replicas.map { $0.map { $0.map { $0 == 0 ? 1 : $0 == 1 ? 0 : $0 } } })
        let again = try Planner.plan(layout: layout, nodes: cluster, available: all, load: load,
                                     strategy: .balanced(redundantExperts: 4), current: swapped)
        XCTAssertEqual(again, swapped)
        XCTAssertEqual(again.loads(from: swapped), 0)
        // From a worse placement (memory's), the packs go where most of their experts already are.
        let memory = try Planner.plan(layout: layout, nodes: cluster, available: all, load: load, strategy: .memory, current: nil)
        let moved = try Planner.plan(layout: layout, nodes: cluster, available: all, load: load,
                                     strategy: .balanced(redundantExperts: 4), current: memory)
        XCTAssertLessThanOrEqual(moved.loads(from: memory), plan.loads(from: memory))
        assertValid(moved, layout: layout, nodes: cluster, available: all)
    }

    func testEqualInputGivesEqualOutput() throws {
        var rng = SeededGenerator(state: 5)
        let layout = ExpertLayout(layers: 3, experts: 20, expertBytes: 1 << 20, expertFlopsPerToken: 1e7, expertsPerToken: 2)
        let cluster = nodes([h100, cpu, try HardwareClass.profile(named: "a100-80gb"), cpu], memory: 40 << 20)
        let load = ExpertLoad(tokens: zipfLoad(layers: 3, experts: 20, exponent: 1, total: 500, rng: &rng), steps: 5)
        for s in strategies {
            let a = try Planner.plan(layout: layout, nodes: cluster, available: [true, true, true, true], load: load, strategy: s, current: nil)
            let b = try Planner.plan(layout: layout, nodes: cluster, available: [true, true, true, true], load: load, strategy: s, current: nil)
            XCTAssertEqual(a, b, "\(s)")
        }
    }
}

final class PlacementErrorTests: XCTestCase {
    let layout = ExpertLayout(layers: 2, experts: 4, expertBytes: 1000, expertFlopsPerToken: 1)
    let cpu = try! HardwareClass.profile(named: "cpu-2s")

    func refusal(_ cluster: [PlacementNode], available: [Bool]? = nil, strategy: PlacementStrategy = .memory,
                 ratio: Double = Planner.defaultMaxStepWorkRatio) -> PlacementError? {
        do {
            _ = try Planner.plan(layout: layout, nodes: cluster, available: available ?? cluster.map { _ in true }, load: nil,
                                 strategy: strategy, current: nil, maxStepWorkRatio: ratio)
            return nil
        } catch { return error as? PlacementError }
    }

    func profile(idle: Double = 100, busy: Double = 300, pue: Double = 1.2) -> [PlacementNode] {
        [PlacementNode(id: "x", memoryBytes: 0, profile: PowerProfile(device: "custom", idleWatts: idle, busyWatts: busy,
                                                                     memoryBandwidth: 1e10, pue: pue))]
    }

    func expect(_ error: PlacementError?, _ expected: PlacementError, mentions words: [String],
                file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(error, expected, file: file, line: line)
        for w in words { XCTAssertTrue(expected.description.contains(w), "'\(expected)' lacks '\(w)'", file: file, line: line) }
    }

    func testBadProfiles() {
        expect(refusal(profile(idle: -5)), .negativeFigure(device: "custom", field: "idleWatts", value: -5), mentions: ["idleWatts", "negative"])
        expect(refusal(profile(busy: 7e6)), .absurdWatts(device: "custom", field: "busyWatts", value: 7e6), mentions: ["busyWatts", "per node"])
        expect(refusal(profile(idle: 300, busy: 100)), .busyBelowIdle(device: "custom", idleWatts: 300, busyWatts: 100),
               mentions: ["at least idle"])
        expect(refusal(profile(pue: 0.9)), .pueOutOfRange(device: "custom", value: 0.9), mentions: ["PUE 0.9"])
        expect(refusal(profile(idle: .nan)), .nonFiniteFigure(device: "custom", field: "idleWatts"), mentions: ["finite"])
        XCTAssertThrowsError(try HardwareClass.profile(named: "tpu")) { error in
            XCTAssertEqual(error as? PlacementError, .unknownHardwareClass(name: "tpu", known: HardwareClass.names))
            XCTAssertTrue("\(error)".contains("h100"))
        }
    }

    func testBadClusters() {
        let small = PlacementNode(id: "small", memoryBytes: 999, profile: cpu)
        expect(refusal([small]), .nodeFitsNoExpert(node: "small", memoryBytes: 999, expertBytes: 1000), mentions: ["small", "0 for unlimited"])
        let twins = [PlacementNode(id: "a", memoryBytes: 0, profile: cpu), PlacementNode(id: "a", memoryBytes: 0, profile: cpu)]
        expect(refusal(twins), .duplicateNodeID("a"), mentions: ["'a'"])
        let pair = [PlacementNode(id: "a", memoryBytes: 0, profile: cpu), PlacementNode(id: "b", memoryBytes: 0, profile: cpu)]
        expect(refusal(pair, available: [false, false]), .noAvailableNode, mentions: ["start or undrain"])
        expect(refusal(pair, available: [true]), .availabilityCountMismatch(nodes: 2, available: 1), mentions: ["one flag per node"])
        let tight = [PlacementNode(id: "a", memoryBytes: 3000, profile: cpu), PlacementNode(id: "b", memoryBytes: 4000, profile: cpu)]
        expect(refusal(tight), .insufficientMemory(neededBytes: 8000, availableBytes: 7000), mentions: ["8000", "7000"])
        expect(refusal(pair, strategy: .balanced(redundantExperts: 5)), .redundantExpertsOutOfRange(value: 5, maximum: 4),
               mentions: ["between 0 and 4"])
        expect(refusal(pair, strategy: .balanced(redundantExperts: -1)), .redundantExpertsOutOfRange(value: -1, maximum: 4),
               mentions: ["-1"])
        expect(refusal(pair, ratio: 0.5), .invalidStepWorkRatio(0.5), mentions: ["≥ 1"])
        let slow = [PlacementNode(id: "mute", memoryBytes: 0, profile: PowerProfile(device: "custom", idleWatts: 1, busyWatts: 2))]
        expect(refusal(slow, strategy: .power(.energy)), .unknownNodeSpeed(node: "mute"), mentions: ["mute"])
    }

    func testBadLayoutLoadAndCurrent() {
        let pair = [PlacementNode(id: "a", memoryBytes: 0, profile: cpu), PlacementNode(id: "b", memoryBytes: 0, profile: cpu)]
        func plan(layout: ExpertLayout? = nil, load: ExpertLoad? = nil, current: ExpertPlacement? = nil) -> PlacementError? {
            do {
                _ = try Planner.plan(layout: layout ?? self.layout, nodes: pair, available: [true, true], load: load,
                                     strategy: .memory, current: current)
                return nil
            } catch { return error as? PlacementError }
        }
        XCTAssertEqual(plan(layout: ExpertLayout(layers: 0, experts: 4, expertBytes: 1, expertFlopsPerToken: 1)),
                       .invalidLayout(field: "layers", value: 0))
        XCTAssertEqual(plan(load: ExpertLoad(tokens: [[1, 2, 3, 4]])), .loadShapeMismatch(layers: 2, experts: 4))
        XCTAssertEqual(plan(load: ExpertLoad(tokens: [[1, 2, 3, 4], [1, -2, 3, 4]])), .invalidLoad(field: "tokens[1][1]", value: -2))
        XCTAssertEqual(plan(load: ExpertLoad(tokens: [[1, 2, 3, 4], [1, 2, 3, 4]], steps: 0)), .invalidLoad(field: "steps", value: 0))
        guard case .currentPlacementMismatch? = plan(current: ExpertPlacement(replicas: [[[0], [1], [2], [0]], [[0], [1], [0], [1]]])) else {
            return XCTFail("a current placement naming node 2 of 2 must be refused")
        }
    }

    func testStrategyParsing() throws {
        for s: PlacementStrategy in [.memory, .balanced(redundantExperts: 0), .balanced(redundantExperts: 32),
                                     .power(.energy), .power(.cost), .power(.carbon)] {
            XCTAssertEqual(try PlacementStrategy(parsing: s.description), s)
        }
        XCTAssertEqual(try PlacementStrategy(parsing: "Balanced"), .balanced(redundantExperts: 0))
        XCTAssertEqual(try PlacementStrategy(parsing: "power"), .power(.energy))
        for bad in ["", "eplb", "power:speed", "balanced:x", "memory:1"] {
            XCTAssertThrowsError(try PlacementStrategy(parsing: bad)) { error in
                XCTAssertEqual(error as? PlacementError, .unknownStrategy(bad))
            }
        }
    }

    func testBuiltInProfilesAreValid() throws {
        for name in HardwareClass.names {
            let p = try HardwareClass.profile(named: name)
            XCTAssertNoThrow(try p.validate(), name)
            XCTAssertGreaterThan(p.busyWatts, p.idleWatts, name)
            XCTAssertGreaterThan(p.memoryBandwidth, 0, name)
        }
        let site = try HardwareClass.profile(named: "H100", pricePerKWh: 0.3, carbonPerKWh: 50, pue: 1.3)
        XCTAssertEqual([site.pricePerKWh, site.carbonPerKWh, site.pue], [0.3, 50, 1.3])
        XCTAssertEqual(try JSONDecoder().decode(PowerProfile.self, from: JSONEncoder().encode(site)), site)
        // A config file may give only the watts: the rest is unknown speed and default site figures.
        let short = try JSONDecoder().decode(PowerProfile.self, from: Data(#"{"device":"box","idleWatts":40,"busyWatts":90}"#.utf8))
        XCTAssertEqual(short, PowerProfile(device: "box", idleWatts: 40, busyWatts: 90))
    }
}

final class DispatchAndEnergyTests: XCTestCase {
    func testDispatchBalancesAndIsDeterministic() {
        var work = [Double](repeating: 0, count: 4)
        let a = Dispatch.assign(tokens: 9, replicas: [2, 0], nodeWork: &work, tokenCost: [1, 1, 2, 1])
        var again = [Double](repeating: 0, count: 4)
        XCTAssertEqual(Dispatch.assign(tokens: 9, replicas: [2, 0], nodeWork: &again, tokenCost: [1, 1, 2, 1]), a)
        // Node 0 is twice as fast as node 2: it takes two tokens for each of node 2's.
        XCTAssertEqual(a.filter { $0 == 0 }.count, 6)
        XCTAssertEqual(work[0], 6)
        XCTAssertEqual(work[2], 6)
        // Work carried over: a busy node gets fewer of the next expert's tokens.
        var busy: [Double] = [5, 0]
        XCTAssertEqual(Dispatch.split(tokens: 7, replicas: [0, 1], nodeWork: &busy, tokenCost: [1, 1]), [1, 6])
        // Starting a copy costs its weight read: two tokens go to the busier node whose copy costs
        // nothing to start rather than to the idle one that must read its weights first.
        var plain: [Double] = [2, 0], started: [Double] = [2, 0]
        XCTAssertEqual(Dispatch.split(tokens: 2, replicas: [0, 1], nodeWork: &plain, tokenCost: [1, 1]), [0, 2])
        XCTAssertEqual(Dispatch.split(tokens: 2, replicas: [0, 1], nodeWork: &started, tokenCost: [1, 1],
                                      activationCost: [0, 3]), [2, 0])
    }

    func testEnergyMeter() throws {
        let p = PowerProfile(device: "custom", idleWatts: 100, busyWatts: 300, pricePerKWh: 0.2, carbonPerKWh: 500, pue: 1.5)
        var meter = EnergyMeter(profiles: [p, p])
        let watts = meter.add(node: 0, busySeconds: 30, intervalSeconds: 60)
        XCTAssertEqual(watts, (100 + 300) / 2 * 1.5, accuracy: 1e-9)
        meter.add(node: 1, busySeconds: 0, intervalSeconds: 60)
        meter.add(tokens: 1000)
        XCTAssertEqual(meter.totalJoules, (300 + 150) * 60, accuracy: 1e-6)
        XCTAssertEqual(meter.totalDollars, meter.totalJoules / 3.6e6 * 0.2, accuracy: 1e-12)
        XCTAssertEqual(meter.totalGrams, meter.totalJoules / 3.6e6 * 500, accuracy: 1e-9)
        let perMillion = try XCTUnwrap(meter.perMillionTokens)
        XCTAssertEqual(perMillion.joules, meter.totalJoules * 1000, accuracy: 1e-6)
        XCTAssertNil(EnergyMeter(profiles: [p]).perMillionTokens)
    }

    func testPredictionChargesIdleTimeAndReleasedNodes() throws {
        let p = PowerProfile(device: "custom", idleWatts: 50, busyWatts: 250, memoryBandwidth: 1e9)
        let cluster = nodes([p, p])
        let layout = ExpertLayout(layers: 1, experts: 2, expertBytes: 1_000_000, expertFlopsPerToken: 0)
        let both = ExpertPlacement(replicas: [[[0], [0]]])
        let load = ExpertLoad(tokens: [[100, 100]], steps: 100, seconds: 10)
        let off = PlacementCost.predict(layout: layout, nodes: cluster, placement: both, load: load, released: .off)
        let idle = PlacementCost.predict(layout: layout, nodes: cluster, placement: both, load: load, released: .idle)
        XCTAssertTrue(off.keepsUp)
        XCTAssertEqual(off.windowSeconds, 10)
        XCTAssertEqual(off.nodeJoules[1], 0)
        XCTAssertEqual(idle.joules - off.joules, 50 * 10, accuracy: 1e-6)
        // Back to back (no duration) the window is only the busy time: less idle energy.
        let saturated = PlacementCost.predict(layout: layout, nodes: cluster, placement: both,
                                              load: ExpertLoad(tokens: [[100, 100]], steps: 100), released: .off)
        XCTAssertEqual(saturated.windowSeconds, saturated.stepSeconds * 100, accuracy: 1e-12)
        XCTAssertLessThan(saturated.joules, off.joules)
    }
}
