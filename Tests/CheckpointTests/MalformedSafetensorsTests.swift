import Foundation
import XCTest
@testable import Checkpoint

/// Every way a safetensors file can be broken earns a specific error naming the problem.
final class MalformedSafetensorsTests: TempDirTestCase {
    let good: [String: Any] = ["dtype": "F32", "shape": [2], "data_offsets": [0, 8]]

    func open(_ url: URL) throws -> SafetensorsFile { try SafetensorsFile(url: url) }

    func entryError(_ entry: [String: Any], mentions: [String], line: UInt = #line) throws {
        let url = try rawSafetensors(header: try oneTensorHeader("w", entry), data: [UInt8](repeating: 0, count: 8))
        assertCheckpointError(try open(url), {
            if case .invalidTensorEntry(_, "w", _) = $0 { return true } else { return false }
        }, mentions: ["model.safetensors", "'w'"] + mentions, line: line)
    }

    // MARK: file-level

    func testMissingFile() {
        let url = tmp.appendingPathComponent("absent.safetensors")
        assertCheckpointError(try open(url), {
            if case .fileNotFound(url, _) = $0 { return true } else { return false }
        }, mentions: ["absent.safetensors", "no such file"])
    }

    func testEmptyFile() throws {
        let url = tmp.appendingPathComponent("empty.safetensors")
        try Data().write(to: url)
        assertCheckpointError(try open(url), {
            if case .fileTooSmall(_, 0) = $0 { return true } else { return false }
        }, mentions: ["empty.safetensors", "0 bytes", "empty or truncated"])
    }

    func testShorterThanLengthPrefix() throws {
        let url = tmp.appendingPathComponent("short.safetensors")
        try Data([1, 0, 0, 0, 0]).write(to: url)
        assertCheckpointError(try open(url), {
            if case .fileTooSmall(_, 5) = $0 { return true } else { return false }
        }, mentions: ["short.safetensors", "5 bytes", "8-byte"])
    }

    func testDirectoryInsteadOfFile() throws {
        let url = tmp.appendingPathComponent("dir.safetensors")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        assertCheckpointError(try open(url), {
            if case .unreadableFile = $0 { return true } else { return false }
        }, mentions: ["dir.safetensors", "not a regular file"])
    }

    func testHeaderLengthBeyondFile() throws {
        let url = try rawSafetensors(header: "{}", length: 4096)
        assertCheckpointError(try open(url), {
            if case .invalidHeaderLength(_, 4096, 10) = $0 { return true } else { return false }
        }, mentions: ["model.safetensors", "4096", "only 2 bytes", "truncated"])
    }

    func testAbsurdHeaderLength() throws {
        for n: UInt64 in [100_000_001, 1 << 40, .max] {
            // A file really that large would be fine to reject too; this one is small.
            let url = try rawSafetensors(header: "{}", length: n)
            assertCheckpointError(try open(url), {
                if case .invalidHeaderLength(_, n, _) = $0 { return true } else { return false }
            }, mentions: ["\(n)", "100 MB"])
        }
    }

    func testHeaderNotJSON() throws {
        let url = try rawSafetensors(header: "{\"w\": {\"dtype\": ")
        assertCheckpointError(try open(url), {
            if case .invalidHeader = $0 { return true } else { return false }
        }, mentions: ["model.safetensors", "not valid JSON"])
        let binary = try rawSafetensors("bin.safetensors", header: String(decoding: [0xFF, 0xFE, 0x00, 0x7B], as: UTF8.self))
        assertCheckpointError(try open(binary), {
            if case .invalidHeader = $0 { return true } else { return false }
        }, mentions: ["bin.safetensors", "not valid JSON"])
    }

    func testEmptyHeader() throws {
        let url = try rawSafetensors(header: "        ")
        assertCheckpointError(try open(url), {
            if case .invalidHeader = $0 { return true } else { return false }
        }, mentions: ["header is empty"])
    }

    func testHeaderNotAnObject() throws {
        for (i, h) in ["[1, 2]", "\"text\"", "42", "null"].enumerated() {
            let url = try rawSafetensors("h\(i).safetensors", header: h)
            assertCheckpointError(try open(url), {
                if case .invalidHeader = $0 { return true } else { return false }
            }, mentions: ["h\(i).safetensors", "expected a JSON object"])
        }
    }

    func testHeaderPaddedWithNULsIsAccepted() throws {
        let url = try rawSafetensors(header: try oneTensorHeader("w", good) + "\0\0\0 ", data: bytesOf([1, 2]))
        XCTAssertEqual(try open(url)["w"]?.shape, [2])
    }

    func testMalformedMetadata() throws {
        let a = try rawSafetensors("a.safetensors", header: try headerJSON(["__metadata__": ["format": 1]]))
        assertCheckpointError(try open(a), {
            if case .invalidHeader = $0 { return true } else { return false }
        }, mentions: ["__metadata__", "\"format\"", "must be a string"])
        let b = try rawSafetensors("b.safetensors", header: try headerJSON(["__metadata__": ["x", "y"]]))
        assertCheckpointError(try open(b), {
            if case .invalidHeader = $0 { return true } else { return false }
        }, mentions: ["__metadata__", "an array"])
    }

    // MARK: tensor entries

    func testEntryNotAnObject() throws {
        let url = try rawSafetensors(header: try headerJSON(["w": [1, 2]]))
        assertCheckpointError(try open(url), {
            if case .invalidTensorEntry(_, "w", _) = $0 { return true } else { return false }
        }, mentions: ["'w'", "expected an object"])
    }

    func testMissingDType() throws {
        try entryError(["shape": [2], "data_offsets": [0, 8]], mentions: ["missing \"dtype\""])
    }

    func testMissingShape() throws {
        try entryError(["dtype": "F32", "data_offsets": [0, 8]], mentions: ["missing \"shape\""])
    }

    func testMissingDataOffsets() throws {
        try entryError(["dtype": "F32", "shape": [2]], mentions: ["missing \"data_offsets\""])
    }

    func testWrongTypes() throws {
        try entryError(["dtype": 5, "shape": [2], "data_offsets": [0, 8]], mentions: ["\"dtype\" must be a string", "5"])
        try entryError(["dtype": "F32", "shape": "2", "data_offsets": [0, 8]], mentions: ["\"shape\"", "\"2\""])
        try entryError(["dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]], mentions: ["\"shape\"", "2.5"])
        try entryError(["dtype": "F32", "shape": [true], "data_offsets": [0, 8]], mentions: ["\"shape\"", "true"])
        try entryError(["dtype": "F32", "shape": [2], "data_offsets": "0-8"], mentions: ["data_offsets", "[begin, end]"])
        try entryError(["dtype": "F32", "shape": [2], "data_offsets": [8]], mentions: ["data_offsets", "[8]"])
        try entryError(["dtype": "F32", "shape": [2], "data_offsets": [0, 4, 8]], mentions: ["data_offsets", "[0, 4, 8]"])
        try entryError(["dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]], mentions: ["data_offsets"])
        try entryError(["dtype": "F32", "shape": [2], "data_offsets": [0.0, 8.5]], mentions: ["data_offsets"])
    }

    func testNegativeDimension() throws {
        try entryError(["dtype": "F32", "shape": [-2], "data_offsets": [0, 8]], mentions: ["non-negative", "[-2]"])
    }

    func testNegativeOffset() throws {
        try entryError(["dtype": "F32", "shape": [2], "data_offsets": [-8, 0]], mentions: ["0 <= begin <= end", "[-8, 0]"])
    }

    func testOffsetsReversed() throws {
        try entryError(["dtype": "F32", "shape": [2], "data_offsets": [8, 0]], mentions: ["begin <= end", "[8, 0]"])
    }

    func testUnknownDType() throws {
        let url = try rawSafetensors(header: try oneTensorHeader("w", ["dtype": "F4", "shape": [2], "data_offsets": [0, 1]]),
                                     data: [0])
        assertCheckpointError(try open(url), {
            if case .unsupportedDType("F4", "w", _, []) = $0 { return true } else { return false }
        }, mentions: ["model.safetensors", "'w'", "'F4'", "not supported", "BF16"])
    }

    func testShapeProductOverflow() throws {
        try entryError(["dtype": "F32", "shape": [1 << 62, 4], "data_offsets": [0, 8]], mentions: ["overflow"])
        // Elements fit, bytes do not.
        try entryError(["dtype": "F64", "shape": [1 << 61], "data_offsets": [0, 8]], mentions: ["overflow"])
    }

    func testHugeOffsetsDoNotOverflow() throws {
        try entryError(["dtype": "F32", "shape": [2], "data_offsets": [0, UInt64.max]], mentions: ["data_offsets"])
        let url = try rawSafetensors(
            header: try oneTensorHeader("w", ["dtype": "U8", "shape": [8], "data_offsets": [Int.max - 8, Int.max]]),
            data: [UInt8](repeating: 0, count: 8))
        assertCheckpointError(try open(url), {
            if case .tensorOutOfBounds = $0 { return true } else { return false }
        }, mentions: ["truncated"])
    }

    func testByteCountDisagreesWithShape() throws {
        let url = try rawSafetensors(header: try oneTensorHeader("w", ["dtype": "F32", "shape": [3], "data_offsets": [0, 8]]),
                                     data: [UInt8](repeating: 0, count: 12))
        assertCheckpointError(try open(url), {
            if case .byteCountMismatch(_, "w", .f32, [3], 12, 8) = $0 { return true } else { return false }
        }, mentions: ["'w'", "F32", "[3]", "12 bytes", "span 8 bytes"])
    }

    func testTensorBeyondDataRegion() throws {
        let url = try rawSafetensors(header: try oneTensorHeader("w", ["dtype": "F32", "shape": [4], "data_offsets": [0, 16]]),
                                     data: [UInt8](repeating: 0, count: 10))
        assertCheckpointError(try open(url), {
            if case .tensorOutOfBounds(_, "w", 16, 10) = $0 { return true } else { return false }
        }, mentions: ["model.safetensors", "'w'", "byte 16", "only 10 bytes", "truncated"])
    }

    func testTruncatedRealFile() throws {
        var w = SafetensorsWriter()
        w.add(name: "a", dtype: .f32, shape: [64], bytes: pseudoRandomBytes(256, seed: 1))
        w.add(name: "b", dtype: .f32, shape: [64], bytes: pseudoRandomBytes(256, seed: 2))
        let url = tmp.appendingPathComponent("model.safetensors")
        try w.write(to: url)
        let data = try Data(contentsOf: url)
        try data.prefix(data.count - 100).write(to: url)
        assertCheckpointError(try open(url), {
            if case .tensorOutOfBounds(_, "b", 512, 412) = $0 { return true } else { return false }
        }, mentions: ["model.safetensors", "'b'", "truncated"])
        try data.prefix(40).write(to: url)
        assertCheckpointError(try open(url), {
            if case .invalidHeaderLength = $0 { return true } else { return false }
        }, mentions: ["model.safetensors", "truncated"])
    }

    func testOverlappingTensors() throws {
        let header = try headerJSON([
            "a": ["dtype": "F32", "shape": [2], "data_offsets": [0, 8]],
            "b": ["dtype": "F32", "shape": [2], "data_offsets": [4, 12]],
        ])
        let url = try rawSafetensors(header: header, data: [UInt8](repeating: 0, count: 12))
        assertCheckpointError(try open(url), {
            if case .overlappingTensors(_, "a", 0 ..< 8, "b", 4 ..< 12) = $0 { return true } else { return false }
        }, mentions: ["'a'", "'b'", "overlap"])
    }

    func testOverlapWithEarlierLongTensor() throws {
        // c lies inside a, not adjacent to it in sorted order once b is between them.
        let header = try headerJSON([
            "a": ["dtype": "U8", "shape": [100], "data_offsets": [0, 100]],
            "b": ["dtype": "U8", "shape": [10], "data_offsets": [10, 20]],
            "c": ["dtype": "U8", "shape": [10], "data_offsets": [30, 40]],
        ])
        let url = try rawSafetensors(header: header, data: [UInt8](repeating: 0, count: 100))
        assertCheckpointError(try open(url), {
            if case .overlappingTensors(_, "a", _, "b", _) = $0 { return true } else { return false }
        }, mentions: ["overlap"])
    }

    func testIdenticalRangesOverlap() throws {
        let header = try headerJSON([
            "a": ["dtype": "F32", "shape": [2], "data_offsets": [0, 8]],
            "b": ["dtype": "F32", "shape": [2], "data_offsets": [0, 8]],
        ])
        let url = try rawSafetensors(header: header, data: [UInt8](repeating: 0, count: 8))
        assertCheckpointError(try open(url), {
            if case .overlappingTensors = $0 { return true } else { return false }
        }, mentions: ["'a'", "'b'", "overlap"])
    }

    /// Zero-size tensors occupy no bytes, so they overlap nothing; gaps and trailing bytes are
    /// tolerated (no tensor reads them).
    func testZeroSizeTensorsAndGapsAreAccepted() throws {
        let header = try headerJSON([
            "a": ["dtype": "F32", "shape": [2], "data_offsets": [0, 8]],
            "empty1": ["dtype": "F32", "shape": [0], "data_offsets": [4, 4]],
            "empty2": ["dtype": "BF16", "shape": [3, 0], "data_offsets": [16, 16]],
            "b": ["dtype": "U8", "shape": [2], "data_offsets": [12, 14]],
        ])
        let url = try rawSafetensors(header: header, data: [UInt8](repeating: 7, count: 20))
        let f = try open(url)
        XCTAssertEqual(f.tensorNames, ["a", "b", "empty1", "empty2"])
        XCTAssertEqual(f["empty2"]?.byteCount, 0)
        XCTAssertEqual(f["empty2"]?.elementCount, 0)
        XCTAssertEqual(Array(try XCTUnwrap(f["b"]).bytes), [7, 7])
    }

    func testExtraEntryKeysAreIgnored() throws {
        var entry = good
        entry["extra"] = ["anything": true]
        let url = try rawSafetensors(header: try oneTensorHeader("w", entry), data: bytesOf([3, 4]))
        XCTAssertEqual(try open(url)["w"]?.dtype, .f32)
    }

    // MARK: robustness

    /// Every prefix of a valid file, and many single-byte corruptions of its header, either open
    /// or fail with a CheckpointError; whatever opens has every tensor inside the file.
    func testTruncationsAndCorruptionsNeverTrap() throws {
        var w = SafetensorsWriter()
        w.add(name: "embed", dtype: .bf16, shape: [4, 3], bytes: pseudoRandomBytes(24, seed: 3))
        w.add(name: "norm", dtype: .f32, shape: [3], bytes: pseudoRandomBytes(12, seed: 4))
        w.add(name: "ids", dtype: .i64, shape: [], bytes: pseudoRandomBytes(8, seed: 5))
        let url = tmp.appendingPathComponent("good.safetensors")
        try w.write(to: url)
        let original = [UInt8](try Data(contentsOf: url))
        let headerEnd = 8 + Int(original[0 ..< 8].withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        let probe = tmp.appendingPathComponent("probe.safetensors")

        func attempt(_ bytes: [UInt8]) throws {
            try Data(bytes).write(to: probe)
            do {
                let f = try SafetensorsFile(url: probe)
                for t in f.tensors.values {
                    XCTAssertEqual(t.byteCount, t.elementCount * t.dtype.byteSize)
                    XCTAssertLessThanOrEqual(t.byteCount, bytes.count)
                }
            } catch {
                XCTAssertFalse(error.description.isEmpty)  // typed throws: always a CheckpointError
            }
        }
        for n in 0 ..< original.count { try attempt(Array(original.prefix(n))) }
        var rng = SystemRandomNumberGenerator()
        let replacements: [UInt8] = Array("{}[]\",:0123456789-.eE tfn".utf8) + [0, 0xFF]
        for _ in 0 ..< 400 {
            var b = original
            let i = Int.random(in: 0 ..< headerEnd, using: &rng)
            b[i] = replacements.randomElement(using: &rng)!
            try attempt(b)
        }
    }
}
