import Checkpoint
import Kernels

/// Where an architecture reads its tensors from: a safetensors checkpoint today, a GGUF file
/// later. Architectures ask for tensors by their Hugging Face names (their name tables) and for
/// the shape config.json implies, so a checkpoint that disagrees with its config is caught here.
public protocol WeightSource: AnyObject {
    func contains(_ name: String) -> Bool
    /// A 2-D weight `[rows, cols]`, viewed in place.
    func matrix(_ name: String, rows: Int, cols: Int) throws -> Matrix
    /// A 1-D tensor widened to fp32.
    func vector(_ name: String, count: Int) throws -> [Float]
    /// Rows `[start, start+count)` of a 3-D tensor `[experts, rows, cols]` seen as one matrix;
    /// used for fused expert tensors (`mlp.experts.gate_up_proj`).
    func matrix3D(_ name: String, experts: Int, rows: Int, cols: Int) throws -> Matrix
    /// Whether q/k projection rows are stored permuted so that RoPE rotates adjacent pairs
    /// (llama.cpp's GGUF `llama` layout) rather than the two halves of each head (Hugging Face).
    var permutedQK: Bool { get }
}

extension WeightSource {
    public var permutedQK: Bool { false }
}

extension CheckpointDirectory: WeightSource {
    public func matrix3D(_ name: String, experts: Int, rows: Int, cols: Int) throws -> Matrix {
        let info = try tensor(name)
        guard info.shape == [experts, rows, cols] else {
            throw ModelError.invalidConfig(
                "tensor \(name) has shape \(info.shape) but config.json implies [\(experts), \(rows), \(cols)]")
        }
        guard let dtype = info.dtype.computeType else {
            throw ModelError.invalidConfig("tensor \(name) has dtype \(info.dtype.rawValue); expected F32, F16 or BF16")
        }
        return Matrix(data: info.data, dtype: dtype, rows: experts * rows, cols: cols)
    }
}
