import Foundation

/// A live server's engine steps (`farside serve --step-log FILE`, format `farside-step-log-v1`,
/// written by the coordinator's `StepLogWriter`): what each step computed, its wall time, and
/// the compute seconds the expert nodes reported for it.
///
/// `farside simulate calibrate --step-log` fits two of the simulator's costs to it, as Vidur
/// profiles CPU overheads from real runs (Agrawal et al., MLSys 2024): the expert nodes' busy
/// time per step size when they share a host (`fitSharing`), and the coordinator's per-step
/// overhead (`meanResidual`). The probes of `calibrate` run the model's layers back to back
/// with nothing else on the machine; a server also runs its HTTP threads, its clients and the
/// engine's planning and sampling on the same cores, which the log sees and the probes do not.
public struct StepLog: Sendable, Equatable {
    public static let format = "farside-step-log-v1"
    public static let columns = ["tokens", "sequences", "positions", "kv_tokens", "seconds", "layer_steps", "node_compute_seconds"]

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
        public init(tokens: Int, sequences: Int, positions: Double, kvTokens: Double, seconds: Double, layerSteps: Int, nodeCompute: Double) {
            self.tokens = tokens; self.sequences = sequences; self.positions = positions; self.kvTokens = kvTokens
            self.seconds = seconds; self.layerSteps = layerSteps; self.nodeCompute = nodeCompute
        }
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
                  let compute = Double(f[6]), compute.isFinite, compute >= 0 else {
                throw SimulatorError.syntax(file: file, line: i + 1, problem: "'\(line)': want tokens ≥ 1, 1 ≤ sequences ≤ tokens, positions ≥ tokens, kv_tokens ≥ 0, seconds > 0, layer_steps ≥ 0 and node_compute_seconds ≥ 0")
            }
            steps.append(Step(tokens: tokens, sequences: sequences, positions: positions, kvTokens: kv, seconds: seconds,
                              layerSteps: layerSteps, nodeCompute: compute))
        }
        guard !steps.isEmpty else {
            throw SimulatorError.syntax(file: file, line: lines.count, problem: "the log has no steps: serve some requests with --step-log first")
        }
        return StepLog(nodes: nodes, steps: steps)
    }

    /// Steps a size class needs before its factor replaces the probe's.
    public static let minimumSteps = 20

    /// `probe` (the host-sharing factors `calibrate`'s probes measured at their step sizes) with
    /// each size class's busy factor taken from the logged steps instead, where the log holds at
    /// least `minimumSteps` steps of the class (steps whose size is nearer, in log scale, to that
    /// probe size than to the next). A fitted point sits at the median size of its class's
    /// steps; its factor is Σ the compute the nodes reported over Σ `raw`'s busy seconds for the
    /// same step sizes (`raw`: the cost model with a machine per node and no measured sharing,
    /// so its busy time is the roofline's work), so summed over the logged steps the simulator's
    /// busy time is what the nodes reported. Its wall factor is the probe's at that size scaled
    /// alike (a node computing longer keeps the layer waiting longer). Classes the log is thin
    /// on keep the probe's point.
    public func fitSharing(probe: HostSharing, raw: inout CostModel, file: String) -> HostSharing {
        let sizes = probe.factors.map(\.tokens)
        var classes = [[Step]](repeating: [], count: sizes.count)
        for s in steps where s.layerSteps > 0 {
            let t = Double(s.tokens)
            var c = 0
            while c + 1 < sizes.count && t * t > Double(sizes[c]) * Double(sizes[c + 1]) { c += 1 }
            classes[c].append(s)
        }
        var points: [HostSharing.Point] = []
        for (c, point) in probe.factors.enumerated() {
            let members = classes[c]
            guard members.count >= Self.minimumSteps else { points.append(point); continue }
            var reported = 0.0, roofline = 0.0
            for s in members {
                reported += s.nodeCompute
                roofline += raw.expertSeconds(tokens: s.tokens).busy.reduce(0, +)
            }
            guard reported > 0, roofline > 0 else { points.append(point); continue }
            let median = members.map(\.tokens).sorted()[(members.count - 1) / 2]
            let factor = reported / roofline
            let wall = probe.wallFactor(tokens: median) * factor / probe.factor(tokens: median)
            points.append(.init(tokens: median, factor: factor, wallFactor: wall))
        }
        return HostSharing(nodes: probe.nodes, factors: points, routing: probe.routing, stepLog: file)
    }

    /// The mean over the logged decode steps (one token per sequence) of their wall time minus
    /// `cost`'s time for the same step (the coordinator's roofline and the experts' phase;
    /// `cost` with no coordinator overhead): the fixed per-step cost the simulator's
    /// coordinator needs (`overhead_us`) beyond its roofline, at least 0. Decode steps, since
    /// their roofline terms are small next to the fixed cost and they are what a request's
    /// TPOT is made of; a step with a prompt chunk adds the roofline's error on its GEMMs,
    /// which a per-step constant would spread over every step (all steps stand in when the log
    /// holds fewer than `minimumSteps` decode steps).
    public func meanResidual(cost: inout CostModel) -> Double {
        let decode = steps.filter { $0.tokens == $0.sequences }
        let chosen = decode.count >= Self.minimumSteps ? decode : steps
        var sum = 0.0
        for s in chosen {
            let predicted = cost.attentionSeconds(tokens: s.tokens, positions: s.positions, kvTokens: s.kvTokens)
                + cost.expertSeconds(tokens: s.tokens).seconds
            sum += s.seconds - predicted
        }
        return max(sum / Double(chosen.count), 0)
    }
}
