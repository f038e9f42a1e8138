import Foundation
import Kernels
import XCTest
@testable import Checkpoint

final class CheckpointDirectoryTests: TempDirTestCase {
    // MARK: opening

    func testSingleFileCheckpoint() throws {
        let dir = try checkpoint(config: ["model_type": "llama", "hidden_size": 4]) { w in
            w.add(name: "model.norm.weight", dtype: .f32, shape: [4], floats: [1, 2, 3, 4])
            w.add(name: "lm_head.weight", dtype: .bf16, shape: [2, 4], floats: [1, 2, 3, 4, 5, 6, 7, 8])
            w.add(name: "embed", dtype: .f16, shape: [2, 2], floats: [0.5, -0.5, 2, -2])
        }
        let c = try CheckpointDirectory(url: dir)
        XCTAssertEqual(c.url, dir)
        XCTAssertNil(c.indexURL)
        XCTAssertEqual(c.files.count, 1)
        XCTAssertEqual(try c.config.string("model_type"), "llama")
        XCTAssertEqual(c.tensorNames, ["embed", "lm_head.weight", "model.norm.weight"])
        XCTAssertTrue(c.contains("embed"))
        XCTAssertFalse(c.contains("missing"))
        XCTAssertEqual(try c.vector("model.norm.weight", count: 4), [1, 2, 3, 4])
        let m = try c.matrix("lm_head.weight", rows: 2, cols: 4)
        XCTAssertEqual(m.dtype, .bf16)
        XCTAssertEqual(m.rows, 2)
        XCTAssertEqual(m.cols, 4)
        XCTAssertEqual(m.data, try c.tensor("lm_head.weight").data, "matrix is viewed in place")
        XCTAssertEqual(m.element(1, 2), 7)
        XCTAssertEqual(try c.floats("embed", shape: [2, 2]), [0.5, -0.5, 2, -2])
        XCTAssertEqual(try c.floats("lm_head.weight", shape: [2, 4]), [1, 2, 3, 4, 5, 6, 7, 8])
    }

    func testMissingDirectoryNamesConfigJSON() {
        let dir = tmp.appendingPathComponent("nope")
        assertCheckpointError(try CheckpointDirectory(url: dir), {
            if case .missingConfig = $0 { return true } else { return false }
        }, mentions: ["nope/config.json", "needs config.json"])
    }

    func testConfigNotJSON() throws {
        let dir = try checkpoint { _ in }
        try Data("{\"hidden_size\": 4,".utf8).write(to: dir.appendingPathComponent("config.json"))
        assertCheckpointError(try CheckpointDirectory(url: dir), {
            if case .invalidConfig = $0 { return true } else { return false }
        }, mentions: ["config.json", "not valid JSON"])
    }

    func testConfigNotAnObject() throws {
        let dir = try checkpoint { _ in }
        try Data("[1, 2]".utf8).write(to: dir.appendingPathComponent("config.json"))
        assertCheckpointError(try CheckpointDirectory(url: dir), {
            if case .invalidConfig = $0 { return true } else { return false }
        }, mentions: ["config.json", "expected a JSON object", "an array"])
    }

    func testConfigIsADirectory() throws {
        let dir = try checkpoint { _ in }
        let cfg = dir.appendingPathComponent("config.json")
        try FileManager.default.removeItem(at: cfg)
        try FileManager.default.createDirectory(at: cfg, withIntermediateDirectories: false)
        assertCheckpointError(try CheckpointDirectory(url: dir), {
            if case .invalidConfig = $0 { return true } else { return false }
        }, mentions: ["config.json", "cannot read"])
    }

    func testNoWeights() throws {
        let dir = try checkpoint { _ in }
        try FileManager.default.removeItem(at: dir.appendingPathComponent("model.safetensors"))
        assertCheckpointError(try CheckpointDirectory(url: dir), {
            if case .noWeights = $0 { return true } else { return false }
        }, mentions: ["model.safetensors", "model.safetensors.index.json"])
    }

    func testBadWeightsFileNamesIt() throws {
        let dir = try checkpoint { _ in }
        try Data([1, 2, 3]).write(to: dir.appendingPathComponent("model.safetensors"))
        assertCheckpointError(try CheckpointDirectory(url: dir), {
            if case .fileTooSmall = $0 { return true } else { return false }
        }, mentions: ["model.safetensors"])
    }

    // MARK: lookups and checks

    func testMissingTensor() throws {
        let dir = try checkpoint { $0.add(name: "a", dtype: .f32, shape: [1], floats: [1]) }
        let c = try CheckpointDirectory(url: dir)
        assertCheckpointError(try c.tensor("model.layers.0.mlp.gate_proj.weight"), {
            if case .missingTensor("model.layers.0.mlp.gate_proj.weight", dir) = $0 { return true } else { return false }
        }, mentions: ["'model.layers.0.mlp.gate_proj.weight'", "not found", dir.lastPathComponent])
        assertCheckpointError(try c.matrix("b", rows: 1, cols: 1), {
            if case .missingTensor("b", _) = $0 { return true } else { return false }
        }, mentions: ["'b'"])
        assertCheckpointError(try c.vector("b", count: 1), {
            if case .missingTensor("b", _) = $0 { return true } else { return false }
        })
    }

    func testMatrixShapeMismatch() throws {
        let dir = try checkpoint { $0.add(name: "q_proj.weight", dtype: .bf16, shape: [64, 32], bytes: [UInt8](repeating: 0, count: 4096)) }
        let c = try CheckpointDirectory(url: dir)
        assertCheckpointError(try c.matrix("q_proj.weight", rows: 64, cols: 48), {
            if case .shapeMismatch("q_proj.weight", _, [64, 48], [64, 32]) = $0 { return true } else { return false }
        }, mentions: ["'q_proj.weight'", "model.safetensors", "[64, 32]", "[64, 48]", "disagrees with config.json"])
        assertCheckpointError(try c.matrix("q_proj.weight", rows: 32, cols: 64), {
            if case .shapeMismatch = $0 { return true } else { return false }
        }, mentions: ["[32, 64]"])
        assertCheckpointError(try c.vector("q_proj.weight", count: 2048), {
            if case .shapeMismatch(_, _, [2048], [64, 32]) = $0 { return true } else { return false }
        }, mentions: ["[2048]", "[64, 32]", "config.json"])
        assertCheckpointError(try c.floats("q_proj.weight", shape: [64, 32, 1]), {
            if case .shapeMismatch = $0 { return true } else { return false }
        }, mentions: ["[64, 32, 1]"])
        XCTAssertEqual(try c.floats("q_proj.weight", shape: [64, 32]).count, 2048)
    }

    func testNonComputeDTypeRejected() throws {
        let dir = try checkpoint {
            $0.add(name: "ids", dtype: .i32, shape: [2, 2], bytes: [UInt8](repeating: 0, count: 16))
            $0.add(name: "fp8", dtype: .f8e4m3, shape: [4], bytes: [0, 1, 2, 3])
            $0.add(name: "d", dtype: .f64, shape: [1], bytes: [UInt8](repeating: 0, count: 8))
        }
        let c = try CheckpointDirectory(url: dir)
        assertCheckpointError(try c.matrix("ids", rows: 2, cols: 2), {
            if case .unsupportedDType("I32", "ids", _, let allowed) = $0 { return allowed.starts(with: ["F32", "F16", "BF16"]) && allowed.contains("Q4_1") } else { return false }
        }, mentions: ["'ids'", "I32", "F32, F16, BF16"])
        assertCheckpointError(try c.vector("fp8", count: 4), {
            if case .unsupportedDType("F8_E4M3", "fp8", _, _) = $0 { return true } else { return false }
        }, mentions: ["'fp8'", "F8_E4M3"])
        assertCheckpointError(try c.floats("d", shape: [1]), {
            if case .unsupportedDType("F64", _, _, _) = $0 { return true } else { return false }
        }, mentions: ["F64"])
    }

    func testScalarAndEmptyFloats() throws {
        let dir = try checkpoint {
            $0.add(name: "s", dtype: .f32, shape: [], floats: [2.5])
            $0.add(name: "e", dtype: .bf16, shape: [0, 3], floats: [])
        }
        let c = try CheckpointDirectory(url: dir)
        XCTAssertEqual(try c.floats("s", shape: []), [2.5])
        XCTAssertEqual(try c.floats("e", shape: [0, 3]), [])
        let m = try c.matrix("e", rows: 0, cols: 3)
        XCTAssertEqual(m.byteCount, 0)
    }

    // MARK: widening

    func testBF16WideningIsExact() throws {
        let bits: [UInt16] = [0x0000, 0x8000, 0x3F80, 0xBF80, 0x4049, 0x7F7F, 0x0080, 0x0001, 0x8001, 0x7F80, 0xFF80, 0x3DCD]
        let raw = bits.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }
        let dir = try checkpoint { $0.add(name: "v", dtype: .bf16, shape: [bits.count], bytes: raw) }
        let got = try CheckpointDirectory(url: dir).vector("v", count: bits.count)
        XCTAssertEqual(got.map(\.bitPattern), bits.map { UInt32($0) << 16 })
        XCTAssertEqual(got[2], 1)
        XCTAssertEqual(got[4], 3.140625)
        XCTAssertEqual(got[9], .infinity)
        XCTAssertEqual(got[7], Float(bitPattern: 0x0001_0000), "subnormals are kept")
        let nan = try checkpoint { $0.add(name: "n", dtype: .bf16, shape: [1], bytes: [0xC0, 0x7F]) }
        XCTAssertTrue(try CheckpointDirectory(url: nan).vector("n", count: 1)[0].isNaN)
    }

    func testF16WideningIsExact() throws {
        let cases: [(UInt16, Float)] = [
            (0x0000, 0), (0x3C00, 1), (0xC000, -2), (0x3555, 0.333251953125), (0x7BFF, 65504),
            (0x0001, 5.960464477539063e-08), (0x03FF, 6.097555160522461e-05), (0x0400, 6.103515625e-05),
            (0x7C00, .infinity), (0xFC00, -.infinity),
        ]
        let raw = cases.flatMap { [UInt8($0.0 & 0xFF), UInt8($0.0 >> 8)] + [] }
        let dir = try checkpoint {
            $0.add(name: "v", dtype: .f16, shape: [cases.count], bytes: raw)
            $0.add(name: "negzero", dtype: .f16, shape: [1], bytes: [0x00, 0x80])
            $0.add(name: "nan", dtype: .f16, shape: [1], bytes: [0x00, 0x7E])
        }
        let c = try CheckpointDirectory(url: dir)
        XCTAssertEqual(try c.vector("v", count: cases.count), cases.map(\.1))
        XCTAssertEqual(try c.vector("negzero", count: 1)[0].bitPattern, (-Float(0)).bitPattern)
        XCTAssertTrue(try c.vector("nan", count: 1)[0].isNaN)
    }

    func testF32IsCopiedBitExact() throws {
        let v: [Float] = [.pi, -0.0, .leastNonzeroMagnitude, .greatestFiniteMagnitude, 1e-20]
        let dir = try checkpoint { $0.add(name: "v", dtype: .f32, shape: [v.count], floats: v) }
        XCTAssertEqual(try CheckpointDirectory(url: dir).vector("v", count: v.count).map(\.bitPattern), v.map(\.bitPattern))
    }

    /// A directory whose model.safetensors stores `f32` tensors right after a 1-byte U8 tensor, so
    /// their data is misaligned (the reference writer never does this, but other writers may).
    func misalignedCheckpoint(f32 tensors: [(String, [Int], [Float])], f16: [(String, [Float])] = []) throws -> URL {
        let dir = tmp.appendingPathComponent("misaligned-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try Data("{}".utf8).write(to: dir.appendingPathComponent("config.json"))
        var header: [String: Any] = ["a.flag": ["dtype": "U8", "shape": [1], "data_offsets": [0, 1]]]
        var data: [UInt8] = [1]
        for (name, shape, v) in tensors {
            header[name] = ["dtype": "F32", "shape": shape, "data_offsets": [data.count, data.count + 4 * v.count]]
            data += bytesOf(v)
        }
        for (name, v) in f16 {
            header[name] = ["dtype": "F16", "shape": [v.count], "data_offsets": [data.count, data.count + 2 * v.count]]
            data += v.flatMap { f -> [UInt8] in let b = Float16(f).bitPattern; return [UInt8(b & 0xFF), UInt8(b >> 8)] }
        }
        var text = try headerJSON(header)
        while text.utf8.count % 8 != 0 { text += " " }   // data section 8-aligned, as the reference pads
        try rawSafetensors(header: text, data: data, in: dir)
        return dir
    }

    /// A tensor the file stores at an offset misaligned for its dtype is still usable: `matrix`
    /// returns an aligned copy with the same values; `vector` reads it unaligned.
    func testMisalignedTensor() throws {
        let dir = try misalignedCheckpoint(f32: [("b.weight", [2, 2], [1, 2, 3, 4])], f16: [("c.bias", [1, 2, 3])])
        let c = try CheckpointDirectory(url: dir)
        let t = try c.tensor("b.weight")
        XCTAssertNotEqual(Int(bitPattern: t.data) % 4, 0, "test setup: data should be misaligned")
        XCTAssertNotEqual(Int(bitPattern: try c.tensor("c.bias").data) % 2, 0, "test setup: data should be misaligned")
        let m = try c.matrix("b.weight", rows: 2, cols: 2)
        XCTAssertEqual(Int(bitPattern: m.data) % 4, 0)
        XCTAssertEqual([m.element(0, 0), m.element(0, 1), m.element(1, 0), m.element(1, 1)], [1, 2, 3, 4])
        XCTAssertEqual(try c.matrix("b.weight", rows: 2, cols: 2).data, m.data, "the copy is made once")
        XCTAssertEqual(try c.vector("c.bias", count: 3), [1, 2, 3])
        XCTAssertEqual(try c.floats("b.weight", shape: [2, 2]), [1, 2, 3, 4])
    }

    // MARK: sharded checkpoints

    func shardedCheckpoint(maxShardBytes: Int = 100) throws -> (URL, [String: [Float]], [String]) {
        let dir = tmp.appendingPathComponent("sharded")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try Data(#"{"model_type": "mixtral", "hidden_size": 8}"#.utf8).write(to: dir.appendingPathComponent("config.json"))
        var w = SafetensorsWriter()
        var values: [String: [Float]] = [:]
        for i in 0 ..< 6 {
            let v = (0 ..< 8).map { Float(i * 10 + $0) }
            values["layers.\(i).w"] = v
            w.add(name: "layers.\(i).w", dtype: .f32, shape: [2, 4], floats: v)   // 32 bytes each
        }
        let big = (0 ..< 40).map { Float($0) / 4 }
        values["embed"] = big
        w.add(name: "embed", dtype: .bf16, shape: [40], floats: big)                // 80 bytes
        let files = try w.writeSharded(to: dir, maxShardBytes: maxShardBytes)
        return (dir, values, files)
    }

    func testShardedRoundTrip() throws {
        let (dir, values, files) = try shardedCheckpoint()
        // Name order: embed (80) | layers.0, layers.1, layers.2 (96) | layers.3, layers.4, layers.5 (96).
        XCTAssertEqual(files, ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                               "model-00003-of-00003.safetensors", "model.safetensors.index.json"])
        let index = try XCTUnwrap(JSONSerialization.jsonObject(
            with: Data(contentsOf: dir.appendingPathComponent("model.safetensors.index.json"))) as? [String: Any])
        XCTAssertEqual((index["metadata"] as? [String: Any])?["total_size"] as? Int, 6 * 32 + 80)
        XCTAssertEqual((index["metadata"] as? [String: Any])?["total_parameters"] as? Int, 6 * 8 + 40)
        let indexText = try String(contentsOf: dir.appendingPathComponent("model.safetensors.index.json"), encoding: .utf8)
        XCTAssertTrue(indexText.hasPrefix("{\n  \"metadata\": {\n    \"total_parameters\": 88,\n    \"total_size\": 272\n  },\n"
            + "  \"weight_map\": {\n    \"embed\": \"model-00001-of-00003.safetensors\",\n"), indexText)
        XCTAssertTrue(indexText.hasSuffix("\"\n  }\n}\n"), "formatted as transformers writes it")
        let map = try XCTUnwrap(index["weight_map"] as? [String: String])
        XCTAssertEqual(map.count, 7)
        XCTAssertEqual(map["embed"], "model-00001-of-00003.safetensors")
        XCTAssertEqual(map["layers.2.w"], "model-00002-of-00003.safetensors")
        XCTAssertEqual(map["layers.3.w"], "model-00003-of-00003.safetensors")
        for f in files.dropLast() {
            let size = try XCTUnwrap(FileManager.default.attributesOfItem(atPath: dir.appendingPathComponent(f).path)[.size] as? Int)
            let shard = try SafetensorsFile(url: dir.appendingPathComponent(f))
            XCTAssertLessThanOrEqual(shard.tensors.values.reduce(0) { $0 + $1.byteCount }, 100)
            XCTAssertEqual(shard.fileSize, size)
        }

        let c = try CheckpointDirectory(url: dir)
        XCTAssertEqual(c.files.count, 3)
        XCTAssertEqual(c.indexURL?.lastPathComponent, "model.safetensors.index.json")
        XCTAssertEqual(try c.config.int("hidden_size"), 8)
        XCTAssertEqual(c.tensorNames, values.keys.sorted())
        for (name, v) in values where name != "embed" {
            XCTAssertEqual(try c.floats(name, shape: [2, 4]), v, name)
            XCTAssertEqual(try c.matrix(name, rows: 2, cols: 4).element(1, 3), v[7], name)
        }
        XCTAssertEqual(try c.vector("embed", count: 40), values["embed"])
    }

    func testOversizedTensorGetsItsOwnShard() throws {
        let (dir, _, files) = try shardedCheckpoint(maxShardBytes: 40)
        // embed (80 > 40) alone, then one 32-byte layer per shard.
        XCTAssertEqual(files.count, 8)
        XCTAssertEqual(files[0], "model-00001-of-00007.safetensors")
        XCTAssertEqual(try CheckpointDirectory(url: dir).tensorNames.count, 7)
    }

    func testShardedWriterWritesSingleFileWhenItFits() throws {
        let (dir, values, files) = try shardedCheckpoint(maxShardBytes: 1 << 20)
        XCTAssertEqual(files, ["model.safetensors"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("model.safetensors.index.json").path))
        let c = try CheckpointDirectory(url: dir)
        XCTAssertEqual(c.files.count, 1)
        XCTAssertEqual(c.tensorNames, values.keys.sorted())
    }

    /// transformers loads model.safetensors when both it and an index exist; so do we.
    func testSingleFileWinsOverIndex() throws {
        let (dir, _, _) = try shardedCheckpoint()
        var w = SafetensorsWriter()
        w.add(name: "only", dtype: .f32, shape: [1], floats: [1])
        try w.write(to: dir.appendingPathComponent("model.safetensors"))
        let c = try CheckpointDirectory(url: dir)
        XCTAssertEqual(c.tensorNames, ["only"])
        XCTAssertNil(c.indexURL)
    }

    func testShardedWriterRejectsNonPositiveLimit() {
        assertCheckpointError(try SafetensorsWriter().writeSharded(to: tmp, maxShardBytes: 0), {
            if case .writeFailed = $0 { return true } else { return false }
        }, mentions: ["maxShardBytes"])
    }

    func writeIndex(_ dir: URL, _ text: String) throws {
        try Data(text.utf8).write(to: dir.appendingPathComponent("model.safetensors.index.json"))
    }

    func testIndexMissingShard() throws {
        let (dir, _, _) = try shardedCheckpoint()
        try FileManager.default.removeItem(at: dir.appendingPathComponent("model-00002-of-00003.safetensors"))
        assertCheckpointError(try CheckpointDirectory(url: dir), {
            if case .missingShard(_, _, "layers.0.w") = $0 { return true } else { return false }
        }, mentions: ["model-00002-of-00003.safetensors", "no such file", "'layers.0.w'", "model.safetensors.index.json"])
    }

    func testIndexListsTensorAbsentFromShard() throws {
        let (dir, _, _) = try shardedCheckpoint()
        try writeIndex(dir, #"{"weight_map": {"embed": "model-00001-of-00003.safetensors", "#
            + #""layers.9.w": "model-00002-of-00003.safetensors"}}"#)
        assertCheckpointError(try CheckpointDirectory(url: dir), {
            if case .tensorNotInShard("layers.9.w", _, _) = $0 { return true } else { return false }
        }, mentions: ["'layers.9.w'", "model-00002-of-00003.safetensors", "no such tensor"])
    }

    func testIndexOnlyExposesWeightMapTensors() throws {
        let (dir, _, _) = try shardedCheckpoint()
        try writeIndex(dir, #"{"metadata": {}, "weight_map": {"embed": "model-00001-of-00003.safetensors"}}"#)
        let c = try CheckpointDirectory(url: dir)
        XCTAssertEqual(c.tensorNames, ["embed"])
        XCTAssertEqual(c.files.count, 1)
    }

    func testIndexNotJSON() throws {
        let (dir, _, _) = try shardedCheckpoint()
        try writeIndex(dir, "{\"weight_map\": ")
        assertCheckpointError(try CheckpointDirectory(url: dir), {
            if case .invalidIndex = $0 { return true } else { return false }
        }, mentions: ["model.safetensors.index.json", "not valid JSON"])
        try writeIndex(dir, "[]")
        assertCheckpointError(try CheckpointDirectory(url: dir), {
            if case .invalidIndex = $0 { return true } else { return false }
        }, mentions: ["model.safetensors.index.json", "expected a JSON object"])
    }

    func testIndexWeightMapMalformed() throws {
        let (dir, _, _) = try shardedCheckpoint()
        try writeIndex(dir, #"{"metadata": {"total_size": 1}}"#)
        assertCheckpointError(try CheckpointDirectory(url: dir), {
            if case .invalidIndex = $0 { return true } else { return false }
        }, mentions: ["no \"weight_map\""])
        try writeIndex(dir, #"{"weight_map": ["embed"]}"#)
        assertCheckpointError(try CheckpointDirectory(url: dir), {
            if case .invalidIndex = $0 { return true } else { return false }
        }, mentions: ["\"weight_map\" must be an object", "an array"])
        try writeIndex(dir, #"{"weight_map": {"embed": 3}}"#)
        assertCheckpointError(try CheckpointDirectory(url: dir), {
            if case .invalidIndex = $0 { return true } else { return false }
        }, mentions: ["'embed'", "must be a file name", "3"])
        try writeIndex(dir, #"{"weight_map": {"embed": "../../etc/passwd"}}"#)
        assertCheckpointError(try CheckpointDirectory(url: dir), {
            if case .invalidIndex = $0 { return true } else { return false }
        }, mentions: ["'embed'", "../../etc/passwd", "not a file name inside"])
        try writeIndex(dir, #"{"weight_map": {"embed": "/abs.safetensors"}}"#)
        assertCheckpointError(try CheckpointDirectory(url: dir), {
            if case .invalidIndex = $0 { return true } else { return false }
        }, mentions: ["/abs.safetensors"])
    }

    func testCorruptShardIsNamed() throws {
        let (dir, _, _) = try shardedCheckpoint()
        let shard = dir.appendingPathComponent("model-00003-of-00003.safetensors")
        let data = try Data(contentsOf: shard)
        try data.prefix(data.count - 5).write(to: shard)
        assertCheckpointError(try CheckpointDirectory(url: dir), {
            if case .tensorOutOfBounds = $0 { return true } else { return false }
        }, mentions: ["model-00003-of-00003.safetensors", "truncated"])
    }

    func testConcurrentMatrixAccessOnMisalignedData() throws {
        let dir = try misalignedCheckpoint(f32: (0 ..< 8).map { i in ("m\(i)", [4, 4], (0 ..< 16).map { Float($0 + i) }) })
        let c = try CheckpointDirectory(url: dir)
        DispatchQueue.concurrentPerform(iterations: 64) { k in
            let m = try! c.matrix("m\(k % 8)", rows: 4, cols: 4)
            XCTAssertEqual(Int(bitPattern: m.data) % 4, 0)
            XCTAssertEqual(m.element(3, 3), Float(15 + k % 8))
        }
    }
}
