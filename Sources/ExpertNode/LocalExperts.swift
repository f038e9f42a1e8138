import Kernels
import Models
import Protocol

/// The expert side in the coordinator's own process: holds routed experts (weight views into the
/// mapped checkpoint) and computes `Σ_j w_j · Expert_j(x)` per token for a routed batch.
///
/// Tokens are grouped by expert so each expert's weights are streamed once per batch however
/// many tokens chose it (the batched-GEMM path of `Linear.forward`). Not reentrant: scratch
/// buffers are reused across calls; use one instance per calling thread.
public final class LocalExperts: ExpertBackend {
    /// `experts[layer][e]`, nil where this instance does not hold that expert.
    private var experts: [Int: [SwiGLU?]] = [:]
    private let hidden: Int

    // Reused per call: grouping and activation scratch.
    private var order: [Int32] = []
    private var counts: [Int] = []
    private var fill: [Int] = []
    private var active: [(expert: Int, scratchOffset: Int)] = []
    private var gathered: UnsafeMutablePointer<Float> = .allocate(capacity: 1)
    private var gatheredCapacity = 1
    private var scratch: UnsafeMutablePointer<Float> = .allocate(capacity: 1)
    private var scratchCapacity = 1

    /// Holds every routed expert of `model`, or only `(layer, expert)` pairs `holds` accepts.
    public init(model: DecoderModel, holds: (Int, Int) -> Bool = { _, _ in true }) throws {
        hidden = model.hidden
        for (layer, count, _) in model.sparseLayers {
            var list = [SwiGLU?](repeating: nil, count: count)
            for e in 0..<count where holds(layer, e) { list[e] = try model.expertLoader(layer, e) }
            experts[layer] = list
        }
    }

    deinit {
        gathered.deallocate()
        scratch.deallocate()
    }

    /// Bytes of expert weights this instance holds.
    public var weightBytes: Int {
        experts.values.reduce(0) { $0 + $1.reduce(0) { $0 + ($1?.weightBytes ?? 0) } }
    }

    private func ensure(_ p: inout UnsafeMutablePointer<Float>, _ cap: inout Int, _ n: Int) {
        guard n > cap else { return }
        p.deallocate()
        p = .allocate(capacity: n)
        cap = n
    }

    public func computeExperts(layer: Int, batch: RoutedBatch, input: UnsafePointer<Float>,
                               output: UnsafeMutablePointer<Float>) throws {
        guard let list = experts[layer] else { throw ExpertBackendError.unknownLayer(layer) }
        let n = batch.rows, k = batch.topK, d = hidden
        guard batch.hidden == d, batch.experts.count == n * k, batch.weights.count == n * k else {
            throw ExpertBackendError.shapeMismatch("batch of \(n) rows × top-\(k) with hidden \(batch.hidden) does not fit hidden \(d) and \(batch.experts.count) routes")
        }
        for e in batch.experts where e < 0 || Int(e) >= list.count || list[Int(e)] == nil {
            throw ExpertBackendError.unknownExpert(layer: layer, expert: Int(e))
        }
        output.update(repeating: 0, count: n * d)
        // Counting sort of the n·k routes by expert: `order` lists route indices grouped by expert.
        counts.removeAll(keepingCapacity: true)
        counts.append(contentsOf: repeatElement(0, count: list.count + 1))
        for e in batch.experts { counts[Int(e) + 1] += 1 }
        for i in 0..<list.count { counts[i + 1] += counts[i] }
        order.removeAll(keepingCapacity: true)
        order.append(contentsOf: repeatElement(0, count: n * k))
        fill.removeAll(keepingCapacity: true)
        fill.append(contentsOf: counts)
        for (r, e) in batch.experts.enumerated() {
            order[fill[Int(e)]] = Int32(r)
            fill[Int(e)] += 1
        }
        active.removeAll(keepingCapacity: true)
        var scratchNeed = 0
        for e in 0..<list.count where counts[e + 1] > counts[e] {
            active.append((e, scratchNeed))
            scratchNeed += 2 * (counts[e + 1] - counts[e]) * list[e]!.intermediate
        }
        // Rows gathered per route (expert-major), then each expert's outputs in the same layout.
        ensure(&gathered, &gatheredCapacity, 2 * n * k * d)
        ensure(&scratch, &scratchCapacity, max(scratchNeed, 1))
        let x = gathered, y = gathered + n * k * d
        for (i, r) in order.enumerated() { (x + i * d).update(from: input + (Int(r) / k) * d, count: d) }
        // Experts run in parallel with each other (their matrices are small at decode batch
        // sizes, so one pool dispatch per layer beats three per expert); nested kernel calls
        // run inline. Outputs are summed afterwards in ascending expert order, so the result
        // does not depend on the thread count.
        let counts = self.counts, active = self.active, scratch = self.scratch
        ThreadPool.shared.parallelFor(active.count) { lo, hi in
            for (e, s) in active[lo..<hi] {
                let first = counts[e], m = counts[e + 1] - first
                list[e]!.forward(x + first * d, count: m, output: y + first * d, scratch: scratch + s)
            }
        }
        for (i, r) in order.enumerated() {
            Elementwise.addScaled(output + (Int(r) / k) * d, y + i * d, scale: batch.weights[Int(r)], count: d)
        }
    }
}
