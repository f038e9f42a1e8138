import Foundation
import Kernels
import XCTest
@testable import Checkpoint

/// compressed-tensors INT4 checkpoints: the quantization_config that is accepted, each field that
/// is refused (named in the message), packed tensors that disagree with their shape, and
/// `farside quantize`'s writer read back.
final class CompressedTensorsTests: TempDirTestCase {
    static var goodConfig: [String: Any] { Int4Quantizer.quantizationConfig }

    /// `goodConfig` with `change` applied to group_0's weights (or the top level).
    func config(weights change: (inout [String: Any]) -> Void = { _ in }, top: (inout [String: Any]) -> Void = { _ in }) -> [String: Any] {
        var q = Self.goodConfig
        var groups = q["config_groups"] as! [String: Any]
        var g = groups["group_0"] as! [String: Any]
        var w = g["weights"] as! [String: Any]
        change(&w)
        g["weights"] = w
        groups["group_0"] = g
        q["config_groups"] = groups
        q["ignore"] = [String]()  // the writer's pattern would ignore module "m"
        top(&q)
        return ["model_type": "test", "quantization_config": q]
    }

    /// A module `m` of `rows × cols` with packed INT4 tensors; `packedCols`, `scaleCols`,
    /// `shape` override the consistent values.
    func packedCheckpoint(config: [String: Any], rows: Int = 4, cols: Int = 64, packedCols: Int? = nil,
                          scaleCols: Int? = nil, shape: [Int64]? = nil, scaleDType: TensorDType = .bf16) throws -> URL {
        try checkpoint(config: config) { w in
            let pc = packedCols ?? cols / 8, sc = scaleCols ?? cols / 32
            w.add(name: "m.weight_packed", dtype: .i32, shape: [rows, pc], bytes: [UInt8](repeating: 0x98, count: 4 * rows * pc))
            w.add(name: "m.weight_scale", dtype: scaleDType, shape: [rows, sc],
                  bytes: [UInt8](repeating: 0x3E, count: scaleDType.byteSize * rows * sc))
            let s = shape ?? [Int64(rows), Int64(cols)]
            w.add(name: "m.weight_shape", dtype: .i64, shape: [s.count], bytes: s.flatMap { v in withUnsafeBytes(of: v) { [UInt8]($0) } })
        }
    }

    func testPackedWeightLoadsAsInt4Blocks() throws {
        let dir = try packedCheckpoint(config: config())
        let c = try CheckpointDirectory(url: dir)
        XCTAssertEqual(c.quantization?.groupSize, 32)
        let m = try c.matrix("m.weight", rows: 4, cols: 64)
        XCTAssertEqual(m.dtype, .int4)
        XCTAssertEqual(m.byteCount, 4 * 2 * 18, "packed bytes: 18 per group of 32")
        // Every nibble 8 or 9 (bytes 0x98): q = 0 (low) and 1 (high nibble); scale bf16 0x3E3E.
        let s = Float(bitPattern: 0x3E3E_0000)
        XCTAssertEqual(m.element(0, 0), 0)
        XCTAssertEqual(m.element(3, 1), s)
        XCTAssertTrue(try c.matrix("m.weight", rows: 4, cols: 64).data == m.data, "regrouped once")
    }

    func testUnsupportedConfigFieldsAreNamed() throws {
        let cases: [(String, [String: Any])] = [
            ("weights.symmetric", config(weights: { $0["symmetric"] = false })),
            ("weights.num_bits", config(weights: { $0["num_bits"] = 8 })),
            ("weights.group_size", config(weights: { $0["group_size"] = 128 })),
            ("weights.strategy", config(weights: { $0["strategy"] = "channel" })),
            ("weights.type", config(weights: { $0["type"] = "float" })),
            ("weights.actorder", config(weights: { $0["actorder"] = "group" })),
            ("weights.dynamic", config(weights: { $0["dynamic"] = true })),
            ("quantization_config.format", config(top: { $0["format"] = "float-quantized" })),
            ("quantization_config.quant_method", config(top: { $0["quant_method"] = "fp8" })),
            ("kv_cache_scheme", config(top: { $0["kv_cache_scheme"] = ["num_bits": 8] })),
        ]
        for (field, cfg) in cases {
            let dir = try packedCheckpoint(config: cfg)
            XCTAssertThrowsError(try CheckpointDirectory(url: dir), field) { e in
                guard let q = e as? QuantizationError, case .unsupported(let f, _, _, _) = q else {
                    return XCTFail("\(field): \(e)")
                }
                XCTAssertTrue(f.hasSuffix(field), "\(f) names \(field)")
                XCTAssertTrue("\(q)".contains(field), "\(q)")
            }
        }
    }

    func testPackedTensorsThatDisagreeWithTheirShapeAreErrors() throws {
        let cases: [(String, URL)] = [
            ("weight_packed", try packedCheckpoint(config: config(), packedCols: 7)),
            ("weight_scale", try packedCheckpoint(config: config(), scaleCols: 3)),
            ("weight_scale", try packedCheckpoint(config: config(), scaleDType: .f32)),
            ("weight_shape", try packedCheckpoint(config: config(), shape: [4, 96])),
            ("weight_shape", try packedCheckpoint(config: config(), shape: [4])),
        ]
        for (tensor, dir) in cases {
            let c = try CheckpointDirectory(url: dir)
            XCTAssertThrowsError(try c.matrix("m.weight", rows: 4, cols: 64), tensor) { e in
                XCTAssertTrue(e is QuantizationError, "\(e)")
                XCTAssertTrue("\(e)".contains("m.\(tensor)"), "\(e)")
            }
        }
        // Packed weights without a quantization_config, or ones its ignore list names.
        let bare = try CheckpointDirectory(url: try packedCheckpoint(config: ["model_type": "test"]))
        XCTAssertThrowsError(try bare.matrix("m.weight", rows: 4, cols: 64)) { XCTAssertTrue("\($0)".contains("quantization_config"), "\($0)") }
        let ignored = try CheckpointDirectory(url: try packedCheckpoint(config: config(top: { $0["ignore"] = ["re:m$"] })))
        XCTAssertThrowsError(try ignored.matrix("m.weight", rows: 4, cols: 64)) { XCTAssertTrue("\($0)".contains("ignore"), "\($0)") }
    }

    /// The quantizer: routed experts become packed tensors that load back as the INT4 blocks
    /// `Int4Packing.quantize` makes (within half a quantization step of the input), every other
    /// tensor is copied byte for byte, and config.json's quantization_config is accepted.
    func testQuantizerWritesWhatTheReaderLoads() throws {
        let rows = 5, cols = 96
        let w = (0..<(rows * cols)).map { Float(sin(Double($0) * 0.7)) * 0.3 }
        let other = (0..<64).map { Float($0) / 7 }
        let src = try checkpoint(config: ["model_type": "test", "hidden_size": 96]) { wr in
            wr.add(name: "model.layers.1.mlp.experts.3.down_proj.weight", dtype: .f32, shape: [rows, cols], floats: w)
            wr.add(name: "model.layers.1.mlp.shared_experts.down_proj.weight", dtype: .bf16, shape: [2, 32], floats: other)
        }
        let out = tmp.appendingPathComponent("int4")
        let s = try Int4Quantizer.write(try CheckpointDirectory(url: src), to: out)  // the writer reads it before returning
        XCTAssertEqual(s.quantized, 1)
        XCTAssertEqual(s.copied, 1)
        let q = try CheckpointDirectory(url: out)
        XCTAssertEqual(q.config.object["hidden_size"] as? Int, 96)
        XCTAssertNotNil(q.quantization)
        XCTAssertFalse(q.quantization!.ignores("model.layers.1.mlp.experts.3.down_proj"))
        XCTAssertTrue(q.quantization!.ignores("model.layers.1.mlp.shared_experts.down_proj"))
        XCTAssertTrue(q.quantization!.ignores("lm_head"))
        let m = try q.matrix("model.layers.1.mlp.experts.3.down_proj.weight", rows: rows, cols: cols)
        XCTAssertEqual(m.dtype, .int4)
        var ref = [UInt8](repeating: 0, count: m.byteCount)
        w.withUnsafeBufferPointer { Int4Packing.quantize($0.baseAddress!, rows: rows, cols: cols, into: &ref) }
        XCTAssertEqual([UInt8](UnsafeRawBufferPointer(start: m.data, count: m.byteCount)), ref)
        for r in 0..<rows {
            for c in 0..<cols {
                let scale = Float(bitPattern: UInt32(m.data.loadUnaligned(fromByteOffset: (r * 3 + c / 32) * 18, as: UInt16.self)) << 16)
                XCTAssertLessThanOrEqual(abs(m.element(r, c) - w[r * cols + c]), scale / 2 * 1.0001, "(\(r), \(c))")
            }
        }
        let source = try CheckpointDirectory(url: src)  // kept alive: its tensors point into its mapping
        let a = try source.tensor("model.layers.1.mlp.shared_experts.down_proj.weight")
        let b = try q.tensor("model.layers.1.mlp.shared_experts.down_proj.weight")
        XCTAssertEqual([UInt8](a.bytes), [UInt8](b.bytes))
        // An already quantized checkpoint is refused.
        XCTAssertThrowsError(try Int4Quantizer.write(q, to: tmp.appendingPathComponent("again")))
    }
}
