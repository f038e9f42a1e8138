import Foundation
import Kernels
import Models
// The scheduling policy lives in its own pure module (the simulator runs it too); users of
// Coordinator keep seeing `Scheduler` through this module.
@_exported import Scheduling

/// Why a generation ended, in OpenAI's words where they exist (`Generator` ends with `stop`
/// or `length` only).
public enum FinishReason: String, Sendable {
    /// An end-of-sequence or stop token (included in the output), a stop string, or the caller
    /// asked to stop.
    case stop
    /// `maxTokens` generated, or the model's context is full.
    case length
    /// The caller cancelled it (a client that went away).
    case cancelled
    /// The step it was in failed (e.g. every expert node lost); `GenerationEvent.failed` says why.
    case error
}

/// Errors a request can be refused with before it runs.
public enum EngineError: Error, CustomStringConvertible {
    case emptyPrompt
    case promptTooLong(tokens: Int, context: Int)
    case tokenOutOfRange(token: Int, vocab: Int)
    case invalidMaxTokens(Int)
    case invalidTopLogprobs(Int)
    case queueFull(waiting: Int)
    case exceedsKVBudget(tokens: Int, positions: Int)
    case stopping
    case diskNeedsPrefixCache

    public var description: String {
        switch self {
        case .emptyPrompt:
            return "the prompt has no tokens"
        case let .promptTooLong(n, context):
            return "the prompt has \(n) tokens, but the model's context holds \(context) positions and at least one must be left for the reply"
        case let .tokenOutOfRange(t, v):
            return "token id \(t) is outside the vocabulary (valid ids are 0..<\(v))"
        case .invalidMaxTokens(let n):
            return "max tokens must be at least 1, got \(n)"
        case .invalidTopLogprobs(let n):
            return "top logprobs must be in 0...20, got \(n)"
        case .queueFull(let n):
            return "the server is at capacity (\(n) requests waiting); retry later"
        case let .exceedsKVBudget(n, positions):
            return "the prompt has \(n) tokens, but the KV cache holds \(positions) positions in all (--kv-budget) and at least one must be left for the reply"
        case .stopping:
            return "the server is shutting down"
        case .diskNeedsPrefixCache:
            return "--kv-disk keeps prefix-cache blocks on disk, so it needs the prefix cache: drop --no-prefix-cache"
        }
    }
}

/// What a caller asks the engine to generate.
public struct GenerationRequest: Sendable {
    public var prompt: [Int]
    /// New tokens at most; the context also caps them (finish reason `length`).
    public var maxTokens: Int
    public var sampling: SamplingParameters
    /// Tokens that end generation besides the model's EOS tokens (or instead of them, with `ignoreEOS`).
    public var stopTokens: Set<Int>
    public var ignoreEOS: Bool
    /// When set, each token carries its log-probability and this many most likely alternatives.
    public var topLogprobs: Int?

    public init(prompt: [Int], maxTokens: Int, sampling: SamplingParameters = .init(), stopTokens: Set<Int> = [],
                ignoreEOS: Bool = false, topLogprobs: Int? = nil) {
        self.prompt = prompt
        self.maxTokens = maxTokens
        self.sampling = sampling
        self.stopTokens = stopTokens
        self.ignoreEOS = ignoreEOS
        self.topLogprobs = topLogprobs
    }
}

/// One generated token.
public struct GeneratedToken: Sendable {
    public let id: Int
    /// Natural-log probability of `id` under the model's distribution (before temperature), when asked for.
    public let logprob: Float?
    /// The most likely tokens and their log-probabilities, most likely first, when asked for.
    public let top: [(id: Int, logprob: Float)]
    /// Whether it ended generation as an EOS or stop token (callers usually do not print it).
    public let isStop: Bool
}

/// Token counts of a finished request.
public struct Usage: Sendable, Equatable {
    public var promptTokens: Int
    public var completionTokens: Int
    /// Prompt tokens whose KV came from an earlier request (prefix reuse), not computed again.
    public var cachedTokens: Int

    public init(promptTokens: Int, completionTokens: Int, cachedTokens: Int) {
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.cachedTokens = cachedTokens
    }
}

/// What the engine tells a request's caller, in order: tokens, then exactly one end.
public enum GenerationEvent: Sendable {
    case token(GeneratedToken)
    case finished(FinishReason, Usage)
    /// The request's step failed; `finished(.error, …)` follows.
    case failed(String)
}

/// The serving loop: requests from any thread enter a queue; one engine thread runs steps of
/// continuous batching (`Scheduler` decides which tokens), each step ONE batched forward pass of
/// every running sequence (`DecoderModel.forward(_:caches:)`: one routed batch per MoE layer, so
/// an expert node's round trip is paid once per step for all sequences), and sends each
/// sequence's tokens to its caller as they are sampled.
///
/// A request's tokens do not depend on what else runs with it: each sequence has its own KV
/// cache and its own seeded sampler, and the model computes each row independently of the others
/// (`Batch`), so greedy output equals `Generator` on the same prompt alone.
///
/// KV lives in a paged cache (`KVCacheAllocator`: blocks of `Options.kvBlockSize` positions
/// within `Options.kvBudgetBytes`); the scheduler admits a request only when its next chunk's
/// blocks are free and preempts the newest sequence (to recompute later) when a running one
/// needs a block and none is left. With `Options.prefixCaching`, every filled block (and a
/// finished sequence's partly filled last one) stays cached under its chained token hash until
/// its space is needed: a request sharing a prefix with earlier ones (a system prompt, the
/// previous turns of a chat, a document asked about again) shares those blocks and prefills
/// only the rest. With `Options.kvDiskDirectory`, full blocks are also written to files there
/// (`KVDiskTier`) and a prefix no longer in RAM is read back instead of computed, also by a
/// server started again on the same model; a preempted sequence resumes from them too. A
/// request longer than the whole budget could hold then streams its KV from a file instead of
/// being refused (`StreamedKVCache`).
public final class Engine: @unchecked Sendable {
    public struct Options: Sendable {
        public var limits = Scheduler.Limits()
        /// Requests waiting to be admitted at most; more are refused (`EngineError.queueFull`).
        public var maxWaiting = 256
        /// Positions per KV block (`--kv-block-size`).
        public var kvBlockSize = 16
        /// Bytes of KV blocks at most (`--kv-budget`), for every sequence and the prefix cache,
        /// counted as stored (so f16 holds twice the positions of f32).
        public var kvBudgetBytes = 1 << 30
        /// How KV rows are stored (`--kv-dtype`).
        public var kvDType = KVDType.f32
        /// Keep blocks cached for later requests with the same prefix.
        public var prefixCaching = true
        /// Goes into the prefix hashes' root with the model's shape (e.g. the weights' path).
        public var modelIdentity = ""
        /// A directory for the KV disk tier (`--kv-disk`): full prefix-cache blocks are written
        /// there and read back when no longer in RAM, also after a restart. Needs `prefixCaching`.
        public var kvDiskDirectory: String?
        /// Bytes of files in `kvDiskDirectory` at most (`--kv-disk-budget`): block files (the
        /// least recently used go first) and streamed sequences' files.
        public var kvDiskBudgetBytes = 64 << 30
        /// Hears what the disk tier ignores (files that do not match) and a write that failed.
        public var warn: (@Sendable (String) -> Void)?
        /// Called on the engine thread after every step (and when idle, at most every second)
        /// to read the expert backend's state, which only that thread may touch: expert nodes
        /// alive and known.
        public var nodeProbe: (@Sendable () -> (alive: Int, known: Int))?
        /// Called on the engine thread between steps, and while it has nothing to run about five
        /// times a second: lets the expert backend take in nodes that register with a running
        /// server, heartbeats, and move a placement forward (`ExpertCluster.tend`), which may
        /// only happen while no step is in flight.
        public var idleWork: (@Sendable () -> Void)?
        /// Called on the engine thread after every step that ran a forward pass, with what it
        /// computed and how long the whole step took (`farside serve --step-log`).
        public var onStep: (@Sendable (StepRecord) -> Void)?
        public init() {}
    }

    /// One engine step as `Options.onStep` hears of it: the quantities `farside simulate`
    /// costs a step by (`Simulation`), and the step's measured wall time.
    public struct StepRecord: Sendable {
        /// Tokens computed (decode tokens and prompt chunks).
        public var tokens = 0
        /// Sequences in the step.
        public var sequences = 0
        /// Σ over the step's tokens of the positions each attends to (itself included).
        public var positions = 0.0
        /// KV positions the step's sequences held before it (read once each).
        public var kvTokens = 0
        /// Wall seconds of the whole step: planning, the forward pass with its expert round
        /// trips, sampling, handing tokens to their streams.
        public var seconds = 0.0
        /// Seconds from the end of the previous step to the start of this one when the engine
        /// went straight on (taking in new requests, the expert backend's control plane,
        /// publishing its counters); 0 after it waited for work.
        public var gap = 0.0
    }

    /// Counters and gauges for metrics, read with `snapshot()`.
    public struct Snapshot: Sendable {
        public var running = 0
        public var waiting = 0
        /// Bytes of KV blocks held by sequences.
        public var kvBytes = 0
        /// How KV rows are stored, and the bytes one position takes over all layers.
        public var kvDType = KVDType.f32
        public var kvBytesPerToken = 0
        /// KV blocks in the pool, held by sequences, and registered in the prefix cache.
        public var kvBlocksTotal = 0
        public var kvBlocksUsed = 0
        public var kvBlocksCached = 0
        public var steps = 0
        public var stepTokens = 0
        /// Wall seconds the engine thread spent in steps (planning, the forward pass with its
        /// expert round trips, sampling, handing tokens to their streams) since the start: the
        /// time the engine was busy, what `farside simulate` sums as its steps' durations.
        public var stepSeconds = 0.0
        /// Tokens sampled (generated) since the start.
        public var generatedTokens = 0
        /// Requests admitted that reused cached KV, and the prompt tokens they did not compute.
        public var prefixHits = 0
        public var prefixTokensReused = 0
        /// Prompt tokens of admitted requests (the hit rate's denominator).
        public var prefixTokensQueried = 0
        /// Sequences preempted for lack of KV blocks (recomputed later).
        public var preemptions = 0
        /// The KV disk tier's counters (`--kv-disk`), nil without one.
        public var kvDisk: KVDiskTier.Stats?
        /// Sequences longer than the KV budget that streamed their KV from a file (`--kv-disk`).
        public var kvStreamedSequences = 0
        public var nodesAlive = 0
        public var nodesKnown = 0
        /// When the engine thread last went round its loop (after a step, or its idle wake-up
        /// every 0.2 s), `ProcessInfo.systemUptime` seconds: a watchdog's sign of life.
        public var lastLoop = 0.0
    }

    public let model: DecoderModel
    public let options: Options

    /// Guards everything below it, shared with callers' threads.
    private let lock = NSCondition()
    private var inbox: [Sequence] = []
    /// Work for the engine thread from other threads (`perform`), run between steps.
    private var chores: [() -> Void] = []
    private var cancelled: Set<Int> = []
    private var waitingCount = 0
    private var nextID = 0
    private var stopping = false
    private var drainDeadline: Date?
    private var finishedLoop = false
    private var stats = Snapshot()

    // The engine thread's own state.
    private var scheduler: Scheduler
    private var sequences: [Int: Sequence] = [:]
    /// The paged KV cache every sequence's blocks come from.
    private let kv: KVCacheAllocator
    /// The disk tier's directory (set once in `init`): where streamed sequences keep their KV.
    private let diskDirectory: String?
    private var thread: Thread?
    /// When the last step that ran a forward pass ended (`DispatchTime` ns), for the next
    /// step's `StepRecord.gap`; nil once the engine waited for work.
    private var lastStepEnd: UInt64?

    /// One running request.
    final class Sequence {
        let id: Int
        let request: GenerationRequest
        let onEvent: (GenerationEvent) -> Void
        /// Prompt then generated tokens.
        var tokens: [Int]
        /// Tokens whose KV `cache` holds (== cache.length).
        var computed = 0
        var generated = 0
        var cachedTokens = 0
        /// Admitted before (and preempted since): its prefix hit is not counted again.
        var admitted = false
        var cache: PagedKVCache?
        /// Longer than the KV budget could ever hold (with `--kv-disk`): its KV lives in a file
        /// (`streamed`) instead of the pool's blocks.
        let streams: Bool
        var streamed: StreamedKVCache?
        /// The part of `--kv-disk-budget` its streamed KV holds (`KVDiskTier.reserveStream`).
        var streamShare = 0
        var sampler: Sampler
        let stops: Set<Int>

        init(id: Int, request: GenerationRequest, stops: Set<Int>, streams: Bool, onEvent: @escaping (GenerationEvent) -> Void) {
            self.id = id
            self.request = request
            self.onEvent = onEvent
            self.stops = stops
            self.streams = streams
            tokens = request.prompt
            sampler = Sampler(request.sampling)
        }

        var pending: Int { tokens.count - computed }
    }

    /// Throws `KVCacheError` when the KV budget holds no block, the block size is out of range
    /// or the KV dtype does not suit the model; `KVDiskError` when the disk tier's directory
    /// cannot be used.
    public init(model: DecoderModel, options: Options = Options()) throws {
        self.model = model
        self.options = options
        scheduler = Scheduler(limits: options.limits)
        kv = try model.makeKVAllocator(blockSize: options.kvBlockSize, budgetBytes: options.kvBudgetBytes,
                                       dtype: options.kvDType, identity: options.modelIdentity)
        diskDirectory = options.kvDiskDirectory
        if let dir = options.kvDiskDirectory {
            guard options.prefixCaching else { throw EngineError.diskNeedsPrefixCache }
            let warn = options.warn ?? { FileHandle.standardError.write(Data("warning: \($0)\n".utf8)) }
            kv.disk = try KVDiskTier(directory: dir, budgetBytes: options.kvDiskBudgetBytes, layout: kv.diskLayout, warn: warn)
            stats.kvDisk = kv.disk?.snapshot
        }
        stats.kvBlocksTotal = kv.pool.blockCount
        stats.kvDType = kv.dtype
        stats.kvBytesPerToken = kv.bytesPerPosition
    }

    /// Positions the whole KV cache holds (every block of the budget).
    public var kvCapacity: Int { kv.pool.blockCount * kv.blockSize }

    /// Starts the engine thread. Call once.
    public func start() {
        let t = Thread { [self] in loop() }
        t.name = "farside-engine"
        // Attention keeps a score row per context position on the stack of the threads running it.
        t.stackSize = 16 << 20
        thread = t
        t.start()
    }

    /// Queues a request; `onEvent` is called on the engine thread (keep it short and non-blocking)
    /// with its tokens and then its end. Returns the request's id (for `cancel`).
    /// Throws, without calling `onEvent`, when the request cannot run.
    @discardableResult
    public func submit(_ request: GenerationRequest, onEvent: @escaping (GenerationEvent) -> Void) throws -> Int {
        guard !request.prompt.isEmpty else { throw EngineError.emptyPrompt }
        for t in request.prompt where t < 0 || t >= model.vocabSize {
            throw EngineError.tokenOutOfRange(token: t, vocab: model.vocabSize)
        }
        guard request.prompt.count < model.maxPositions else {
            throw EngineError.promptTooLong(tokens: request.prompt.count, context: model.maxPositions)
        }
        // Immutable sizes of the allocator, safe to read from any thread. With a disk tier, a
        // sequence the budget could not hold streams its KV from a file instead.
        let positions = reservedPositions(request)
        let streams = diskDirectory != nil && positions > kvCapacity
        guard request.prompt.count < kvCapacity || streams else {
            throw EngineError.exceedsKVBudget(tokens: request.prompt.count, positions: kvCapacity)
        }
        let streamBytes = positions * kv.bytesPerPosition
        if streams, let disk = kv.disk, !disk.couldHoldStream(bytes: streamBytes) {
            throw KVDiskError.streamExceedsBudget(bytes: streamBytes, budget: disk.capacity * disk.layout.fileBytes)
        }
        guard request.maxTokens >= 1 else { throw EngineError.invalidMaxTokens(request.maxTokens) }
        if let k = request.topLogprobs, !(0...20).contains(k) { throw EngineError.invalidTopLogprobs(k) }
        try request.sampling.validate()
        let stops = request.ignoreEOS ? request.stopTokens : request.stopTokens.union(model.eosTokenIds)
        lock.lock()
        defer { lock.unlock() }
        guard !stopping else { throw EngineError.stopping }
        guard waitingCount < options.maxWaiting else { throw EngineError.queueFull(waiting: waitingCount) }
        let id = nextID
        nextID += 1
        inbox.append(Sequence(id: id, request: request, stops: stops, streams: streams, onEvent: onEvent))
        waitingCount += 1
        lock.signal()
        return id
    }

    /// Positions a request may come to hold: its prompt and every token it may generate,
    /// within the model's context.
    private func reservedPositions(_ request: GenerationRequest) -> Int {
        min(request.prompt.count + max(request.maxTokens, 1), model.maxPositions)
    }

    /// Cancels a request (at the next step); its caller gets `finished(.cancelled, …)` unless it
    /// has already finished. Safe from any thread, also for unknown or finished ids.
    public func cancel(_ id: Int) {
        lock.lock()
        cancelled.insert(id)
        lock.signal()
        lock.unlock()
    }

    /// Stops accepting requests; running and waiting ones finish, until `drainTimeout` has passed,
    /// when the rest are cancelled. Returns when the engine thread has ended.
    public func shutdown(drainTimeout: TimeInterval) {
        lock.lock()
        stopping = true
        drainDeadline = Date().addingTimeInterval(max(0, drainTimeout))
        lock.signal()
        while !finishedLoop && thread != nil { lock.wait() }
        lock.unlock()
    }

    /// Runs `work` on the engine thread between two steps (at once when idle): the way other
    /// threads reach state only that thread may touch, such as the expert backend's. Keep it
    /// short; it delays the next step. Dropped once the engine has stopped.
    public func perform(_ work: @escaping () -> Void) {
        lock.lock()
        chores.append(work)
        lock.signal()
        lock.unlock()
    }

    /// Current counters and gauges.
    public func snapshot() -> Snapshot {
        lock.lock()
        defer { lock.unlock() }
        return stats
    }

    // MARK: The engine thread

    private func loop() {
        while true {
            lock.lock()
            while inbox.isEmpty && cancelled.isEmpty && chores.isEmpty && scheduler.isIdle && !stopping {
                lastStepEnd = nil  // a wait for work is no gap between steps
                if !lock.wait(until: Date().addingTimeInterval(0.2)) {
                    lock.unlock()
                    options.idleWork?()
                    publishStats()
                    lock.lock()
                }
            }
            let arrived = inbox
            inbox.removeAll()
            let work = chores
            chores.removeAll()
            let cancels = cancelled
            cancelled.removeAll()
            let overdue = stopping && Date() >= (drainDeadline ?? .distantPast)
            lock.unlock()

            for w in work { w() }
            // Between steps: the expert backend's control plane (a few non-blocking reads).
            if !work.isEmpty || !scheduler.isIdle { options.idleWork?() }
            for s in arrived {
                sequences[s.id] = s
                if s.streams, let dir = diskDirectory {
                    do {
                        // Its file counts toward --kv-disk-budget, as the block files do.
                        s.streamShare = try kv.disk?.reserveStream(bytes: reservedPositions(s.request) * kv.bytesPerPosition) ?? 0
                        s.streamed = try StreamedKVCache(widths: model.layers.map { $0.attention.cacheWidths }, dtype: kv.dtype,
                                                         capacity: model.maxPositions, directory: dir)
                        lock.lock()
                        stats.kvStreamedSequences += 1
                        lock.unlock()
                    } catch {
                        s.onEvent(.failed("\(error)"))
                        end(s, .error)
                        continue
                    }
                }
                scheduler.enqueue(s.id)
            }
            for id in cancels { if let s = sequences[id] { end(s, .cancelled) } }
            if overdue { for s in Array(sequences.values) { end(s, .cancelled) } }
            if scheduler.isIdle && stopping {
                // Blocks still queued for the disk tier are written before the server ends.
                kv.disk?.shutdown()
                lock.lock()
                finishedLoop = true
                lock.broadcast()
                lock.unlock()
                return
            }
            step()
            publishStats()
        }
    }

    /// One step: plan, run every scheduled token in one forward pass, sample, report.
    private func step() {
        let start = DispatchTime.now().uptimeNanoseconds
        // Set once the step runs a forward pass; heard by `onStep` with the step's wall time.
        var record: StepRecord?
        let gap = lastStepEnd.map { Double(start - $0) * 1e-9 } ?? 0
        defer {
            let end = DispatchTime.now().uptimeNanoseconds
            let seconds = Double(end - start) * 1e-9
            lock.lock()
            stats.stepSeconds += seconds
            lock.unlock()
            if var r = record {
                lastStepEnd = end
                r.seconds = seconds
                r.gap = gap
                options.onStep?(r)
            }
        }
        // A sequence gets its KV (its cached prefix) when admitted (`admit` runs before `pending`
        // is asked): a prefix hit changes how many of its tokens are pending. `reserve` allocates
        // the step's blocks; `release` gives back a preempted sequence's, cached for its return.
        let plan = scheduler.schedule(
            pending: { self.sequences[$0]?.pending ?? 0 },
            admit: { id in
                if let s = self.sequences[id], s.cache == nil, s.streamed == nil { self.attachCache(s) }
                return true
            },
            reserve: { id, k in
                guard let s = self.sequences[id] else { return 0 }
                // A streamed sequence's room is its file's; it takes no blocks.
                if s.streamed != nil { return k }
                guard let c = s.cache else { return 0 }
                return self.kv.reserve(c, upTo: k)
            },
            release: { id in
                // A streamed sequence holds no blocks to give back, and keeps its KV to resume.
                guard let s = self.sequences[id], let c = s.cache else { return }
                self.kv.free(c, tokens: self.options.prefixCaching ? s.tokens : nil)
                s.cache = nil
                s.computed = 0
            })
        if !plan.preempted.isEmpty {
            lock.lock()
            stats.preemptions += plan.preempted.count
            lock.unlock()
        }
        // Alone and the KV cache is full: it cannot grow any more, as when the context is full.
        for id in plan.exhausted { if let s = sequences[id] { end(s, .length) } }
        let slices = plan.slices
        guard !slices.isEmpty else { return }
        var batch = Batch()
        var caches: [any KVStore] = []
        caches.reserveCapacity(slices.count)
        var members: [(Sequence, Int)] = []
        var shape = StepRecord()
        for slice in slices {
            guard let s = sequences[slice.id], let cache: any KVStore = s.streamed ?? s.cache, slice.tokens <= s.pending else { continue }
            let from = s.computed
            shape.sequences += 1
            shape.tokens += slice.tokens
            shape.positions += Double(slice.tokens) * (Double(from) + Double(slice.tokens + 1) / 2)
            shape.kvTokens += from
            batch.append(s.tokens[from ..< from + slice.tokens], sequence: caches.count, start: from,
                         logitsForLast: from + slice.tokens == s.tokens.count)
            caches.append(cache)
            members.append((s, slice.tokens))
        }
        lock.lock()
        stats.steps += 1
        stats.stepTokens += batch.count
        lock.unlock()
        record = shape
        let logits: [Float]
        do {
            logits = try model.forward(batch, caches: caches)
            if options.prefixCaching {
                for (s, _) in members { if let c = s.cache { kv.cacheFullBlocks(c, tokens: s.tokens) } }
            }
        } catch {
            for (s, _) in members {
                s.onEvent(.failed("\(error)"))
                end(s, .error)
            }
            return
        }
        let vocab = model.vocabSize
        var row = 0
        var sampled = 0
        defer {
            lock.lock()
            stats.generatedTokens += sampled
            lock.unlock()
        }
        for (s, k) in members {
            s.computed += k
            if let f = s.streamed?.failure {
                // Its file failed under it: its rows may be wrong, so it ends here (and the
                // others in the step, whose KV is elsewhere, go on).
                if s.computed == s.tokens.count { row += 1 }
                s.onEvent(.failed("\(KVCacheError.streamIO(f))"))
                end(s, .error)
                continue
            }
            guard s.computed == s.tokens.count else { continue }
            let next: GeneratedToken = logits.withUnsafeBufferPointer { all in
                let l = UnsafeBufferPointer(rebasing: all[row * vocab ..< (row + 1) * vocab])
                let id = s.sampler.sample(l)
                var lp: Float? = nil
                var top: [(id: Int, logprob: Float)] = []
                if let n = s.request.topLogprobs { (lp, top) = Self.logprobs(l, chosen: id, top: n) }
                return GeneratedToken(id: id, logprob: lp, top: top, isStop: s.stops.contains(id))
            }
            row += 1
            sampled += 1
            s.tokens.append(next.id)
            s.generated += 1
            s.onEvent(.token(next))
            if next.isStop {
                end(s, .stop)
            } else if s.generated >= s.request.maxTokens || s.tokens.count >= model.maxPositions {
                end(s, .length)
            }
        }
    }

    /// Gives a newly admitted sequence its KV: the longest cached prefix of its tokens (all but
    /// the last at most, whose logits are needed), or nothing yet.
    private func attachCache(_ s: Sequence) {
        let cache = options.prefixCaching ? kv.sequence(reusing: s.tokens, upTo: s.tokens.count - 1) : kv.sequence()
        s.cache = cache
        s.computed = cache.length
        guard !s.admitted else { return }
        s.admitted = true
        s.cachedTokens = cache.length
        lock.lock()
        stats.prefixTokensQueried += s.tokens.count
        if cache.length > 0 {
            stats.prefixHits += 1
            stats.prefixTokensReused += cache.length
        }
        lock.unlock()
    }

    /// Ends a sequence: reports it, frees its slot and its KV blocks (cached for later requests).
    private func end(_ s: Sequence, _ reason: FinishReason) {
        scheduler.remove(s.id)
        sequences[s.id] = nil
        if let cache = s.cache {
            kv.free(cache, tokens: reason != .error && options.prefixCaching ? s.tokens : nil)
        }
        s.cache = nil
        s.streamed = nil
        if s.streamShare > 0 { kv.disk?.releaseStream(s.streamShare) }
        s.streamShare = 0
        s.onEvent(.finished(reason, Usage(promptTokens: s.request.prompt.count, completionTokens: s.generated,
                                          cachedTokens: s.cachedTokens)))
    }

    private func publishStats() {
        let used = kv.pool.usedCount, cached = kv.pool.cachedCount, bytes = kv.usedBytes
        let running = scheduler.running.count, waiting = scheduler.waiting.count
        let disk = kv.disk?.snapshot
        let nodes = options.nodeProbe?() ?? (alive: 0, known: 0)
        let now = ProcessInfo.processInfo.systemUptime
        lock.lock()
        stats.lastLoop = now
        stats.nodesAlive = nodes.alive
        stats.nodesKnown = nodes.known
        stats.running = running
        stats.waiting = waiting
        waitingCount = waiting + inbox.count
        stats.kvBytes = bytes
        stats.kvBlocksUsed = used
        stats.kvBlocksCached = cached
        stats.kvDisk = disk
        lock.unlock()
    }

    /// log p(chosen) and the `top` most likely tokens' log-probabilities, from raw logits.
    static func logprobs(_ l: UnsafeBufferPointer<Float>, chosen: Int, top: Int) -> (Float, [(id: Int, logprob: Float)]) {
        var m = -Float.infinity
        for v in l where v > m { m = v }
        var sum = 0.0
        for v in l { sum += Double(expf(v - m)) }
        let logZ = m + Float(log(sum))
        var best: [(id: Int, logprob: Float)] = []
        if top > 0 {
            for (i, v) in l.enumerated() where best.count < top || v > best[best.count - 1].logprob + logZ {
                let entry = (id: i, logprob: v - logZ)
                let at = best.firstIndex { $0.logprob < entry.logprob } ?? best.count
                best.insert(entry, at: at)
                if best.count > top { best.removeLast() }
            }
        }
        return (l[chosen] - logZ, best)
    }
}
