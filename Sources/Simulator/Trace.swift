import Foundation
import SeededRandom

/// One request of a trace: when it arrives, its prompt's tokens, the tokens it generates.
public struct TraceRequest: Sendable, Equatable {
    /// Arrival in seconds from the trace's start.
    public var arrival: Double
    public var promptTokens: Int
    public var outputTokens: Int

    public init(arrival: Double, promptTokens: Int, outputTokens: Int) {
        self.arrival = arrival
        self.promptTokens = promptTokens
        self.outputTokens = outputTokens
    }
}

extension SplitMix64 {
    /// Uniform in (0, 1]: never 0, so its logarithm is finite.
    mutating func unit() -> Double { (Double(next() >> 11) + 1) / 9_007_199_254_740_992 }
}

/// A request trace: Vidur's CSV, or generated: Poisson arrivals, constant or following a day.
public enum Trace {
    static let columns = ["arrived_at", "num_prefill_tokens", "num_decode_tokens"]

    /// Reads Vidur's trace CSV (`arrived_at,num_prefill_tokens,num_decode_tokens`, seconds and
    /// token counts; a header line naming the columns may put them in any order and add others).
    public static func load(csv path: String) throws -> [TraceRequest] {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw SimulatorError.unreadableFile(file: path, reason: error.localizedDescription)
        }
        return try parse(csv: text, file: path)
    }

    /// As `load(csv:)`, on text already read (`file` names it in messages).
    public static func parse(csv text: String, file: String) throws -> [TraceRequest] {
        var index = [0, 1, 2]
        var out: [TraceRequest] = []
        var lineNumber = 0
        var last = -Double.infinity
        // Lines end with LF or CRLF (a CSV written on Windows or by Python's csv module): in Swift
        // "\r\n" is one Character, so splitting on "\n" alone would leave such a file one line.
        for raw in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline) {
            lineNumber += 1
            let line = raw.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let fields = line.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            if out.isEmpty && lineNumber == firstDataLine(text) && Double(fields[0]) == nil {
                // The header.
                for (k, name) in columns.enumerated() {
                    guard let i = fields.firstIndex(of: name) else {
                        throw SimulatorError.malformedTraceLine(file: file, line: lineNumber, problem: "the header has no '\(name)' column")
                    }
                    index[k] = i
                }
                continue
            }
            guard fields.count > index.max()! else {
                throw SimulatorError.malformedTraceLine(file: file, line: lineNumber, problem: "\(fields.count) fields")
            }
            guard let at = Double(fields[index[0]]), at.isFinite, at >= 0 else {
                throw SimulatorError.malformedTraceLine(file: file, line: lineNumber, problem: "arrived_at '\(fields[index[0]])' is not a time ≥ 0 in seconds")
            }
            guard at >= last else {
                throw SimulatorError.malformedTraceLine(file: file, line: lineNumber, problem: "arrived_at \(at) is earlier than the line before's \(last)")
            }
            guard let p = Int(fields[index[1]]), p >= 1 else {
                throw SimulatorError.malformedTraceLine(file: file, line: lineNumber, problem: "num_prefill_tokens '\(fields[index[1]])' is not a count ≥ 1")
            }
            guard let d = Int(fields[index[2]]), d >= 1 else {
                throw SimulatorError.malformedTraceLine(file: file, line: lineNumber, problem: "num_decode_tokens '\(fields[index[2]])' is not a count ≥ 1")
            }
            last = at
            out.append(TraceRequest(arrival: at, promptTokens: p, outputTokens: d))
        }
        guard !out.isEmpty else { throw SimulatorError.emptyTrace(file: file) }
        return out
    }

    static func firstDataLine(_ text: String) -> Int {
        var n = 0
        for raw in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline) {
            n += 1
            let line = raw.trimmingCharacters(in: .whitespaces)
            if !line.isEmpty && !line.hasPrefix("#") { return n }
        }
        return n
    }

    /// Writes requests as Vidur's CSV, with the header.
    public static func csv(_ requests: [TraceRequest]) -> String {
        var s = columns.joined(separator: ",") + "\n"
        for r in requests { s += "\(r.arrival),\(r.promptTokens),\(r.outputTokens)\n" }
        return s
    }

    /// A token-count distribution: `fixed:N`, `uniform:A-B` or `exp:MEAN` (geometric, ≥ 1).
    public enum Lengths: Sendable, Equatable, CustomStringConvertible {
        case fixed(Int)
        case uniform(Int, Int)
        case exponential(mean: Double)

        public init(parsing text: String, option: String) throws {
            let parts = text.split(separator: ":", maxSplits: 1).map(String.init)
            let bad = SimulatorError.invalidOption(name: option, problem: "'\(text)' is not fixed:N, uniform:A-B or exp:MEAN with counts ≥ 1")
            guard parts.count == 2 else { throw bad }
            switch parts[0] {
            case "fixed":
                guard let n = Int(parts[1]), n >= 1 else { throw bad }
                self = .fixed(n)
            case "uniform":
                let ab = parts[1].split(separator: "-").compactMap { Int($0) }
                guard ab.count == 2, ab[0] >= 1, ab[1] >= ab[0] else { throw bad }
                self = .uniform(ab[0], ab[1])
            case "exp":
                guard let m = Double(parts[1]), m >= 1, m.isFinite else { throw bad }
                self = .exponential(mean: m)
            default: throw bad
            }
        }

        public var description: String {
            switch self {
            case let .fixed(n): return "fixed:\(n)"
            case let .uniform(a, b): return "uniform:\(a)-\(b)"
            case let .exponential(m): return "exp:\(m)"
            }
        }

        func draw(_ rng: inout SplitMix64) -> Int {
            switch self {
            case let .fixed(n): return n
            case let .uniform(a, b): return a + Int(rng.next() % UInt64(b - a + 1))
            case let .exponential(m): return max(1, Int((-log(rng.unit()) * m).rounded()))
            }
        }
    }

    /// Poisson arrivals at `rate` requests per second over `duration` seconds, lengths drawn from
    /// the distributions; the same seed gives the same trace.
    public static func poisson(rate: Double, duration: Double, prompt: Lengths, output: Lengths, seed: UInt64) throws -> [TraceRequest] {
        try daily(rate: rate, peakToTrough: 1, period: 86_400, duration: duration, prompt: prompt, output: output, seed: seed)
    }

    /// Arrivals whose rate follows a day: `rate · (1 + a·sin(2π·t/period − π/2))` requests per
    /// second, lowest at t = 0 (night), highest at `period/2`, mean `rate` over a whole period,
    /// with `a = (k − 1)/(k + 1)` so the peak is `k = peakToTrough` times the trough. Drawn as a
    /// non-homogeneous Poisson process by thinning (Lewis and Shedler 1979): candidates at the
    /// peak rate, each kept with probability rate(t)/peak. `peakToTrough` 1 is plain Poisson.
    /// The same seed gives the same trace.
    public static func daily(rate: Double, peakToTrough k: Double, period: Double, duration: Double,
                             prompt: Lengths, output: Lengths, seed: UInt64) throws -> [TraceRequest] {
        guard rate.isFinite, rate > 0 else { throw SimulatorError.invalidOption(name: "--rate", problem: "\(rate) is not a rate > 0") }
        guard duration.isFinite, duration > 0 else { throw SimulatorError.invalidOption(name: "--duration", problem: "\(duration) is not a duration > 0") }
        guard k.isFinite, k >= 1, k <= 1000 else {
            throw SimulatorError.invalidOption(name: "--peak-to-trough", problem: "\(k) is not a ratio in 1...1000")
        }
        guard period.isFinite, period > 0 else { throw SimulatorError.invalidOption(name: "--day-seconds", problem: "\(period) is not a duration > 0") }
        let a = (k - 1) / (k + 1), peak = rate * (1 + a)
        var rng = SplitMix64(seed: seed)
        var out: [TraceRequest] = []
        out.reserveCapacity(Int(rate * duration * 1.1))
        var t = 0.0
        while true {
            t += -log(rng.unit()) / peak
            if t >= duration { break }
            if k > 1 {
                let r = rate * (1 + a * sin(2 * Double.pi * t / period - Double.pi / 2))
                if rng.unit() > r / peak { continue }
            }
            out.append(TraceRequest(arrival: t, promptTokens: prompt.draw(&rng), outputTokens: output.draw(&rng)))
        }
        guard !out.isEmpty else { throw SimulatorError.emptyTrace(file: "--rate \(rate) --duration \(duration)") }
        return out
    }
}
