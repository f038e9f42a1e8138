/// How the KV cache stores its rows (`--kv-dtype`). Attention reads them in this form,
/// widening to fp32 as it reads (`KVRowFormat`, `AttentionTile`); the model computes every row
/// in fp32 and rounds it once, as it is stored.
///
/// - `f32`: as computed (bit-identical to a cache without a dtype).
/// - `f16`, `bf16`: IEEE half / bfloat16, rounded to nearest even.
/// - `q8_0`: ggml's Q8_0 block (34 bytes per 32 values: fp16 scale `d`, then 32 int8 `q`,
///   `x = d·q`), quantised as llama.cpp's `quantize_row_q8_0_ref`: `d = amax/127`,
///   `q = round(x/d)` (halves away from zero). A row piece attention reads on its own (a GQA
///   head, the MLA latent or rotary key) must be a whole number of blocks.
public enum KVDType: String, CaseIterable, Sendable, CustomStringConvertible {
    case f32, f16, bf16, q8_0

    public var description: String { rawValue }

    /// The flag's accepted values, as usage text shows them: `f32|f16|bf16|q8_0`.
    public static var names: String { allCases.map(\.rawValue).joined(separator: "|") }

    /// Values that share a scale: every row piece read on its own is a multiple of this.
    public var groupValues: Int { self == .q8_0 ? 32 : 1 }

    /// Bytes `count` values take (`count` a multiple of `groupValues`); also the byte offset of
    /// value `count` inside a row.
    @inlinable
    public func bytes(_ count: Int) -> Int {
        switch self {
        case .f32: return 4 * count
        case .f16, .bf16: return 2 * count
        case .q8_0: return count / 32 * 34
        }
    }

    /// Rounds `x[0..<count]` to this type into `row` (`bytes(count)` bytes, any alignment).
    public func store(_ x: UnsafePointer<Float>, into row: UnsafeMutableRawPointer, count: Int) {
        switch self {
        case .f32: KVRowF32.store(x, into: row, count: count)
        case .f16: KVRowF16.store(x, into: row, count: count)
        case .bf16: KVRowBF16.store(x, into: row, count: count)
        case .q8_0: KVRowQ8_0.store(x, into: row, count: count)
        }
    }

    /// Widens a stored row of `count` values back to fp32 into `y`. For tests and cold paths.
    public func load(_ row: UnsafeRawPointer, into y: UnsafeMutablePointer<Float>, count: Int) {
        y.update(repeating: 0, count: count)
        switch self {
        case .f32: KVRowF32.addScaled(y, row, scale: 1, count: count)
        case .f16: KVRowF16.addScaled(y, row, scale: 1, count: count)
        case .bf16: KVRowBF16.addScaled(y, row, scale: 1, count: count)
        case .q8_0: KVRowQ8_0.addScaled(y, row, scale: 1, count: count)
        }
    }
}

/// Operations on a stored KV row, reading it in its stored type and widening in registers, with
/// fp32 accumulation: a dot product and a scaled add (for callers that read a row once), the
/// widening that `AttentionTile` uses to turn a few dozen rows into an L1-resident fp32 block
/// that many queries then share; and the rounding that stores a row. Callers switch on
/// `KVDType` once and run code specialised for one format (every member is `@inlinable`).
///
/// Rows may start at any byte address (a q8_0 row is 34 bytes per 32 values), so every load is
/// unaligned-safe. Each function's result depends only on its arguments, never on where the row
/// lies, so a paged cache equals a contiguous one and a row's use is batch invariant.
public protocol KVRowFormat {
    /// `Σ x[i]·row[i]` for `i < count`.
    static func dot(_ x: UnsafePointer<Float>, _ row: UnsafeRawPointer, count: Int) -> Float
    /// `y[i] += scale · row[i]` for `i < count`.
    static func addScaled(_ y: UnsafeMutablePointer<Float>, _ row: UnsafeRawPointer, scale: Float, count: Int)
    /// Stores `x[0..<count]` rounded to this format at `row`.
    static func store(_ x: UnsafePointer<Float>, into row: UnsafeMutableRawPointer, count: Int)
    /// `y[i] = row[i]` widened to fp32 for `i < count` (exact: each value as `KVDType.load`
    /// reads it).
    static func widen(_ row: UnsafeRawPointer, into y: UnsafeMutablePointer<Float>, count: Int)
}

/// fp32 rows: exactly `Elementwise.dot` and `Elementwise.addScaled`, so an f32 cache gives the
/// results it gave before the cache had a dtype, bit for bit.
public enum KVRowF32: KVRowFormat {
    @inlinable
    public static func dot(_ x: UnsafePointer<Float>, _ row: UnsafeRawPointer, count: Int) -> Float {
        Elementwise.dot(x, row.assumingMemoryBound(to: Float.self), count: count)
    }
    @inlinable
    public static func addScaled(_ y: UnsafeMutablePointer<Float>, _ row: UnsafeRawPointer, scale: Float, count: Int) {
        Elementwise.addScaled(y, row.assumingMemoryBound(to: Float.self), scale: scale, count: count)
    }
    @inlinable
    public static func store(_ x: UnsafePointer<Float>, into row: UnsafeMutableRawPointer, count: Int) {
        row.copyMemory(from: x, byteCount: 4 * count)
    }
    @inlinable
    public static func widen(_ row: UnsafeRawPointer, into y: UnsafeMutablePointer<Float>, count: Int) {
        UnsafeMutableRawPointer(y).copyMemory(from: row, byteCount: 4 * count)
    }
}

/// Half-precision rows read with the weight kernels' widening loads (`F16Format`, `BF16Format`).
@usableFromInline
enum WideRows {
    /// `Elementwise.dot`'s order (four 8-lane partial sums) over a row of format `F`.
    @inlinable @inline(__always)
    static func dot<F: WeightFormat>(_ f: F.Type, _ x: UnsafePointer<Float>, _ row: UnsafeRawPointer, count: Int) -> Float {
        var s0 = SIMD8<Float>(), s1 = SIMD8<Float>(), s2 = SIMD8<Float>(), s3 = SIMD8<Float>()
        let es = F.byteSize
        var i = 0
        while i + 32 <= count {
            s0.addProduct(F.load8(row + i * es), Elementwise.load(x, i))
            s1.addProduct(F.load8(row + (i + 8) * es), Elementwise.load(x, i + 8))
            s2.addProduct(F.load8(row + (i + 16) * es), Elementwise.load(x, i + 16))
            s3.addProduct(F.load8(row + (i + 24) * es), Elementwise.load(x, i + 24))
            i += 32
        }
        while i + 8 <= count {
            s0.addProduct(F.load8(row + i * es), Elementwise.load(x, i))
            i += 8
        }
        var s = ((s0 + s1) + (s2 + s3)).sum()
        while i < count {
            s = s.addingProduct(x[i], F.load1(row + i * es))
            i += 1
        }
        return s
    }

    @inlinable @inline(__always)
    static func widen<F: WeightFormat>(_ f: F.Type, _ row: UnsafeRawPointer, into y: UnsafeMutablePointer<Float>, count: Int) {
        let es = F.byteSize
        var i = 0
        while i + 8 <= count {
            Elementwise.store(F.load8(row + i * es), y, i)
            i += 8
        }
        while i < count {
            y[i] = F.load1(row + i * es)
            i += 1
        }
    }

    @inlinable @inline(__always)
    static func addScaled<F: WeightFormat>(_ f: F.Type, _ y: UnsafeMutablePointer<Float>, _ row: UnsafeRawPointer,
                                           scale: Float, count: Int) {
        let sv = SIMD8<Float>(repeating: scale), es = F.byteSize
        var i = 0
        while i + 8 <= count {
            Elementwise.store(Elementwise.load(y, i).addingProduct(F.load8(row + i * es), sv), y, i)
            i += 8
        }
        while i < count {
            y[i] = y[i].addingProduct(F.load1(row + i * es), scale)
            i += 1
        }
    }
}

/// IEEE half rows (`vcvtph2ps` per eight values). Values beyond ±65504 become ±infinity, as
/// in llama.cpp's f16 cache.
public enum KVRowF16: KVRowFormat {
    @inlinable
    public static func dot(_ x: UnsafePointer<Float>, _ row: UnsafeRawPointer, count: Int) -> Float {
        WideRows.dot(F16Format.self, x, row, count: count)
    }
    @inlinable
    public static func addScaled(_ y: UnsafeMutablePointer<Float>, _ row: UnsafeRawPointer, scale: Float, count: Int) {
        WideRows.addScaled(F16Format.self, y, row, scale: scale, count: count)
    }
    @inlinable
    public static func widen(_ row: UnsafeRawPointer, into y: UnsafeMutablePointer<Float>, count: Int) {
        WideRows.widen(F16Format.self, row, into: y, count: count)
    }
    @inlinable
    public static func store(_ x: UnsafePointer<Float>, into row: UnsafeMutableRawPointer, count: Int) {
        // Swift's Float → Float16 conversion rounds to nearest even.
        for i in 0..<count { row.storeBytes(of: Float16(x[i]).bitPattern, toByteOffset: 2 * i, as: UInt16.self) }
    }
}

/// bfloat16 rows (the top half of an fp32).
public enum KVRowBF16: KVRowFormat {
    @inlinable
    public static func dot(_ x: UnsafePointer<Float>, _ row: UnsafeRawPointer, count: Int) -> Float {
        WideRows.dot(BF16Format.self, x, row, count: count)
    }
    @inlinable
    public static func addScaled(_ y: UnsafeMutablePointer<Float>, _ row: UnsafeRawPointer, scale: Float, count: Int) {
        WideRows.addScaled(BF16Format.self, y, row, scale: scale, count: count)
    }
    @inlinable
    public static func widen(_ row: UnsafeRawPointer, into y: UnsafeMutablePointer<Float>, count: Int) {
        WideRows.widen(BF16Format.self, row, into: y, count: count)
    }
    @inlinable
    public static func store(_ x: UnsafePointer<Float>, into row: UnsafeMutableRawPointer, count: Int) {
        for i in 0..<count { row.storeBytes(of: BFloat16Bits.rounding(x[i]), toByteOffset: 2 * i, as: UInt16.self) }
    }
}

/// fp32 → bfloat16 rounding, shared by the KV cache and the safetensors writer.
public enum BFloat16Bits {
    /// `x` rounded to bfloat16 (nearest even; NaN stays a quiet NaN), as torch converts.
    @inlinable
    public static func rounding(_ x: Float) -> UInt16 {
        if x.isNaN { return UInt16(truncatingIfNeeded: x.bitPattern >> 16) | 0x0040 }
        let b = x.bitPattern
        return UInt16(truncatingIfNeeded: (b &+ 0x7FFF &+ ((b >> 16) & 1)) >> 16)
    }
}

/// ggml Q8_0 rows: per 32 values an fp16 scale and 32 int8. A dot product sums each block's
/// int8 × fp32 products in fp32 (two 8-lane chains), then adds it times the block's scale.
public enum KVRowQ8_0: KVRowFormat {
    /// Eight int8 at `p` widened to fp32 (`vpmovsxbd` + `vcvtdq2ps`).
    @inlinable @inline(__always)
    static func load8(_ p: UnsafeRawPointer) -> SIMD8<Float> {
        let v = p.loadUnaligned(as: SIMD8<Int8>.self)
        return SIMD8(Float(v[0]), Float(v[1]), Float(v[2]), Float(v[3]), Float(v[4]), Float(v[5]), Float(v[6]), Float(v[7]))
    }

    @inlinable
    public static func dot(_ x: UnsafePointer<Float>, _ row: UnsafeRawPointer, count: Int) -> Float {
        var acc = SIMD8<Float>()
        var p = row, xp = x
        for _ in 0..<(count / 32) {
            let d = F16Format.load1(p)
            var s0 = load8(p + 2) * Elementwise.load(xp, 0)
            var s1 = load8(p + 10) * Elementwise.load(xp, 8)
            s0.addProduct(load8(p + 18), Elementwise.load(xp, 16))
            s1.addProduct(load8(p + 26), Elementwise.load(xp, 24))
            acc.addProduct(s0 + s1, SIMD8(repeating: d))
            p += 34
            xp += 32
        }
        return acc.sum()
    }

    @inlinable
    public static func addScaled(_ y: UnsafeMutablePointer<Float>, _ row: UnsafeRawPointer, scale: Float, count: Int) {
        var p = row, yp = y
        for _ in 0..<(count / 32) {
            let sv = SIMD8<Float>(repeating: scale * F16Format.load1(p))
            Elementwise.store(Elementwise.load(yp, 0).addingProduct(load8(p + 2), sv), yp, 0)
            Elementwise.store(Elementwise.load(yp, 8).addingProduct(load8(p + 10), sv), yp, 8)
            Elementwise.store(Elementwise.load(yp, 16).addingProduct(load8(p + 18), sv), yp, 16)
            Elementwise.store(Elementwise.load(yp, 24).addingProduct(load8(p + 26), sv), yp, 24)
            p += 34
            yp += 32
        }
    }

    @inlinable
    public static func widen(_ row: UnsafeRawPointer, into y: UnsafeMutablePointer<Float>, count: Int) {
        var p = row, yp = y
        for _ in 0..<(count / 32) {
            let d = SIMD8<Float>(repeating: F16Format.load1(p))
            Elementwise.store(load8(p + 2) * d, yp, 0)
            Elementwise.store(load8(p + 10) * d, yp, 8)
            Elementwise.store(load8(p + 18) * d, yp, 16)
            Elementwise.store(load8(p + 26) * d, yp, 24)
            p += 34
            yp += 32
        }
    }

    /// llama.cpp's `quantize_row_q8_0_ref`: `d = amax/127` (stored as fp16), `q = round(x·(1/d))`.
    /// A block holding a non-finite value stores that scale (NaN) and zeros, so it reads back as
    /// NaN rather than as plausible numbers; a block too small for `1/d` to be finite stores zeros.
    @inlinable
    public static func store(_ x: UnsafePointer<Float>, into row: UnsafeMutableRawPointer, count: Int) {
        for b in 0..<(count / 32) {
            let xb = x + 32 * b, o = row + 34 * b
            var amax: Float = 0
            var finite = true
            for j in 0..<32 {
                amax = max(amax, abs(xb[j]))
                finite = finite && xb[j].isFinite
            }
            let d = finite ? amax / 127 : Float.nan
            let inverse = 1 / d
            let id: Float = finite && d != 0 && inverse.isFinite ? inverse : 0
            o.storeBytes(of: Float16(d).bitPattern, as: UInt16.self)
            for j in 0..<32 {
                let q = finite ? min(127, max(-127, (xb[j] * id).rounded())) : 0
                o.storeBytes(of: Int8(q), toByteOffset: 2 + j, as: Int8.self)
            }
        }
    }
}
