import Foundation
import Synchronization

/// A fixed set of worker threads that split index ranges between them. Kernels call
/// `ThreadPool.shared.parallelFor`, so every hot loop uses all cores without spawning threads.
///
/// Workers spin briefly on the job word after each job (decode issues a job every few
/// microseconds, and a futex wake costs more than that), then keep polling it with
/// `sched_yield()` for `yieldWindow` seconds, then sleep on a condition variable. The yielding
/// phase exists because under a hypervisor a worker that slept costs the next job far more
/// than a futex wake: its vCPU halted, and waking it took 95-183 µs on average on this project's
/// 2-core VM with local expert nodes running (about 16 such wakes per decoded token, since the
/// coordinator's workers sleep while it waits for the nodes). A yielding worker keeps its core
/// awake yet gives it to any other runnable thread (an expert node's, for instance), so it costs
/// other processes almost nothing; after the window it sleeps, so an idle server does not spin.
/// A call made while the pool is busy — from a worker (nested) or from another thread — runs
/// inline on the calling thread, so the pool can never deadlock.
///
/// Measured (2 threads, `kernel-bench pool`): ~0.5 µs per call with an empty body while the
/// workers spin; they spin for 100-200 µs after a job, after which a call pays the wake-up
/// (~4 µs, up to ~25 µs after long idle).
public final class ThreadPool: @unchecked Sendable {
    /// The process-wide pool, one worker per core (override with `FARSIDE_THREADS`).
    public static let shared = ThreadPool(
        threads: ProcessInfo.processInfo.environment["FARSIDE_THREADS"].flatMap(Int.init)
            ?? ProcessInfo.processInfo.activeProcessorCount)

    public let threadCount: Int

    /// The job word: generation (bits 40-63) | chunk count (20-39) | next chunk (0-19). A worker
    /// claims a chunk by a compare-exchange that also checks the generation, so a worker that
    /// arrives late can never run a chunk of a job that has already finished.
    private let state = Atomic<UInt64>(0)
    private let remaining = Atomic<Int>(0)
    private let sleepers = Atomic<Int>(0)
    private let busy = Atomic<Bool>(false)
    /// Set by `park()`: spinning workers skip to the yielding phase at once. Cleared by the next job.
    private let parked = Atomic<Bool>(false)
    private var job: ((Int, Int) -> Void)?
    private var jobCount = 0
    private var jobChunk = 1
    private let lock = NSCondition()

    private static let chunkMask: UInt64 = (1 << 20) - 1

    /// Polls of the job word before a worker sleeps (`FARSIDE_SPIN`, default 20000 ≈ tens of
    /// µs). Lower it when other processes share the cores (local expert nodes).
    static let spinLimit = ProcessInfo.processInfo.environment["FARSIDE_SPIN"].flatMap(Int.init) ?? 20_000

    /// Seconds a worker keeps polling with `sched_yield()` after its spin, before it sleeps
    /// (`FARSIDE_YIELD_US`, default 2000 µs; 0 restores sleeping right after the spin).
    static let yieldWindow = Double(ProcessInfo.processInfo.environment["FARSIDE_YIELD_US"].flatMap(Int.init) ?? 2_000) * 1e-6

    public init(threads: Int) {
        threadCount = max(1, min(threads, 256))
        for i in 1..<threadCount {
            // Workers keep their pool alive: a pool lives as long as the process (tests that
            // make their own pools leave their threads parked on the condition variable).
            let t = Thread { self.workerLoop() }
            t.name = "farside-worker-\(i)"
            t.start()
        }
    }

    /// Claims and runs chunks of generation `gen` until none are left.
    private func runChunks(_ gen: UInt64) {
        var s = state.load(ordering: .acquiring)
        while s >> 40 == gen {
            let total = (s >> 20) & Self.chunkMask, next = s & Self.chunkMask
            if next >= total { return }
            let (done, found) = state.compareExchange(expected: s, desired: s + 1, ordering: .acquiringAndReleasing)
            if done {
                let lo = Int(next) * jobChunk
                job!(lo, min(jobCount, lo + jobChunk))
                remaining.wrappingSubtract(1, ordering: .releasing)
                s = state.load(ordering: .acquiring)
            } else {
                s = found
            }
        }
    }

    private func workerLoop() {
        var seen: UInt64 = 0
        while true {
            var spins = 0
            var gen = state.load(ordering: .acquiring) >> 40
            while gen == seen {
                spins += 1
                if spins > ThreadPool.spinLimit || parked.load(ordering: .relaxed) {
                    gen = yieldPoll(while: seen, for: ThreadPool.yieldWindow)
                    if gen != seen { break }
                    lock.lock()
                    sleepers.wrappingAdd(1, ordering: .sequentiallyConsistent)
                    while state.load(ordering: .sequentiallyConsistent) >> 40 == seen { lock.wait() }
                    sleepers.wrappingSubtract(1, ordering: .sequentiallyConsistent)
                    lock.unlock()
                    spins = 0
                }
                gen = state.load(ordering: .acquiring) >> 40
            }
            seen = gen
            runChunks(gen)
        }
    }

    /// Polls the job word with `sched_yield()` between reads until its generation leaves `seen`
    /// or `window` seconds pass; returns the generation last read.
    private func yieldPoll(while seen: UInt64, for window: Double) -> UInt64 {
        var gen = state.load(ordering: .acquiring) >> 40
        guard window > 0, gen == seen else { return gen }
        let end = Self.monotonicSeconds() + window
        while gen == seen {
            sched_yield()
            gen = state.load(ordering: .acquiring) >> 40
            if gen == seen && Self.monotonicSeconds() >= end { break }
        }
        return gen
    }

    /// CLOCK_MONOTONIC in seconds (vDSO: no system call).
    public static func monotonicSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    /// Makes spinning workers stop spinning now and only poll with `sched_yield()` (then sleep
    /// after `yieldWindow`): for a thread about to wait on I/O (the coordinator waiting for
    /// expert nodes that may share these cores), so the cores go to whoever needs them.
    public func park() {
        parked.store(true, ordering: .relaxed)
    }

    /// Calls `body(start, end)` on disjoint, non-empty chunks covering `0..<count`, in parallel,
    /// and returns when all chunks are done. Chunk boundaries are multiples of `granularity`;
    /// there are at most `2 · threadCount` chunks, claimed dynamically (the calling thread runs
    /// chunks too). Nested calls, and calls made while another thread holds the pool, run
    /// `body(0, count)` inline. The body runs without being copied to the heap
    /// (`withoutActuallyEscaping`).
    public func parallelFor(_ count: Int, granularity: Int = 1, _ body: (Int, Int) -> Void) {
        guard count > 0 else { return }
        let g = max(1, granularity)
        let units = (count + g - 1) / g
        guard threadCount > 1, units > 1,
              busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged
        else {
            body(0, count)
            return
        }
        withoutActuallyEscaping(body) { escaping in
            // Two chunks per thread evens out a core that was descheduled.
            let chunks = min(units, threadCount * 2)
            jobChunk = ((units + chunks - 1) / chunks) * g
            let total = (count + jobChunk - 1) / jobChunk
            jobCount = count
            job = escaping
            remaining.store(total, ordering: .relaxed)
            parked.store(false, ordering: .relaxed)
            let gen = ((state.load(ordering: .relaxed) >> 40) + 1) & ((1 << 24) - 1)
            state.store(gen << 40 | UInt64(total) << 20, ordering: .sequentiallyConsistent)
            if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
                lock.lock()
                lock.broadcast()
                lock.unlock()
            }
            runChunks(gen)
            // A worker still inside a chunk may have lost its core to another process (local
            // expert nodes share the cores): after a short spin, yield so it can get one back.
            var spins = 0
            while remaining.load(ordering: .acquiring) > 0 {
                spins += 1
                if spins > 2_000 { sched_yield() }
            }
            job = nil
        }
        busy.store(false, ordering: .releasing)
    }
}
