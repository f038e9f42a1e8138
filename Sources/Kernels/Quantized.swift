/// ggml's block quantization formats (the ones GGUF files store), decoded exactly as ggml's
/// `dequantize_row_*` reference functions do (ggml-quants.c). These scalar decoders are the
/// reference the fast kernels are tested against; they also serve cold paths (`element`).
///
/// Block layouts (little-endian, no padding):
/// - Q8_0 (34 B / 32 values): `d: f16`, `qs: int8[32]`; `x[j] = d·qs[j]`.
/// - Q4_0 (18 B / 32): `d: f16`, `qs: u8[16]`; `x[j] = d·((qs[j] & 15) − 8)`, `x[j+16] = d·((qs[j] >> 4) − 8)`.
/// - INT4 (18 B / 32, not ggml's: `Int4Packing`): `d: bf16`, `qs: u8[16]` as Q4_0's; `x[j] = d·(q[j] − 8)`.
/// - Q4_1 (20 B / 32): `d: f16`, `m: f16`, `qs: u8[16]`; `x[j] = d·(qs[j] & 15) + m`, `x[j+16] = d·(qs[j] >> 4) + m`.
/// - Q4_K (144 B / 256): `d, dmin: f16`, `scales: u8[12]` (eight 6-bit scales and mins),
///   `qs: u8[128]`; per 64 values `j`, sub-blocks `2j`, `2j+1` take the low, then high nibbles of
///   `qs[32j ..< 32j+32]`: `x = d·sc·q − dmin·m`.
/// - Q5_K (176 B / 256): as Q4_K with `qh: u8[32]` between `scales` and `qs`; bit `2j` (low
///   nibbles) or `2j+1` (high) of `qh[l]` adds 16 to `q`.
/// - Q6_K (210 B / 256): `ql: u8[128]`, `qh: u8[64]`, `scales: int8[16]`, `d: f16`; per 128 values,
///   `q = (4 bits of ql) | (2 bits of qh) << 4`, minus 32, times `d·scales[16-value group]`.
public enum Quantized {
    @inline(__always)
    static func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        Float(Float16(bitPattern: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
    }

    @inline(__always)
    static func bfloat(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        Float(bitPattern: UInt32(p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)) << 16)
    }

    /// The 6-bit scale and min of sub-block `j` (0..<8) of a Q4_K/Q5_K block (ggml `get_scale_min_k4`).
    @inline(__always)
    static func scaleMinK4(_ j: Int, _ q: UnsafePointer<UInt8>) -> (Float, Float) {
        if j < 4 { return (Float(q[j] & 63), Float(q[j + 4] & 63)) }
        let sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4)
        return (Float(sc), Float(m))
    }

    /// Decodes one block of `dtype` at `block` into `out[0 ..< dtype.blockElements]`.
    public static func dequantizeBlock(_ dtype: DType, _ block: UnsafeRawPointer, into out: UnsafeMutablePointer<Float>) {
        let b = block.assumingMemoryBound(to: UInt8.self)
        switch dtype {
        case .q8_0:
            let d = half(block, 0)
            for j in 0..<32 { out[j] = d * Float(Int8(bitPattern: b[2 + j])) }
        case .q4_0, .int4:
            let d = dtype == .int4 ? bfloat(block, 0) : half(block, 0)
            for j in 0..<16 {
                out[j] = d * Float(Int(b[2 + j] & 15) - 8)
                out[j + 16] = d * Float(Int(b[2 + j] >> 4) - 8)
            }
        case .q4_1:
            let d = half(block, 0), m = half(block, 2)
            for j in 0..<16 {
                out[j] = d * Float(b[4 + j] & 15) + m
                out[j + 16] = d * Float(b[4 + j] >> 4) + m
            }
        case .q4_K, .q5_K:
            let d = half(block, 0), dmin = half(block, 2)
            let scales = b + 4
            let hasHigh = dtype == .q5_K
            let qh = b + 16, qs = b + (hasHigh ? 48 : 16)
            for j in 0..<4 {
                let (sc1, m1) = scaleMinK4(2 * j, scales), (sc2, m2) = scaleMinK4(2 * j + 1, scales)
                let d1 = d * sc1, min1 = dmin * m1, d2 = d * sc2, min2 = dmin * m2
                let q = qs + 32 * j, o = out + 64 * j
                for l in 0..<32 {
                    var lo = Int(q[l] & 15), hi = Int(q[l] >> 4)
                    if hasHigh {
                        if qh[l] & (1 << (2 * j)) != 0 { lo += 16 }
                        if qh[l] & (1 << (2 * j + 1)) != 0 { hi += 16 }
                    }
                    o[l] = d1 * Float(lo) - min1
                    o[l + 32] = d2 * Float(hi) - min2
                }
            }
        case .q6_K:
            let d = half(block, 208)
            for n in 0..<2 {
                let ql = b + 64 * n, qh = b + 128 + 32 * n
                let sc = UnsafeRawPointer(b + 192 + 8 * n).assumingMemoryBound(to: Int8.self)
                let o = out + 128 * n
                for l in 0..<32 {
                    let g = l / 16
                    let q1 = Int((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32
                    let q2 = Int((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32
                    let q3 = Int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32
                    let q4 = Int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32
                    o[l] = d * Float(sc[g]) * Float(q1)
                    o[l + 32] = d * Float(sc[g + 2]) * Float(q2)
                    o[l + 64] = d * Float(sc[g + 4]) * Float(q3)
                    o[l + 96] = d * Float(sc[g + 6]) * Float(q4)
                }
            }
        case .f32, .f16, .bf16:
            out[0] = Matrix(data: block, dtype: dtype, rows: 1, cols: 1).element(0, 0)
        }
    }

    /// Decodes a whole row of `cols` values (a multiple of the block size) at `row`.
    public static func dequantizeRow(_ dtype: DType, _ row: UnsafeRawPointer, cols: Int, into out: UnsafeMutablePointer<Float>) {
        let n = dtype.blockElements
        for i in 0..<(cols / n) {
            dequantizeBlock(dtype, row + i * dtype.blockBytes, into: out + i * n)
        }
    }

    /// Value `column` of the quantized row at `row`. Cold paths only.
    public static func value(_ dtype: DType, row: UnsafeRawPointer, column: Int) -> Float {
        let n = dtype.blockElements
        return withUnsafeTemporaryAllocation(of: Float.self, capacity: n) { buf in
            dequantizeBlock(dtype, row + (column / n) * dtype.blockBytes, into: buf.baseAddress!)
            return buf[column % n]
        }
    }
}
