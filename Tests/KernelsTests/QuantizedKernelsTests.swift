import Foundation
import XCTest
@testable import Kernels

/// Random ggml (and INT4) blocks with sane fp16 (INT4: bf16) scales, in a buffer aligned to
/// nothing in particular (as inside a GGUF mapping, where blocks of 18, 20, 34… bytes sit at any
/// address).
final class QuantMatrix {
    static let scaleOffsets: [DType: [Int]] = [
        .q8_0: [0], .q4_0: [0], .q4_1: [0, 2], .q4_K: [0, 2], .q5_K: [0, 2], .q6_K: [208], .int4: [0],
    ]
    /// The types GGUF files hold (gguf-py's decoders are their reference).
    static let ggmlTypes: [DType] = [.q8_0, .q4_0, .q4_1, .q4_K, .q5_K, .q6_K]
    /// Every block type the kernels compute on.
    static let types: [DType] = ggmlTypes + [.int4]

    let rows: Int, cols: Int, dtype: DType
    let storage: UnsafeMutableRawPointer
    let data: UnsafeMutableRawPointer
    /// Row-major decoded values (the reference decoders' output).
    let values: [Float]

    init(rows: Int, cols: Int, dtype: DType, seed: UInt64) {
        self.rows = rows; self.cols = cols; self.dtype = dtype
        let bytes = rows * dtype.rowBytes(cols: cols)
        storage = .allocate(byteCount: bytes + 64, alignment: 64)
        data = storage + 3
        var rng = SeededRandom(seed)
        for i in 0..<bytes {
            data.storeBytes(of: UInt8(truncatingIfNeeded: Int((rng.next() + 1) * 128)), toByteOffset: i, as: UInt8.self)
        }
        let blocks = bytes / dtype.blockBytes
        for b in 0..<blocks {
            for off in Self.scaleOffsets[dtype]! {
                let v = rng.next() * 0.01
                let bits = dtype == .int4 ? UInt16(Float(v).bitPattern >> 16) : Float16(v).bitPattern
                data.storeBytes(of: bits, toByteOffset: b * dtype.blockBytes + off, as: UInt16.self)
            }
        }
        var v = [Float](repeating: 0, count: rows * cols)
        let base = data
        v.withUnsafeMutableBufferPointer { out in
            for r in 0..<rows {
                Quantized.dequantizeRow(dtype, base + r * dtype.rowBytes(cols: cols), cols: cols, into: out.baseAddress! + r * cols)
            }
        }
        values = v
    }

    deinit { storage.deallocate() }

    var matrix: Matrix { Matrix(data: UnsafeRawPointer(data), dtype: dtype, rows: rows, cols: cols) }
}

final class QuantizedKernelsTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/quant")

    /// The scalar decoders reproduce gguf-py's dequantizers (the reference port of ggml's
    /// `dequantize_row_*`) exactly on random blocks (scripts/make-quant-fixtures.py).
    func testReferenceDecodersMatchGGUFPy() throws {
        for dtype in QuantMatrix.ggmlTypes {
            let data = try Data(contentsOf: Self.fixtures.appendingPathComponent(dtype.rawValue + ".bin"))
            try data.withUnsafeBytes { raw in
                let blocks = Int(raw.loadUnaligned(as: UInt32.self))
                let n = dtype.blockElements
                XCTAssertEqual(raw.count, 4 + blocks * dtype.blockBytes + blocks * n * 4, "\(dtype) fixture size")
                let blockBase = raw.baseAddress! + 4
                let refBase = blockBase + blocks * dtype.blockBytes
                var out = [Float](repeating: .nan, count: n)
                var mismatches = 0
                for b in 0..<blocks {
                    out.withUnsafeMutableBufferPointer { Quantized.dequantizeBlock(dtype, blockBase + b * dtype.blockBytes, into: $0.baseAddress!) }
                    for j in 0..<n {
                        let ref = refBase.loadUnaligned(fromByteOffset: 4 * (b * n + j), as: Float.self)
                        if out[j].bitPattern != ref.bitPattern && !(out[j] == 0 && ref == 0) { mismatches += 1 }
                    }
                }
                XCTAssertEqual(mismatches, 0, "\(dtype): \(mismatches) values differ from gguf-py")
                // The whole-row decoder and `element` agree with the block decoder.
                let m = Matrix(data: blockBase, dtype: dtype, rows: 1, cols: blocks * n)
                var row = [Float](repeating: .nan, count: blocks * n)
                row.withUnsafeMutableBufferPointer { m.widenRow(0, into: $0.baseAddress!) }
                for j in stride(from: 0, to: blocks * n, by: 37) {
                    let ref = refBase.loadUnaligned(fromByteOffset: 4 * j, as: Float.self)
                    XCTAssertEqual(row[j], ref, "\(dtype) widenRow[\(j)]")
                    XCTAssertEqual(m.element(0, j), ref, "\(dtype) element[\(j)]")
                }
            }
        }
    }

    /// `Linear.forward` of `n` tokens `x` through `w` (adding to `old` in every output when
    /// given) against a fp64 dot of the decoded weights: the worst error relative to
    /// Σ|w·x| + |old|.
    func worstError(_ w: QuantMatrix, _ x: [Float], _ n: Int, old: Float?) -> Double {
        let rows = w.rows, cols = w.cols
        var y = [Float](repeating: old ?? .nan, count: n * rows)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in
                Linear.forward(w.matrix, input: xp.baseAddress!, count: n, output: yp.baseAddress!, accumulate: old != nil)
            }
        }
        var worst = 0.0
        for t in 0..<n {
            for r in 0..<rows {
                var s = Double(old ?? 0), mag = Double(abs(old ?? 0))
                for c in 0..<cols {
                    let p = Double(w.values[r * cols + c]) * Double(x[t * cols + c])
                    s += p; mag += abs(p)
                }
                worst = max(worst, abs(Double(y[t * rows + r]) - s) / max(mag, 1e-30))
            }
        }
        return worst
    }

    /// Every batch size and path against a fp64 dot product of the decoded weights, with and
    /// without accumulation. Tolerance: fp32 accumulation over `cols` products of magnitude
    /// ≤ |w|·|x| allows ~cols·2⁻²⁴ relative to Σ|w·x|, and the decode GEMV's int16 activations
    /// round each x by at most max|x_block|/65534 (≈1.5e-5 of the block's largest value, well
    /// under 1e-5 of Σ|w·x| for these inputs); 2e-5 of that sum covers both.
    func testLinearMatchesDecodedReference() {
        for dtype in QuantMatrix.types {
            for (rows, cols) in [(7, 512), (40, 768), (3, 1536)] {
                let w = QuantMatrix(rows: rows, cols: cols, dtype: dtype, seed: UInt64(rows * cols))
                for n in [1, 2, 3, 5, 17, 48, 64, 130] {
                    let x = inputs(n * cols, seed: UInt64(n))
                    for accumulate in [false, true] {
                        let worst = worstError(w, x, n, old: accumulate ? 0.5 : nil)
                        XCTAssertLessThan(worst, 2e-5, "\(dtype) \(rows)x\(cols) n=\(n) accumulate=\(accumulate)")
                    }
                }
            }
        }
    }

    /// INT4 multiplies its exact levels with the fp32 activations themselves (no int16 rounding),
    /// so every path (one token: 4-row groups and 1-3 tail rows; batches: 4-token tiles and 1-3
    /// tail tokens; serial, row-split and token-split) lands within fp32 rounding of a fp64 dot
    /// of the scalar decoder's weights. Bound: a row's sum passes through at most 4 FMAs in a
    /// block, one per block into its lane and 3 adds across lanes, each rounding by ≤ 2⁻²⁴ of
    /// Σ|w·x| (+ one for the old value with accumulate; inputs with one value in seven 40×
    /// larger, as the int16 blocks would round their neighbours by up to 1.5e-5 of it).
    func testInt4MatchesScalarReferenceOnOddShapes() {
        let shapes = [(1, 32), (3, 96), (5, 224), (7, 32), (13, 1056), (37, 1056), (129, 2080)]
        for (rows, cols) in shapes {
            let w = QuantMatrix(rows: rows, cols: cols, dtype: .int4, seed: UInt64(rows * 131 + cols))
            let bound = Double(4 + cols / 32 + 3 + 1) * 0x1p-24
            for n in [1, 2, 3, 4, 5, 6, 7, 9] {
                let x = BatchInvarianceTests.inputs(n * cols, seed: UInt64(n * 7 + rows))
                for accumulate in [false, true] {
                    let worst = worstError(w, x, n, old: accumulate ? 0.25 : nil)
                    XCTAssertLessThanOrEqual(worst, bound, "INT4 \(rows)x\(cols) n=\(n) accumulate=\(accumulate)")
                }
            }
        }
    }

    /// The shared-input form (q/k/v, gate/up) gives exactly what separate calls give, for every
    /// type and for one token (one fused parallel loop) and several (separate calls).
    func testSharedInputFormEqualsSeparateCalls() {
        for dtype in QuantMatrix.types {
            let cols = 1536
            let ws = [QuantMatrix(rows: 576, cols: cols, dtype: dtype, seed: 1), QuantMatrix(rows: 192, cols: cols, dtype: dtype, seed: 2),
                      QuantMatrix(rows: 37, cols: cols, dtype: dtype, seed: 3)]
            for n in [1, 3] {
                let x = inputs(n * cols, seed: 9)
                for three in [false, true] {
                    var sep = ws.map { [Float](repeating: 0, count: n * $0.rows) }
                    var f0 = [Float](repeating: .nan, count: n * ws[0].rows), f1 = [Float](repeating: .nan, count: n * ws[1].rows)
                    var f2 = [Float](repeating: .nan, count: n * ws[2].rows)
                    x.withUnsafeBufferPointer { xp in
                        for i in 0..<(three ? 3 : 2) {
                            sep[i].withUnsafeMutableBufferPointer { Linear.forward(ws[i].matrix, input: xp.baseAddress!, count: n, output: $0.baseAddress!) }
                        }
                        f0.withUnsafeMutableBufferPointer { y0 in
                            f1.withUnsafeMutableBufferPointer { y1 in
                                f2.withUnsafeMutableBufferPointer { y2 in
                                    Linear.forward(ws[0].matrix, ws[1].matrix, three ? ws[2].matrix : nil, input: xp.baseAddress!, count: n,
                                                   outputs: y0.baseAddress!, y1.baseAddress!, three ? y2.baseAddress! : nil)
                                }
                            }
                        }
                    }
                    let fused = [f0, f1, f2]
                    for i in 0..<(three ? 3 : 2) {
                        XCTAssertEqual(fused[i], sep[i], "\(dtype) n=\(n) matrix \(i)")
                    }
                    if !three { XCTAssertTrue(f2.allSatisfy { $0.isNaN }, "the absent third output is untouched") }
                }
            }
        }
    }

    /// A column view (the neuron slices of a split dense FFN) computes exactly what the same
    /// columns of the whole matrix contribute.
    func testColumnViewsUseRowStride() throws {
        for dtype in QuantMatrix.types + DType.floatTypes {
            let b = dtype.blockElements == 1 ? 32 : dtype.blockElements
            let cols = 4 * b, rows = 9
            let w: Matrix
            let values: [Float]
            let keep: AnyObject
            if dtype.isQuantized {
                let q = QuantMatrix(rows: rows, cols: cols, dtype: dtype, seed: 5)
                (w, values, keep) = (q.matrix, q.values, q)
            } else {
                let t = TestMatrix(rows: rows, cols: cols, dtype: dtype, seed: 5)
                (w, values, keep) = (t.matrix, t.values, t)
            }
            let slice = try w.columns(b, count: 2 * b)
            XCTAssertEqual(slice.cols, 2 * b)
            XCTAssertEqual(slice.rowStride, w.rowBytes)
            let x = inputs(3 * 2 * b, seed: 9)
            var y = [Float](repeating: 0, count: 3 * rows)
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { Linear.forward(slice, input: xp.baseAddress!, count: 3, output: $0.baseAddress!) }
            }
            for t in 0..<3 {
                for r in 0..<rows {
                    var s = 0.0, mag = 0.0
                    for c in 0..<(2 * b) {
                        let p = Double(values[r * cols + b + c]) * Double(x[t * 2 * b + c])
                        s += p; mag += abs(p)
                    }
                    XCTAssertEqual(Double(y[t * rows + r]), s, accuracy: 2e-5 * max(mag, 1e-30), "\(dtype) row \(r)")
                    XCTAssertEqual(slice.element(r, 1), values[r * cols + b + 1])
                }
            }
            withExtendedLifetime(keep) {}
        }
    }

    func testMisalignedColumnViewsAreErrors() {
        let q = QuantMatrix(rows: 2, cols: 512, dtype: .q4_K, seed: 1)
        XCTAssertThrowsError(try q.matrix.columns(128, count: 256)) { e in
            XCTAssertTrue("\(e)".contains("Q4_K"), "\(e)")
        }
        XCTAssertThrowsError(try q.matrix.columns(256, count: 512))
        XCTAssertThrowsError(try q.matrix.columns(-256, count: 256))
        XCTAssertNoThrow(try q.matrix.columns(256, count: 256))
    }
}

/// `Int4Packing` against compressed-tensors' layout, written out by hand here from its
/// `pack_to_int32` (value `8w + i` of a row in bits `4i` of word `w`, stored as `q + 8`) and its
/// group scales (`weight = scale · q`, one scale per 32 values of a row).
final class Int4PackingTests: XCTestCase {
    func testRegroupedBlocksDecodeToScaleTimesQAndPackBack() {
        let rows = 3, cols = 96, groups = cols / 32, words = cols / 8
        func q(_ r: Int, _ c: Int) -> Int { (r * 7 + c * 3 + c / 5) % 16 - 8 }
        func scale(_ r: Int, _ g: Int) -> Float { Float(r + 1) * 0.0625 + Float(g) * 0.5 }  // exact in bf16
        var packed = [UInt32](repeating: 0, count: rows * words)
        var scales = [UInt16](repeating: 0, count: rows * groups)
        for r in 0..<rows {
            for c in 0..<cols { packed[r * words + c / 8] |= UInt32(q(r, c) + 8) << (4 * UInt32(c % 8)) }
            for g in 0..<groups { scales[r * groups + g] = UInt16(scale(r, g).bitPattern >> 16) }
        }
        let bytes = rows * DType.int4.rowBytes(cols: cols)
        XCTAssertEqual(bytes, rows * cols / 2 + rows * groups * 2, "4 bits a value plus a bf16 scale a group")
        let blocks = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 1)
        defer { blocks.deallocate() }
        packed.withUnsafeBytes { p in
            scales.withUnsafeBytes { s in
                Int4Packing.blocks(packed: p.baseAddress!, scales: s.baseAddress!, rows: rows, cols: cols, into: blocks)
            }
        }
        let m = Matrix(data: blocks, dtype: .int4, rows: rows, cols: cols)
        for r in 0..<rows {
            for c in 0..<cols { XCTAssertEqual(m.element(r, c), scale(r, c / 32) * Float(q(r, c)), "(\(r), \(c))") }
        }
        var packed2 = [UInt32](repeating: 0, count: rows * words), scales2 = [UInt16](repeating: 0, count: rows * groups)
        packed2.withUnsafeMutableBytes { p in
            scales2.withUnsafeMutableBytes { s in
                Int4Packing.compressedTensors(blocks: blocks, rows: rows, cols: cols, packed: p.baseAddress!, scales: s.baseAddress!)
            }
        }
        XCTAssertEqual(packed2, packed)
        XCTAssertEqual(scales2, scales)
    }
}
