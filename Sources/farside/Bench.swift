import ArgumentParser
import Coordinator
import ExpertNode
import Foundation
import Kernels
import Models

/// Measures prefill and decode speed of a model in this process, and the memory-bandwidth
/// roofline for decode: (bytes of weights one decode step reads) / (measured copy bandwidth).
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure prefill and decode tokens/s (median of several runs) and the decode roofline; prints JSON.")

    @Option(name: .long, help: "Hugging Face checkpoint directory.")
    var model: String

    @Option(name: .long, help: "Prompt length for the prefill measurement.")
    var promptTokens: Int = 128

    @Option(name: .long, help: "Tokens decoded per run.")
    var decodeTokens: Int = 32

    @Option(name: .long, help: "Runs; the median is reported.")
    var runs: Int = 5

    func validate() throws {
        guard promptTokens > 0, decodeTokens > 0, runs > 0 else {
            throw ValidationError("--prompt-tokens, --decode-tokens and --runs must be positive")
        }
    }

    static func median(_ v: [Double]) -> Double {
        let s = v.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    /// Copy bandwidth in bytes/s (bytes read + bytes written count once each, i.e. 2× the
    /// buffer per copy, matching how STREAM's Copy reports), median of 7 copies of 256 MiB.
    static func copyBandwidth() -> Double {
        let n = 256 << 20
        let a = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 64)
        let b = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 64)
        defer { a.deallocate(); b.deallocate() }
        memset(a, 1, n)
        memset(b, 2, n)
        var rates: [Double] = []
        for _ in 0..<7 {
            let t0 = now()
            memcpy(b, a, n)
            rates.append(Double(2 * n) / (now() - t0))
        }
        return median(rates)
    }

    func run() throws {
        try runReportingErrors {
            let (m, _) = try ModelRegistry.load(directory: URL(fileURLWithPath: model))
            if !m.sparseLayers.isEmpty { m.experts = try LocalExperts(model: m) }
            var rng = SplitMix64(seed: 42)
            let prompt = (0..<promptTokens).map { _ in Int(rng.next() % UInt64(m.vocabSize)) }
            // Warm-up: page the mapped weights in.
            _ = try m.forward(Array(prompt.prefix(8)), cache: m.makeCache(capacity: 8))
            var prefill: [Double] = [], decode: [Double] = []
            for _ in 0..<runs {
                let cache = m.makeCache(capacity: promptTokens + decodeTokens)
                let t0 = Self.now()
                var logits = try m.forward(prompt, cache: cache, logits: .last)
                let t1 = Self.now()
                for _ in 0..<decodeTokens {
                    let next = logits.withUnsafeBufferPointer { Sampler.argmax($0) }
                    logits = try m.forward([next], cache: cache, logits: .last)
                }
                let t2 = Self.now()
                prefill.append(Double(promptTokens) / (t1 - t0))
                decode.append(Double(decodeTokens) / (t2 - t1))
            }
            let bytes = try m.decodeWeightBytes()
            let bw = Self.copyBandwidth()
            let roofline = bw / Double(bytes)
            let d = Self.median(decode)
            printJSON("""
            {"model": "\(model)", "architecture": "\(m.architecture)", "threads": \(ThreadPool.shared.threadCount), \
            "prompt_tokens": \(promptTokens), "decode_tokens": \(decodeTokens), "runs": \(runs), \
            "prefill_tok_s": \(String(format: "%.2f", Self.median(prefill))), "decode_tok_s": \(String(format: "%.2f", d)), \
            "prefill_runs": [\(prefill.map { String(format: "%.2f", $0) }.joined(separator: ", "))], \
            "decode_runs": [\(decode.map { String(format: "%.2f", $0) }.joined(separator: ", "))], \
            "decode_weight_bytes_per_token": \(bytes), "copy_bandwidth_gb_s": \(String(format: "%.2f", bw / 1e9)), \
            "decode_roofline_tok_s": \(String(format: "%.2f", roofline)), "decode_fraction_of_roofline": \(String(format: "%.3f", d / roofline))}
            """)
        }
    }
}
