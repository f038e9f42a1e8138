import Foundation
import Placement
import Scheduling

/// What one strategy's run gives, per node.
public struct NodeResult: Codable, Sendable, Equatable {
    public var id: String
    public var device: String
    /// Expert copies it holds (the coordinator: 0).
    public var experts: Int
    /// Fraction of the simulated window busy (at most 1).
    public var utilisation: Double
    /// Seconds busy over the run: the coordinator's steps' own work, an expert node's compute
    /// (what a live node reports in its heartbeats, `farside cluster status`'s `busy_seconds`).
    public var busySeconds: Double
    /// Mean wall watts (PUE included) over the window.
    public var meanWatts: Double
    public var joules: Double
    /// Mean wall watts in each interval of `StrategyResult.intervalSeconds` (power over time).
    public var watts: [Double]
}

/// What one strategy's run gives: energy, money, carbon, throughput and latency.
public struct StrategyResult: Codable, Sendable, Equatable {
    public var strategy: String
    public var requests: Int
    public var completed: Int
    /// Refused on arrival (the waiting queue was full) or too long for the KV cache.
    public var rejected: Int
    public var preemptions: Int
    public var steps: Int
    /// Σ of the steps' durations: the seconds the engine was busy (live: `farside_engine_step_seconds`).
    public var stepSeconds: Double
    /// Prompt and generated tokens of the completed requests.
    public var tokens: Int
    public var outputTokens: Int
    public var simulatedSeconds: Double
    /// Generated tokens per second over the window.
    public var outputTokensPerSecond: Double
    public var energyKWh: Double
    public var joulesPerToken: Double
    public var dollars: Double
    public var dollarsPerMillionTokens: Double
    public var grams: Double
    public var gramsPerMillionTokens: Double
    public var ttftP50: Double, ttftP99: Double
    public var tpotP50: Double, tpotP99: Double
    /// TTFT and TPOT at percentiles 0, 1, …, 100 (for CDF charts).
    public var ttftPercentiles: [Double]
    public var tpotPercentiles: [Double]
    /// Length of the intervals of `NodeResult.watts` and `clusterWatts`: the trace's span over
    /// `Simulation.intervals`, the last one cut at the end of the window.
    public var intervalSeconds: Double
    /// Wall watts of the whole cluster (coordinator included) per interval.
    public var clusterWatts: [Double]
    /// The coordinator first, then the expert nodes.
    public var nodes: [NodeResult]
}

/// One request's progress in a run.
struct SequenceState {
    /// Tokens whose KV is computed.
    var computed = 0
    var generated = 0
    var kv = 0
    var firstToken = -1.0
}

/// The discrete-event loop: arrivals and steps on simulated time, the scheduler of `farside serve`
/// forming each step, the cost model timing it.
public struct Simulation {
    /// Intervals the trace's span is cut into for power over time.
    public static let intervals = 48
    /// Runs `requests` on `cost`'s cluster and placement. `released` says how nodes holding no
    /// expert are charged (as the planner's `releasedNodes`). Returns the result and the number
    /// of events handled (arrivals, steps, completions).
    /// The coordinator's step times scatter by the cluster's `stepJitter`, drawn from `seed`.
    public static func run(requests: [TraceRequest], cost: inout CostModel, strategy: String,
                           released: ReleasedNodePower = .off, seed: UInt64 = 0) -> (result: StrategyResult, events: Int, routed: [[Double]]) {
        let cluster = cost.cluster, model = cost.model
        var scheduler = Scheduler(limits: cluster.limits)
        var seqs = [SequenceState](repeating: SequenceState(), count: requests.count)
        let kvCapacity = cluster.coordinator.memoryBytes == 0 ? Int.max / 4
            : Int(Double(cluster.coordinator.memoryBytes) / model.kvBytesPerToken)
        var kvUsed = 0
        var now = 0.0, next = 0, events = 0, steps = 0, rejected = 0, preemptions = 0
        var completed = 0, tokens = 0, outputTokens = 0
        var ttft: [Double] = [], tpot: [Double] = []
        ttft.reserveCapacity(requests.count)
        tpot.reserveCapacity(requests.count)
        // Steps per size: the nodes' busy time is summed from the tabulated per-size figures at the end.
        var stepsOfSize = [Int](repeating: 0, count: cluster.limits.maxBatchTokens + 1)
        var coordinatorBusy = 0.0, engineBusy = 0.0
        var stepTokens = 0.0
        // Busy seconds per interval, [interval][coordinator, nodes…]: a step counts in the
        // interval it starts in (steps are far shorter than intervals).
        let interval = max(requests.last?.arrival ?? 0, 1e-3) / Double(intervals)
        var busyOverTime: [[Double]] = []
        var jitter = cluster.stepJitter.map { StepJitter.Stream($0, seed: seed) }

        while next < requests.count || !scheduler.isIdle {
            while next < requests.count && requests[next].arrival <= now {
                if scheduler.waiting.count >= cluster.maxWaiting { rejected += 1 } else { scheduler.enqueue(next) }
                next += 1
                events += 1
            }
            if scheduler.isIdle {
                now = max(now, requests[next].arrival)
                continue
            }
            let step = scheduler.schedule(
                pending: { id in requests[id].promptTokens + seqs[id].generated - seqs[id].computed },
                reserve: { id, k in
                    let got = min(k, kvCapacity - kvUsed)
                    kvUsed += got
                    seqs[id].kv += got
                    return got
                },
                release: { id in
                    kvUsed -= seqs[id].kv
                    seqs[id].kv = 0
                    seqs[id].computed = 0  // recompute preemption
                })
            preemptions += step.preempted.count
            for id in step.exhausted {
                scheduler.remove(id)
                kvUsed -= seqs[id].kv
                seqs[id].kv = 0
                rejected += 1
            }
            if step.slices.isEmpty {
                // Ending an exhausted sequence freed its KV: plan again. Otherwise, with nothing
                // running (no KV held), the head of the queue is longer than the whole cache.
                if step.exhausted.isEmpty, scheduler.running.isEmpty, let id = scheduler.waiting.first {
                    scheduler.remove(id)
                    rejected += 1
                }
                continue
            }
            var count = 0, positions = 0.0, kvTokens = 0.0
            for s in step.slices {
                let before = Double(seqs[s.id].computed)
                count += s.tokens
                positions += Double(s.tokens) * (before + Double(s.tokens + 1) / 2)
                kvTokens += before
            }
            let attention = cost.attentionSeconds(tokens: count, positions: positions, kvTokens: kvTokens)
            let experts = cost.expertSeconds(tokens: count)
            let bucket = Int(now / interval)
            while busyOverTime.count <= bucket { busyOverTime.append([Double](repeating: 0, count: cluster.nodes.count + 1)) }
            busyOverTime[bucket][0] += attention
            for n in 0..<cluster.nodes.count { busyOverTime[bucket][n + 1] += experts.busy[n] }
            // The step's wall time scatters (`StepJitter`); the nodes' busy time is the model's.
            let duration = (attention + experts.seconds) * (jitter?.next() ?? 1)
            now += duration
            engineBusy += duration
            coordinatorBusy += attention
            stepsOfSize[min(count, stepsOfSize.count - 1)] += 1
            stepTokens += Double(count)
            steps += 1
            events += 1
            for s in step.slices {
                let r = requests[s.id]
                seqs[s.id].computed += s.tokens
                guard seqs[s.id].computed == r.promptTokens + seqs[s.id].generated else { continue }
                seqs[s.id].generated += 1
                if seqs[s.id].firstToken < 0 {
                    seqs[s.id].firstToken = now
                    ttft.append(now - r.arrival)
                }
                if seqs[s.id].generated >= r.outputTokens {
                    scheduler.remove(s.id)
                    kvUsed -= seqs[s.id].kv
                    seqs[s.id].kv = 0
                    completed += 1
                    tokens += r.promptTokens + r.outputTokens
                    outputTokens += r.outputTokens
                    if r.outputTokens > 1 { tpot.append((now - seqs[s.id].firstToken) / Double(r.outputTokens - 1)) }
                    events += 1
                }
            }
        }

        var nodeBusy = [Double](repeating: 0, count: cluster.nodes.count)
        for (size, n) in stepsOfSize.enumerated() where n > 0 {
            let busy = cost.expertSeconds(tokens: size).busy
            for i in nodeBusy.indices { nodeBusy[i] += Double(n) * busy[i] }
        }
        // Energy over the window: the trace's span or the run's, whichever is longer.
        let window = max(now, requests.last?.arrival ?? 0)
        let copies = cost.placement.copies(nodeCount: cluster.nodes.count)
        var nodes: [NodeResult] = []
        var joules = 0.0, dollars = 0.0, grams = 0.0
        let buckets = max(Int((window / interval).rounded(.up)), 1)
        while busyOverTime.count < buckets { busyOverTime.append([Double](repeating: 0, count: cluster.nodes.count + 1)) }
        func add(_ node: SimulatedNode, busy: Double, experts: Int, charged: Bool) {
            let column = nodes.count
            let watts = (0..<buckets).map { b -> Double in
                let length = min(interval, window - Double(b) * interval)
                guard charged, length > 0 else { return 0 }
                return EnergyModel.watts(node.profile, utilisation: busyOverTime[b][column] / length)
            }
            let j = charged ? EnergyModel.joules(node.profile, busySeconds: busy, intervalSeconds: window) : 0
            joules += j
            dollars += EnergyModel.dollars(joules: j, node.profile)
            grams += EnergyModel.grams(joules: j, node.profile)
            nodes.append(NodeResult(id: node.id, device: node.profile.device, experts: experts,
                                    utilisation: window > 0 ? min(busy / window, 1) : 0, busySeconds: busy,
                                    meanWatts: window > 0 ? j / window : 0, joules: j, watts: watts))
        }
        add(cluster.coordinator, busy: coordinatorBusy, experts: 0, charged: true)
        for (n, node) in cluster.nodes.enumerated() {
            add(node, busy: nodeBusy[n], experts: copies[n], charged: copies[n] > 0 || released == .idle)
        }
        ttft.sort()
        tpot.sort()
        let perToken = tokens > 0 ? 1 / Double(tokens) : 0
        let result = StrategyResult(
            strategy: strategy, requests: requests.count, completed: completed, rejected: rejected,
            preemptions: preemptions, steps: steps, stepSeconds: engineBusy, tokens: tokens, outputTokens: outputTokens,
            simulatedSeconds: window, outputTokensPerSecond: window > 0 ? Double(outputTokens) / window : 0,
            energyKWh: joules / EnergyModel.joulesPerKWh, joulesPerToken: joules * perToken,
            dollars: dollars, dollarsPerMillionTokens: dollars * perToken * 1e6,
            grams: grams, gramsPerMillionTokens: grams * perToken * 1e6,
            ttftP50: percentile(ttft, 50), ttftP99: percentile(ttft, 99),
            tpotP50: percentile(tpot, 50), tpotP99: percentile(tpot, 99),
            ttftPercentiles: (0...100).map { percentile(ttft, Double($0)) },
            tpotPercentiles: (0...100).map { percentile(tpot, Double($0)) },
            intervalSeconds: interval,
            clusterWatts: (0..<buckets).map { b in nodes.reduce(0) { $0 + $1.watts[b] } },
            nodes: nodes)
        // What the live server's statistics would have counted: routed tokens per expert.
        let k = Double(model.expertsPerToken)
        let routed = cost.shares.shares.map { row in row.map { $0 * stepTokens * k } }
        return (result, events, routed)
    }

    /// Nearest-rank percentile of sorted values (0 when there are none).
    static func percentile(_ sorted: [Double], _ p: Double) -> Double {
        guard !sorted.isEmpty else { return 0 }
        let rank = Int((p / 100 * Double(sorted.count)).rounded(.up))
        return sorted[min(max(rank, 1), sorted.count) - 1]
    }
}
