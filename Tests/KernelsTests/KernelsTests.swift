import Foundation
import Kernels
import Synchronization
import XCTest

/// Seeded weights in each storage dtype, with a Double reference product.
struct TestMatrix {
    let rows: Int, cols: Int, dtype: DType
    let values: [Float]     // exactly representable in `dtype`
    let storage: UnsafeMutableRawPointer

    init(rows: Int, cols: Int, dtype: DType, seed: UInt64) {
        self.rows = rows; self.cols = cols; self.dtype = dtype
        var s = seed
        func next() -> Float {
            s = s &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: s) >> 40) / Float(1 << 23)
        }
        var v = [Float](repeating: 0, count: rows * cols)
        storage = .allocate(byteCount: max(1, rows * cols * dtype.byteSize) + 2, alignment: 2)
        // Offset by 2 bytes so the kernels see 2-byte-aligned (not 16-byte-aligned) data, as in a mapped file.
        let base = dtype == .f32 ? storage : storage
        for i in 0..<(rows * cols) {
            let x = next()
            switch dtype {
            case .f32:
                v[i] = x
                base.storeBytes(of: x, toByteOffset: 4 * i, as: Float.self)
            case .f16:
                let h = Float16(x)
                v[i] = Float(h)
                base.storeBytes(of: h.bitPattern, toByteOffset: 2 * i, as: UInt16.self)
            case .bf16:
                let b = UInt16(x.bitPattern >> 16)
                v[i] = Float(bitPattern: UInt32(b) << 16)
                base.storeBytes(of: b, toByteOffset: 2 * i, as: UInt16.self)
            }
        }
        values = v
    }

    var matrix: Matrix { Matrix(data: UnsafeRawPointer(storage), dtype: dtype, rows: rows, cols: cols) }
}

final class KernelsTests: XCTestCase {
    func testLinearMatchesDoubleReferenceForEveryDTypeAndShape() {
        let shapes = [(1, 1), (3, 7), (4, 8), (5, 17), (13, 33), (64, 96), (130, 257), (96, 1000)]
        for dtype in DType.allCases {
            for (rows, cols) in shapes {
                let m = TestMatrix(rows: rows, cols: cols, dtype: dtype, seed: UInt64(rows * 1000 + cols))
                for count in [1, 2, 3, 5, 17] {
                    let x = (0..<(count * cols)).map { Float(sin(Double($0) * 0.37)) }
                    var y = [Float](repeating: 7, count: count * rows)
                    Linear.forward(m.matrix, input: x, count: count, output: &y)
                    var yAcc = [Float](repeating: 1.5, count: count * rows)
                    Linear.forward(m.matrix, input: x, count: count, output: &yAcc, accumulate: true)
                    for t in 0..<count {
                        for r in 0..<rows {
                            var ref = 0.0
                            var mag = 0.0
                            for c in 0..<cols {
                                ref += Double(x[t * cols + c]) * Double(m.values[r * cols + c])
                                mag += abs(Double(x[t * cols + c]) * Double(m.values[r * cols + c]))
                            }
                            let tol = 1e-6 * max(1, mag)
                            XCTAssertEqual(Double(y[t * rows + r]), ref, accuracy: tol, "\(dtype) \(rows)x\(cols) n=\(count) t=\(t) r=\(r)")
                            XCTAssertEqual(Double(yAcc[t * rows + r]), ref + 1.5, accuracy: tol, "accumulate \(dtype)")
                        }
                    }
                }
            }
        }
    }

    func testWidenRowIsExact() {
        for dtype in DType.allCases {
            let m = TestMatrix(rows: 3, cols: 21, dtype: dtype, seed: 9)
            var out = [Float](repeating: 0, count: 21)
            m.matrix.widenRow(2, into: &out)
            XCTAssertEqual(out, Array(m.values[42..<63]), "\(dtype)")
        }
    }

    func testParallelForCoversEveryIndexOnce() {
        let pool = ThreadPool(threads: 2)
        for count in [1, 2, 3, 7, 100, 1001] {
            for g in [1, 4, 16] {
                // Chunks are disjoint by contract, so plain per-index counters suffice.
                var hits = [Int](repeating: 0, count: count)
                let misaligned = Atomic<Int>(0)
                hits.withUnsafeMutableBufferPointer { h in
                    let base = h.baseAddress!
                    pool.parallelFor(count, granularity: g) { lo, hi in
                        if lo % g != 0 { misaligned.wrappingAdd(1, ordering: .relaxed) }
                        for i in lo..<hi { base[i] += 1 }
                    }
                }
                XCTAssertEqual(misaligned.load(ordering: .relaxed), 0)
                XCTAssertEqual(hits, [Int](repeating: 1, count: count), "count \(count) granularity \(g)")
            }
        }
    }

    func testNestedAndConcurrentCallsDoNotDeadlock() {
        let pool = ThreadPool(threads: 2)
        let total = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 4) { _ in
            for _ in 0..<200 {
                pool.parallelFor(8) { lo, hi in
                    pool.parallelFor(4) { a, b in total.wrappingAdd((hi - lo) * (b - a), ordering: .relaxed) }
                }
            }
        }
        XCTAssertEqual(total.load(ordering: .relaxed), 4 * 200 * 8 * 4)
    }

    func testElementwiseAgainstScalarReference() {
        let n = 37
        let x = (0..<n).map { Float($0) * 0.25 - 4 }
        let w = (0..<n).map { 1 + Float($0) * 0.01 }
        var out = [Float](repeating: 0, count: n)
        Elementwise.rmsNorm(x, weight: w, eps: 1e-6, dim: n, output: &out)
        let ms = x.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(n)
        for i in 0..<n { XCTAssertEqual(Double(out[i]), Double(w[i]) * Double(x[i]) / (ms + 1e-6).squareRoot(), accuracy: 1e-5) }

        var s = x
        Elementwise.softmax(&s, count: n)
        let z = x.reduce(0.0) { $0 + exp(Double($1)) }
        for i in 0..<n { XCTAssertEqual(Double(s[i]), exp(Double(x[i])) / z, accuracy: 1e-7) }

        var g = x
        Elementwise.siluMul(gate: &g, up: w, count: n)
        for i in 0..<n { XCTAssertEqual(Double(g[i]), Double(x[i]) / (1 + exp(-Double(x[i]))) * Double(w[i]), accuracy: 1e-5) }

        XCTAssertEqual(Double(Elementwise.dot(x, w, count: n)), zip(x, w).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }, accuracy: 1e-4)
        var y = w
        Elementwise.addScaled(&y, x, scale: 0.5, count: n)
        for i in 0..<n { XCTAssertEqual(y[i], w[i] + 0.5 * x[i], accuracy: 1e-6) }
        Elementwise.add(&y, x, count: n)
        for i in 0..<n { XCTAssertEqual(y[i], w[i] + 1.5 * x[i], accuracy: 1e-5) }
    }
}
