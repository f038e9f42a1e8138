import Foundation
import Kernels

/// `farside quantize`: a float Hugging Face checkpoint rewritten with its routed experts in
/// compressed-tensors' INT4 `pack-quantized` format (symmetric, group 32: what Kimi K2 Thinking
/// ships), everything else copied unchanged, so that Farside and transformers + compressed-tensors
/// both load it.
///
/// Routed experts are the 2-D tensors named `….experts.<E>.<projection>.weight` (DeepSeek-V3,
/// Kimi K2, Qwen-MoE: `mlp.experts.E.gate_proj`; Mixtral: `block_sparse_moe.experts.E.w1`);
/// each becomes `weight_packed`, `weight_scale` (bf16) and `weight_shape` (`Int4Packing.quantize`).
/// Fused 3-D expert tensors are not routed-expert weights by this rule and stay as they are.
public enum Int4Quantizer {
    /// What was written.
    public struct Summary: Sendable {
        /// Expert weight matrices quantized.
        public var quantized = 0
        /// Tensors copied unchanged.
        public var copied = 0
        /// Bytes of tensor data read and written.
        public var bytesIn = 0, bytesOut = 0
        /// Files written into the output directory.
        public var files: [String] = []
    }

    /// `quantization_config.ignore`: every module but the routed experts, as one `re:` pattern
    /// (compressed-tensors matches it with Python's `re.match`, i.e. at the name's start).
    public static let ignorePattern = #"re:^(?!.*\.experts\.\d+\.)"#

    /// The module whose weight `name` is, when it is a routed expert's (`….experts.<E>.<p>.weight`).
    public static func expertModule(_ name: String) -> String? {
        guard name.hasSuffix(".weight") else { return nil }
        let module = String(name.dropLast(".weight".count))
        let parts = module.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count >= 3, parts[parts.count - 3] == "experts", Int(parts[parts.count - 2]) != nil else { return nil }
        return module
    }

    /// The `quantization_config` object this writer puts in config.json (compressed-tensors'
    /// `QuantizationConfig.to_dict()` shape).
    public static var quantizationConfig: [String: Any] {
        let weights: [String: Any] = [
            "num_bits": 4, "type": "int", "symmetric": true, "strategy": "group", "group_size": Int4Packing.groupSize,
            "dynamic": false,
        ]
        let group: [String: Any] = ["targets": ["Linear"], "weights": weights, "input_activations": NSNull(),
                                    "output_activations": NSNull(), "format": "pack-quantized"]
        return ["quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
                "config_groups": ["group_0": group], "ignore": [ignorePattern], "kv_cache_scheme": NSNull()]
    }

    /// Writes `input`'s model into `output` (created if needed; its config.json and weight files
    /// are replaced) with routed experts in INT4. Refuses an input that is already quantized,
    /// and an expert weight whose columns are not a multiple of 32 (`QuantizationError`).
    @discardableResult
    public static func write(_ input: CheckpointDirectory, to output: URL, maxShardBytes: Int = 5 << 30) throws -> Summary {
        if input.config.has("quantization_config") {
            throw QuantizationError.unsupported(field: "quantization_config", found: "present",
                                                supported: "absent (quantize a float checkpoint: bf16, f16 or f32)",
                                                source: input.config.source)
        }
        var writer = SafetensorsWriter()
        var summary = Summary()
        for name in input.tensorNames {
            let t = try input.tensor(name)
            summary.bytesIn += t.byteCount
            guard let module = expertModule(name), t.shape.count == 2, t.dtype.computeType != nil else {
                writer.add(name: name, dtype: t.dtype, shape: t.shape) { out in out.copyMemory(from: t.bytes) }
                summary.copied += 1
                continue
            }
            let rows = t.shape[0], cols = t.shape[1]
            guard cols % Int4Packing.groupSize == 0 else {
                throw QuantizationError.badTensor(name, file: input.url.path,
                                                  reason: "has \(cols) columns; INT4 groups of \(Int4Packing.groupSize) need a multiple of \(Int4Packing.groupSize)")
            }
            // Each producer quantizes the weight again (it runs when the file is written, so only
            // one expert's floats are in memory at a time).
            let blocks: () throws -> UnsafeMutableRawPointer = {
                let x = try input.floats(name, shape: [rows, cols])
                let b = UnsafeMutableRawPointer.allocate(byteCount: rows * DType.int4.rowBytes(cols: cols), alignment: 64)
                x.withUnsafeBufferPointer { Int4Packing.quantize($0.baseAddress!, rows: rows, cols: cols, into: b) }
                return b
            }
            let groups = cols / Int4Packing.groupSize
            writer.add(name: module + ".weight_packed", dtype: .i32, shape: [rows, cols / Int4Packing.valuesPerWord]) { out in
                let b = try blocks()
                defer { b.deallocate() }
                let scratch = UnsafeMutableRawPointer.allocate(byteCount: 2 * rows * groups, alignment: 2)
                defer { scratch.deallocate() }
                Int4Packing.compressedTensors(blocks: b, rows: rows, cols: cols, packed: out.baseAddress!, scales: scratch)
            }
            writer.add(name: module + ".weight_scale", dtype: .bf16, shape: [rows, groups]) { out in
                let b = try blocks()
                defer { b.deallocate() }
                let scratch = UnsafeMutableRawPointer.allocate(byteCount: 4 * rows * cols / Int4Packing.valuesPerWord, alignment: 4)
                defer { scratch.deallocate() }
                Int4Packing.compressedTensors(blocks: b, rows: rows, cols: cols, packed: scratch, scales: out.baseAddress!)
            }
            let shape = [Int64(rows), Int64(cols)].flatMap { v in withUnsafeBytes(of: v.littleEndian) { [UInt8]($0) } }
            writer.add(name: module + ".weight_shape", dtype: .i64, shape: [2], bytes: shape)
            summary.quantized += 1
        }
        try FileManager.default.createDirectory(at: output, withIntermediateDirectories: true)
        var config = input.config.object
        config["quantization_config"] = quantizationConfig
        let json = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
        let configURL = output.appendingPathComponent("config.json")
        do { try (json + Data("\n".utf8)).write(to: configURL, options: .atomic) } catch {
            throw CheckpointError.writeFailed(configURL, reason: error.localizedDescription)
        }
        summary.files = try writer.writeSharded(to: output, maxShardBytes: maxShardBytes) + ["config.json"]
        summary.bytesOut = writer.totalBytes
        return summary
    }
}
