import Foundation
import Placement
@testable import Simulator
import XCTest

final class SimulatorTests: XCTestCase {
    /// Two sites: cheap and clean, dear and dirty; H100 boards at the first, two-socket CPU
    /// servers at the second, with memory enough that `memory` placement gives the CPUs most.
    static let heterogeneous = """
    sites:
      north: {price_per_kwh: 0.05, carbon_per_kwh: 30, pue: 1.1}
      south: {price_per_kwh: 0.30, carbon_per_kwh: 600, pue: 1.5}
    coordinator:
      class: h100
      site: north
      overhead_us: 100
    nodes:
      - id: gpu
        count: 2
        class: h100
        memory: 80GB
        site: north
        link: {latency_us: 10, bandwidth_gbs: 25}
      - id: cpu
        count: 2
        class: cpu-2s
        memory: 256GB
        site: south
        link: {latency_us: 50, bandwidth_gbs: 12.5}
    scheduler: {max_batch_tokens: 256, max_seqs: 32, max_waiting: 128}
    """

    func simulate(seed: UInt64, strategies: String = "memory,balanced:4,power:cost", rate: Double = 4) throws -> SimulationReport {
        let model = try ModelSpec.load("qwen3-30b-a3b")
        let cluster = try ClusterSpec.parse(Self.heterogeneous, file: "hetero.yaml")
        let requests = try Trace.poisson(rate: rate, duration: 20, prompt: .uniform(32, 256), output: .exponential(mean: 32), seed: seed)
        let shares = try RoutingShares.zipf(layers: model.moeLayers, experts: model.experts, skew: 1, seed: seed)
        return try Comparison.run(model: model, cluster: cluster, requests: requests, traceName: "poisson", shares: shares,
                                  strategies: try Comparison.strategies(parsing: strategies), seed: seed).report
    }

    func testASeedGivesByteIdenticalReports() throws {
        let a = try simulate(seed: 7), b = try simulate(seed: 7), c = try simulate(seed: 8)
        XCTAssertEqual(a.json(), b.json())
        XCTAssertEqual(a.csv(), b.csv())
        XCTAssertEqual(a.svg(), b.svg())
        XCTAssertNotEqual(a.json(), c.json(), "another seed draws another trace")
    }

    func testEveryRequestIsCompletedOrRejected() throws {
        let report = try simulate(seed: 3)
        for r in report.results {
            XCTAssertEqual(r.completed + r.rejected, r.requests, r.strategy)
            XCTAssertGreaterThan(r.completed, 0, r.strategy)
            XCTAssertGreaterThan(r.steps, 0, r.strategy)
            XCTAssertLessThanOrEqual(r.ttftP50, r.ttftP99, r.strategy)
            XCTAssertLessThanOrEqual(r.tpotP50, r.tpotP99, r.strategy)
            XCTAssertGreaterThan(r.energyKWh, 0, r.strategy)
            XCTAssertEqual(r.tpotPercentiles, r.tpotPercentiles.sorted(), r.strategy)
            // Power over time integrates to the energy total.
            let joules = r.clusterWatts.enumerated().reduce(0.0) { sum, b in
                sum + b.element * min(r.intervalSeconds, r.simulatedSeconds - Double(b.offset) * r.intervalSeconds)
            }
            XCTAssertEqual(joules / 3.6e6, r.energyKWh, accuracy: r.energyKWh * 1e-6, r.strategy)
        }
    }

    func testPowerPlacementLowersCostPerTokenOnAHeterogeneousCluster() throws {
        let report = try simulate(seed: 11, strategies: "memory,power:cost")
        let memory = report.results[0], power = report.results[1]
        XCTAssertEqual(memory.strategy, "memory")
        XCTAssertEqual(power.strategy, "power:cost")
        XCTAssertEqual(power.completed, memory.completed, "both serve the whole trace")
        XCTAssertLessThan(power.dollarsPerMillionTokens, memory.dollarsPerMillionTokens)
        XCTAssertLessThan(power.gramsPerMillionTokens, memory.gramsPerMillionTokens)
        // Memory placement gives the CPU servers experts; the cost strategy moves them off.
        let cpuExperts = { (r: StrategyResult) in r.nodes.filter { $0.device == "cpu-2s" }.reduce(0) { $0 + $1.experts } }
        XCTAssertGreaterThan(cpuExperts(memory), 0)
        XCTAssertLessThan(cpuExperts(power), cpuExperts(memory))
    }

    func testAMalformedTraceLineNamesFileAndLine() {
        let text = "arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,10,5\n0.5,abc,5\n"
        XCTAssertThrowsError(try Trace.parse(csv: text, file: "trace.csv")) { error in
            guard case let SimulatorError.malformedTraceLine(file, line, _) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(file, "trace.csv")
            XCTAssertEqual(line, 3)
            XCTAssertTrue("\(error)".hasPrefix("trace.csv:3: "), "\(error)")
        }
        XCTAssertThrowsError(try Trace.parse(csv: "1.0,10,5\n0.5,10,5\n", file: "t.csv")) { error in
            guard case let SimulatorError.malformedTraceLine(_, line, _) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(line, 2, "arrivals going back in time")
        }
    }

    func testAnEmptyTraceIsRefused() {
        for text in ["", "arrived_at,num_prefill_tokens,num_decode_tokens\n", "# nothing\n\n"] {
            XCTAssertThrowsError(try Trace.parse(csv: text, file: "empty.csv")) { error in
                XCTAssertEqual(error as? SimulatorError, .emptyTrace(file: "empty.csv"))
            }
        }
    }

    /// A daily curve: arrivals in the busiest part of the day outnumber the quietest part's by
    /// about the asked ratio, the day's mean is the asked rate, and a seed fixes the trace.
    func testADailyCurveFollowsItsPeakToTroughRatio() throws {
        let day = 1000.0
        let requests = try Trace.daily(rate: 20, peakToTrough: 4, period: day, duration: day, prompt: .fixed(10), output: .fixed(5), seed: 3)
        XCTAssertEqual(requests, try Trace.daily(rate: 20, peakToTrough: 4, period: day, duration: day, prompt: .fixed(10), output: .fixed(5), seed: 3))
        XCTAssertEqual(Double(requests.count), 20 * day, accuracy: 20 * day * 0.05)
        // Rate at the trough (t = 0 and t = day) and at the peak (day/2): a tenth of a day around each.
        let trough = requests.filter { $0.arrival < day * 0.05 || $0.arrival >= day * 0.95 }.count
        let peak = requests.filter { abs($0.arrival - day / 2) < day * 0.05 }.count
        XCTAssertEqual(Double(peak) / Double(trough), 4, accuracy: 0.6, "peak \(peak), trough \(trough)")
        XCTAssertTrue(zip(requests, requests.dropFirst()).allSatisfy { $0.arrival <= $1.arrival })
        // Ratio 1 is the plain Poisson trace.
        XCTAssertEqual(try Trace.daily(rate: 5, peakToTrough: 1, period: 60, duration: 30, prompt: .fixed(3), output: .fixed(2), seed: 9),
                       try Trace.poisson(rate: 5, duration: 30, prompt: .fixed(3), output: .fixed(2), seed: 9))
        for (k, period) in [(0.5, day), (.nan, day), (4, 0), (4, -.infinity)] {
            XCTAssertThrowsError(try Trace.daily(rate: 1, peakToTrough: k, period: period, duration: 10, prompt: .fixed(1), output: .fixed(1), seed: 0)) {
                guard case SimulatorError.invalidOption = $0 else { return XCTFail("\($0)") }
            }
        }
    }

    func testATraceRoundTripsThroughCSV() throws {
        let requests = try Trace.poisson(rate: 10, duration: 5, prompt: .fixed(100), output: .uniform(1, 9), seed: 1)
        XCTAssertEqual(try Trace.parse(csv: Trace.csv(requests), file: "t.csv"), requests)
    }

    func testAnUnknownNodeClassNamesItsLine() {
        let text = Self.heterogeneous.replacingOccurrences(of: "class: cpu-2s", with: "class: h900")
        let line = text.split(separator: "\n", omittingEmptySubsequences: false).firstIndex { $0.contains("h900") }! + 1
        XCTAssertThrowsError(try ClusterSpec.parse(text, file: "c.yaml")) { error in
            guard case let SimulatorError.unknownNodeClass(file, l, name, known) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(file, "c.yaml")
            XCTAssertEqual(l, line)
            XCTAssertEqual(name, "h900")
            XCTAssertTrue(known.contains("h100"))
        }
    }

    func testAnUnknownSiteAndKeyAreRefused() {
        let site = Self.heterogeneous.replacingOccurrences(of: "site: south", with: "site: west")
        XCTAssertThrowsError(try ClusterSpec.parse(site, file: "c.yaml")) { error in
            guard case SimulatorError.unknownSite(_, _, "west", let known) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(known, ["north", "south"])
        }
        let key = Self.heterogeneous.replacingOccurrences(of: "memory: 80GB", with: "memroy: 80GB")
        XCTAssertThrowsError(try ClusterSpec.parse(key, file: "c.yaml")) { error in
            guard case SimulatorError.unknownKey(_, _, let k, _) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(k, "nodes[0].memroy")
        }
    }

    func testAModelThatFitsOnNoNodeIsRefused() throws {
        let small = Self.heterogeneous.replacingOccurrences(of: "256GB", with: "16GB").replacingOccurrences(of: "80GB", with: "16GB")
        let cluster = try ClusterSpec.parse(small, file: "small.yaml")
        let model = try ModelSpec.load("kimi-k2")
        let requests = [TraceRequest(arrival: 0, promptTokens: 8, outputTokens: 8)]
        let shares = try RoutingShares.zipf(layers: model.moeLayers, experts: model.experts, skew: 0, seed: 0)
        XCTAssertThrowsError(try Comparison.run(model: model, cluster: cluster, requests: requests, traceName: "one",
                                                shares: shares, strategies: [.memory], seed: 0)) { error in
            guard case let SimulatorError.modelFitsNoNode(file, name, needed, available) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(file, "small.yaml")
            XCTAssertEqual(name, "kimi-k2")
            XCTAssertEqual(available, 4 * 16_000_000_000)
            XCTAssertEqual(needed, UInt64(model.moeLayers * model.experts) * model.expertBytes)
        }
    }

    func testAnUnknownModelListsThePresets() {
        XCTAssertThrowsError(try ModelSpec.load("gpt-5")) { error in
            guard case let SimulatorError.unknownModel(name, known) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(name, "gpt-5")
            XCTAssertTrue(known.contains("kimi-k2"))
        }
    }

    func testZipfSharesAreDistributionsAndSkewed() throws {
        let flat = try RoutingShares.zipf(layers: 3, experts: 16, skew: 0, seed: 1)
        let hot = try RoutingShares.zipf(layers: 3, experts: 16, skew: 1.2, seed: 1)
        for row in flat.shares + hot.shares { XCTAssertEqual(row.reduce(0, +), 1, accuracy: 1e-12) }
        XCTAssertEqual(flat.shares[0].max()!, 1.0 / 16, accuracy: 1e-12)
        XCTAssertGreaterThan(hot.shares[0].max()!, 4.0 / 16)
        XCTAssertNotEqual(hot.shares[0], hot.shares[1], "each layer has its own hot experts")
    }

    func testRecordedRoutingIsReadAndShapeChecked() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("routing-\(UUID().uuidString).json")
        defer { try? FileManager.default.removeItem(at: url) }
        let json = #"{"format":"farside-routing-load-v1","window_seconds":60,"layers":[1,2],"experts":4,"tokens":[[3,1,0,0],[0,0,0,0]]}"#
        try Data(json.utf8).write(to: url)
        let load = try RoutingLoad.load(url.path)
        let shares = try RoutingShares.recorded(load, file: url.path, layers: 2, experts: 4)
        XCTAssertEqual(shares.shares[0], [0.75, 0.25, 0, 0])
        XCTAssertEqual(shares.shares[1], [0.25, 0.25, 0.25, 0.25])
        XCTAssertThrowsError(try RoutingShares.recorded(load, file: url.path, layers: 3, experts: 4)) { error in
            XCTAssertEqual(error as? SimulatorError, .routingShapeMismatch(file: url.path, layers: 2, experts: 4, expectedLayers: 3, expectedExperts: 4))
        }
    }

    func testAStepOfMoreTokensTakesNoLessTime() throws {
        let model = try ModelSpec.load("qwen3-30b-a3b")
        let cluster = try ClusterSpec.parse(Self.heterogeneous, file: "hetero.yaml")
        let placement = try Planner.plan(layout: model.layout, nodes: cluster.nodes.map { PlacementNode(id: $0.id, memoryBytes: $0.memoryBytes, profile: $0.profile) },
                                         available: [true, true, true, true], load: nil, strategy: .memory, current: nil)
        var cost = CostModel(model: model, cluster: cluster, placement: placement,
                             shares: try RoutingShares.zipf(layers: model.moeLayers, experts: model.experts, skew: 1, seed: 0))
        var last = 0.0
        for t in [1, 2, 8, 64, 256] {
            let s = cost.expertSeconds(tokens: t).seconds
            XCTAssertGreaterThanOrEqual(s, last, "\(t) tokens")
            last = s
        }
        XCTAssertGreaterThan(cost.attentionSeconds(tokens: 8, positions: 8000, kvTokens: 1000),
                             cost.attentionSeconds(tokens: 8, positions: 80, kvTokens: 10))
    }

    func testConfigJSONGivesTheSameSizesAsThePreset() throws {
        let json = #"{"model_type":"qwen3_moe","num_hidden_layers":48,"hidden_size":2048,"num_experts":128,"num_experts_per_tok":8,"num_attention_heads":32,"num_key_value_heads":4,"head_dim":128,"moe_intermediate_size":768,"intermediate_size":6144,"vocab_size":151936}"#
        let parsed = try ModelSpec.parse(config: Data(json.utf8), file: "config.json", format: .bf16)
        let preset = try ModelSpec.load("qwen3-30b-a3b")
        XCTAssertEqual(parsed.layout, preset.layout)
        XCTAssertEqual(parsed.coordinatorParameters, preset.coordinatorParameters)
        XCTAssertThrowsError(try ModelSpec.parse(config: Data("{}".utf8), file: "bad.json", format: .bf16)) { error in
            guard case SimulatorError.invalidModelConfig("bad.json", _) = error else { return XCTFail("\(error)") }
        }
    }

    /// One strategy on the heterogeneous cluster with a KV cache of `kvBudget`.
    func run(_ requests: [TraceRequest], kvBudget: String) throws -> StrategyResult {
        let text = Self.heterogeneous.replacingOccurrences(of: "overhead_us: 100", with: "overhead_us: 100\n  kv_budget: \(kvBudget)")
        let cluster = try ClusterSpec.parse(text, file: "kv.yaml")
        let model = try ModelSpec.load("qwen3-30b-a3b")
        XCTAssertEqual(cluster.coordinator.memoryBytes, 20_000_000)
        let shares = try RoutingShares.zipf(layers: model.moeLayers, experts: model.experts, skew: 0, seed: 0)
        return try Comparison.run(model: model, cluster: cluster, requests: requests, traceName: "kv", shares: shares,
                                  strategies: [.memory], seed: 0).report.results[0]
    }

    func testARequestLongerThanTheKVCacheIsRefusedNotHung() throws {
        // 20 MB of KV holds about 100 tokens of this model: the 500-token prompt never fits.
        let r = try run([TraceRequest(arrival: 0, promptTokens: 500, outputTokens: 4),
                         TraceRequest(arrival: 0.001, promptTokens: 10, outputTokens: 4)], kvBudget: "20MB")
        XCTAssertEqual(r.rejected, 1)
        XCTAssertEqual(r.completed, 1)
        XCTAssertEqual(r.tokens, 14)
    }

    func testATightKVCachePreemptsAndStillFinishesEverything() throws {
        // Four sequences of 60 tokens each in a cache of about 100: some must be preempted.
        let requests = (0..<4).map { TraceRequest(arrival: Double($0) * 1e-3, promptTokens: 20, outputTokens: 40) }
        let r = try run(requests, kvBudget: "20MB")
        XCTAssertGreaterThan(r.preemptions, 0)
        XCTAssertEqual(r.completed, 4)
        XCTAssertEqual(r.rejected, 0)
    }

    func testNodesSharingAHostFinishAsUnderProcessorSharing() {
        // Works 1, 2 and 3 on one host: all three run at a third of it until the first is done
        // (3), the other two at half (the second at 3 + 2·1 = 5), the last alone (6 = Σ).
        let f = CostModel.sharedFinishTimes(work: [2, 1, 3, 4], hosts: [[0, 1, 2]])
        XCTAssertEqual(f, [5, 3, 6, 4])
        XCTAssertEqual(CostModel.sharedFinishTimes(work: [2, 0, 3], hosts: [[0, 1, 2]]), [4, 0, 5], "an idle node takes no share")
        XCTAssertEqual(CostModel.sharedFinishTimes(work: [2, 1], hosts: []), [2, 1])
    }

    func testAHostSharedByTheNodesLengthensTheExpertPhaseAndTheirBusyTime() throws {
        let model = try ModelSpec.load("qwen3-30b-a3b")
        func cost(_ host: String) throws -> (seconds: Double, busy: [Double]) {
            let yaml = """
            coordinator: {class: vm-2vcpu}
            nodes:
              - {id: n, count: 3, class: vm-2vcpu\(host)}
            """
            let cluster = try ClusterSpec.parse(yaml, file: "host.yaml")
            let placement = try Planner.plan(layout: model.layout, nodes: cluster.nodes.map { PlacementNode(id: $0.id, memoryBytes: 0, profile: $0.profile) },
                                             available: [true, true, true], load: nil, strategy: .memory, current: nil)
            var c = CostModel(model: model, cluster: cluster, placement: placement,
                              shares: try RoutingShares.zipf(layers: model.moeLayers, experts: model.experts, skew: 0, seed: 0))
            return c.expertSeconds(tokens: 16)
        }
        let own = try cost(""), shared = try cost(", host: vm")
        XCTAssertGreaterThan(shared.seconds, 2.5 * own.seconds, "three equal nodes on one host take about three times as long")
        XCTAssertLessThanOrEqual(shared.seconds, 3 * own.seconds * (1 + 1e-9))
        for (s, o) in zip(shared.busy, own.busy) { XCTAssertGreaterThan(s, o) }
        XCTAssertThrowsError(try ClusterSpec.parse("coordinator: {class: vm-2vcpu}\nnodes:\n  - {class: vm-2vcpu, host: ''}\n", file: "h.yaml")) { error in
            guard case SimulatorError.invalidValue("h.yaml", _, "host", _) = error else { return XCTFail("\(error)") }
        }
    }

    func testAMeasuredHostSharingScalesTheNodesWorkInsteadOfProcessorSharing() throws {
        let sharing = HostSharing(nodes: 3, factors: [.init(tokens: 1, factor: 4), .init(tokens: 16, factor: 2), .init(tokens: 256, factor: 1.5)])
        XCTAssertEqual(sharing.factor(tokens: 1), 4)
        XCTAssertEqual(sharing.factor(tokens: 4), 3, accuracy: 1e-12, "linear in log(tokens): 4 is halfway from 1 to 16")
        XCTAssertEqual(sharing.factor(tokens: 16), 2, accuracy: 1e-12)
        XCTAssertEqual(sharing.factor(tokens: 64), 1.75, accuracy: 1e-12)
        XCTAssertEqual(sharing.factor(tokens: 4096), 1.5, "the last point beyond it")
        XCTAssertNil(sharing.problem)

        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("farside-sharing-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        func profile(_ name: String, _ sharing: HostSharing?) throws -> String {
            var json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(try HardwareClass.profile(named: "vm-2vcpu"))) as! [String: Any]
            if let sharing { json["hostSharing"] = try JSONSerialization.jsonObject(with: JSONEncoder().encode(sharing)) }
            try JSONSerialization.data(withJSONObject: json).write(to: dir.appendingPathComponent(name))
            return name
        }
        let measured = try profile("measured.json", sharing), plain = try profile("plain.json", nil)
        let model = try ModelSpec.load("qwen3-30b-a3b")
        func cost(_ nodes: String, count: Int, tokens: Int = 16) throws -> (seconds: Double, busy: [Double]) {
            let cluster = try ClusterSpec.parse("coordinator: {class: vm-2vcpu}\nnodes:\n\(nodes)", file: dir.appendingPathComponent("c.yaml").path)
            let placement = try Planner.plan(layout: model.layout, nodes: cluster.nodes.map { PlacementNode(id: $0.id, memoryBytes: 0, profile: $0.profile) },
                                             available: Array(repeating: true, count: count), load: nil, strategy: .memory, current: nil)
            var c = CostModel(model: model, cluster: cluster, placement: placement,
                              shares: try RoutingShares.zipf(layers: model.moeLayers, experts: model.experts, skew: 0, seed: 0))
            return c.expertSeconds(tokens: tokens)
        }
        let own = try cost("  - {id: n, count: 3, profile_file: \(plain)}\n", count: 3)
        // Measured with 3 nodes on the host: their work costs the factor (2 at 16 tokens).
        let shared = try cost("  - {id: n, count: 3, profile_file: \(measured), host: vm}\n", count: 3)
        XCTAssertEqual(shared.seconds, 2 * own.seconds, accuracy: 1e-12 * own.seconds)
        for (s, o) in zip(shared.busy, own.busy) { XCTAssertEqual(s, 2 * o, accuracy: 1e-12 * o) }
        XCTAssertEqual(try cost("  - {id: n, count: 3, profile_file: \(measured), host: vm}\n", count: 3, tokens: 1).busy[0],
                       4 * (try cost("  - {id: n, count: 3, profile_file: \(plain)}\n", count: 3, tokens: 1)).busy[0], accuracy: 1e-15)
        // Not on a shared host, or a host of another size than measured: not applied.
        let alone = try cost("  - {id: n, count: 3, profile_file: \(measured)}\n", count: 3)
        XCTAssertEqual(alone.busy, own.busy)
        let two = try cost("  - {id: n, count: 2, profile_file: \(measured), host: vm}\n", count: 2)
        let twoPS = try cost("  - {id: n, count: 2, profile_file: \(plain), host: vm}\n", count: 2)
        XCTAssertEqual(two.busy, twoPS.busy, "two nodes on a host measured with three: processor sharing")

        // A wall factor measured beside the busy one: the layer waits the work times it, the
        // nodes are busy the work times the busy factor.
        let walls = HostSharing(nodes: 3, factors: [.init(tokens: 1, factor: 4, wallFactor: 6), .init(tokens: 16, factor: 2, wallFactor: 3),
                                                    .init(tokens: 256, factor: 1.5)])
        XCTAssertEqual(walls.wallFactor(tokens: 4), 4.5, accuracy: 1e-12, "linear in log(tokens)")
        XCTAssertEqual(walls.wallFactor(tokens: 256), 1.5, "a point without it: its busy factor")
        XCTAssertEqual(sharing.wallFactor(tokens: 16), 2, "a profile without wall factors: the busy factor")
        let both = try cost("  - {id: n, count: 3, profile_file: \(try profile("walls.json", walls)), host: vm}\n", count: 3)
        XCTAssertEqual(both.seconds, 3 * own.seconds, accuracy: 1e-12 * own.seconds)
        for (s, o) in zip(both.busy, own.busy) { XCTAssertEqual(s, 2 * o, accuracy: 1e-12 * o) }

        for (bad, needle) in [(HostSharing(nodes: 3, factors: []), "empty"),
                              (HostSharing(nodes: 1, factors: [.init(tokens: 1, factor: 2)]), "nodes must be ≥ 2"),
                              (HostSharing(nodes: 3, factors: [.init(tokens: 4, factor: 2), .init(tokens: 4, factor: 1)]), "increasing"),
                              (HostSharing(nodes: 3, factors: [.init(tokens: 1, factor: 0)]), "positive"),
                              (HostSharing(nodes: 3, factors: [.init(tokens: 1, factor: 1, wallFactor: -1)]), "wallFactor must be a positive"),
                              (HostSharing(nodes: 3, factors: [.init(tokens: 0, factor: 1)]), "tokens must be ≥ 1")] {
            let name = try profile("bad.json", bad)
            XCTAssertThrowsError(try cost("  - {id: n, count: 3, profile_file: \(name), host: vm}\n", count: 3)) { error in
                guard case SimulatorError.invalidValue(_, 3, "profile_file", let problem) = error, problem.contains(needle) else {
                    return XCTFail("\(needle): \(error)")
                }
            }
        }
    }

    /// A cost model of qwen3-30b-a3b on 3 vm-2vcpu nodes, uniform routing: a machine each, or
    /// with `sharing` one host measured so; `latency` the links' one way.
    func threeNodeCost(sharing: HostSharing? = nil, latency: Double = 0) throws -> CostModel {
        let model = try ModelSpec.load("qwen3-30b-a3b")
        var cluster = try ClusterSpec.parse("coordinator: {class: vm-2vcpu}\nnodes:\n  - {id: n, count: 3, class: vm-2vcpu}\n", file: "c.yaml")
        for i in cluster.nodes.indices {
            cluster.nodes[i].linkLatency = latency
            if let sharing {
                cluster.nodes[i].host = "vm"
                cluster.nodes[i].hostSharing = sharing
            }
        }
        let placement = try Planner.plan(layout: model.layout, nodes: cluster.nodes.map { PlacementNode(id: $0.id, memoryBytes: 0, profile: $0.profile) },
                                         available: [true, true, true], load: nil, strategy: .memory, current: nil)
        return CostModel(model: model, cluster: cluster, placement: placement,
                         shares: try RoutingShares.zipf(layers: model.moeLayers, experts: model.experts, skew: 0, seed: 0))
    }

    func testAStepLogIsReadAndEveryBadLineIsNamed() throws {
        let head = "# farside-step-log-v1 nodes=3\ntokens,sequences,positions,kv_tokens,seconds,layer_steps,node_compute_seconds,gap_seconds\n"
        let log = try StepLog.parse(head + "1,1,17.0,16,0.002,3,0.001,0.0001\n40,2,900.5,30,0.04,6,0.02,0\n", file: "s.csv")
        XCTAssertEqual(log.nodes, 3)
        XCTAssertEqual(log.steps, [StepLog.Step(tokens: 1, sequences: 1, positions: 17, kvTokens: 16, seconds: 0.002, layerSteps: 3, nodeCompute: 0.001, gap: 0.0001),
                                   StepLog.Step(tokens: 40, sequences: 2, positions: 900.5, kvTokens: 30, seconds: 0.04, layerSteps: 6, nodeCompute: 0.02)])
        XCTAssertEqual(log.steps[0].engineSeconds, 0.0021, accuracy: 1e-15)
        XCTAssertEqual(log.classSizes, [1, 2, 4, 8, 16, 32, 64])
        for (text, line, needle) in [("tokens,sequences\n", 1, "first line"),
                                     ("# farside-step-log-v1 nodes=3\ntokens,seconds\n", 2, "header"),
                                     (head, 2, "no steps"),
                                     (head + "1,1,17,16,0.002,3,0.001,0\n1,1,17,16,0.002,3,0\n", 4, "7 fields"),
                                     (head + "0,1,17,16,0.002,3,0.001,0\n", 3, "tokens ≥ 1"),
                                     (head + "2,3,17,16,0.002,3,0.001,0\n", 3, "sequences"),
                                     (head + "1,1,17,16,-1,3,0.001,0\n", 3, "seconds > 0"),
                                     (head + "1,1,17,16,nan,3,0.001,0\n", 3, "seconds > 0"),
                                     (head + "1,1,17,16,0.002,3,x,0\n", 3, "node_compute_seconds"),
                                     (head + "1,1,17,16,0.002,3,0.001,-0.5\n", 3, "gap_seconds")] {
            XCTAssertThrowsError(try StepLog.parse(text, file: "s.csv"), needle) { error in
                guard case let SimulatorError.syntax("s.csv", l, problem) = error, l == line, problem.contains(needle) else {
                    return XCTFail("\(needle): \(error)")
                }
                XCTAssertTrue("\(error)".hasPrefix("s.csv:\(line): "), "\(error)")
            }
        }
        XCTAssertThrowsError(try StepLog.load("/nonexistent/steps.csv")) { error in
            XCTAssertTrue("\(error)".contains("/nonexistent/steps.csv") && "\(error)".contains("no such file"), "\(error)")
        }
    }

    func testAStepLogFitsTheBusyAndWallFactorsItHasStepsForAndTheStepOverhead() throws {
        let model = try ModelSpec.load("qwen3-30b-a3b")
        var raw = try threeNodeCost()
        let probe = HostSharing(nodes: 3, factors: [.init(tokens: 1, factor: 2, wallFactor: 3), .init(tokens: 4, factor: 1.5, wallFactor: 2),
                                                    .init(tokens: 16, factor: 1.2, wallFactor: 1.8)],
                                routing: "load.json")
        let rtt = 100e-6
        let cost = { (s: HostSharing, roundTrip: Double) in try self.threeNodeCost(sharing: s, latency: roundTrip / 2) }
        // The busy factors the log below implies, the wall factors the probe's scaled alike.
        let busyFitted = HostSharing(nodes: 3, factors: [.init(tokens: 1, factor: 2.5, wallFactor: 3 * 2.5 / 2),
                                                         .init(tokens: 5, factor: 1.1, wallFactor: probe.wallFactor(tokens: 5) * 1.1 / probe.factor(tokens: 5))])
        var first = try cost(busyFitted, rtt)
        // 30 one-token steps whose nodes reported 2.5× the roofline's busy time and which held
        // the engine 3 ms beyond the model's time (2 ms in the step, 1 ms in the gap before it);
        // 25 five-token steps at 1.1×, whose layers waited 4× the roofline's slowest node; 5
        // steps of 20 tokens (too few to give a point).
        var steps: [StepLog.Step] = []
        func step(_ t: Int, _ f: Double, seconds: (Double, Double) -> Double) {
            let positions = Double(t * 100), kv = Double(t * 99)
            let attention = first.attentionSeconds(tokens: t, positions: positions, kvTokens: kv)
            steps.append(.init(tokens: t, sequences: t, positions: positions, kvTokens: kv,
                               seconds: seconds(attention, first.expertSeconds(tokens: t).seconds) - 0.001, layerSteps: 48,
                               nodeCompute: f * raw.expertSeconds(tokens: t).busy.reduce(0, +), gap: 0.001))
        }
        for _ in 0..<30 { step(1, 2.5) { $0 + $1 + 0.003 } }
        for _ in 0..<25 { step(5, 1.1) { a, _ in a + 0.003 + Double(model.moeLayers) * rtt + 4 * raw.expertSeconds(tokens: 5).seconds } }
        for _ in 0..<5 { step(20, 9) { a, e in a + e + 1 } }
        let log = StepLog(nodes: 3, steps: steps)
        let (fitted, overhead, sameTrip) = try log.fit(probe: probe, raw: &raw, cost: cost, layers: model.moeLayers, roundTrip: rtt, file: "steps.csv")
        XCTAssertEqual(sameTrip, rtt)
        XCTAssertNil(fitted.problem)
        XCTAssertEqual(fitted.stepLog, "steps.csv")
        XCTAssertEqual(fitted.routing, "load.json")
        XCTAssertEqual(fitted.factors.map(\.tokens), [1, 5], "fitted points at their class's median size; none for the thin class")
        XCTAssertEqual(overhead, 0.003, accuracy: 1e-9, "the smallest class's steps beyond the model")
        XCTAssertEqual(fitted.factors[0].factor, 2.5, accuracy: 1e-12)
        XCTAssertEqual(fitted.factors[0].wallFactor!, 3.75, accuracy: 1e-12, "the probe's wall factor scaled as the busy one")
        XCTAssertEqual(fitted.factors[1].factor, 1.1, accuracy: 1e-12)
        XCTAssertEqual(fitted.factors[1].wallFactor!, 4, accuracy: 1e-9, "what the class's steps waited beyond the rest, over the roofline")
        // The fitted profile gives back the logged steps' times, class by class.
        var final = try cost(fitted, rtt)
        let classes = log.classes(cost: &final, overhead: overhead)
        XCTAssertEqual(classes.map(\.steps), [30, 25, 5])
        XCTAssertEqual(classes.map(\.tokens), [1...1, 5...5, 20...20])
        for c in classes.prefix(2) { XCTAssertEqual(c.predicted, c.live, accuracy: 1e-9 * c.live) }

        // One-token steps quicker than the model with no overhead at all: the overhead is 0 and
        // the one-token class's wall factor is fitted to them too.
        steps = []
        for _ in 0..<30 { step(1, 2.5) { a, _ in a + Double(model.moeLayers) * rtt + 0.5 * raw.expertSeconds(tokens: 1).seconds } }
        let quick = StepLog(nodes: 3, steps: steps)
        let (refit, none, trip) = try quick.fit(probe: probe, raw: &raw, cost: cost, layers: model.moeLayers, roundTrip: rtt, file: "steps.csv")
        XCTAssertEqual(none, 0)
        XCTAssertEqual(trip, rtt)
        XCTAssertEqual(refit.factors.map(\.tokens), [1])
        XCTAssertEqual(refit.factors[0].wallFactor!, 0.5, accuracy: 1e-9)
        var again = try cost(refit, trip)
        let one = quick.classes(cost: &again, overhead: none)[0]
        XCTAssertEqual(one.predicted, one.live, accuracy: 1e-9 * one.live)

        // Quicker still: not even the probe's round trip fits in them. The round trip comes
        // from the steps (a quarter of the probe's here), the wait stays the probe's scaled.
        steps = []
        for _ in 0..<30 { step(1, 2.5) { a, _ in a + Double(model.moeLayers) * rtt / 4 + 3.75 * raw.expertSeconds(tokens: 1).seconds } }
        let quicker = StepLog(nodes: 3, steps: steps)
        let (third, zero, shorter) = try quicker.fit(probe: probe, raw: &raw, cost: cost, layers: model.moeLayers, roundTrip: 4 * Double(model.moeLayers) * rtt, file: "s.csv")
        XCTAssertEqual(zero, 0)
        XCTAssertEqual(shorter, rtt / 4, accuracy: 1e-12)
        XCTAssertEqual(third.factors[0].wallFactor!, 3.75, accuracy: 1e-9)
        var last = try cost(third, shorter)
        let c = quicker.classes(cost: &last, overhead: zero)[0]
        XCTAssertEqual(c.predicted, c.live, accuracy: 1e-9 * c.live)
    }

    func testStepJitterScattersStepsWithItsSpreadAndMemoryAndMeanOne() throws {
        var stream = StepJitter.Stream(StepJitter(sigma: 0.15, autocorrelation: 0.75), seed: 7)
        let draws = (0..<200_000).map { _ in stream.next() }
        let mean = draws.reduce(0, +) / Double(draws.count)
        XCTAssertEqual(mean, 1, accuracy: 0.01, "a step's expected time is the model's")
        let logs = draws.map { log($0) }, m = logs.reduce(0, +) / Double(logs.count)
        let sd = (logs.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(logs.count)).squareRoot()
        XCTAssertEqual(sd, 0.15, accuracy: 0.01)
        var sab = 0.0, saa = 0.0
        for i in 1..<logs.count { sab += (logs[i - 1] - m) * (logs[i] - m); saa += (logs[i - 1] - m) * (logs[i - 1] - m) }
        XCTAssertEqual(sab / saa, 0.75, accuracy: 0.02)
        var again = StepJitter.Stream(StepJitter(sigma: 0.15, autocorrelation: 0.75), seed: 7)
        XCTAssertEqual((0..<100).map { _ in again.next() }, Array(draws.prefix(100)), "a seed gives the same draws")

        // Read from a log's one-token steps: alternating times have no positive memory.
        let alternating = (0..<40).map { i in StepLog.Step(tokens: 1, sequences: 1, positions: 10, kvTokens: 9, seconds: exp(i % 2 == 0 ? 0 : 0.2),
                                                            layerSteps: 3, nodeCompute: 0.001) }
        let j = try XCTUnwrap(StepLog(nodes: 3, steps: alternating).jitter)
        XCTAssertEqual(j.sigma, 0.1, accuracy: 1e-12)
        XCTAssertEqual(j.autocorrelation, 0)
        let drifting = (0..<40).map { i in StepLog.Step(tokens: 1, sequences: 1, positions: 10, kvTokens: 9, seconds: 0.002 * (1 + Double(i / 10) * 0.1),
                                                         layerSteps: 3, nodeCompute: 0.001) }
        XCTAssertGreaterThan(try XCTUnwrap(StepLog(nodes: 3, steps: drifting).jitter).autocorrelation, 0.8)
        XCTAssertNil(StepLog(nodes: 3, steps: Array(alternating.prefix(5))).jitter, "too few one-token steps")

        // In a cluster file; the simulated TPOT moves with it, the nodes' busy time does not.
        let base = "coordinator: {class: vm-2vcpu%@}\nnodes:\n  - {id: n, count: 3, class: vm-2vcpu}\n"
        let plain = try ClusterSpec.parse(base.replacingOccurrences(of: "%@", with: ""), file: "c.yaml")
        let jittered = try ClusterSpec.parse(base.replacingOccurrences(of: "%@", with: ", jitter: {sigma: 0.3, autocorrelation: 0.8}"), file: "c.yaml")
        XCTAssertEqual(jittered.stepJitter, StepJitter(sigma: 0.3, autocorrelation: 0.8))
        XCTAssertNil(plain.stepJitter)
        for (bad, key) in [(", jitter: {sigma: 3}", "sigma"), (", jitter: {sigma: 0.1, autocorrelation: 1}", "autocorrelation"),
                           (", jitter: {sigma: 0.1, memory: 2}", "memory"), (", jitter: {autocorrelation: 0.5}", "sigma")] {
            XCTAssertThrowsError(try ClusterSpec.parse(base.replacingOccurrences(of: "%@", with: bad), file: "c.yaml"), bad) { error in
                XCTAssertTrue("\(error)".hasPrefix("c.yaml:1: ") && "\(error)".contains(key), "\(bad): \(error)")
            }
        }
        let model = try ModelSpec.load("qwen3-30b-a3b")
        let requests = try Trace.poisson(rate: 0.05, duration: 200, prompt: .uniform(16, 64), output: .uniform(8, 32), seed: 3)
        func run(_ cluster: ClusterSpec) throws -> StrategyResult {
            let placement = try Planner.plan(layout: model.layout, nodes: cluster.nodes.map { PlacementNode(id: $0.id, memoryBytes: 0, profile: $0.profile) },
                                             available: [true, true, true], load: nil, strategy: .memory, current: nil)
            var cost = CostModel(model: model, cluster: cluster, placement: placement,
                                 shares: try RoutingShares.zipf(layers: model.moeLayers, experts: model.experts, skew: 0, seed: 0))
            return Simulation.run(requests: requests, cost: &cost, strategy: "memory", seed: 11).result
        }
        let a = try run(plain), b = try run(jittered)
        XCTAssertNotEqual(a.tpotP50, b.tpotP50)
        XCTAssertEqual(a.completed, b.completed)
        XCTAssertEqual(a.nodes[1].busySeconds, b.nodes[1].busySeconds, accuracy: 0.05 * a.nodes[1].busySeconds, "the same steps, give or take batching")
        XCTAssertEqual(try run(jittered), b, "a seed gives the same result")
    }

    func testATraceWithCRLFLineEndsIsRead() throws {
        let r = try Trace.parse(csv: "arrived_at,num_prefill_tokens,num_decode_tokens\r\n0.5,10,3\r\n1.25,20,4\r\n", file: "crlf.csv")
        XCTAssertEqual(r, [TraceRequest(arrival: 0.5, promptTokens: 10, outputTokens: 3), TraceRequest(arrival: 1.25, promptTokens: 20, outputTokens: 4)])
    }
}
