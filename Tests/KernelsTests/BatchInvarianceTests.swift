import Foundation
import XCTest
@testable import Kernels

/// `Linear.forward` is batch invariant: every output row of a batched call has exactly the bits
/// of the same row computed alone (one token, one thread), whatever the token count, the
/// token's position in the batch, `accumulate`, and the thread count or split.
final class BatchInvarianceTests: XCTestCase {
    /// Token counts on both sides of every path boundary: GEMV (1), 3×3 tiles with 1- and
    /// 2-token tails, the row-panel path from 48 tokens, and tile tails there too.
    static let counts = [1, 2, 3, 4, 5, 7, 16, 47, 48, 49, 64, 97]
    /// Pools: one thread (every path serial), two, and three (uneven row and token splits).
    static let pools = [ThreadPool(threads: 1), ThreadPool(threads: 2), ThreadPool(threads: 3)]

    /// Awkward float shapes: columns not a multiple of 16 (tails of 1-15), of 256 or of 1024;
    /// over 1024 with a small remainder that joins the last block (1040), with a remainder that
    /// makes a block of its own (2600 = 1024 + 1024 + 552, tail 8); rows not multiples of 3, 8
    /// or 16, few rows (token split) and many (row split).
    static let floatShapes = [(37, 1040), (29, 2600), (50, 1543), (13, 259), (7, 3), (100, 77), (5, 16)]

    func testFloatRowsEqualAloneForEveryCountAndThreadCount() {
        for dtype in DType.floatTypes {
            for (rows, cols) in Self.floatShapes {
                let w = TestMatrix(rows: rows, cols: cols, dtype: dtype, seed: UInt64(rows * 31 + cols))
                check(w.matrix, "\(dtype) \(rows)x\(cols)")
            }
        }
    }

    /// Quantized rows: block counts that leave 1-3 rows past the kernels' 4-row (2-row for
    /// k-quants) groups, columns over 1024 (k-quants: 1280 = five super-blocks).
    func testQuantizedRowsEqualAloneForEveryCountAndThreadCount() {
        for dtype in QuantMatrix.types {
            let shapes = dtype.blockElements == 256 ? [(37, 1280), (19, 256)] : [(37, 1088), (19, 96), (70, 32)]
            for (rows, cols) in shapes {
                let w = QuantMatrix(rows: rows, cols: cols, dtype: dtype, seed: UInt64(rows * 7 + cols))
                check(w.matrix, "\(dtype) \(rows)x\(cols)")
            }
        }
    }

    /// Row views (an expert's 64-row block, a head's rows) give the whole matrix's bits.
    func testRowViewsEqualWholeMatrixBitwise() {
        for dtype in DType.floatTypes {
            let w = TestMatrix(rows: 150, cols: 1040, dtype: dtype, seed: 9)
            assertViewsMatch(w.matrix, "\(dtype)")
        }
        for dtype in QuantMatrix.types {
            let w = QuantMatrix(rows: 150, cols: 1280, dtype: dtype, seed: 9)
            assertViewsMatch(w.matrix, "\(dtype)")
        }
    }

    /// The shared-input form equals separate calls bitwise for every count (one token takes
    /// its fused int16 path with another row split).
    func testSharedInputFormEqualsSeparateCallsBitwise() {
        let cols = 1088
        for dtype in QuantMatrix.types where dtype.blockElements == 32 {
            let a = QuantMatrix(rows: 45, cols: cols, dtype: dtype, seed: 1), b = QuantMatrix(rows: 23, cols: cols, dtype: dtype, seed: 2)
            for n in [1, 5, 48] {
                let x = Self.inputs(n * cols, seed: UInt64(n))
                var y1 = [Float](repeating: .nan, count: n * 45), y2 = [Float](repeating: .nan, count: n * 23)
                var s1 = y1, s2 = y2
                Linear.forward(a.matrix, b.matrix, input: x, count: n, outputs: &y1, &y2)
                Linear.forward(a.matrix, input: x, count: n, output: &s1)
                Linear.forward(b.matrix, input: x, count: n, output: &s2)
                XCTAssertEqual(Self.bits(y1), Self.bits(s1), "\(dtype) n=\(n) first")
                XCTAssertEqual(Self.bits(y2), Self.bits(s2), "\(dtype) n=\(n) second")
            }
        }
    }

    // MARK: helpers

    /// For every count and pool, overwriting and accumulating: each token's row equals that
    /// token computed alone on one thread.
    private func check(_ m: Matrix, _ label: String) {
        let rows = m.rows, cols = m.cols, maxN = Self.counts.max()!
        let x = Self.inputs(maxN * cols, seed: UInt64(cols))
        let y0 = Self.inputs(maxN * rows, seed: UInt64(rows) + 1000)
        let alone = Self.pools[0]
        // Reference: each token alone, overwriting and accumulating onto y0.
        var refSet = [Float](repeating: .nan, count: maxN * rows), refAdd = y0
        x.withUnsafeBufferPointer { xp in
            for t in 0..<maxN {
                refSet.withUnsafeMutableBufferPointer { yp in
                    Linear.forward(m, input: xp.baseAddress! + t * cols, count: 1, output: yp.baseAddress! + t * rows,
                                   accumulate: false, pool: alone)
                }
                refAdd.withUnsafeMutableBufferPointer { yp in
                    Linear.forward(m, input: xp.baseAddress! + t * cols, count: 1, output: yp.baseAddress! + t * rows,
                                   accumulate: true, pool: alone)
                }
            }
        }
        let refSetBits = Self.bits(refSet), refAddBits = Self.bits(refAdd)
        for n in Self.counts {
            // Batches start at different tokens, so a token is also checked at other positions.
            for first in Set([0, min(3, maxN - n)]) {
                for (p, pool) in Self.pools.enumerated() {
                    for accumulate in [false, true] {
                        var y = accumulate ? Array(y0[(first * rows)..<((first + n) * rows)]) : [Float](repeating: .nan, count: n * rows)
                        x.withUnsafeBufferPointer { xp in
                            y.withUnsafeMutableBufferPointer { yp in
                                Linear.forward(m, input: xp.baseAddress! + first * cols, count: n, output: yp.baseAddress!,
                                               accumulate: accumulate, pool: pool)
                            }
                        }
                        let want = Array((accumulate ? refAddBits : refSetBits)[(first * rows)..<((first + n) * rows)])
                        let got = Self.bits(y)
                        if got != want {
                            let i = (0..<got.count).first { got[$0] != want[$0] }!
                            XCTFail("\(label) n=\(n) from token \(first) threads=\(pool.threadCount) (pool \(p)) accumulate=\(accumulate): "
                                + "token \(i / rows) row \(i % rows) differs from the token alone "
                                + "(\(Float(bitPattern: got[i])) vs \(Float(bitPattern: want[i])))")
                            return
                        }
                    }
                }
            }
        }
    }

    private func assertViewsMatch(_ m: Matrix, _ label: String) {
        let cols = m.cols
        for n in [1, 4, 49] {
            let x = Self.inputs(n * cols, seed: 77)
            var whole = [Float](repeating: .nan, count: n * m.rows)
            Linear.forward(m, input: x, count: n, output: &whole)
            for (r0, count) in [(0, 64), (64, 64), (128, 22), (5, 1), (101, 7)] {
                var part = [Float](repeating: .nan, count: n * count)
                Linear.forward(m.rows(r0, count: count), input: x, count: n, output: &part)
                for t in 0..<n {
                    XCTAssertEqual(Self.bits(Array(part[(t * count)..<((t + 1) * count)])),
                                   Self.bits(Array(whole[(t * m.rows + r0)..<(t * m.rows + r0 + count)])),
                                   "\(label) rows \(r0)..<\(r0 + count) n=\(n) token \(t)")
                }
            }
        }
    }

    static func inputs(_ count: Int, seed: UInt64) -> [Float] {
        var rng = SeededRandom(seed &+ 12345)
        // Mixed magnitudes, so that rounding differences would show.
        return (0..<count).map { i in rng.next() * (i % 7 == 0 ? 40 : 1) }
    }

    static func bits(_ v: [Float]) -> [UInt32] { v.map(\.bitPattern) }
}
