/// compressed-tensors' `pack-quantized` INT4 (symmetric, group size 32; Kimi K2 Thinking's routed
/// experts) and Farside's `DType.int4` blocks, converted both ways without changing a value.
///
/// compressed-tensors stores a quantized `[rows, cols]` weight as three tensors (its
/// `pack_to_int32` / `unpack_from_int32` and the symmetric group quantizer):
/// - `weight_packed`: int32 `[rows, cols / 8]`; word `w` of a row holds values `8w ..< 8w + 8`,
///   value `8w + i` in bits `4i ..< 4i + 4`, each stored as `q + 8` (`q` in −8...7);
/// - `weight_scale`: `[rows, cols / 32]` (bf16 in Kimi K2 Thinking), one scale per 32 values;
/// - `weight_shape`: the int `[rows, cols]`.
/// The weight is `scale · q`. Farside keeps each group's scale beside its values (a `DType.int4`
/// block: the bf16 scale, then byte `j` holding `q + 8` of values `j` (low nibble) and `j + 16`
/// (high), as ggml's Q4_0 lays them), so one pointer and a row stride describe a matrix and the
/// kernels read each group in one pass. Both forms take 4.5 bits a value.
public enum Int4Packing {
    /// Values per scale group.
    public static let groupSize = 32
    /// Values per int32 word of `weight_packed`.
    public static let valuesPerWord = 8

    /// Writes `rows` rows of `DType.int4` blocks (`cols / 32` blocks of 18 bytes each, rows
    /// contiguous) to `out` from compressed-tensors' `packed` (int32 words, little-endian,
    /// `[rows, cols / 8]`) and `scales` (bf16 bits, `[rows, cols / 32]`). `cols` must be a
    /// multiple of 32 and the buffers that large; the caller (the checkpoint reader) checks both.
    /// No alignment is assumed.
    public static func blocks(packed: UnsafeRawPointer, scales: UnsafeRawPointer, rows: Int, cols: Int,
                              into out: UnsafeMutableRawPointer) {
        let groups = cols / groupSize, wordsPerRow = cols / valuesPerWord
        let bytes = DType.int4.blockBytes
        for r in 0..<rows {
            for g in 0..<groups {
                let block = out + (r * groups + g) * bytes
                block.storeBytes(of: scales.loadUnaligned(fromByteOffset: 2 * (r * groups + g), as: UInt16.self), as: UInt16.self)
                let words = packed + 4 * (r * wordsPerRow + g * 4)
                // The group's four words as 32 nibbles, value j in nibble j of the 128 bits.
                var v = SIMD32<UInt8>()
                for w in 0..<4 {
                    let word = UInt32(littleEndian: words.loadUnaligned(fromByteOffset: 4 * w, as: UInt32.self))
                    for i in 0..<8 { v[8 * w + i] = UInt8((word >> (4 * UInt32(i))) & 15) }
                }
                for j in 0..<16 { block.storeBytes(of: v[j] | (v[j + 16] << 4), toByteOffset: 2 + j, as: UInt8.self) }
            }
        }
    }

    /// The inverse of `blocks`: compressed-tensors' `packed` words and bf16 `scales` for `rows`
    /// rows of `DType.int4` blocks at `blocks` (rows contiguous, `cols` a multiple of 32).
    public static func compressedTensors(blocks src: UnsafeRawPointer, rows: Int, cols: Int,
                                         packed: UnsafeMutableRawPointer, scales: UnsafeMutableRawPointer) {
        let groups = cols / groupSize, wordsPerRow = cols / valuesPerWord
        let bytes = DType.int4.blockBytes
        for r in 0..<rows {
            for g in 0..<groups {
                let block = src + (r * groups + g) * bytes
                scales.storeBytes(of: block.loadUnaligned(as: UInt16.self), toByteOffset: 2 * (r * groups + g), as: UInt16.self)
                var v = SIMD32<UInt8>()
                for j in 0..<16 {
                    let b = block.load(fromByteOffset: 2 + j, as: UInt8.self)
                    v[j] = b & 15
                    v[j + 16] = b >> 4
                }
                for w in 0..<4 {
                    var word: UInt32 = 0
                    for i in 0..<8 { word |= UInt32(v[8 * w + i]) << (4 * UInt32(i)) }
                    packed.storeBytes(of: word.littleEndian, toByteOffset: 4 * (r * wordsPerRow + g * 4 + w), as: UInt32.self)
                }
            }
        }
    }

    /// Quantizes `rows` rows of `cols` fp32 values at `x` (`cols` a multiple of 32) into
    /// `DType.int4` blocks at `out`, as compressed-tensors' symmetric group quantizer does
    /// (`calculate_qparams`: scale = max|x| / 7.5 per group; `q = clamp(round(x / scale), −8, 7)`,
    /// ties to even), except that the scale is rounded up to 5 significant bits before it is
    /// stored as bf16. compressed-tensors dequantizes in the scale's dtype, bf16(q · scale): with
    /// 5 significant bits in the scale and 3 in |q| ≤ 8 that product is exact, so Python and
    /// Farside (which multiplies in fp32) see the same weights. An all-zero group gets
    /// compressed-tensors' stand-in scale for zero, bf16's epsilon (2⁻⁷).
    public static func quantize(_ x: UnsafePointer<Float>, rows: Int, cols: Int, into out: UnsafeMutableRawPointer) {
        let groups = cols / groupSize, bytes = DType.int4.blockBytes
        for r in 0..<rows {
            for g in 0..<groups {
                let v = x + r * cols + g * groupSize
                var amax: Float = 0
                for j in 0..<groupSize { amax = max(amax, abs(v[j])) }
                let scale = amax > 0 ? roundUp5(amax / 7.5) : Float(bitPattern: 0x3C00_0000)  // 2⁻⁷
                let block = out + (r * groups + g) * bytes
                block.storeBytes(of: UInt16(scale.bitPattern >> 16), as: UInt16.self)
                var q = SIMD32<UInt8>()
                for j in 0..<groupSize {
                    let level = min(7, max(-8, (v[j] / scale).rounded(.toNearestOrEven)))
                    q[j] = UInt8(Int(level) + 8)
                }
                for j in 0..<16 { block.storeBytes(of: q[j] | (q[j + 16] << 4), toByteOffset: 2 + j, as: UInt8.self) }
            }
        }
    }

    /// `s > 0` rounded up to the next float with 5 significant bits (4 stored mantissa bits), which
    /// bf16 holds exactly.
    static func roundUp5(_ s: Float) -> Float {
        let drop: UInt32 = (1 << 19) - 1
        let bits = s.bitPattern
        return Float(bitPattern: bits & drop == 0 ? bits : (bits | drop) + 1)
    }
}
