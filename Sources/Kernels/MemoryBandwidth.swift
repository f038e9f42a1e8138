import Foundation

/// How fast this process reads memory: what a bandwidth-bound expert GEMV is limited by, and what
/// an expert node declares for power-aware placement when no hardware class says otherwise.
public enum MemoryBandwidth {
    /// Bytes per second reading a 64 MiB buffer (larger than any cache here) with SIMD loads on
    /// every pool thread, best of `rounds`. Takes about 0.1 s.
    public static func measure(rounds: Int = 3) -> Double {
        let vectors = 1 << 20   // SIMD16<Float>: 64 MiB
        let buffer = UnsafeMutablePointer<SIMD16<Float>>.allocate(capacity: vectors)
        defer { buffer.deallocate() }
        buffer.initialize(repeating: SIMD16(repeating: 1), count: vectors)
        let pool = ThreadPool.shared
        let sums = UnsafeMutablePointer<Float>.allocate(capacity: vectors / 4096)
        defer { sums.deallocate() }
        var best = 0.0
        for _ in 0..<max(1, rounds) {
            let start = DispatchTime.now().uptimeNanoseconds
            // 4096-vector chunks (256 KiB): a sum per chunk, so nothing is optimised away.
            pool.parallelFor(vectors / 4096) { from, to in
                for c in from..<to {
                    var acc = SIMD16<Float>()
                    for i in (c * 4096)..<((c + 1) * 4096) { acc += buffer[i] }
                    sums[c] = acc.sum()
                }
            }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
            best = max(best, Double(vectors * 64) / seconds)
        }
        var total = Float(0)
        for c in 0..<(vectors / 4096) { total += sums[c] }
        // The sums are used, so the loads stay.
        return total == -1 ? 0 : best
    }
}
