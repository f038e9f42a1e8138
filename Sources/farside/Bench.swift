import ArgumentParser
import Checkpoint
import Coordinator
import ExpertNode
import Protocol
import Foundation
import Kernels
import Models

/// Measures prefill and decode speed of a model in this process, and the memory-bandwidth
/// roofline for decode: measured bandwidth / bytes of weights one decode step reads. The
/// roofline uses the two-core read bandwidth (decode only reads weights; it is the stricter
/// figure here); the fraction against the memcpy bandwidth is printed beside it.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure prefill and decode tokens/s (median of several runs) and the decode roofline; prints JSON.")

    @Option(name: .long, help: "A GGUF file or a Hugging Face checkpoint directory (default: the default model).")
    var model: String?

    @Option(name: .long, help: "Prompt length for the prefill measurement.")
    var promptTokens: Int = 128

    @Option(name: .long, help: "Tokens decoded per run.")
    var decodeTokens: Int = 32

    @Option(name: .long, help: "Runs; the median is reported.")
    var runs: Int = 5

    @OptionGroup var threadOptions: ThreadOptions

    @Option(name: .long, help: "Run routed experts on N expert-node processes on loopback; also measures the per-layer round trip.")
    var localNodes: Int = 0

    @Option(name: .long, help: "1, or 2 to run the prompt as two overlapped micro-batches (ping-pong).")
    var microBatches: Int = 1

    @Option(name: .long, help: "Measure with the paged KV cache (the server's) in blocks of N positions; 0: the contiguous cache (generate's).")
    var kvBlockSize: Int = 0

    @Option(name: .customLong("kv-dtype"), help: "How KV rows are stored: \(KVDType.names) (f32: as computed).")
    var kvDType: KVDType = .f32

    @Option(name: .long, help: "Let sequences run to N positions even past the model's trained context (a speed measurement at lengths the model was not trained to, as llama-bench runs them).")
    var context: Int?

    @Flag(name: .long, help: "With --local-nodes: also run every measurement with the experts in this process, alternating with the nodes run by run (ABBA), and report the per-run ratios. The pair of a run is measured seconds apart, so slow drifts of memory bandwidth cancel out of its ratio.")
    var alternateInProcess = false

    func validate() throws {
        guard localNodes >= 0 && localNodes <= 64 else { throw ValidationError("--local-nodes must be in 0...64") }
        guard microBatches == 1 || microBatches == 2 else { throw ValidationError("--micro-batches must be 1 or 2") }
        guard !alternateInProcess || localNodes > 0 else { throw ValidationError("--alternate-in-process needs --local-nodes") }
        guard (0...4096).contains(kvBlockSize) else { throw ValidationError("--kv-block-size must be in 0...4096, got \(kvBlockSize)") }
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

    /// Memory bandwidths in bytes/s, median of 7 passes over 256 MiB buffers:
    /// `copy` = bytes memcpy moves per second (one thread, the usual memcpy figure);
    /// `read` = bytes read per second by all pool threads summing disjoint halves — what a
    /// decode step, which only reads weights, can at best achieve here.
    static func bandwidths() -> (copy: Double, read: Double) {
        let n = 256 << 20
        let a = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 64)
        let b = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 64)
        defer { a.deallocate(); b.deallocate() }
        memset(a, 1, n)
        memset(b, 2, n)
        var copy: [Double] = [], read: [Double] = []
        for _ in 0..<7 {
            let t0 = now()
            memcpy(b, a, n)
            copy.append(Double(n) / (now() - t0))
        }
        let sink = UnsafeMutablePointer<Float>.allocate(capacity: 64)
        defer { sink.deallocate() }
        for _ in 0..<7 {
            let t0 = now()
            ThreadPool.shared.parallelFor(n / 64, granularity: 1 << 14) { lo, hi in
                var s0 = SIMD8<Float>(), s1 = SIMD8<Float>()
                for i in lo..<hi {
                    s0 += a.load(fromByteOffset: i * 64, as: SIMD8<Float>.self)
                    s1 += a.load(fromByteOffset: i * 64 + 32, as: SIMD8<Float>.self)
                }
                sink[lo % 64] = (s0 + s1).sum()
            }
            read.append(Double(n) / (now() - t0))
        }
        return (median(copy), median(read))
    }

    /// Round trip of one MoE layer's expert step through the cluster for `tokens` tokens with
    /// seeded random routes (p50, p99 seconds over `samples` calls).
    static func roundTrip(model: DecoderModel, cluster: ExpertCluster, tokens: Int, samples: Int,
                          freshRoutes: Bool = false) throws -> (Double, Double) {
        let times = try roundTripTimes(model: model, cluster: cluster, tokens: tokens, samples: samples, freshRoutes: freshRoutes).sorted()
        guard !times.isEmpty else { return (0, 0) }
        return (times[times.count / 2], times[min(times.count - 1, Int(Double(times.count) * 0.99))])
    }

    /// The seconds of `samples` calls of one MoE layer's expert step through the cluster for
    /// `tokens` tokens, after `warmup` unmeasured ones (empty for a model without routed
    /// experts): the first sparse layer's, or with `everyLayer` each sparse layer's in turn. The
    /// routes are seeded by `seed` (default: `tokens`), uniform over the experts or, with
    /// `shares` (per sparse layer, each expert's share of its routed tokens), drawn by those
    /// shares; with `freshRoutes` they are drawn anew for every call.
    static func roundTripTimes(model: DecoderModel, cluster: ExpertCluster, tokens: Int, samples: Int, warmup: Int = 10,
                               seed: UInt64? = nil, freshRoutes: Bool = false, everyLayer: Bool = false,
                               shares: [[Double]]? = nil) throws -> [Double] {
        let sparse = model.sparseLayers
        guard let (_, experts, router) = sparse.first else { return [] }
        var rng = SplitMix64(seed: seed ?? UInt64(tokens))
        let k = router.topK, d = model.hidden
        // Per sparse layer, the running sums of its shares (an inverse-CDF draw per pick).
        let cumulative: [[Double]]? = shares.map { rows in
            rows.map { row in
                var sum = 0.0
                return row.map { sum += $0; return sum }
            }
        }
        func pick(_ layer: Int) -> Int32 {
            guard let all = cumulative, layer < all.count, let total = all[layer].last, total > 0 else {
                return Int32(rng.next() % UInt64(experts))
            }
            let c = all[layer]
            let u = Double(rng.next() >> 11) / Double(1 << 53) * total
            var lo = 0, hi = c.count - 1
            while lo < hi {
                let mid = (lo + hi) / 2
                if c[mid] > u { hi = mid } else { lo = mid + 1 }
            }
            return Int32(lo)
        }
        func draw(_ layer: Int) -> RoutedBatch {
            var batch = RoutedBatch(rows: tokens, hidden: d, topK: k, experts: [], weights: [])
            for _ in 0..<tokens {
                // Distinct experts per token, as a router's top-k.
                var chosen: [Int32] = []
                while chosen.count < k {
                    let e = pick(layer)
                    if !chosen.contains(e) { chosen.append(e) }
                }
                batch.experts += chosen
                batch.weights += chosen.map { _ in Float(rng.next() % 1000) / 1000 }
            }
            return batch
        }
        var batch = draw(0)
        let input = (0..<(tokens * d)).map { _ in Float(Int(rng.next() % 2001) - 1000) / 1000 }
        var output = [Float](repeating: 0, count: tokens * d)
        var times: [Double] = []
        for i in 0..<(samples + warmup) {
            let layer = everyLayer ? i % sparse.count : 0
            // Fresh routes: each step reads the weights of other experts, as a model's routing
            // does across layers, instead of the same ones again from cache.
            if freshRoutes && i > 0 { batch = draw(layer) }
            let t0 = now()
            try input.withUnsafeBufferPointer { x in
                try output.withUnsafeMutableBufferPointer { y in
                    try cluster.computeExperts(layer: sparse[layer].layer, batch: batch, input: x.baseAddress!, output: y.baseAddress!)
                }
            }
            if i >= warmup { times.append(now() - t0) }
        }
        return times
    }

    func run() throws {
        try runReportingErrors {
            let (m, cluster) = try loadModel(path: try model ?? DefaultModel.path(), localNodes: localNodes)
            if microBatches == 2 { m.pingPongMinTokens = 32 }
            if let context { m.extendContext(to: context) }
            // Checked before the prompt is allocated: both counts come from flags.
            guard CheckedSize.saturatingSum(promptTokens, decodeTokens) <= m.maxPositions else {
                throw ValidationError("--prompt-tokens + --decode-tokens (\(promptTokens) + \(decodeTokens)) exceed the model's context of \(m.maxPositions) positions")
            }
            var rng = SplitMix64(seed: 42)
            let prompt = (0..<promptTokens).map { _ in Int(rng.next() % UInt64(m.vocabSize)) }
            // Warm-up: page the mapped weights in.
            _ = try m.forward(Array(prompt.prefix(8)), cache: m.makeCache(capacity: 8))
            // The other side of --alternate-in-process: every routed expert in this process.
            let inProcess = try alternateInProcess ? LocalExperts(model: m) : nil
            let distributed = m.experts
            var prefill: [Double] = [], decode: [Double] = []
            var localPrefill: [Double] = [], localDecode: [Double] = []
            var decodeWire = 0
            // Paged: one allocator sized for exactly one run's blocks, reused run after run.
            let paged = try kvBlockSize == 0 ? nil : m.makeKVAllocator(
                blockSize: kvBlockSize, budgetBytes: CheckedSize.saturatingSum(promptTokens, decodeTokens + kvBlockSize)
                    * m.kvBytesPerPosition(kvDType), dtype: kvDType)
            func measure() throws -> (prefill: Double, decode: Double) {
                let cache: any KVStore = try paged?.sequence() ?? m.makeCache(capacity: promptTokens + decodeTokens, dtype: kvDType)
                defer { if let p = cache as? PagedKVCache { p.allocator.free(p) } }
                let t0 = Self.now()
                var logits = try m.forward(prompt, cache: cache, logits: .last)
                let t1 = Self.now()
                let wireBefore = cluster.map { $0.bytesSent + $0.bytesReceived } ?? 0
                // Step timings of decode through the nodes only.
                cluster?.recordsTimings = m.experts === cluster
                defer {
                    decodeWire += (cluster.map { $0.bytesSent + $0.bytesReceived } ?? 0) - wireBefore
                    cluster?.recordsTimings = false
                }
                for _ in 0..<decodeTokens {
                    let next = logits.withUnsafeBufferPointer { Sampler.argmax($0) }
                    logits = try m.forward([next], cache: cache, logits: .last)
                }
                let t2 = Self.now()
                return (Double(promptTokens) / (t1 - t0), Double(decodeTokens) / (t2 - t1))
            }
            func measureInProcess() throws {
                guard let inProcess else { return }
                m.experts = inProcess
                defer { m.experts = distributed }
                let r = try measure()
                localPrefill.append(r.prefill)
                localDecode.append(r.decode)
            }
            for run in 0..<runs {
                // ABBA: the in-process run goes first in even runs and second in odd ones, so a
                // steady drift does not favour either side.
                if run % 2 == 0 { try measureInProcess() }
                let r = try measure()
                prefill.append(r.prefill)
                decode.append(r.decode)
                if run % 2 == 1 { try measureInProcess() }
            }
            let bytes = try m.decodeWeightBytes()
            let bw = Self.bandwidths()
            let roofline = bw.read / Double(bytes)
            let d = Self.median(decode)
            var extra = ""
            if let cluster {
                extra = ", \"local_nodes\": \(localNodes), \"decode_wire_bytes_per_token\": \(decodeWire / (runs * decodeTokens))"
                if inProcess != nil {
                    func list(_ v: [Double]) -> String { "[" + v.map { String(format: "%.3f", $0) }.joined(separator: ", ") + "]" }
                    let ratios = zip(decode, localDecode).map { $0 / $1 }
                    let prefillRatios = zip(prefill, localPrefill).map { $0 / $1 }
                    extra += ", \"in_process_decode_runs\": \(list(localDecode)), \"in_process_prefill_runs\": \(list(localPrefill))"
                    extra += ", \"decode_ratio_runs\": \(list(ratios)), \"decode_ratio_median\": \(String(format: "%.3f", Self.median(ratios)))"
                    extra += ", \"prefill_ratio_median\": \(String(format: "%.3f", Self.median(prefillRatios)))"
                }
                // Where a decode step's time went (p50 over every MoE layer step of every run).
                let t = cluster.timings
                if !t.isEmpty {
                    func p50(_ f: (ExpertCluster.StepTiming) -> Double) -> String { String(format: "%.1f", Self.median(t.map(f)) * 1e6) }
                    extra += ", \"decode_step_dispatch_p50_us\": \(p50(\.dispatch)), \"decode_step_wait_p50_us\": \(p50(\.wait))"
                    extra += ", \"decode_step_last_round_trip_p50_us\": \(p50(\.lastRoundTrip)), \"decode_step_last_compute_p50_us\": \(p50(\.lastCompute))"
                    extra += ", \"decode_step_last_transport_p50_us\": \(p50 { $0.lastRoundTrip - $0.lastCompute }), \"decode_step_combine_p50_us\": \(p50(\.combine))"
                }
                for size in [1, 8, 64] {
                    let (p50, p99) = try Self.roundTrip(model: m, cluster: cluster, tokens: size, samples: 200)
                    extra += ", \"layer_rtt_\(size)_p50_us\": \(String(format: "%.1f", p50 * 1e6)), \"layer_rtt_\(size)_p99_us\": \(String(format: "%.1f", p99 * 1e6))"
                }
            }
            printJSON("""
            {"model": "\(model ?? "default")", "architecture": "\(m.architecture)", "threads": \(ThreadPool.shared.threadCount), "micro_batches": \(microBatches), \
            "prompt_tokens": \(promptTokens), "decode_tokens": \(decodeTokens), "runs": \(runs), \
            "kv_dtype": "\(kvDType)", "kv_block_size": \(kvBlockSize), "kv_bytes_per_token": \(m.kvBytesPerPosition(kvDType)), \
            "prefill_tok_s": \(String(format: "%.2f", Self.median(prefill))), "decode_tok_s": \(String(format: "%.2f", d)), \
            "prefill_runs": [\(prefill.map { String(format: "%.2f", $0) }.joined(separator: ", "))], \
            "decode_runs": [\(decode.map { String(format: "%.2f", $0) }.joined(separator: ", "))], \
            "decode_weight_bytes_per_token": \(bytes), "copy_bandwidth_gb_s": \(String(format: "%.2f", bw.copy / 1e9)), \
            "read_bandwidth_gb_s": \(String(format: "%.2f", bw.read / 1e9)), \
            "decode_weight_gb_s": \(String(format: "%.2f", d * Double(bytes) / 1e9)), \
            "decode_roofline_tok_s": \(String(format: "%.2f", roofline)), "decode_fraction_of_roofline": \(String(format: "%.3f", d / roofline)), \
            "decode_fraction_of_copy_roofline": \(String(format: "%.3f", d * Double(bytes) / bw.copy))\(extra)}
            """)
        }
    }
}
