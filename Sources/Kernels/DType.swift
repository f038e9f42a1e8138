/// Element types the kernels compute on. Weights may be stored in any of these; activations and
/// accumulators are always `Float` (fp32), as in the reference implementation.
///
/// The quantized types are ggml's block formats (as GGUF files store them) and `int4`
/// (compressed-tensors' INT4, regrouped): a row is a sequence of blocks of `blockElements`
/// values, each `blockBytes` long. Layouts in `Quantized.swift`.
public enum DType: String, Sendable, CaseIterable {
    case f32 = "F32"
    case f16 = "F16"
    case bf16 = "BF16"
    /// 32 values: fp16 scale `d`, 32 × int8; `x = d·q`.
    case q8_0 = "Q8_0"
    /// 32 values: fp16 `d`, 16 bytes of nibbles; `x = d·(q − 8)`.
    case q4_0 = "Q4_0"
    /// 32 values: fp16 `d`, fp16 `m`, 16 bytes of nibbles; `x = d·q + m`.
    case q4_1 = "Q4_1"
    /// 256 values: fp16 `d`, fp16 `dmin`, 12 bytes of 6-bit sub-block scales/mins, 128 bytes of nibbles.
    case q4_K = "Q4_K"
    /// 256 values: as Q4_K plus 32 bytes of fifth bits.
    case q5_K = "Q5_K"
    /// 256 values: 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 int8 sub-block scales, fp16 `d`.
    case q6_K = "Q6_K"
    /// 32 values: bf16 scale `d`, 16 bytes of nibbles laid out as Q4_0's; `x = d·(q − 8)`. Not a
    /// ggml type: compressed-tensors' symmetric INT4 group-32 `pack-quantized` weights (Kimi K2
    /// Thinking's experts), regrouped at load by `Int4Packing` so each group's scale sits beside
    /// its values; 4.5 bits a value, as in the file. Values are `d·(q − 8)` exactly (fp32);
    /// compressed-tensors' own decompression rounds that product to bf16, which changes nothing
    /// when it fits bf16 (always in checkpoints `farside quantize` writes: `Int4Packing.quantize`).
    case int4 = "INT4"

    /// Values per block (1 for the float types).
    public var blockElements: Int {
        switch self {
        case .f32, .f16, .bf16: return 1
        case .q8_0, .q4_0, .q4_1, .int4: return 32
        case .q4_K, .q5_K, .q6_K: return 256
        }
    }

    /// Bytes per block (for the float types: bytes per element).
    public var blockBytes: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        case .q8_0: return 34
        case .q4_0, .int4: return 18
        case .q4_1: return 20
        case .q4_K: return 144
        case .q5_K: return 176
        case .q6_K: return 210
        }
    }

    /// Whether values are stored in blocks with shared scales.
    public var isQuantized: Bool { blockElements > 1 }

    /// Bytes per element of the float types. Quantized types have no whole number of bytes per
    /// element; use `rowBytes(cols:)` for them.
    public var byteSize: Int { blockBytes }

    /// Bytes a row of `cols` values occupies (`cols` must be a multiple of `blockElements`).
    public func rowBytes(cols: Int) -> Int { cols / blockElements * blockBytes }
}

/// A read-only, row-major `[rows, cols]` matrix in some storage dtype, viewed in place (usually
/// inside a memory-mapped checkpoint). Layout is PyTorch's `nn.Linear.weight`: `rows` =
/// out_features, `cols` = in_features.
public struct Matrix: @unchecked Sendable {
    public let data: UnsafeRawPointer
    public let dtype: DType
    public let rows: Int
    public let cols: Int
    /// Bytes from one row's start to the next's: `rowBytes` for a whole matrix, more for a
    /// column slice of a wider one (`columns(_:count:)`).
    public let rowStride: Int

    /// Nothing is checked here: this module is built with `-Ounchecked` (its loops were measured to
    /// need it), where even a `precondition` is gone. The caller guarantees that `data` holds
    /// `rows` rows of `rowStride` bytes and that `cols` is a multiple of the dtype's block size.
    /// Every caller outside tests and kernel-bench takes the shape from a tensor whose bytes the
    /// file parser bounds-checked: `CheckpointDirectory.matrix` (shape equal to the safetensors
    /// header's, which `SafetensorsFile` checked against the data section) and
    /// `GGUFWeights.matrix`/`matrix3D` (dims equal to the GGUF tensor's, which `GGUFFile` checked
    /// against the file, block size included); `SyntheticModel` allocates what it describes. The
    /// activations the kernels read and write are sized by the model from a `DecoderConfig` whose
    /// sizes `validate()` bounded, and on an expert node from a request `WireCodec.validateRequest`
    /// checked (rows, hidden and payload bytes) before any kernel runs.
    public init(data: UnsafeRawPointer, dtype: DType, rows: Int, cols: Int, rowStride: Int? = nil) {
        self.data = data
        self.dtype = dtype
        self.rows = rows
        self.cols = cols
        self.rowStride = rowStride ?? dtype.rowBytes(cols: cols)
    }

    /// Bytes one row occupies.
    public var rowBytes: Int { dtype.rowBytes(cols: cols) }

    /// Bytes the whole matrix occupies.
    public var byteCount: Int { rows * rowBytes }

    /// A view of rows `start ..< start + count` (no copy).
    public func rows(_ start: Int, count: Int) -> Matrix {
        Matrix(data: data + start * rowStride, dtype: dtype, rows: count, cols: cols, rowStride: rowStride)
    }

    /// A view of columns `start ..< start + count` of every row (no copy). Both must be
    /// multiples of the dtype's block size, since a block cannot be cut.
    public func columns(_ start: Int, count: Int) throws -> Matrix {
        let b = dtype.blockElements
        guard start >= 0, count >= 0, start + count <= cols else {
            throw KernelError.invalidSlice("columns \(start)..<\(start + count) of a matrix with \(cols) columns")
        }
        guard start % b == 0, count % b == 0 else {
            throw KernelError.invalidSlice("columns \(start)..<\(start + count) cut \(dtype.rawValue) blocks of \(b) values")
        }
        return Matrix(data: data + dtype.rowBytes(cols: start), dtype: dtype, rows: rows, cols: count, rowStride: rowStride)
    }

    /// Element `(r, c)` widened to fp32. For tests and cold paths only.
    public func element(_ r: Int, _ c: Int) -> Float {
        let row = data + r * rowStride
        if dtype.isQuantized { return Quantized.value(dtype, row: row, column: c) }
        switch dtype {
        case .f32: return row.loadUnaligned(fromByteOffset: 4 * c, as: Float.self)
        case .f16: return Float(Float16(bitPattern: row.loadUnaligned(fromByteOffset: 2 * c, as: UInt16.self)))
        case .bf16:
            let bits = UInt32(row.loadUnaligned(fromByteOffset: 2 * c, as: UInt16.self)) << 16
            return Float(bitPattern: bits)
        default: return 0
        }
    }
}

/// Errors of the kernel layer's views.
public enum KernelError: Error, CustomStringConvertible {
    case invalidSlice(String)
    public var description: String {
        switch self {
        case .invalidSlice(let s): return "invalid matrix slice: \(s)"
        }
    }
}
