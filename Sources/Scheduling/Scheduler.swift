/// Continuous-batching policy (vLLM v1's `sched/scheduler.py`, Sarathi-Serve's chunked prefill):
/// which sequences run in the next step, and how many of their pending tokens.
///
/// Pure planning: no weights, no sockets, no clocks, so the simulator can drive the same code.
/// Every step fills a token budget: first every running sequence (oldest first) gets its pending
/// tokens — one for a decoding sequence, a chunk of the prompt for one still prefilling — then
/// waiting requests are admitted in arrival order while there is budget and a free sequence slot.
/// A long prompt is cut into chunks, so it never stalls the sequences that are decoding.
/// Admission and preemption follow the KV cache's free blocks (`reserve` in `schedule`).
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

        public init(id: Int, tokens: Int) {
            self.id = id
            self.tokens = tokens
        }
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

    /// A planned step: the sequences that run and how many tokens each, and what the KV cache's
    /// limits did to the others.
    public struct Step: Sendable, Equatable {
        public var slices: [Slice] = []
        /// Running sequences moved back to the front of `waiting` to free their KV blocks (they
        /// will recompute what they had: vLLM's recompute preemption).
        public var preempted: [Int] = []
        /// Running sequences that are alone and still find no room for one more token: the KV
        /// cache cannot hold them any longer (the caller ends them; they stay in `running`).
        public var exhausted: [Int] = []
    }

    /// Plans the next step. `pending(id)` is how many tokens sequence `id` has not computed yet
    /// (its prompt's remainder, or 1 for the token it sampled last). `admit(id)` may refuse to
    /// admit a waiting request now: admission then stops, so requests are served in order (the
    /// engine gives it its cached prefix here, which changes `pending`).
    ///
    /// `reserve(id, k)` asks the KV cache for room for `k` more tokens of `id` and returns how
    /// many fit (0...k; the step takes that many, a shorter prefill chunk). When a running
    /// sequence gets none, the newest running sequence is preempted (`release(id)` gives back
    /// its KV, and it returns to the front of `waiting`) and the request retried; a sequence that
    /// is itself the newest is preempted, unless it is alone (`exhausted`). A step that preempted
    /// admits nothing; a waiting request that gets no room is released and admission stops.
    public mutating func schedule(pending: (Int) -> Int,
                                  admit: (Int) -> Bool = { _ in true },
                                  reserve: (_ id: Int, _ tokens: Int) -> Int = { $1 },
                                  release: (Int) -> Void = { _ in }) -> Step {
        var budget = limits.maxBatchTokens
        var step = Step()
        var i = 0
        while i < running.count && budget > 0 {
            let id = running[i]
            let want = min(pending(id), budget)
            var got = want > 0 ? reserve(id, want) : 0
            while want > 0 && got == 0 {
                if running.count - 1 > i {
                    let victim = running.removeLast()
                    release(victim)
                    waiting.insert(victim, at: 0)
                    step.preempted.append(victim)
                    got = reserve(id, want)
                } else {
                    break
                }
            }
            if got > 0 {
                step.slices.append(Slice(id: id, tokens: got))
                budget -= got
                i += 1
            } else if want == 0 {
                i += 1
            } else if i == 0 {
                step.exhausted.append(id)
                i += 1
            } else {
                running.remove(at: i)
                release(id)
                waiting.insert(id, at: 0)
                step.preempted.append(id)
            }
        }
        // No admission in a step that had to preempt (as vLLM v1): the room just freed is for the
        // running sequences, and the preempted one would only be readmitted to be preempted again.
        while step.preempted.isEmpty, budget > 0, running.count < limits.maxSequences, let id = waiting.first, admit(id) {
            let want = min(pending(id), budget)
            let got = want > 0 ? reserve(id, want) : 0
            if want > 0 && got == 0 {
                release(id)
                break
            }
            waiting.removeFirst()
            running.append(id)
            if got > 0 {
                step.slices.append(Slice(id: id, tokens: got))
                budget -= got
            }
        }
        return step
    }
}
