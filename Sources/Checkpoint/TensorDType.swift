import Foundation
import Kernels

/// Element types found in safetensors headers, spelled as the header spells them.
public enum TensorDType: String, Sendable, CaseIterable {
    /// IEEE 754 binary64.
    case f64 = "F64"
    /// IEEE 754 binary32.
    case f32 = "F32"
    /// IEEE 754 binary16.
    case f16 = "F16"
    /// bfloat16: the upper half of a binary32.
    case bf16 = "BF16"
    /// Signed 64-bit integer.
    case i64 = "I64"
    /// Signed 32-bit integer.
    case i32 = "I32"
    /// Signed 16-bit integer.
    case i16 = "I16"
    /// Signed 8-bit integer.
    case i8 = "I8"
    /// Unsigned 8-bit integer.
    case u8 = "U8"
    /// Boolean, one byte per element.
    case bool = "BOOL"
    /// 8-bit float, 4 exponent and 3 mantissa bits (e.g. DeepSeek-V3's published weights).
    case f8e4m3 = "F8_E4M3"
    /// 8-bit float, 5 exponent and 2 mantissa bits.
    case f8e5m2 = "F8_E5M2"

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .f64, .i64: return 8
        case .f32, .i32: return 4
        case .f16, .bf16, .i16: return 2
        case .i8, .u8, .bool, .f8e4m3, .f8e5m2: return 1
        }
    }

    /// The kernels' element type for this dtype: F32, F16 and BF16 can be computed on in
    /// place; every other dtype is `nil`.
    public var computeType: DType? {
        switch self {
        case .f32: return .f32
        case .f16: return .f16
        case .bf16: return .bf16
        default: return nil
        }
    }
}

/// One tensor inside a memory-mapped safetensors file, viewed in place (no copy).
///
/// `data` points into the mapping owned by the `SafetensorsFile` (or `CheckpointDirectory`) that
/// produced this value; it is valid only while that object is alive. It is not necessarily
/// aligned to the element size (safetensors does not promise alignment), so read it with
/// `loadUnaligned` unless you have checked.
public struct TensorInfo: @unchecked Sendable {
    /// The tensor's name in the header.
    public let name: String
    /// Its element type.
    public let dtype: TensorDType
    /// Its shape (`[]` for a scalar; dimensions may be 0).
    public let shape: [Int]
    /// The first byte of its data inside the mapping.
    public let data: UnsafeRawPointer
    /// Bytes of data: `elementCount * dtype.byteSize`, checked against the header's offsets.
    public let byteCount: Int
    /// The file the tensor lives in, for error messages.
    let file: URL

    /// Number of elements: the product of `shape` (1 for a scalar). Never overflows: the reader
    /// rejects shapes whose product does not fit.
    public var elementCount: Int { shape.reduce(1, *) }

    /// The data as a raw buffer (read-only, inside the mapping).
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: data, count: byteCount) }
}

/// Product of `dims` times `elementSize`, or nil when a dimension is negative or the product overflows.
func checkedByteCount(_ dims: [Int], elementSize: Int) -> (elements: Int, bytes: Int)? {
    guard let n = try? CheckedSize.product(dims, "elements"), let b = try? CheckedSize.product([n, elementSize], "bytes") else { return nil }
    return (n, b)
}
