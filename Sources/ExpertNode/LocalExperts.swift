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
    /// What keeps the weights' memory alive when it is not a mapped checkpoint (streamed experts).
    private let owners: [AnyObject]

    // Reused per call: grouping and activation scratch.
    private var routeRow: [Int32] = []
    private var routeWeight: [Float] = []
    private var counts: [Int] = []
    private var fill: [Int] = []
    private var partial: UnsafeMutablePointer<Double> = .allocate(capacity: 1)
    private var partialCapacity = 1
    private var active: [(expert: Int, scratchOffset: Int)] = []
    private var single: [(expert: Int, scratchOffset: Int)] = []
    private var multi: [(expert: Int, scratchOffset: Int)] = []
    private var upStarts: [Int] = []
    private var downStarts: [Int] = []
    private var gathered: UnsafeMutablePointer<Float> = .allocate(capacity: 1)
    private var gatheredCapacity = 1
    private var scratch: UnsafeMutablePointer<Float> = .allocate(capacity: 1)
    private var scratchCapacity = 1

    /// Holds every routed expert of `model`, or only `(layer, expert)` pairs `holds` accepts.
    public init(model: DecoderModel, holds: (Int, Int) -> Bool = { _, _ in true }) throws {
        hidden = model.hidden
        owners = []
        for (layer, count, _) in model.sparseLayers {
            var list = [SwiGLU?](repeating: nil, count: count)
            for e in 0..<count where holds(layer, e) { list[e] = try model.expertLoader(layer, e) }
            experts[layer] = list
        }
    }

    /// Holds `experts[layer][e]` (nil: not held) of hidden size `hidden`, whose memory `owners`
    /// keep alive (a weight-streaming node's `StreamedExperts`).
    public init(hidden: Int, experts: [Int: [SwiGLU?]], owners: [AnyObject]) {
        self.hidden = hidden
        self.experts = experts
        self.owners = owners
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

    /// Rows per unit of work when experts are cut into row blocks. Fixed (not derived from the
    /// thread count), so every row's result is the same however many threads run.
    static let rowBlock = 64

    /// Cut one-token experts into row blocks shared by the threads (`runOneTokenEach`), or run
    /// every expert whole on one thread. Row blocks cost a second pool barrier per layer: with
    /// the cores to itself that is cheap and evens out the threads' shares (in process, decode
    /// of the 1 GB synthetic MoE, 4 alternating rounds: 71.4-76.9 tok/s with row blocks against
    /// 60.6-77.8 whole), but a node whose cores are busy with other nodes' threads waits at every
    /// barrier for a thread that lost its core (through 2 local nodes, same rounds: 45.6-56.3
    /// tok/s with row blocks against 53.2-64.1 whole). Either way every row is the same dot
    /// product, so the choice does not change results.
    public var splitsRows = true

    /// The experts in `single` (one token each: decode), an expert being three GEMVs. Running whole
    /// experts in parallel leaves a thread idle when their number does not divide evenly (three
    /// experts on two threads: one thread reads twice the weights of the other), so the rows are
    /// cut into `rowBlock`-row units instead and the threads share every expert's weights: one
    /// pool dispatch for gate and up (and the SiLU product) of all experts, one for down.
    /// Row `r` of an expert is the same dot product on either path.
    private func runOneTokenEach(_ list: [SwiGLU?], x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        let d = hidden, block = Self.rowBlock, single = self.single, scratch = self.scratch, counts = self.counts
        // Units of expert i: gate/up blocks then down blocks, numbered consecutively over experts.
        upStarts.removeAll(keepingCapacity: true)
        downStarts.removeAll(keepingCapacity: true)
        var up = 0, down = 0
        for (e, _) in single {
            upStarts.append(up)
            downStarts.append(down)
            up += (list[e]!.intermediate + block - 1) / block
            down += (d + block - 1) / block
        }
        upStarts.append(up)
        downStarts.append(down)
        let upStarts = self.upStarts, downStarts = self.downStarts
        // Walks units lo..<hi as (index into `single`, first row of the block).
        func forEachBlock(_ starts: [Int], _ lo: Int, _ hi: Int, _ body: (Int, Int) -> Void) {
            var i = 0
            while starts[i + 1] <= lo { i += 1 }
            for u in lo..<hi {
                while starts[i + 1] <= u { i += 1 }
                body(i, (u - starts[i]) * block)
            }
        }
        ThreadPool.shared.parallelFor(up) { lo, hi in
            forEachBlock(upStarts, lo, hi) { i, r in
                let (e, s) = single[i], f = list[e]!, n = min(block, f.intermediate - r)
                let g = scratch + s, u = g + f.intermediate, xi = x + counts[e] * d
                Linear.forward(f.gate.rows(r, count: n), input: xi, count: 1, output: g + r)
                Linear.forward(f.up.rows(r, count: n), input: xi, count: 1, output: u + r)
                Elementwise.siluMul(gate: g + r, up: u + r, count: n)
            }
        }
        ThreadPool.shared.parallelFor(down) { lo, hi in
            forEachBlock(downStarts, lo, hi) { i, r in
                let (e, s) = single[i], f = list[e]!, n = min(block, d - r)
                Linear.forward(f.down.rows(r, count: n), input: scratch + s, count: 1, output: y + counts[e] * d + r)
            }
        }
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
        // An expert's path depends only on its own token count, never on the rest of the batch,
        // so it computes the same bits in process and on whichever node holds it.
        single.removeAll(keepingCapacity: true)
        multi.removeAll(keepingCapacity: true)
        for a in active { if counts[a.expert + 1] - counts[a.expert] == 1 && splitsRows { single.append(a) } else { multi.append(a) } }
        if !single.isEmpty { runOneTokenEach(list, x: x, y: y) }
        if !multi.isEmpty {
            // Experts with several tokens run in parallel with each other (their matrices are
            // small at these batch sizes, so one pool dispatch beats three per expert); nested
            // kernel calls run inline.
            let counts = self.counts, multi = self.multi, scratch = self.scratch
            ThreadPool.shared.parallelFor(multi.count) { lo, hi in
                for (e, s) in multi[lo..<hi] {
                    let first = counts[e], m = counts[e + 1] - first
                    list[e]!.forward(x + first * d, count: m, output: y + first * d, scratch: scratch + s)
                }
            }
        }
        // Outputs are summed in a fixed order, so the result does not depend on the thread count.
        for i in 0..<total {
            let w = Double(routeWeight[i]), src = y + i * d, dst = partial + Int(routeRow[i]) * d
            for j in 0..<d { dst[j] += w * Double(src[j]) }
        }
    }
}
