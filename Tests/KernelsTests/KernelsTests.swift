import Foundation
import Kernels
import Synchronization
import XCTest

/// A deterministic generator for test data.
struct SeededRandom {
    var state: UInt64
    init(_ seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }
    /// Uniform in [-1, 1).
    mutating func next() -> Float {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return Float(Int64(bitPattern: state) >> 40) / Float(1 << 23)
    }
}

/// Seeded weights in one storage dtype, placed at an address aligned to the element size only
/// (as inside a memory-mapped safetensors file), with their exact fp32 values for references.
final class TestMatrix {
    let rows: Int, cols: Int, dtype: DType
    let values: [Float]     // exactly representable in `dtype`
    private let storage: UnsafeMutableRawPointer
    let data: UnsafeMutableRawPointer

    init(rows: Int, cols: Int, dtype: DType, seed: UInt64) {
        self.rows = rows; self.cols = cols; self.dtype = dtype
        var rng = SeededRandom(seed)
        var v = [Float](repeating: 0, count: rows * cols)
        storage = .allocate(byteCount: rows * cols * dtype.byteSize + 64, alignment: 64)
        // 64-byte aligned + one element: aligned to the element size, never to 8, 16 or 32.
        data = storage + dtype.byteSize
        for i in 0..<(rows * cols) {
            let x = rng.next()
            switch dtype {
            case .f32:
                v[i] = x
                data.storeBytes(of: x, toByteOffset: 4 * i, as: Float.self)
            case .f16:
                let h = Float16(x)
                v[i] = Float(h)
                data.storeBytes(of: h.bitPattern, toByteOffset: 2 * i, as: UInt16.self)
            case .bf16:
                let b = UInt16(x.bitPattern >> 16)
                v[i] = Float(bitPattern: UInt32(b) << 16)
                data.storeBytes(of: b, toByteOffset: 2 * i, as: UInt16.self)
            default:
                preconditionFailure("TestMatrix holds float types; quantized ones are in QuantizedKernelsTests")
            }
        }
        values = v
    }

    deinit { storage.deallocate() }

    var matrix: Matrix { Matrix(data: UnsafeRawPointer(data), dtype: dtype, rows: rows, cols: cols) }
}

extension DType {
    static let floatTypes: [DType] = [.f32, .f16, .bf16]
}

func inputs(_ n: Int, seed: UInt64) -> [Float] {
    var rng = SeededRandom(seed)
    return (0..<n).map { _ in rng.next() }
}

final class LinearTests: XCTestCase {
    /// Checks `Linear.forward` (overwrite and accumulate) against a Double-accumulated reference;
    /// the error bound is relative to Σ|x·w| (the scale of the rounding errors), and returns the
    /// largest error seen in those units.
    @discardableResult
    func check(_ m: TestMatrix, count: Int, tolerance: Double = 1e-5, file: StaticString = #filePath, line: UInt = #line) -> Double {
        let rows = m.rows, cols = m.cols
        let x = inputs(count * cols, seed: UInt64(rows * 31 + cols * 7 + count))
        var y = [Float](repeating: .nan, count: count * rows)
        Linear.forward(m.matrix, input: x, count: count, output: &y)
        var yAcc = (0..<(count * rows)).map { Float($0 % 5) - 2 }
        let before = yAcc
        Linear.forward(m.matrix, input: x, count: count, output: &yAcc, accumulate: true)
        var worst = 0.0
        var failures = 0
        for t in 0..<count {
            for r in 0..<rows {
                var ref = 0.0, mag = 0.0
                for c in 0..<cols {
                    let p = Double(x[t * cols + c]) * Double(m.values[r * cols + c])
                    ref += p
                    mag += abs(p)
                }
                let scale = max(mag, 1e-30)
                let err = abs(Double(y[t * rows + r]) - ref) / scale
                let errAcc = abs(Double(yAcc[t * rows + r]) - (ref + Double(before[t * rows + r]))) / max(scale, 1)
                worst = max(worst, err)
                if !(err <= tolerance) || !(errAcc <= tolerance) {
                    failures += 1
                    if failures <= 5 {
                        XCTFail("\(m.dtype) \(rows)x\(cols) count \(count) t \(t) r \(r): got \(y[t * rows + r]) "
                                + "(accumulated \(yAcc[t * rows + r])), want \(ref)", file: file, line: line)
                    }
                }
            }
        }
        return worst
    }

    func testEveryDTypeShapeAndCountMatchesDoubleReference() {
        // Odd column counts (tails of 1-7 past a multiple of 8 or 16), rows not multiples of 4,
        // 8 or 16, and counts covering the GEMV, small-batch and packed paths and their tails.
        let shapes = [(1, 1), (3, 7), (4, 8), (5, 17), (13, 33), (16, 64), (33, 100), (21, 257), (130, 257)]
        for dtype in DType.floatTypes {
            for (rows, cols) in shapes {
                let m = TestMatrix(rows: rows, cols: cols, dtype: dtype, seed: UInt64(rows * 1000 + cols))
                for count in [1, 2, 3, 4, 5, 17, 48, 53] {
                    check(m, count: count)
                }
            }
        }
    }

    func testColumnBlocksAndLongRows() {
        // Columns past the packed path's 256-column blocks and the 1024-column blocks / folds of
        // the other paths (the last block takes up to 1.5 blocks), with column tails.
        for dtype in DType.floatTypes {
            let m = TestMatrix(rows: 19, cols: 1100, dtype: dtype, seed: 5)
            for count in [1, 2, 7, 50] { check(m, count: count) }
            let m2 = TestMatrix(rows: 7, cols: 2600, dtype: dtype, seed: 6)
            for count in [1, 2, 5, 48] { check(m2, count: count) }
        }
    }

    func testLongRowsStayWithinOneHundredThousandth() {
        // The brief's bound: 1e-5 relative for rows up to 8192 columns.
        for dtype in DType.floatTypes {
            let m = TestMatrix(rows: 9, cols: 8192, dtype: dtype, seed: 77)
            for count in [1, 3, 49] {
                let worst = check(m, count: count)
                XCTAssertLessThan(worst, 2e-6, "\(dtype) count \(count)")
            }
        }
    }

    func testThreadedSplitsMatchReference() {
        // Large enough to be split across the pool: by rows (GEMV, small and packed batches) and,
        // with few rows, by tokens.
        for dtype in DType.floatTypes {
            check(TestMatrix(rows: 300, cols: 129, dtype: dtype, seed: 3), count: 1)
            check(TestMatrix(rows: 300, cols: 129, dtype: dtype, seed: 3), count: 6)
            check(TestMatrix(rows: 70, cols: 100, dtype: dtype, seed: 4), count: 64)
            check(TestMatrix(rows: 5, cols: 70, dtype: dtype, seed: 6), count: 250)
        }
    }

    func testZeroColumnsAndZeroCount() {
        let m = TestMatrix(rows: 3, cols: 0, dtype: .bf16, seed: 1)
        var y: [Float] = [1, 2, 3, 4, 5, 6]
        Linear.forward(m.matrix, input: [], count: 2, output: &y, accumulate: true)
        XCTAssertEqual(y, [1, 2, 3, 4, 5, 6])
        Linear.forward(m.matrix, input: [], count: 2, output: &y)
        XCTAssertEqual(y, [0, 0, 0, 0, 0, 0])
        let m2 = TestMatrix(rows: 3, cols: 4, dtype: .f16, seed: 1)
        var z: [Float] = [9]
        Linear.forward(m2.matrix, input: [1, 2, 3, 4], count: 0, output: &z)
        XCTAssertEqual(z, [9])
    }

    func testRowViewsMatchWholeMatrix() {
        let m = TestMatrix(rows: 40, cols: 45, dtype: .bf16, seed: 8)
        let x = inputs(2 * 45, seed: 2)
        var whole = [Float](repeating: 0, count: 2 * 40)
        Linear.forward(m.matrix, input: x, count: 2, output: &whole)
        var part = [Float](repeating: 0, count: 2 * 13)
        Linear.forward(m.matrix.rows(11, count: 13), input: x, count: 2, output: &part)
        for t in 0..<2 {
            for r in 0..<13 {
                XCTAssertEqual(part[t * 13 + r], whole[t * 40 + 11 + r], accuracy: 1e-5 * max(1, abs(whole[t * 40 + 11 + r])))
            }
        }
    }

    func testWidenRowIsExact() {
        for dtype in DType.floatTypes {
            for cols in [1, 7, 8, 21, 64, 67] {
                let m = TestMatrix(rows: 3, cols: cols, dtype: dtype, seed: 9)
                var out = [Float](repeating: .nan, count: cols)
                m.matrix.widenRow(2, into: &out)
                XCTAssertEqual(out, Array(m.values[(2 * cols)..<(3 * cols)]), "\(dtype) \(cols)")
            }
        }
        // Special values survive widening.
        let bits: [UInt16] = [0x7F80, 0xFF80, 0x0000, 0x8000, 0x0001, 0x3F80, 0xC000, 0x7F7F, 0x0080]
        var out = [Float](repeating: 0, count: bits.count)
        bits.withUnsafeBytes { raw in
            Matrix(data: raw.baseAddress!, dtype: .bf16, rows: 1, cols: bits.count).widenRow(0, into: &out)
        }
        for (b, o) in zip(bits, out) { XCTAssertEqual(o.bitPattern, UInt32(b) << 16) }
        let halfs: [Float16] = [.infinity, -.infinity, 0, -0.0, .leastNonzeroMagnitude, 1, -2, .greatestFiniteMagnitude, 0.1]
        halfs.withUnsafeBytes { raw in
            Matrix(data: raw.baseAddress!, dtype: .f16, rows: 1, cols: halfs.count).widenRow(0, into: &out)
        }
        for (h, o) in zip(halfs, out) { XCTAssertEqual(o.bitPattern, Float(h).bitPattern) }
    }
}

final class ThreadPoolTests: XCTestCase {
    func testParallelForCoversEveryIndexExactlyOnce() {
        for threads in [1, 2, 3] {
            let pool = ThreadPool(threads: threads)
            for count in [0, 1, 2, 3, 7, 100, 1001] {
                for g in [1, 4, 16, 5000] {
                    var hits = [Int](repeating: 0, count: count)
                    let misaligned = Atomic<Int>(0), empty = Atomic<Int>(0)
                    hits.withUnsafeMutableBufferPointer { h in
                        let base = h.baseAddress
                        pool.parallelFor(count, granularity: g) { lo, hi in
                            if lo % g != 0 { misaligned.wrappingAdd(1, ordering: .relaxed) }
                            if lo >= hi { empty.wrappingAdd(1, ordering: .relaxed) }
                            // Chunks are disjoint by contract, so plain per-index counters suffice.
                            for i in lo..<hi { base![i] += 1 }
                        }
                    }
                    XCTAssertEqual(misaligned.load(ordering: .relaxed), 0)
                    XCTAssertEqual(empty.load(ordering: .relaxed), 0)
                    XCTAssertEqual(hits, [Int](repeating: 1, count: count), "threads \(threads) count \(count) granularity \(g)")
                }
            }
        }
    }

    func testManyBackToBackCalls() {
        let pool = ThreadPool(threads: 2)
        let total = Atomic<Int>(0)
        for i in 0..<20_000 {
            pool.parallelFor(i % 9 + 1) { lo, hi in total.wrappingAdd(hi - lo, ordering: .relaxed) }
        }
        XCTAssertEqual(total.load(ordering: .relaxed), (0..<20_000).reduce(0) { $0 + $1 % 9 + 1 })
    }

    func testCallsAfterWorkersFallAsleep() {
        let pool = ThreadPool(threads: 2)
        for _ in 0..<3 {
            usleep(30_000)
            let total = Atomic<Int>(0)
            pool.parallelFor(64) { lo, hi in total.wrappingAdd(hi - lo, ordering: .relaxed) }
            XCTAssertEqual(total.load(ordering: .relaxed), 64)
        }
    }

    func testNestedCallsRunInline() {
        let pool = ThreadPool(threads: 2)
        let total = Atomic<Int>(0)
        pool.parallelFor(8) { lo, hi in
            for _ in lo..<hi {
                pool.parallelFor(5) { a, b in
                    pool.parallelFor(3) { c, d in total.wrappingAdd((b - a) * (d - c), ordering: .relaxed) }
                }
            }
        }
        XCTAssertEqual(total.load(ordering: .relaxed), 8 * 5 * 3)
    }

    func testConcurrentCallersWithNesting() {
        let pool = ThreadPool(threads: 2)
        let total = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 4) { _ in
            for _ in 0..<300 {
                pool.parallelFor(8) { lo, hi in
                    pool.parallelFor(4) { a, b in total.wrappingAdd((hi - lo) * (b - a), ordering: .relaxed) }
                }
            }
        }
        XCTAssertEqual(total.load(ordering: .relaxed), 4 * 300 * 8 * 4)
    }

    func testSharedPoolFromTwoThreadsWithKernels() {
        // Two threads running threaded kernels through the shared pool at once.
        let m = TestMatrix(rows: 256, cols: 200, dtype: .bf16, seed: 12)
        let x = inputs(4 * 200, seed: 1)
        var expected = [Float](repeating: 0, count: 4 * 256)
        Linear.forward(m.matrix, input: x, count: 4, output: &expected)
        let mismatches = Atomic<Int>(0)
        let matrix = m.matrix
        DispatchQueue.concurrentPerform(iterations: 2) { _ in
            var y = [Float](repeating: 0, count: 4 * 256)
            for _ in 0..<50 {
                Linear.forward(matrix, input: x, count: 4, output: &y)
                if y != expected { mismatches.wrappingAdd(1, ordering: .relaxed) }
            }
        }
        XCTAssertEqual(mismatches.load(ordering: .relaxed), 0)
    }
}

final class ElementwiseTests: XCTestCase {
    func testExpWithinTwoUlp() {
        var xs: [Float] = [0, -0.0, 1, -1, 0.5, 88.7, 88.72, -87.3, -103, -103.9, 1e-8, -1e-8, 20, -20]
        var rng = SeededRandom(4)
        for _ in 0..<20_000 { xs.append(rng.next() * 104) }
        for _ in 0..<2_000 { xs.append(rng.next() * 2) }
        var e = xs
        Elementwise.exp(&e, count: e.count)
        var worst = 0.0
        for (x, y) in zip(xs, e) {
            let ref = Foundation.exp(Double(x))
            if ref > Double(Float.greatestFiniteMagnitude) * (1 + 0x1p-25) {
                XCTAssertEqual(y, .infinity, "x \(x)")
                continue
            }
            guard ref >= Double(Float.leastNormalMagnitude) else {
                // Denormal results: absolute error below the smallest normal's ulp.
                XCTAssertEqual(Double(y), ref, accuracy: Double(Float.leastNormalMagnitude.ulp), "x \(x)")
                continue
            }
            let rel = abs(Double(y) - ref) / ref
            worst = max(worst, rel)
            XCTAssertLessThan(rel, 2e-7, "x \(x)")
        }
        XCTAssertLessThan(worst, 2e-7)
        var special: [Float] = [.infinity, -.infinity, .nan, 89, 100, -104, -200, 1000]
        Elementwise.exp(&special, count: special.count)
        XCTAssertEqual(special[0], .infinity)
        XCTAssertEqual(special[1], 0)
        XCTAssertTrue(special[2].isNaN)
        XCTAssertEqual(special[3], .infinity)
        XCTAssertEqual(special[4], .infinity)
        XCTAssertEqual(special[5], 0, accuracy: 2 * .leastNormalMagnitude)
        XCTAssertEqual(special[6], 0)
        XCTAssertEqual(special[7], .infinity)
    }

    func testRMSNormMatchesReferenceAndMayAlias() {
        for dim in [1, 7, 8, 37, 1024, 4099] {
            let x = inputs(dim, seed: UInt64(dim)).map { $0 * 3 }
            let w = inputs(dim, seed: UInt64(dim + 1)).map { 1 + $0 * 0.5 }
            var out = [Float](repeating: .nan, count: dim)
            Elementwise.rmsNorm(x, weight: w, eps: 1e-6, dim: dim, output: &out)
            let ms = x.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(dim)
            let r = 1 / (ms + 1e-6).squareRoot()
            for i in 0..<dim {
                let ref = Double(w[i]) * Double(x[i]) * r
                XCTAssertEqual(Double(out[i]), ref, accuracy: 1e-6 * max(abs(ref), 1e-3), "dim \(dim) i \(i)")
            }
            var inPlace = x
            inPlace.withUnsafeMutableBufferPointer { p in
                Elementwise.rmsNorm(p.baseAddress!, weight: w, eps: 1e-6, dim: dim, output: p.baseAddress!)
            }
            XCTAssertEqual(inPlace, out, "in place, dim \(dim)")
        }
    }

    func testSiluMulMatchesReference() {
        var g: [Float] = [0, -0.0, 1, -1, 88, 89, -88, -89, -100, 100, 1e-3, -1e-3]
        var rng = SeededRandom(11)
        for _ in 0..<5_000 { g.append(rng.next() * 20) }
        for n in [1, 5, 8, 13, g.count] {
            let up = (0..<n).map { 0.5 + Float($0 % 7) * 0.25 }
            var out = Array(g[0..<n])
            Elementwise.siluMul(gate: &out, up: up, count: n)
            for i in 0..<n {
                let x = Double(g[i])
                let ref = x / (1 + Foundation.exp(-x)) * Double(up[i])
                XCTAssertEqual(Double(out[i]), ref, accuracy: 5e-7 * abs(ref) + 1e-37, "g \(g[i])")
            }
        }
    }

    func testSoftmaxMatchesReference() {
        for n in [1, 2, 7, 8, 9, 37, 300] {
            for offset: Float in [0, 1000, -1000] {
                let x = inputs(n, seed: UInt64(n)).map { $0 * 12 + offset }
                var s = x
                Elementwise.softmax(&s, count: n)
                // x - max is rounded to fp32 first, as in any fp32 softmax (torch's included).
                let m = x.max()!
                let z = x.reduce(0.0) { $0 + Foundation.exp(Double($1 - m)) }
                var total = 0.0
                for i in 0..<n {
                    let ref = Foundation.exp(Double(x[i] - m)) / z
                    XCTAssertEqual(Double(s[i]), ref, accuracy: 1e-6 * ref + 1e-30, "n \(n) i \(i)")
                    total += Double(s[i])
                }
                XCTAssertEqual(total, 1, accuracy: 1e-5)
            }
        }
        // Masked positions.
        var masked: [Float] = [1, -.infinity, 2, -.infinity, -.infinity, -.infinity, -.infinity, -.infinity, 3, -.infinity]
        Elementwise.softmax(&masked, count: masked.count)
        let z = exp(1.0) + exp(2.0) + exp(3.0)
        XCTAssertEqual(Double(masked[0]), exp(1.0) / z, accuracy: 1e-7)
        XCTAssertEqual(Double(masked[2]), exp(2.0) / z, accuracy: 1e-7)
        XCTAssertEqual(Double(masked[8]), exp(3.0) / z, accuracy: 1e-7)
        for i in [1, 3, 4, 5, 6, 7, 9] { XCTAssertEqual(masked[i], 0) }
    }

    func testAddAddScaledDotScale() {
        for n in [0, 1, 7, 8, 9, 31, 32, 33, 100] {
            let a = inputs(n, seed: 1), b = inputs(n, seed: 2)
            var y = a
            Elementwise.add(&y, b, count: n)
            XCTAssertEqual(y, zip(a, b).map { $0 + $1 })
            y = a
            Elementwise.addScaled(&y, b, scale: 0.3, count: n)
            for i in 0..<n { XCTAssertEqual(y[i], a[i].addingProduct(b[i], 0.3)) }
            y = a
            Elementwise.scale(&y, by: -1.5, count: n)
            XCTAssertEqual(y, a.map { $0 * -1.5 })
            let d = Elementwise.dot(a, b, count: n)
            let ref = zip(a, b).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
            let mag = zip(a, b).reduce(0.0) { $0 + abs(Double($1.0) * Double($1.1)) }
            XCTAssertEqual(Double(d), ref, accuracy: 1e-6 * mag + 1e-30, "n \(n)")
        }
    }
}
