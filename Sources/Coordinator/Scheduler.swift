/// Continuous-batching policy (vLLM v1's `sched/scheduler.py`, Sarathi-Serve's chunked prefill):
/// which sequences run in the next step, and how many of their pending tokens.
///
/// Pure planning: no weights, no sockets, no clocks, so the simulator can drive the same code.
/// Every step fills a token budget: first every running sequence (oldest first) gets its pending
/// tokens — one for a decoding sequence, a chunk of the prompt for one still prefilling — then
/// waiting requests are admitted in arrival order while there is budget and a free sequence slot.
/// A long prompt is cut into chunks, so it never stalls the sequences that are decoding.
public struct Scheduler {
    /// Limits of one step.
    public struct Limits: Sendable, Equatable {
        /// Tokens one step may compute (`--max-batch-tokens`).
        public var maxBatchTokens: Int
        /// Sequences running at once (`--max-seqs`).
        public var maxSequences: Int

        public init(maxBatchTokens: Int = 512, maxSequences: Int = 64) {
            self.maxBatchTokens = maxBatchTokens
            self.maxSequences = maxSequences
        }
    }

    /// One sequence's share of a step: `tokens` of its pending tokens.
    public struct Slice: Sendable, Equatable {
        public let id: Int
        public let tokens: Int
    }

    public let limits: Limits
    /// Admitted sequences, oldest first.
    public private(set) var running: [Int] = []
    /// Requests not yet admitted, in arrival order.
    public private(set) var waiting: [Int] = []

    public init(limits: Limits) {
        precondition(limits.maxBatchTokens > 0 && limits.maxSequences > 0, "Scheduler limits must be positive")
        self.limits = limits
    }

    /// Queues a new request.
    public mutating func enqueue(_ id: Int) { waiting.append(id) }

    /// Forgets a request, waiting or running (finished or cancelled).
    public mutating func remove(_ id: Int) {
        running.removeAll { $0 == id }
        waiting.removeAll { $0 == id }
    }

    /// Whether anything is waiting or running.
    public var isIdle: Bool { running.isEmpty && waiting.isEmpty }

    /// Plans the next step. `pending(id)` is how many tokens sequence `id` has not computed yet
    /// (its prompt's remainder, or 1 for the token it sampled last); `admissible(id)` may refuse
    /// to admit a waiting request now (e.g. no memory for it): admission then stops, so requests
    /// are served in order. Admitted requests move from `waiting` to `running`.
    public mutating func schedule(pending: (Int) -> Int, admissible: (Int) -> Bool = { _ in true }) -> [Slice] {
        var budget = limits.maxBatchTokens
        var step: [Slice] = []
        for id in running where budget > 0 {
            let k = min(pending(id), budget)
            guard k > 0 else { continue }
            step.append(Slice(id: id, tokens: k))
            budget -= k
        }
        while budget > 0, running.count < limits.maxSequences, let id = waiting.first, admissible(id) {
            waiting.removeFirst()
            running.append(id)
            let k = min(pending(id), budget)
            if k > 0 {
                step.append(Slice(id: id, tokens: k))
                budget -= k
            }
        }
        return step
    }
}
