import Foundation
import Kernels
import XCTest
@testable import Checkpoint

final class GGUFFileTests: TempDirTestCase {
    /// A small valid file: metadata of several types and three tensors (F32, Q8_0, Q4_1).
    func sample() -> GGUFWriter {
        var w = GGUFWriter()
        w.metadata = [("general.architecture", .string("llama")), ("llama.block_count", .uint32(2)),
                      ("llama.attention.layer_norm_rms_epsilon", .float32(1e-5)), ("flag", .bool(true)),
                      ("names", .array([.string("a"), .string("bé")])), ("nums", .array([.int32(-1), .int32(7)]))]
        w.addF32("norm.weight", dims: [4], values: [1, 2, 3, 4])
        w.tensors.append(.init(name: "q8.weight", dims: [32, 2], typeID: 8, bytes: [UInt8](repeating: 1, count: 68)))
        w.tensors.append(.init(name: "q41.weight", dims: [64, 1], typeID: 3, bytes: [UInt8](repeating: 2, count: 40)))
        return w
    }

    func testParsesMetadataAndTensors() throws {
        let url = tmp.appendingPathComponent("ok.gguf")
        try sample().write(to: url)
        let f = try GGUFFile(url: url)
        XCTAssertEqual(f.version, 3)
        XCTAssertEqual(try f.string("general.architecture"), "llama")
        XCTAssertEqual(try f.int("llama.block_count"), 2)
        XCTAssertEqual(try f.double("llama.attention.layer_norm_rms_epsilon"), Double(Float(1e-5)))
        XCTAssertEqual(try f.optionalBool("flag"), true)
        XCTAssertEqual(try f.stringArray("names"), ["a", "bé"])
        XCTAssertEqual(try f.intArray("nums"), [-1, 7])
        XCTAssertEqual(f.tensorNames, ["norm.weight", "q8.weight", "q41.weight"])
        let (norm, d) = try f.tensor("norm.weight")
        XCTAssertEqual(d, .f32)
        XCTAssertEqual(norm.data.loadUnaligned(fromByteOffset: 8, as: Float.self), 3)
        XCTAssertEqual(try f.tensor("q8.weight").dtype, .q8_0)
        XCTAssertEqual(try f.tensor("q41.weight").info.byteCount, 40)
        for t in f.tensors.values { XCTAssertEqual(Int(bitPattern: t.data) % 32, 0, "\(t.name) is aligned") }
        XCTAssertThrowsError(try f.string("llama.block_count")) { XCTAssertTrue("\($0)".contains("expected string"), "\($0)") }
        XCTAssertThrowsError(try f.int("missing.key")) { XCTAssertTrue("\($0)".contains("missing.key"), "\($0)") }
    }

    /// Every kind of corruption is a GGUFError naming the problem; none traps.
    func testCorruptFilesAreClearErrors() throws {
        let good = sample().encode()
        func check(_ bytes: [UInt8], _ expected: String, line: UInt = #line) {
            let url = tmp.appendingPathComponent("\(UUID().uuidString).gguf")
            try? Data(bytes).write(to: url)
            XCTAssertThrowsError(try GGUFFile(url: url), line: line) { e in
                XCTAssertTrue(e is GGUFError, "\(e)", line: line)
                XCTAssertTrue("\(e)".contains(expected), "'\(e)' should mention '\(expected)'", line: line)
            }
        }
        var b = good; b[0] = UInt8(ascii: "X")
        check(b, "not a GGUF file")
        b = good; b[4] = 9
        check(b, "version 9")
        check(Array(good.prefix(2)), "truncated")
        check(Array(good.prefix(30)), "truncated")
        // The first key's length (after magic, version, two counts) claims 2^40 bytes.
        b = good; b[24 + 5] = 1
        check(b, "truncated")
        // The data section cut short: the last tensor runs past the end.
        check(Array(good.dropLast(10)), "q41.weight")
        // Unknown ggml type, misaligned offset, bad dims: rewrite a tensor info.
        var w = sample(); w.tensors[2].typeID = 77
        check(w.encode(), "unknown ggml type id 77")
        w = sample(); w.tensors[1].dims = [30, 2]
        check(w.encode(), "not a multiple")
        w = sample(); w.tensors[1].name = "norm.weight"
        check(w.encode(), "appears twice")
        w = sample(); w.metadata.append(("general.alignment", .uint32(3)))
        check(w.encode(), "power of two")
        // Random byte flips anywhere in the header: an error or a valid parse, never a trap.
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<300 {
            var m = good
            for _ in 0..<3 { m[Int.random(in: 0..<min(m.count, 400), using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
            let url = tmp.appendingPathComponent("fuzz.gguf")
            try Data(m).write(to: url)
            _ = try? GGUFFile(url: url)
        }
    }

    func testUnsupportedTypeIsNamedWhenUsed() throws {
        var w = sample()
        w.tensors.append(.init(name: "iq.weight", dims: [256, 1], typeID: 16, bytes: [UInt8](repeating: 0, count: 66)))
        let url = tmp.appendingPathComponent("iq.gguf")
        try w.write(to: url)
        let f = try GGUFFile(url: url)
        XCTAssertThrowsError(try f.tensor("iq.weight")) { e in
            XCTAssertTrue("\(e)".contains("IQ2_XXS"), "\(e)")
        }
    }
}
