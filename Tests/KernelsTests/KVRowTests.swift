import Kernels
import XCTest

/// The KV cache's row formats (`--kv-dtype`): rounding on store, and the in-register widening
/// dot product and scaled add attention uses, against scalar references.
final class KVRowTests: XCTestCase {
    /// Seeded values with a few outliers, as real keys have.
    static func values(_ n: Int, seed: UInt64) -> [Float] {
        var s = seed
        return (0..<n).map { i in
            s = s &* 6364136223846793005 &+ 1442695040888963407
            let v = Float(Int64(bitPattern: s) >> 40) / Float(1 << 23)
            return i % 37 == 5 ? v * 40 : v
        }
    }

    static func stored(_ d: KVDType, _ x: [Float]) -> [UInt8] {
        var row = [UInt8](repeating: 0, count: d.bytes(x.count))
        x.withUnsafeBufferPointer { xp in row.withUnsafeMutableBytes { d.store(xp.baseAddress!, into: $0.baseAddress!, count: x.count) } }
        return row
    }

    static func loaded(_ d: KVDType, _ row: [UInt8], count: Int) -> [Float] {
        var y = [Float](repeating: 0, count: count)
        row.withUnsafeBytes { r in y.withUnsafeMutableBufferPointer { d.load(r.baseAddress!, into: $0.baseAddress!, count: count) } }
        return y
    }

    /// f16 rounds as Swift's (nearest even) conversion, bf16 to nearest even (ties and NaN checked).
    func testHalfTypesRoundToNearestEven() {
        let x = Self.values(100, seed: 1) + [1 + 1 / 256, 1 + 3 / 256, -(1 + 1 / 256), 65504, 1e-8, .infinity]
        let h = Self.loaded(.f16, Self.stored(.f16, x), count: x.count)
        XCTAssertEqual(h, x.map { Float(Float16($0)) })
        let b = Self.loaded(.bf16, Self.stored(.bf16, x), count: x.count)
        XCTAssertEqual(b, x.map { Float(bitPattern: UInt32(BFloat16Bits.rounding($0)) << 16) })
        // 1 + 2^-8 is halfway between two bfloat16s: to the even one, 1; 1 + 3·2^-8 goes up to 1 + 2^-6.
        XCTAssertEqual(Array(b[100..<103]), [1, 1 + 1 / 64, -1])
        XCTAssertTrue(Float(bitPattern: UInt32(BFloat16Bits.rounding(.nan)) << 16).isNaN)
    }

    /// q8_0 stores llama.cpp's `quantize_row_q8_0_ref` blocks, which ggml's own Q8_0 decoder
    /// (`Quantized.dequantizeBlock`) reads back as `load` does.
    func testQ8_0QuantisesAsLlamaCpp() {
        var x = Self.values(96, seed: 2)
        for j in 64..<96 { x[j] = 0 }  // an all-zero block: d = 0, q = 0
        let row = Self.stored(.q8_0, x)
        XCTAssertEqual(row.count, 3 * 34)
        for b in 0..<3 {
            let block = Array(x[32 * b ..< 32 * b + 32])
            let amax = block.map(abs).max()!
            let d = amax / 127, id: Float = d != 0 ? 1 / d : 0
            let want = block.map { Int8(($0 * id).rounded()) }
            XCTAssertEqual(UInt16(row[34 * b]) | UInt16(row[34 * b + 1]) << 8, Float16(d).bitPattern, "block \(b) scale")
            XCTAssertEqual(Array(row[34 * b + 2 ..< 34 * b + 34]).map { Int8(bitPattern: $0) }, want, "block \(b)")
        }
        let back = Self.loaded(.q8_0, row, count: 96)
        var ggml = [Float](repeating: 0, count: 96)
        row.withUnsafeBytes { r in ggml.withUnsafeMutableBufferPointer { Quantized.dequantizeRow(.q8_0, r.baseAddress!, cols: 96, into: $0.baseAddress!) } }
        XCTAssertEqual(back, ggml)
        // Half a step of rounding, plus the fp16 rounding of the scale (≤ 127 · d · 2^-11).
        for j in 0..<96 {
            let d = x[j / 32 * 32 ..< j / 32 * 32 + 32].map(abs).max()! / 127
            XCTAssertEqual(back[j], x[j], accuracy: 0.6 * d, "[\(j)]")
        }
        // Non-finite input reads back as NaN, never as plausible numbers (and does not trap).
        var bad = [Float](repeating: 1, count: 32)
        bad[3] = .nan
        XCTAssertTrue(Self.loaded(.q8_0, Self.stored(.q8_0, bad), count: 32).allSatisfy(\.isNaN))
        XCTAssertEqual(Self.loaded(.q8_0, Self.stored(.q8_0, [Float](repeating: 1e-40, count: 32)), count: 32), [Float](repeating: 0, count: 32))
    }

    /// Each format's dot product and scaled add equal the fp32 ones over the stored values
    /// (to fp32 summation order); f32's are `Elementwise`'s exactly.
    func testDotAndAddScaledReadTheStoredValues() {
        for n in [32, 64, 192, 512] {
            let x = Self.values(n, seed: UInt64(n)), q = Self.values(n, seed: UInt64(n) + 7)
            for d in KVDType.allCases {
                let row = Self.stored(d, x), widened = Self.loaded(d, row, count: n)
                let want = zip(q, widened).reduce(Double(0)) { $0 + Double($1.0) * Double($1.1) }
                let scale = zip(q, widened).reduce(Double(0)) { $0 + abs(Double($1.0) * Double($1.1)) }
                var y = q, yWant = q
                for i in 0..<n { yWant[i] = q[i].addingProduct(widened[i], 0.375) }
                let got: Float = row.withUnsafeBytes { r in
                    q.withUnsafeBufferPointer { qp in
                        y.withUnsafeMutableBufferPointer { yp in
                            let r = r.baseAddress!, qp = qp.baseAddress!, yp = yp.baseAddress!
                            switch d {
                            case .f32:
                                KVRowF32.addScaled(yp, r, scale: 0.375, count: n)
                                XCTAssertEqual(KVRowF32.dot(qp, r, count: n), Elementwise.dot(qp, r.assumingMemoryBound(to: Float.self), count: n))
                                return KVRowF32.dot(qp, r, count: n)
                            case .f16:
                                KVRowF16.addScaled(yp, r, scale: 0.375, count: n)
                                return KVRowF16.dot(qp, r, count: n)
                            case .bf16:
                                KVRowBF16.addScaled(yp, r, scale: 0.375, count: n)
                                return KVRowBF16.dot(qp, r, count: n)
                            case .q8_0:
                                KVRowQ8_0.addScaled(yp, r, scale: 0.375, count: n)
                                return KVRowQ8_0.dot(qp, r, count: n)
                            }
                        }
                    }
                }
                XCTAssertEqual(Double(got), want, accuracy: scale * 1e-6, "\(d), \(n) values")
                for i in 0..<n { XCTAssertEqual(y[i], yWant[i], accuracy: abs(yWant[i]) * 1e-6 + 1e-6, "\(d), \(n) values, [\(i)]") }
            }
        }
    }
}
