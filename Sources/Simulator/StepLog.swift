import Foundation

/// A live server's engine steps (`farside serve --step-log FILE`, format `farside-step-log-v1`,
/// written by the coordinator's `StepLogWriter`): what each step computed, its wall time, and
/// the compute seconds the expert nodes reported for it.
///
/// `farside simulate calibrate --step-log` fits the simulator's costs to it (`fit`), as Vidur
/// profiles CPU overheads from real runs (Agrawal et al., MLSys 2024): the expert nodes' busy
/// and wall time per step size when they share a host, and the coordinator's per-step
/// overhead. The probes of `calibrate` run the model's layers back to back
/// with nothing else on the machine; a server also runs its HTTP threads, its clients and the
/// engine's planning and sampling on the same cores, which the log sees and the probes do not.
public struct StepLog: Sendable, Equatable {
    public static let format = "farside-step-log-v1"
    public static let columns = ["tokens", "sequences", "positions", "kv_tokens", "seconds", "layer_steps", "node_compute_seconds", "gap_seconds"]

    public struct Step: Sendable, Equatable {
        public var tokens: Int
        public var sequences: Int
        /// Σ over the step's tokens of the positions each attends to.
        public var positions: Double
        /// KV positions its sequences held before it.
        public var kvTokens: Double
        /// The step's wall time.
        public var seconds: Double
        /// Expert layer steps it ran, and the compute seconds the nodes reported for them.
        public var layerSteps: Int
        public var nodeCompute: Double
        /// The engine's time between the previous step and this one when it went straight on.
        public var gap: Double
        public init(tokens: Int, sequences: Int, positions: Double, kvTokens: Double, seconds: Double, layerSteps: Int, nodeCompute: Double,
                    gap: Double = 0) {
            self.tokens = tokens; self.sequences = sequences; self.positions = positions; self.kvTokens = kvTokens
            self.seconds = seconds; self.layerSteps = layerSteps; self.nodeCompute = nodeCompute; self.gap = gap
        }
        /// What the step held the engine for: its wall time and the gap before it. A simulated
        /// step stands for both (the simulator has no time between steps).
        public var engineSeconds: Double { seconds + gap }
    }

    /// The expert nodes the server ran with (its first line's `nodes=`).
    public var nodes: Int
    public var steps: [Step]

    public static func load(_ path: String) throws -> StepLog {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw SimulatorError.unreadableFile(file: path, reason: FileManager.default.fileExists(atPath: path) ? "permission denied or not a file" : "no such file")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw SimulatorError.unreadableFile(file: path, reason: "not UTF-8 text")
        }
        return try parse(text, file: path)
    }

    /// Parses a step log; every malformed line is an error naming `file` and the line.
    public static func parse(_ text: String, file: String) throws -> StepLog {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if lines.last == "" { lines.removeLast() }
        let first = lines.first ?? ""
        let magic = "# \(format) nodes="
        guard first.hasPrefix(magic), let nodes = Int(first.dropFirst(magic.count)), nodes >= 0 else {
            throw SimulatorError.syntax(file: file, line: 1, problem: "not a step log: the first line must be '\(magic)N' (written by `farside serve --step-log`)")
        }
        guard lines.count >= 2, lines[1] == columns.joined(separator: ",") else {
            throw SimulatorError.syntax(file: file, line: 2, problem: "the header must be '\(columns.joined(separator: ","))'")
        }
        var steps: [Step] = []
        steps.reserveCapacity(lines.count - 2)
        for (i, line) in lines.enumerated().dropFirst(2) {
            let f = line.split(separator: ",", omittingEmptySubsequences: false)
            guard f.count == columns.count else {
                throw SimulatorError.syntax(file: file, line: i + 1, problem: "\(f.count) fields, want \(columns.count) (\(columns.joined(separator: ",")))")
            }
            guard let tokens = Int(f[0]), tokens >= 1, let sequences = Int(f[1]), (1...tokens).contains(sequences),
                  let positions = Double(f[2]), positions.isFinite, positions >= Double(tokens),
                  let kv = Double(f[3]), kv.isFinite, kv >= 0,
                  let seconds = Double(f[4]), seconds.isFinite, seconds > 0,
                  let layerSteps = Int(f[5]), layerSteps >= 0,
                  let compute = Double(f[6]), compute.isFinite, compute >= 0,
                  let gap = Double(f[7]), gap.isFinite, gap >= 0 else {
                throw SimulatorError.syntax(file: file, line: i + 1, problem: "'\(line)': want tokens ≥ 1, 1 ≤ sequences ≤ tokens, positions ≥ tokens, kv_tokens ≥ 0, seconds > 0, layer_steps ≥ 0, node_compute_seconds ≥ 0 and gap_seconds ≥ 0")
            }
            steps.append(Step(tokens: tokens, sequences: sequences, positions: positions, kvTokens: kv, seconds: seconds,
                              layerSteps: layerSteps, nodeCompute: compute, gap: gap))
        }
        guard !steps.isEmpty else {
            throw SimulatorError.syntax(file: file, line: lines.count, problem: "the log has no steps: serve some requests with --step-log first")
        }
        return StepLog(nodes: nodes, steps: steps)
    }

    /// The index of the size in `sizes` (increasing) nearest to `tokens` in log scale.
    static func sizeClass(_ tokens: Int, sizes: [Int]) -> Int {
        let t = Double(tokens)
        var c = 0
        while c + 1 < sizes.count && t * t > Double(sizes[c]) * Double(sizes[c + 1]) { c += 1 }
        return c
    }

    /// `steps` by size class, one group per size of `sizes` (`sizeClass`).
    static func grouped(_ steps: [Step], sizes: [Int]) -> [[Step]] {
        var groups = [[Step]](repeating: [], count: sizes.count)
        for s in steps { groups[sizeClass(s.tokens, sizes: sizes)].append(s) }
        return groups
    }

    /// The size classes the fit groups steps into: powers of two from 1 to the largest logged
    /// step's (a step belongs to the nearest in log scale). Finer than the probe's sizes where
    /// steps are many and small: one- and two-token steps differ by half again, and one class
    /// for both would leave each off by its share of the other's error.
    public var classSizes: [Int] {
        let largest = steps.map(\.tokens).max() ?? 1
        var sizes = [1]
        while sizes.last! < largest { sizes.append(sizes.last! * 2) }
        return sizes
    }

    /// Steps a size class needs before it gives a fitted point.
    public static let minimumSteps = 10

    /// The host-sharing factors and the per-step overhead fitted to the logged steps, from
    /// `probe` (the factors `calibrate`'s probes measured). The steps are grouped by size
    /// (`classSizes`); each class with at least `minimumSteps` steps gives one point, at the
    /// median size of its steps:
    /// - its busy factor is Σ the compute the nodes reported over Σ `raw`'s busy seconds for the
    ///   same step sizes (`raw`: the cost model with a machine per node and no measured sharing,
    ///   so its busy time is the roofline's work), so over the logged steps the simulator's busy
    ///   time is what the nodes reported;
    /// - its wall factor: for the one-token class, the probe's at one token scaled as the busy
    ///   one (a node computing longer keeps the layer waiting longer), and the per-step overhead
    ///   is that class's mean engine time (`Step.engineSeconds`) beyond `cost`'s (the fixed cost
    ///   of a step: one-token steps are mostly that) — unless that is negative (the probe's
    ///   round trip and wall factor already cost more than a served one-token step), when the
    ///   overhead is 0 and the one-token class is fitted as the others; for the other classes, the factor that
    ///   makes `cost`'s time for the class's steps, with that overhead and `roundTrip` per MoE
    ///   layer, add up to their logged engine time (the probe's layer calls, back to back with
    ///   nothing else running, do not show what a server's step of that size waits for).
    /// With no one-token class the overhead comes from the decode steps (one token per
    /// sequence), or all steps; the other classes' wall factors make up the rest. With no
    /// class of enough steps the probe stands. `cost(sharing)` is the simulator's cost model
    /// with the nodes on one host measured so, the link, and no coordinator overhead. The
    /// overhead is at least 0; a wall factor that would not be positive stays the scaled probe's.
    /// Returns the round trip too: `roundTrip` as measured, or, when the one-token steps took
    /// less than the model with no wait at all, what they leave for it.
    public func fit(probe: HostSharing, raw: inout CostModel, cost: (_ sharing: HostSharing, _ roundTrip: Double) throws -> CostModel,
                    layers: Int, roundTrip measured: Double, file: String) rethrows -> (sharing: HostSharing, overhead: Double, roundTrip: Double) {
        let classes = Self.grouped(steps.filter { $0.layerSteps > 0 }, sizes: classSizes)
        var points: [HostSharing.Point] = [], members: [[Step]] = []
        for group in classes where group.count >= Self.minimumSteps {
            var reported = 0.0, roofline = 0.0
            for s in group {
                reported += s.nodeCompute
                roofline += raw.expertSeconds(tokens: s.tokens).busy.reduce(0, +)
            }
            guard reported > 0, roofline > 0 else { continue }
            let median = group.map(\.tokens).sorted()[(group.count - 1) / 2]
            let factor = reported / roofline
            points.append(.init(tokens: median, factor: factor, wallFactor: probe.wallFactor(tokens: median) * factor / probe.factor(tokens: median)))
            members.append(group)
        }
        guard !points.isEmpty else {
            var model = try cost(probe, measured)
            return (probe, max(Self.residual(steps, model: &model), 0), measured)
        }
        func sharing() -> HostSharing { HostSharing(nodes: probe.nodes, factors: points, routing: probe.routing, stepLog: file) }
        var model = try cost(sharing(), measured)
        let decode = steps.filter { $0.tokens == $0.sequences }
        let base = points[0].tokens == 1 ? members[0] : decode.count >= Self.minimumSteps ? decode : steps
        let residual = Self.residual(base, model: &model)
        let overhead = max(residual, 0)
        var roundTrip = measured
        if residual < 0 && points[0].tokens == 1 {
            // The model already over-predicts the one-token steps. When even no wait for the
            // nodes would leave them over-predicted, the probe's round trip is more than a
            // served step's layers take (it varies by 2× between calibrations here): the round
            // trip comes from these steps instead, with the probe's wait scaled as above.
            var left = 0.0, waits = 0.0
            for s in members[0] {
                let attention = model.attentionSeconds(tokens: s.tokens, positions: s.positions, kvTokens: s.kvTokens)
                left += s.engineSeconds - attention - Double(layers) * measured
                waits += s.engineSeconds - attention - points[0].wallFactor! * raw.expertSeconds(tokens: s.tokens).seconds
            }
            if left <= 0 { roundTrip = max(waits / Double(members[0].count * max(layers, 1)), 0) }
        }
        let link = Double(layers) * roundTrip
        // A one-token class the model already over-predicts (no room for an overhead) is
        // fitted as the larger ones.
        for c in points.indices where points[c].tokens > 1 || residual < 0 {
            var waited = 0.0, work = 0.0
            for s in members[c] {
                waited += s.engineSeconds - overhead - link - model.attentionSeconds(tokens: s.tokens, positions: s.positions, kvTokens: s.kvTokens)
                work += raw.expertSeconds(tokens: s.tokens).seconds
            }
            if waited > 0 && work > 0 { points[c].wallFactor = waited / work }
        }
        return (sharing(), overhead, roundTrip)
    }

    /// The mean of `steps`' engine time beyond `model`'s time for them (0 for no steps).
    static func residual(_ steps: [Step], model: inout CostModel) -> Double {
        guard !steps.isEmpty else { return 0 }
        var sum = 0.0
        for s in steps {
            sum += s.engineSeconds - model.attentionSeconds(tokens: s.tokens, positions: s.positions, kvTokens: s.kvTokens)
                - model.expertSeconds(tokens: s.tokens).seconds
        }
        return sum / Double(steps.count)
    }

    /// How the logged one-token steps' engine times scatter (`StepJitter`): the standard
    /// deviation of their log, and the lag-one autocorrelation of it between one-token steps
    /// that follow each other. Nil with fewer than `minimumSteps` such pairs.
    public var jitter: StepJitter? {
        var logs: [Double] = [], pairs: [(Double, Double)] = []
        var previous: Double?
        for s in steps {
            guard s.tokens == 1 else { previous = nil; continue }
            let l = log(s.engineSeconds)
            logs.append(l)
            if let p = previous { pairs.append((p, l)) }
            previous = l
        }
        guard pairs.count >= Self.minimumSteps else { return nil }
        let mean = logs.reduce(0, +) / Double(logs.count)
        let sigma = (logs.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(logs.count)).squareRoot()
        let ma = pairs.map(\.0).reduce(0, +) / Double(pairs.count), mb = pairs.map(\.1).reduce(0, +) / Double(pairs.count)
        var sab = 0.0, saa = 0.0, sbb = 0.0
        for (a, b) in pairs {
            sab += (a - ma) * (b - mb)
            saa += (a - ma) * (a - ma)
            sbb += (b - mb) * (b - mb)
        }
        let rho = saa > 0 && sbb > 0 ? sab / (saa * sbb).squareRoot() : 0
        return StepJitter(sigma: min(sigma, 2), autocorrelation: min(max(rho, 0), 0.99))
    }

    /// The logged steps by size class (`classSizes`): how many, the smallest and largest size,
    /// and their mean engine time (`Step.engineSeconds`) live and by `cost` plus `overhead` per
    /// step. How well a fitted profile reproduces the log, class by class.
    public func classes(cost: inout CostModel, overhead: Double) -> [(tokens: ClosedRange<Int>, steps: Int, live: Double, predicted: Double)] {
        return Self.grouped(steps, sizes: classSizes).filter { !$0.isEmpty }.map { g in
            var live = 0.0, predicted = 0.0
            for s in g {
                live += s.engineSeconds
                predicted += cost.attentionSeconds(tokens: s.tokens, positions: s.positions, kvTokens: s.kvTokens)
                    + cost.expertSeconds(tokens: s.tokens).seconds + overhead
            }
            let n = Double(g.count)
            return (g.map(\.tokens).min()! ... g.map(\.tokens).max()!, g.count, live / n, predicted / n)
        }
    }
}
