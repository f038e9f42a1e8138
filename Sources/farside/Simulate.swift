import ArgumentParser
import Coordinator
import Foundation
import Kernels
import Models
import Placement
import Simulator

/// `farside simulate`: what a cluster would cost and how fast it would serve, per placement
/// strategy, on simulated time (issue 17). The planning code is the live one; see docs/simulator.md.
struct Simulate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Simulate a cluster serving a trace: energy, $ and gCO2 per million tokens, latency, per placement strategy.",
        subcommands: [Run.self, Calibrate.self], defaultSubcommand: Run.self)

    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "run", abstract: "Run the simulation (the default).")

        @Option(name: .long, help: "The cluster file (YAML: sites, coordinator, nodes, scheduler; docs/simulator.md).")
        var cluster: String

        @Option(name: .long, help: "A model preset (\(ModelSpec.presets.keys.sorted().joined(separator: ", "))) or a config.json.")
        var model: String

        @Option(name: .long, help: "Expert weights: int4 or bf16 (default: the preset's; bf16 for a config.json).")
        var experts: String?

        @Option(name: .long, help: "A trace in Vidur's CSV (arrived_at,num_prefill_tokens,num_decode_tokens).")
        var trace: String?

        @Option(name: .long, help: "Without --trace: Poisson arrivals, requests per second.")
        var rate: Double?

        @Option(name: .long, help: "Without --trace: seconds of arrivals.")
        var duration: Double = 60

        @Option(name: .long, help: "Without --trace: a daily curve, the busiest hour's rate over the quietest's (1: constant --rate, which is then the day's mean).")
        var peakToTrough: Double = 1

        @Option(name: .long, help: "Without --trace: the length of the daily curve's day in seconds (a shorter one compresses a day into the run).")
        var daySeconds: Double = 86_400

        @Option(name: .long, help: "Without --trace: prompt lengths, fixed:N, uniform:A-B or exp:MEAN.")
        var promptTokens: String = "exp:512"

        @Option(name: .long, help: "Without --trace: output lengths, fixed:N, uniform:A-B or exp:MEAN.")
        var outputTokens: String = "exp:128"

        @Option(name: .long, help: "Routing skew: Zipf exponent over each layer's experts (0: uniform; 0.3 makes the hottest of 384 experts about 4× the mean).")
        var zipf: Double = 0.3

        @Option(name: .long, help: "Routing from a live run's statistics file (farside-routing-load-v1 JSON) instead of --zipf.")
        var routing: String?

        @Option(name: .long, help: "Strategies to compare, comma-separated: memory, balanced:R, power:energy|cost|carbon.")
        var strategies: String = "memory,balanced:0,power:energy,power:cost,power:carbon"

        @Option(name: .long, help: "Nodes left without experts: off (stopped, 0 W) or idle.")
        var released: String = "off"

        @Option(name: .long, help: "Seed of the generated trace and of the routing skew.")
        var seed: UInt64 = 0

        @Flag(name: .long, help: "Print the report as JSON.")
        var json = false

        @Flag(name: .long, help: "Print the report as CSV.")
        var csv = false

        @Option(name: .customLong("report"), help: "Also write the report here: FILE.json, FILE.csv or FILE.svg (charts) by extension; repeatable.")
        var reportFiles: [String] = []

        @Flag(name: .long, help: "Print the wall time and events per second on stderr.")
        var timing = false

        func validate() throws {
            guard (trace == nil) != (rate == nil) else { throw ValidationError("give exactly one of --trace or --rate") }
            guard trace == nil || (peakToTrough == 1 && daySeconds == 86_400) else {
                throw ValidationError("--peak-to-trough and --day-seconds shape a generated trace: give them with --rate, not --trace")
            }
            guard !(json && csv) else { throw ValidationError("give at most one of --json and --csv") }
            guard ReleasedNodePower(rawValue: released) != nil else { throw ValidationError("--released must be off or idle, got '\(released)'") }
        }

        func run() throws {
            try runReportingErrors {
                let start = DispatchTime.now().uptimeNanoseconds
                let format = try experts.map { name -> ModelSpec.ExpertFormat in
                    guard let f = ModelSpec.ExpertFormat(rawValue: name) else {
                        throw SimulatorError.invalidOption(name: "--experts", problem: "'\(name)' is not int4 or bf16")
                    }
                    return f
                }
                let spec = try ModelSpec.load(model, format: format)
                let clusterSpec = try ClusterSpec.load(cluster)
                let requests: [TraceRequest]
                let traceName: String
                if let trace {
                    requests = try Trace.load(csv: trace)
                    traceName = trace
                } else {
                    let p = try Trace.Lengths(parsing: promptTokens, option: "--prompt-tokens")
                    let o = try Trace.Lengths(parsing: outputTokens, option: "--output-tokens")
                    requests = try Trace.daily(rate: rate!, peakToTrough: peakToTrough, period: daySeconds, duration: duration,
                                               prompt: p, output: o, seed: seed)
                    traceName = (peakToTrough == 1 ? "poisson \(rate!)/s" : "daily curve, mean \(rate!)/s, peak \(peakToTrough)x trough, day \(daySeconds) s")
                        + " for \(duration) s, prompt \(p), output \(o)"
                }
                let shares: RoutingShares
                if let routing {
                    shares = try RoutingShares.recorded(try RoutingLoad.load(routing), file: routing,
                                                        layers: spec.moeLayers, experts: spec.experts)
                } else {
                    shares = try RoutingShares.zipf(layers: spec.moeLayers, experts: spec.experts, skew: zipf, seed: seed)
                }
                let (report, events) = try Comparison.run(
                    model: spec, cluster: clusterSpec, requests: requests, traceName: traceName, shares: shares,
                    strategies: try Comparison.strategies(parsing: strategies), seed: seed,
                    released: ReleasedNodePower(rawValue: released)!)
                print(json ? report.json() : csv ? report.csv() : report.table(), terminator: "")
                for path in reportFiles {
                    let text = path.hasSuffix(".json") ? report.json() : path.hasSuffix(".csv") ? report.csv() : report.svg()
                    do { try text.write(toFile: path, atomically: true, encoding: .utf8) } catch {
                        throw SimulatorError.unwritableFile(file: path, reason: error.localizedDescription)
                    }
                }
                if timing {
                    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
                    FileHandle.standardError.write(Data(String(format: "simulate: %d events in %.2f s wall (%.0f events/s)\n",
                                                               events, seconds, Double(events) / seconds).utf8))
                }
            }
        }
    }

    /// Measures this machine's weight-read rate and bf16 GEMM throughput and writes a power
    /// profile (JSON, as `PowerProfile` encodes) that a cluster file's `profile_file:` reads; with
    /// `--local-nodes N` also the fixed cost of one MoE layer's round trip through N expert-node
    /// processes on this machine (`linkRoundTripSeconds` in the same file, for a cluster file's
    /// `link: {latency_us}`), with N ≥ 2 how the nodes sharing this machine slow each other
    /// (`hostSharing`), and the per-step overhead of a decode step through the nodes beyond the
    /// simulator's model of it (`stepOverheadSeconds`, for the coordinator's `overhead_us`).
    struct Calibrate: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Measure this machine and write a power profile for the simulator.")

        @Option(name: .long, help: "Where to write the profile (JSON).")
        var out: String

        @Option(name: .long, help: "The hardware class whose watts and site figures to keep (\(HardwareClass.names.joined(separator: ", "))).")
        var hardwareClass: String = "vm-2vcpu"

        @Option(name: .long, help: "Device label written into the profile.")
        var device: String = "calibrated"

        @Option(name: .long, help: "Also measure one MoE layer's round trip through this many local expert nodes (0: not measured).")
        var localNodes: Int = 0

        @Option(name: .long, help: "With --local-nodes: the MoE model the nodes serve (a checkpoint directory or GGUF file; default: the default model).")
        var model: String?

        @Option(name: .long, help: "With --local-nodes N ≥ 2: draw the host-sharing probe's routes from a live run's routing statistics (farside-routing-load-v1 JSON, the simulator's --routing) instead of uniformly.")
        var routing: String?

        @Option(name: .long, help: "With --local-nodes N ≥ 2: a step log of `farside serve --local-nodes N --step-log FILE` on the same model; the nodes' busy time per step size and the per-step overhead are fitted to its steps instead of the probes'.")
        var stepLog: String?

        func validate() throws {
            guard (0...16).contains(localNodes) else { throw ValidationError("--local-nodes must be in 0...16, got \(localNodes)") }
            guard stepLog == nil || localNodes >= 2 else { throw ValidationError("--step-log is fitted with the host-sharing probe through --local-nodes N (N ≥ 2); give both") }
            guard model == nil || localNodes > 0 else { throw ValidationError("--model is for the round trip through --local-nodes N; give both") }
            guard routing == nil || localNodes >= 2 else { throw ValidationError("--routing is for the host-sharing probe through --local-nodes N (N ≥ 2); give both") }
        }

        func run() throws {
            try runReportingErrors {
                var profile = try HardwareClass.profile(named: hardwareClass)
                profile.device = device
                let read = MemoryBandwidth.measure(rounds: 5)
                profile.memoryBandwidth = Self.gemvBandwidth()
                profile.flopsPerSecond = Self.gemmFlops()
                var roundTrip: Double?, stepOverhead: Double?, sharing: HostSharing?, fitted: Int?
                var checks: [(tokens: ClosedRange<Int>, steps: Int, live: Double, predicted: Double)] = []
                var jitter: StepJitter?
                var probedRoundTrip: Double?
                if localNodes > 0 {
                    let path = try model ?? DefaultModel.path()
                    // The routing file is checked before any node starts.
                    let spec = try Self.configSpec(model: path)
                    if spec == nil, routing != nil {
                        throw SimulatorError.invalidOption(name: "--routing", problem: "\(path) has no config.json: the simulator cannot read its shape to route by it")
                    }
                    let shares = try spec.flatMap { spec in
                        try routing.map { try RoutingShares.recorded(try RoutingLoad.load($0), file: $0, layers: spec.moeLayers, experts: spec.experts) }
                    }
                    // So is the step log.
                    let log = try stepLog.map { file in
                        guard spec != nil else {
                            throw SimulatorError.invalidOption(name: "--step-log", problem: "\(path) has no config.json: the simulator cannot read its shape to fit its steps")
                        }
                        let log = try StepLog.load(file)
                        guard log.nodes == localNodes else {
                            throw SimulatorError.invalidOption(name: "--step-log", problem: "\(file) comes from a server with \(log.nodes) expert nodes, but --local-nodes is \(localNodes): log a server with as many")
                        }
                        return log
                    }
                    let (m, cluster) = try loadModel(path: path, localNodes: localNodes)
                    guard let cluster else {
                        throw SimulatorError.invalidOption(name: "--model", problem: "\(path) has no routed experts: there is no expert round trip to measure")
                    }
                    let rtt = try Self.layerRoundTrip(model: m, cluster: cluster)
                    roundTrip = rtt
                    probedRoundTrip = rtt
                    // Both compare with the simulator's cost model, which reads the model's config.json.
                    if let spec {
                        if localNodes >= 2 {
                            sharing = try Self.hostSharing(model: m, spec: spec, cluster: cluster, nodes: localNodes, profile: profile,
                                                           roundTrip: rtt, routing: routing, shares: shares)
                        }
                        if let log, let stepLog, let probe = sharing {
                            // What serving costs, from the log's steps; the probes' where it is thin.
                            var raw = try Self.rooflineCost(spec: spec, profile: profile, nodes: localNodes, shares: shares)
                            let (fittedSharing, overhead, fittedRoundTrip) = try log.fit(probe: probe, raw: &raw, cost: {
                                try Self.rooflineCost(spec: spec, profile: profile, nodes: localNodes, shares: shares, linkLatency: $1 / 2, sharing: $0)
                            }, layers: spec.moeLayers, roundTrip: rtt, file: stepLog)
                            sharing = fittedSharing
                            stepOverhead = overhead
                            roundTrip = fittedRoundTrip
                            fitted = log.steps.count
                            var cost = try Self.rooflineCost(spec: spec, profile: profile, nodes: localNodes, shares: shares,
                                                             linkLatency: fittedRoundTrip / 2, sharing: fittedSharing)
                            checks = log.classes(cost: &cost, overhead: overhead)
                            jitter = log.jitter
                        } else {
                            stepOverhead = try Self.stepOverhead(model: m, spec: spec, profile: profile, nodes: localNodes, roundTrip: rtt,
                                                                 sharing: sharing, shares: shares)
                        }
                    }
                }
                let e = JSONEncoder()
                e.outputFormatting = [.prettyPrinted, .sortedKeys]
                do {
                    try e.encode(CalibratedProfile(profile: profile, linkRoundTripSeconds: roundTrip, stepOverheadSeconds: stepOverhead,
                                                   hostSharing: sharing, stepJitter: jitter))
                        .write(to: URL(fileURLWithPath: out))
                } catch {
                    throw SimulatorError.unwritableFile(file: out, reason: error.localizedDescription)
                }
                print(String(format: "read bandwidth %.1f GB/s (bf16 GEMV reads weights at %.1f GB/s: the profile's), bf16 GEMM %.1f GFLOP/s",
                             read / 1e9, profile.memoryBandwidth / 1e9, profile.flopsPerSecond / 1e9)
                      + (roundTrip.map { String(format: ", MoE layer round trip through %d local nodes %.0f µs", localNodes, $0 * 1e6) } ?? "")
                      + (stepOverhead.map { String(format: ", step overhead %.0f µs", $0 * 1e6) } ?? "")
                      + (fitted.map { " (fitted to \($0) logged steps" + (roundTrip != probedRoundTrip ? String(format: "; round trip from them, the probe's %.0f µs more than they left for it", (probedRoundTrip ?? 0) * 1e6) : "") + ")" } ?? "")
                      + (sharing.map { ", nodes' busy and wall time over the roofline's (tokens: factors) "
                          + $0.factors.map { String(format: "%d: %.2f %.2f", $0.tokens, $0.factor, $0.wallFactor ?? $0.factor) }.joined(separator: ", ") } ?? "")
                      + "; wrote " + out)
                if !checks.isEmpty {
                    // How the fitted profile reproduces the logged steps, size class by size class.
                    print("logged steps by size (tokens: steps, mean step live -> simulated): " + checks.map {
                        String(format: "%d-%d: %d, %.2f -> %.2f ms", $0.tokens.lowerBound, $0.tokens.upperBound, $0.steps, $0.live * 1e3, $0.predicted * 1e3)
                    }.joined(separator: "; ")
                        + (jitter.map { String(format: "; one-token steps scatter: σ %.3f of log time, autocorrelation %.2f", $0.sigma, $0.autocorrelation) } ?? ""))
                }
            }
        }

        /// A profile with the measured fixed costs beside it, the layer round trip through local
        /// nodes and the per-step overhead (a `PowerProfile` decoder ignores the extra keys).
        struct CalibratedProfile: Encodable {
            var profile: PowerProfile
            var linkRoundTripSeconds: Double?
            var stepOverheadSeconds: Double?
            var hostSharing: HostSharing?
            /// How the logged one-token steps scatter (`--step-log`), for the coordinator's `jitter:`.
            var stepJitter: StepJitter?
            enum Keys: String, CodingKey { case linkRoundTripSeconds, stepOverheadSeconds, hostSharing, stepJitter }
            func encode(to encoder: Encoder) throws {
                try profile.encode(to: encoder)
                var c = encoder.container(keyedBy: Keys.self)
                try c.encodeIfPresent(linkRoundTripSeconds, forKey: .linkRoundTripSeconds)
                try c.encodeIfPresent(stepOverheadSeconds, forKey: .stepOverheadSeconds)
                try c.encodeIfPresent(hostSharing, forKey: .hostSharing)
                try c.encodeIfPresent(stepJitter, forKey: .stepJitter)
            }
        }

        /// What a one-token engine step costs beyond the simulator's model of it (a cluster
        /// file's coordinator `overhead_us`): the mean of 50 one-token decode steps of the model
        /// through the `nodes` local nodes (after 10 unmeasured) minus the cost model's time for
        /// the same step on `profile` with what this calibration measured (the link's round
        /// trip, the nodes on one host with `sharing`, routing by `shares` or uniform): the
        /// coordinator's per-operation dispatch, norms, sampling, and what its compute and the
        /// nodes' cost each other on shared cores; at least 0.
        static func stepOverhead(model m: DecoderModel, spec: ModelSpec, profile: PowerProfile, nodes: Int, roundTrip: Double,
                                 sharing: HostSharing?, shares: RoutingShares?) throws -> Double {
            var cost = try rooflineCost(spec: spec, profile: profile, nodes: nodes, shares: shares,
                                        linkLatency: roundTrip / 2, sharing: sharing)
            let prompt = (0..<16).map { 5 + $0 * 7 % max(m.vocabSize - 10, 1) }
            let cache = m.makeCache(capacity: prompt.count + 61)
            var logits = try m.forward(prompt, cache: cache)
            var times: [Double] = []
            for i in 0..<60 {
                let next = logits.withUnsafeBufferPointer { Sampler.argmax($0) }
                let t0 = DispatchTime.now().uptimeNanoseconds
                logits = try m.forward([next], cache: cache, logits: .last)
                if i >= 10 { times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9) }
            }
            let measured = times.reduce(0, +) / Double(times.count)
            let position = Double(prompt.count + 35)
            let predicted = cost.attentionSeconds(tokens: 1, positions: position, kvTokens: position) + cost.expertSeconds(tokens: 1).seconds
            return max(measured - predicted, 0)
        }

        /// Bytes per second at which a one-token bf16 GEMV (`Linear.forward`, count 1: what decode
        /// runs) reads a 256 MiB weight matrix, far larger than any cache here (a 64 MiB one read
        /// faster than plain memory reads on this VM: partly cached): the median of 21
        /// measurements 0.1 s apart. The median, not the best: a shared VM's rate swings by 2×
        /// from second to second (19 and 44 GB/s minutes apart on the 2-core VM), and a run
        /// lasting minutes sees the typical rate, not the best instant.
        static func gemvBandwidth() -> Double {
            let rows = 16384, cols = 8192
            let w = UnsafeMutablePointer<UInt16>.allocate(capacity: rows * cols)
            let x = UnsafeMutablePointer<Float>.allocate(capacity: cols)
            let y = UnsafeMutablePointer<Float>.allocate(capacity: rows)
            defer { w.deallocate(); x.deallocate(); y.deallocate() }
            w.initialize(repeating: 0x3C00, count: rows * cols)
            x.initialize(repeating: 1, count: cols)
            let m = Matrix(data: UnsafeRawPointer(w), dtype: .bf16, rows: rows, cols: cols)
            Linear.forward(m, input: x, count: 1, output: y)  // pages the weights in
            var rates: [Double] = []
            for i in 0..<21 {
                if i > 0 { usleep(100_000) }
                let t0 = DispatchTime.now().uptimeNanoseconds
                Linear.forward(m, input: x, count: 1, output: y)
                let s = Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
                rates.append(Double(rows * cols * 2) / s)
            }
            return rates.sorted()[rates.count / 2]
        }

        /// The fixed cost of one MoE layer's expert step through `nodes` local expert nodes: the
        /// median over 200 one-token steps (random routes, after 10 unmeasured) of the step's time
        /// minus the compute time the node answering last reported: dispatch, transport both
        /// ways, the nodes' decoding and encoding, and the wake-ups of processes sharing cores.
        static func layerRoundTrip(model m: DecoderModel, cluster: ExpertCluster) throws -> Double {
            cluster.recordsTimings = true
            cluster.clearTimings()
            let (total, _) = try Bench.roundTrip(model: m, cluster: cluster, tokens: 1, samples: 200)
            let timings = cluster.timings.dropFirst(10)
            cluster.recordsTimings = false
            let compute = timings.map(\.lastCompute).sorted()
            let median = compute.isEmpty ? 0 : compute[compute.count / 2]
            return max(total - median, 0)
        }

        /// How much longer the `nodes` local nodes, sharing this machine, compute an MoE layer
        /// than the cost model says for the same routed rows on `profile` with a machine each
        /// (`HostSharing`): per step size T in 1, 4, 16, 64, 256 tokens (random routes drawn
        /// anew every step, uniform or by the shares of the statistics file `routing`, the cost
        /// model routing alike, with the `memory` placement; the sparse layers in turn, so the
        /// nodes read from as many weights as when serving, not one layer's that a large cache
        /// may hold), means over steps of
        /// - the compute seconds the nodes reported, summed, over the cost model's busy seconds
        ///   for a layer of T tokens (`factor`), and
        /// - the layer's wall time less `roundTrip` (the fixed cost of a layer's round trip,
        ///   `layerRoundTrip`), and at least what the node answering last reported, over the
        ///   cost model's slowest node's work for it (`wallFactor`).
        /// Means, not medians, since busy energy and a request's TPOT add up steps, stalls
        /// included: the median over 5 rounds of each round's mean. The sizes take turns over
        /// the rounds, so a drift of the machine's speed during the calibration reaches every
        /// size alike. Nil when no step size could be measured.
        static func hostSharing(model m: DecoderModel, spec: ModelSpec, cluster: ExpertCluster, nodes: Int,
                                profile: PowerProfile, roundTrip: Double, routing: String?, shares: RoutingShares?) throws -> HostSharing? {
            var cost = try rooflineCost(spec: spec, profile: profile, nodes: nodes, shares: shares)
            let layers = Double(max(spec.moeLayers, 1))
            let sizes = [1, 4, 16, 64, 256], rounds = 5, warmup = 2
            // [size][round]: each round's samples.
            var wall = [[[Double]]](repeating: [], count: sizes.count), compute = wall, last = wall
            defer { cluster.recordsTimings = false }
            for round in 0..<rounds {
                for (i, tokens) in sizes.enumerated() {
                    cluster.recordsTimings = true
                    cluster.clearTimings()
                    wall[i].append(try Bench.roundTripTimes(model: m, cluster: cluster, tokens: tokens, samples: tokens >= 64 ? 30 : 60,
                                                        warmup: warmup, seed: UInt64(round * 1000 + tokens), freshRoutes: true,
                                                        everyLayer: true, shares: shares?.shares))
                    let timings = cluster.timings.dropFirst(warmup)
                    compute[i].append(timings.map(\.compute))
                    last[i].append(timings.map(\.lastCompute))
                }
            }
            // The median over rounds of each round's mean: a mean, as steps add up, without
            // letting one stall of a second (a VM's) decide the figure.
            func mean(_ rounds: [[Double]]) -> Double {
                let means = rounds.filter { !$0.isEmpty }.map { $0.reduce(0, +) / Double($0.count) }.sorted()
                return means.isEmpty ? 0 : means[means.count / 2]
            }
            var points: [HostSharing.Point] = []
            for (i, tokens) in sizes.enumerated() {
                let roofline = cost.expertSeconds(tokens: tokens)
                // The calibration's cluster has no link cost: its seconds are the slowest node's work.
                let busy = roofline.busy.reduce(0, +) / layers, slowest = roofline.seconds / layers
                guard busy > 0, slowest > 0, mean(wall[i]) > 0, mean(compute[i]) > 0 else { continue }
                points.append(.init(tokens: tokens, factor: mean(compute[i]) / busy,
                                    wallFactor: max(mean(wall[i]) - roundTrip, mean(last[i])) / slowest))
            }
            return points.isEmpty ? nil : HostSharing(nodes: nodes, factors: points, routing: routing)
        }

        /// The simulator's cost model of `spec` on `nodes` nodes with `profile` and the `memory`
        /// placement, routing by `shares` (default: uniform): what the calibration's measurements
        /// are compared with. The nodes have a machine each and no link cost unless given
        /// `linkLatency` (one way) and `sharing` (then they share one host measured so).
        static func rooflineCost(spec: ModelSpec, profile: PowerProfile, nodes: Int, shares: RoutingShares? = nil,
                                 linkLatency: Double = 0, sharing: HostSharing? = nil) throws -> CostModel {
            let node = "{profile: {idle_watts: 1, busy_watts: 1, memory_bandwidth_gbs: \(profile.memoryBandwidth / 1e9), tflops: \(profile.flopsPerSecond / 1e12)}}"
            let yaml = "coordinator: \(node)\nnodes:\n" + String(repeating: "  - \(node)\n", count: nodes)
            var cluster = try ClusterSpec.parse(yaml, file: "calibrate")
            for i in cluster.nodes.indices {
                cluster.nodes[i].linkLatency = linkLatency
                if let sharing, nodes >= 2 {
                    cluster.nodes[i].host = "calibrate"
                    cluster.nodes[i].hostSharing = sharing
                }
            }
            let planned = cluster.nodes.enumerated().map { PlacementNode(id: "n\($0.offset)", memoryBytes: 0, profile: $0.element.profile) }
            let placement = try Planner.plan(layout: spec.layout, nodes: planned, available: planned.map { _ in true }, load: nil,
                                             strategy: .memory, current: nil)
            return CostModel(model: spec, cluster: cluster, placement: placement,
                             shares: try shares ?? RoutingShares.zipf(layers: spec.moeLayers, experts: spec.experts, skew: 0, seed: 0))
        }

        /// The simulator's description of the model at `path` from its config.json (bf16
        /// experts, as `farside synth` writes them); nil without one (a GGUF file).
        static func configSpec(model path: String) throws -> ModelSpec? {
            let config = URL(fileURLWithPath: path).appendingPathComponent("config.json").path
            guard FileManager.default.fileExists(atPath: config) else { return nil }
            return try ModelSpec.load(config, format: .bf16)
        }

        /// FLOP/s of a 1024×2048 bf16 weight times 128 tokens (an expert-sized prefill GEMM): the
        /// median of 11 measurements 0.1 s apart (see `gemvBandwidth`).
        static func gemmFlops() -> Double {
            let rows = 1024, cols = 2048, tokens = 128
            let w = UnsafeMutablePointer<UInt16>.allocate(capacity: rows * cols)
            let x = UnsafeMutablePointer<Float>.allocate(capacity: tokens * cols)
            let y = UnsafeMutablePointer<Float>.allocate(capacity: tokens * rows)
            defer { w.deallocate(); x.deallocate(); y.deallocate() }
            // bf16 0x3C00 = 2^-7: small finite weights; the inputs 1.
            w.initialize(repeating: 0x3C00, count: rows * cols)
            x.initialize(repeating: 1, count: tokens * cols)
            let m = Matrix(data: UnsafeRawPointer(w), dtype: .bf16, rows: rows, cols: cols)
            var rates: [Double] = []
            for i in 0..<11 {
                if i > 0 { usleep(100_000) }
                let t0 = DispatchTime.now().uptimeNanoseconds
                Linear.forward(m, input: x, count: tokens, output: y)
                let s = Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
                rates.append(2 * Double(rows * cols * tokens) / s)
            }
            return rates.sorted()[rates.count / 2]
        }
    }
}
