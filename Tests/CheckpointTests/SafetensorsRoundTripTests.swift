import Foundation
import Kernels
import XCTest
@testable import Checkpoint

final class SafetensorsRoundTripTests: TempDirTestCase {
    static let shapes: [[Int]] = [[], [0], [1], [5], [2, 3], [3, 0], [0, 4], [2, 0, 4], [1, 1, 1, 1], [2, 3, 4]]

    func testDTypeSizesAndComputeTypes() {
        let sizes: [TensorDType: Int] = [.f64: 8, .f32: 4, .f16: 2, .bf16: 2, .i64: 8, .i32: 4, .i16: 2, .i8: 1,
                                         .u8: 1, .bool: 1, .f8e4m3: 1, .f8e5m2: 1]
        XCTAssertEqual(sizes.count, TensorDType.allCases.count)
        for d in TensorDType.allCases { XCTAssertEqual(d.byteSize, sizes[d], "\(d)") }
        XCTAssertEqual(TensorDType.f32.computeType, .f32)
        XCTAssertEqual(TensorDType.f16.computeType, .f16)
        XCTAssertEqual(TensorDType.bf16.computeType, .bf16)
        for d in TensorDType.allCases where ![.f32, .f16, .bf16].contains(d) { XCTAssertNil(d.computeType, "\(d)") }
        XCTAssertEqual(TensorDType(rawValue: "F8_E4M3"), .f8e4m3)
        XCTAssertEqual(TensorDType(rawValue: "BOOL"), .bool)
    }

    func testRoundTripEveryDTypeAndShape() throws {
        var writer = SafetensorsWriter()
        var expected: [String: (TensorDType, [Int], [UInt8])] = [:]
        var seed: UInt64 = 1
        for dtype in TensorDType.allCases {
            for shape in Self.shapes {
                let name = "t.\(dtype.rawValue).\(shape.map(String.init).joined(separator: "x"))"
                let bytes = pseudoRandomBytes(shape.reduce(1, *) * dtype.byteSize, seed: seed)
                seed += 1
                writer.add(name: name, dtype: dtype, shape: shape, bytes: bytes)
                expected[name] = (dtype, shape, bytes)
            }
        }
        let url = tmp.appendingPathComponent("all.safetensors")
        try writer.write(to: url, metadata: ["format": "pt", "note": "round \"trip\"\n"])

        let file = try SafetensorsFile(url: url)
        XCTAssertEqual(file.metadata, ["format": "pt", "note": "round \"trip\"\n"])
        XCTAssertEqual(Set(file.tensors.keys), Set(expected.keys))
        XCTAssertEqual(file.tensorNames, expected.keys.sorted())
        for (name, (dtype, shape, bytes)) in expected {
            let t = try XCTUnwrap(file[name])
            XCTAssertEqual(t.name, name)
            XCTAssertEqual(t.dtype, dtype, name)
            XCTAssertEqual(t.shape, shape, name)
            XCTAssertEqual(t.elementCount, shape.reduce(1, *), name)
            XCTAssertEqual(t.byteCount, bytes.count, name)
            XCTAssertEqual(Array(t.bytes), bytes, name)
        }
        XCTAssertEqual(file["t.F32."]?.shape, [])
        XCTAssertEqual(file["t.F32."]?.elementCount, 1)
    }

    func testAddOverloadsAgree() throws {
        let bytes = pseudoRandomBytes(24, seed: 7)
        var w = SafetensorsWriter()
        w.add(name: "array", dtype: .f32, shape: [2, 3], bytes: bytes)
        w.add(name: "data", dtype: .i16, shape: [12], bytes: Data(bytes))
        bytes.withUnsafeBytes { w.add(name: "raw", dtype: .u8, shape: [4, 6], bytes: $0) }
        w.add(name: "produced", dtype: .i64, shape: [3]) { buf in
            XCTAssertEqual(buf.count, 24)
            XCTAssertTrue(buf.allSatisfy { $0 == 0 }, "producer buffer starts zeroed")
            buf.copyBytes(from: bytes)
        }
        w.add(name: "floats", dtype: .bf16, shape: [2], floats: [1.5, -2])
        XCTAssertEqual(w.count, 5)
        XCTAssertEqual(w.totalBytes, 24 * 4 + 4)
        let url = tmp.appendingPathComponent("o.safetensors")
        try w.write(to: url)
        let f = try SafetensorsFile(url: url)
        for n in ["array", "data", "raw", "produced"] { XCTAssertEqual(Array(try XCTUnwrap(f[n]).bytes), bytes, n) }
        XCTAssertEqual(Array(try XCTUnwrap(f["floats"]).bytes), [0xC0, 0x3F, 0x00, 0xC0])
        XCTAssertEqual(f.metadata, ["format": "pt"])
    }

    func testProducerStreamsEachTensorOncePerWrite() throws {
        var calls = 0
        var w = SafetensorsWriter()
        for i in 0 ..< 4 {
            w.add(name: "layer.\(i)", dtype: .f32, shape: [256, 64]) { buf in
                calls += 1
                let f = buf.bindMemory(to: Float.self)
                for j in 0 ..< f.count { f[j] = Float(i * 100_000 + j) }
            }
        }
        let url = tmp.appendingPathComponent("stream.safetensors")
        try w.write(to: url)
        XCTAssertEqual(calls, 4)
        let f = try SafetensorsFile(url: url)
        let t = try XCTUnwrap(f["layer.3"])
        XCTAssertEqual(t.byteCount, 256 * 64 * 4)
        XCTAssertEqual(t.data.loadUnaligned(fromByteOffset: 4 * 17, as: Float.self), 300_017)
    }

    func testProducerErrorLeavesNoFile() throws {
        struct Boom: Error {}
        var w = SafetensorsWriter()
        w.add(name: "a", dtype: .u8, shape: [3], bytes: [1, 2, 3])
        w.add(name: "b", dtype: .u8, shape: [3]) { _ in throw Boom() }
        let url = tmp.appendingPathComponent("x.safetensors")
        XCTAssertThrowsError(try w.write(to: url)) { XCTAssertTrue($0 is Boom) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: url.path))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: tmp.path), [], "no partial file left behind")
    }

    /// The layout the reference implementation produces: length prefix, header padded with spaces
    /// to a multiple of 8, `__metadata__` first, tensors by dtype alignment (widest first) then
    /// name, with contiguous offsets.
    func testHeaderLayoutMatchesReference() throws {
        var w = SafetensorsWriter()
        w.add(name: "b", dtype: .f32, shape: [2], bytes: bytesOf([1, 2]))
        w.add(name: "a", dtype: .u8, shape: [3], bytes: [9, 8, 7])
        w.add(name: "c", dtype: .f16, shape: [], bytes: [0, 0x3C])
        w.add(name: "d", dtype: .f32, shape: [1], bytes: bytesOf([5]))
        let url = tmp.appendingPathComponent("layout.safetensors")
        try w.write(to: url)
        let raw = [UInt8](try Data(contentsOf: url))
        let n = Int(raw[0 ..< 8].withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        XCTAssertEqual((8 + n) % 8, 0)
        let header = String(decoding: raw[8 ..< 8 + n], as: UTF8.self)
        let trimmed = header.replacingOccurrences(of: " +$", with: "", options: .regularExpression)
        XCTAssertEqual(trimmed, #"{"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"#
            + #""d":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},"c":{"dtype":"F16","shape":[],"data_offsets":[12,14]},"#
            + #""a":{"dtype":"U8","shape":[3],"data_offsets":[14,17]}}"#)
        XCTAssertTrue(header.dropFirst(trimmed.count).allSatisfy { $0 == " " })
        XCTAssertEqual(Array(raw[(8 + n)...]), bytesOf([1, 2, 5]) + [0, 0x3C] + [9, 8, 7])
        XCTAssertEqual(raw.count, 8 + n + 17)
    }

    /// The reference's own serialization test vector (safetensors `test_serialization`).
    func testReferenceTestVector() throws {
        var w = SafetensorsWriter()
        w.add(name: "attn.0", dtype: .f32, shape: [1, 2, 3], floats: [0, 1, 2, 3, 4, 5])
        let url = tmp.appendingPathComponent("ref.safetensors")
        try w.write(to: url, metadata: [:])
        let expected: [UInt8] = [
            64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100,
            116, 121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34,
            58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115,
            101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0, 0, 0, 0, 0, 128, 63,
            0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64,
        ]
        XCTAssertEqual([UInt8](try Data(contentsOf: url)), expected)
    }

    /// Every tensor the writer produces is aligned to its element size, whatever the mix of dtypes.
    func testWrittenTensorsAreAligned() throws {
        var w = SafetensorsWriter()
        for (i, d) in TensorDType.allCases.enumerated() {
            w.add(name: "t\(i)", dtype: d, shape: [3], bytes: pseudoRandomBytes(3 * d.byteSize, seed: UInt64(i)))
        }
        let url = tmp.appendingPathComponent("aligned.safetensors")
        try w.write(to: url)
        let f = try SafetensorsFile(url: url)
        for t in f.tensors.values { XCTAssertEqual(Int(bitPattern: t.data) % t.dtype.byteSize, 0, t.name) }
    }

    func testEmptyMetadataIsOmittedAndEmptyFileHasNoTensors() throws {
        let url = tmp.appendingPathComponent("empty.safetensors")
        try SafetensorsWriter().write(to: url, metadata: [:])
        let raw = try Data(contentsOf: url)
        XCTAssertEqual(String(decoding: raw.dropFirst(8), as: UTF8.self), "{}      ")
        let f = try SafetensorsFile(url: url)
        XCTAssertTrue(f.tensors.isEmpty)
        XCTAssertTrue(f.metadata.isEmpty)
    }

    func testNamesNeedingEscapes() throws {
        let names = ["quote\"d", "back\\slash", "new\nline", "tab\t", "ctrl\u{01}", "ünïcødé.权重", ""]
        var w = SafetensorsWriter()
        for (i, n) in names.enumerated() { w.add(name: n, dtype: .u8, shape: [1], bytes: [UInt8(i)]) }
        let url = tmp.appendingPathComponent("names.safetensors")
        try w.write(to: url)
        let f = try SafetensorsFile(url: url)
        XCTAssertEqual(Set(f.tensors.keys), Set(names))
        for (i, n) in names.enumerated() { XCTAssertEqual(f[n]?.bytes.first, UInt8(i), n) }
    }

    func testOverwritesExistingFile() throws {
        let url = tmp.appendingPathComponent("m.safetensors")
        try Data(repeating: 0xFF, count: 1000).write(to: url)
        var w = SafetensorsWriter()
        w.add(name: "x", dtype: .u8, shape: [1], bytes: [1])
        try w.write(to: url)
        XCTAssertEqual(try SafetensorsFile(url: url).tensorNames, ["x"])
    }

    // MARK: writer validation

    func testWriterRejectsBadInputBeforeWriting() throws {
        let url = tmp.appendingPathComponent("bad.safetensors")
        func check(_ build: (inout SafetensorsWriter) -> Void, _ mentions: [String], line: UInt = #line) {
            var w = SafetensorsWriter()
            build(&w)
            assertCheckpointError(try w.write(to: url), {
                if case .invalidTensorForWriting = $0 { return true } else { return false }
            }, mentions: mentions, line: line)
            XCTAssertFalse(FileManager.default.fileExists(atPath: url.path), line: line)
        }
        check({ $0.add(name: "w", dtype: .f32, shape: [2, 2], bytes: [0, 0, 0]) }, ["'w'", "16 bytes", "3 were given"])
        check({ $0.add(name: "w", dtype: .f32, shape: [-1], bytes: []) }, ["'w'", "negative"])
        check({ $0.add(name: "w", dtype: .f64, shape: [Int.max / 4, 2]) { _ in } }, ["'w'", "overflow"])
        check({
            $0.add(name: "w", dtype: .u8, shape: [1], bytes: [1])
            $0.add(name: "w", dtype: .u8, shape: [1], bytes: [2])
        }, ["'w'", "more than once"])
        check({ $0.add(name: "__metadata__", dtype: .u8, shape: [1], bytes: [1]) }, ["reserved"])
        check({ $0.add(name: "ids", dtype: .i32, shape: [1], floats: [1]) }, ["'ids'", "I32"])
    }

    func testWriteToMissingDirectoryFails() {
        var w = SafetensorsWriter()
        w.add(name: "x", dtype: .u8, shape: [1], bytes: [1])
        let url = tmp.appendingPathComponent("no/such/dir/m.safetensors")
        assertCheckpointError(try w.write(to: url), {
            if case .writeFailed = $0 { return true } else { return false }
        }, mentions: ["m.safetensors"])
    }

    func testEncodeFloats() throws {
        let v: [Float] = [1, -2.5, 0.1, 65504, .infinity]
        XCTAssertEqual(SafetensorsWriter.encode(v, as: .f32), bytesOf(v))
        let f16 = try XCTUnwrap(SafetensorsWriter.encode(v, as: .f16))
        let bf16 = try XCTUnwrap(SafetensorsWriter.encode(v, as: .bf16))
        XCTAssertNil(SafetensorsWriter.encode(v, as: .i8))
        func u16(_ b: [UInt8], _ i: Int) -> UInt16 { UInt16(b[2 * i]) | UInt16(b[2 * i + 1]) << 8 }
        XCTAssertEqual((0 ..< 5).map { u16(f16, $0) }, v.map { Float16($0).bitPattern })
        // bf16(0.1) rounds 0x3DCCCCCD to nearest even: 0x3DCD.
        XCTAssertEqual((0 ..< 5).map { u16(bf16, $0) }, [0x3F80, 0xC020, 0x3DCD, 0x4780, 0x7F80])
        XCTAssertTrue(Float(bitPattern: UInt32(SafetensorsWriter.bf16Bits(.nan)) << 16).isNaN)
    }
}
