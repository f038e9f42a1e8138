import Foundation

/// Why `farside serve --step-log` cannot write its file.
public enum StepLogError: Error, CustomStringConvertible {
    case cannotOpen(path: String, reason: String)

    public var description: String {
        switch self {
        case let .cannotOpen(path, reason):
            return "--step-log \(path): cannot open for writing: \(reason)"
        }
    }
}

/// Writes one line per engine step (`farside serve --step-log FILE`): what the step computed,
/// how long it took, and the compute seconds the expert nodes reported for its layers. It is
/// what `farside simulate calibrate --step-log` fits the simulator's expert-node and step costs
/// to, as Vidur profiles its CPU overheads from real runs (Agrawal et al., MLSys 2024); and an
/// operator's view of where a step's time goes.
///
/// The format (`farside-step-log-v1`, read by the simulator's `StepLog`): a first line
/// `# farside-step-log-v1 nodes=N` (the expert nodes the server started with), a header line,
/// then CSV rows
/// `tokens,sequences,positions,kv_tokens,seconds,layer_steps,node_compute_seconds,gap_seconds`,
/// where `positions` is Σ over the step's tokens of the positions each attends to, `kv_tokens`
/// the KV positions its sequences held before it, `seconds` the step's wall time, `layer_steps`
/// the expert layer steps it ran, `node_compute_seconds` their reported compute, summed, and
/// `gap_seconds` the engine's time between the previous step and this one when it went
/// straight on (0 after it waited for work).
///
/// Each line is one `write(2)`, unbuffered, so the file is whole however the server ends; at
/// one line per step (not per token or layer) that costs a few microseconds a step, only with
/// the flag. Used by the engine thread alone (`Engine.Options.onStep`).
public final class StepLogWriter: @unchecked Sendable {
    public static let format = "farside-step-log-v1"
    public static let columns = "tokens,sequences,positions,kv_tokens,seconds,layer_steps,node_compute_seconds,gap_seconds"

    private let fd: Int32
    private let path: String
    private var lastLayerSteps = 0
    private var lastCompute = 0.0
    private var failed = false
    private let warn: (String) -> Void

    /// Creates (or empties) `path` and writes the two header lines. `warn` hears, once, that a
    /// later write failed (the log stops; the server goes on).
    public init(path: String, nodes: Int, warn: @escaping (String) -> Void) throws {
        self.path = path
        self.warn = warn
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw StepLogError.cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        guard put("# \(Self.format) nodes=\(nodes)\n\(Self.columns)\n") else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw StepLogError.cannotOpen(path: path, reason: reason)
        }
    }

    deinit { close(fd) }

    /// One step's line; `layerSteps` and `nodeCompute` are the expert backend's running totals
    /// (`ExpertCluster.layerSteps`, `nodeComputeSeconds`), differenced here.
    public func record(_ r: Engine.StepRecord, layerSteps: Int, nodeCompute: Double) {
        let steps = layerSteps - lastLayerSteps, compute = nodeCompute - lastCompute
        lastLayerSteps = layerSteps
        lastCompute = nodeCompute
        guard !failed else { return }
        let line = "\(r.tokens),\(r.sequences),\(r.positions),\(r.kvTokens),\(r.seconds),\(steps),\(compute),\(r.gap)\n"
        if !put(line) {
            failed = true
            warn("--step-log \(path): a write failed (\(String(cString: strerror(errno)))); no more steps are logged")
        }
    }

    private func put(_ text: String) -> Bool {
        var bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            done += n
        }
        return true
    }
}
