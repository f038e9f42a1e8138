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
    private var routeRow: [Int32] = []
    private var routeWeight: [Float] = []
    private var counts: [Int] = []
    private var fill: [Int] = []
    private var partial: UnsafeMutablePointer<Double> = .allocate(capacity: 1)
    private var partialCapacity = 1
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
        partial.deallocate()
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
        // Counting sort of the n·k routes by expert (stable: tokens ascending within an expert).
        beginRoutes(expertCount: list.count)
        for e in batch.experts { counts[Int(e) + 1] += 1 }
        finishCounts()
        for (r, e) in batch.experts.enumerated() {
            routeRow[fill[Int(e)]] = Int32(r / k)
            routeWeight[fill[Int(e)]] = batch.weights[r]
            fill[Int(e)] += 1
        }
        ensurePartial(n * d)
        partial.update(repeating: 0, count: n * d)
        run(list, input: input, partial: partial)
        for i in 0..<(n * d) { output[i] = Float(partial[i]) }
    }

    /// The expert side of a remote request: for each `(expert, rows, weights)` group of `layer`
    /// (rows index `input`, `[rows, hidden]`), adds `weight · Expert(x[row])` into
    /// `partial[row]` in fp64. Partial sums stay fp64 on the wire and are rounded to fp32 once,
    /// on the coordinator, after all nodes' partials are added: so the result does not depend
    /// on how experts are spread over nodes (beyond fp64 rounding, ~1e-16 relative).
    public func accumulate(layer: Int, groups: [(expert: Int, rows: [UInt32], weights: [Float])],
                           input: UnsafePointer<Float>, rows n: Int, partial out: UnsafeMutablePointer<Double>) throws {
        guard let list = experts[layer] else { throw ExpertBackendError.unknownLayer(layer) }
        for g in groups {
            guard g.expert >= 0, g.expert < list.count, list[g.expert] != nil else {
                throw ExpertBackendError.unknownExpert(layer: layer, expert: g.expert)
            }
            guard g.rows.count == g.weights.count, g.rows.allSatisfy({ Int($0) < n }) else {
                throw ExpertBackendError.shapeMismatch("expert \(g.expert): \(g.rows.count) rows, \(g.weights.count) weights, input has \(n) rows")
            }
        }
        beginRoutes(expertCount: list.count)
        for g in groups { counts[g.expert + 1] += g.rows.count }
        finishCounts()
        for g in groups {
            for (i, r) in g.rows.enumerated() {
                routeRow[fill[g.expert]] = Int32(r)
                routeWeight[fill[g.expert]] = g.weights[i]
                fill[g.expert] += 1
            }
        }
        out.update(repeating: 0, count: n * hidden)
        run(list, input: input, partial: out)
    }

    private func beginRoutes(expertCount: Int) {
        counts.removeAll(keepingCapacity: true)
        counts.append(contentsOf: repeatElement(0, count: expertCount + 1))
    }

    private func finishCounts() {
        for i in 0..<(counts.count - 1) { counts[i + 1] += counts[i] }
        let total = counts[counts.count - 1]
        routeRow.removeAll(keepingCapacity: true)
        routeRow.append(contentsOf: repeatElement(0, count: total))
        routeWeight.removeAll(keepingCapacity: true)
        routeWeight.append(contentsOf: repeatElement(0, count: total))
        fill.removeAll(keepingCapacity: true)
        fill.append(contentsOf: counts)
    }

    private func ensurePartial(_ n: Int) {
        guard n > partialCapacity else { return }
        partial.deallocate()
        partial = .allocate(capacity: n)
        partialCapacity = n
    }

    /// Computes every route (expert-major in `routeRow`/`routeWeight`, offsets in `counts`) and
    /// adds `w · y` into `partial` in fp64, experts ascending, tokens ascending within one.
    private func run(_ list: [SwiGLU?], input: UnsafePointer<Float>, partial: UnsafeMutablePointer<Double>) {
        let d = hidden, total = routeRow.count
        active.removeAll(keepingCapacity: true)
        var scratchNeed = 0
        for e in 0..<(counts.count - 1) where counts[e + 1] > counts[e] {
            active.append((e, scratchNeed))
            scratchNeed += 2 * (counts[e + 1] - counts[e]) * list[e]!.intermediate
        }
        ensure(&gathered, &gatheredCapacity, max(2 * total * d, 1))
        ensure(&scratch, &scratchCapacity, max(scratchNeed, 1))
        let x = gathered, y = gathered + total * d
        for (i, r) in routeRow.enumerated() { (x + i * d).update(from: input + Int(r) * d, count: d) }
        // Experts run in parallel with each other (their matrices are small at decode batch
        // sizes, so one pool dispatch per layer beats three per expert); nested kernel calls
        // run inline. Outputs are summed afterwards in a fixed order, so the result does not
        // depend on the thread count.
        let counts = self.counts, active = self.active, scratch = self.scratch
        ThreadPool.shared.parallelFor(active.count) { lo, hi in
            for (e, s) in active[lo..<hi] {
                let first = counts[e], m = counts[e + 1] - first
                list[e]!.forward(x + first * d, count: m, output: y + first * d, scratch: scratch + s)
            }
        }
        for i in 0..<total {
            let w = Double(routeWeight[i]), src = y + i * d, dst = partial + Int(routeRow[i]) * d
            for j in 0..<d { dst[j] += w * Double(src[j]) }
        }
    }
}
