/// Element types the kernels compute on. Weights may be stored in any of these; activations and
/// accumulators are always `Float` (fp32), as in the reference implementation.
public enum DType: String, Sendable, CaseIterable {
    case f32 = "F32"
    case f16 = "F16"
    case bf16 = "BF16"

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        }
    }
}

/// A read-only, row-major `[rows, cols]` matrix in some storage dtype, viewed in place (usually
/// inside a memory-mapped checkpoint). Layout is PyTorch's `nn.Linear.weight`: `rows` =
/// out_features, `cols` = in_features.
public struct Matrix: @unchecked Sendable {
    public let data: UnsafeRawPointer
    public let dtype: DType
    public let rows: Int
    public let cols: Int

    public init(data: UnsafeRawPointer, dtype: DType, rows: Int, cols: Int) {
        self.data = data
        self.dtype = dtype
        self.rows = rows
        self.cols = cols
    }

    /// Bytes one row occupies.
    public var rowBytes: Int { cols * dtype.byteSize }

    /// Bytes the whole matrix occupies.
    public var byteCount: Int { rows * rowBytes }

    /// A view of rows `start ..< start + count` (no copy).
    public func rows(_ start: Int, count: Int) -> Matrix {
        Matrix(data: data + start * rowBytes, dtype: dtype, rows: count, cols: cols)
    }

    /// Element `(r, c)` widened to fp32. For tests and cold paths only.
    public func element(_ r: Int, _ c: Int) -> Float {
        let i = r * cols + c
        switch dtype {
        case .f32: return data.assumingMemoryBound(to: Float.self)[i]
        case .f16: return Float(data.assumingMemoryBound(to: Float16.self)[i])
        case .bf16:
            let bits = UInt32(data.assumingMemoryBound(to: UInt16.self)[i]) << 16
            return Float(bitPattern: bits)
        }
    }
}
