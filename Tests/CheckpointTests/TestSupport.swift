import Foundation
import XCTest
@testable import Checkpoint

/// A fresh temporary directory per test, removed afterwards.
class TempDirTestCase: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory
            .appendingPathComponent("CheckpointTests-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        if let tmp { try? FileManager.default.removeItem(at: tmp) }
    }

    /// Writes a safetensors file from a raw header string and data bytes. `length` overrides the
    /// 8-byte header-length prefix.
    @discardableResult
    func rawSafetensors(_ name: String = "model.safetensors", header: String, data: [UInt8] = [],
                        length: UInt64? = nil, in dir: URL? = nil) throws -> URL {
        let url = (dir ?? tmp).appendingPathComponent(name)
        let h = Array(header.utf8)
        var n = (length ?? UInt64(h.count)).littleEndian
        var bytes = withUnsafeBytes(of: &n) { Array($0) }
        bytes += h
        bytes += data
        try Data(bytes).write(to: url)
        return url
    }

    /// A header string from a dictionary.
    func headerJSON(_ object: [String: Any]) throws -> String {
        String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self)
    }

    /// A header with one tensor entry.
    func oneTensorHeader(_ name: String = "w", _ entry: [String: Any]) throws -> String {
        try headerJSON([name: entry])
    }

    /// Writes a checkpoint directory with `config` and a single model.safetensors built by `writer`.
    func checkpoint(config: [String: Any] = ["model_type": "test"], _ build: (inout SafetensorsWriter) -> Void) throws -> URL {
        let dir = tmp.appendingPathComponent("ckpt-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try JSONSerialization.data(withJSONObject: config).write(to: dir.appendingPathComponent("config.json"))
        var w = SafetensorsWriter()
        build(&w)
        try w.write(to: dir.appendingPathComponent("model.safetensors"))
        return dir
    }
}

/// Asserts that `body` throws a `CheckpointError` accepted by `match` whose description contains
/// every string in `mentions` (case-insensitively). Returns the error.
@discardableResult
func assertCheckpointError<T>(
    _ body: @autoclosure () throws -> T,
    _ match: (CheckpointError) -> Bool,
    mentions: [String] = [],
    file: StaticString = #filePath, line: UInt = #line
) -> CheckpointError? {
    do {
        let value = try body()
        XCTFail("expected a CheckpointError, got \(value)", file: file, line: line)
        return nil
    } catch let error as CheckpointError {
        XCTAssertTrue(match(error), "unexpected error case: \(error)", file: file, line: line)
        let text = error.description.lowercased()
        for m in mentions {
            XCTAssertTrue(text.contains(m.lowercased()), "description lacks '\(m)': \(error.description)", file: file, line: line)
        }
        XCTAssertEqual(error.localizedDescription, error.description, file: file, line: line)
        return error
    } catch {
        XCTFail("expected a CheckpointError, got \(type(of: error)): \(error)", file: file, line: line)
        return nil
    }
}

/// Deterministic pseudo-random bytes.
func pseudoRandomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var s = seed &+ 0x9E37_79B9_7F4A_7C15
    return (0 ..< count).map { _ in
        s = s &* 6364136223846793005 &+ 1442695040888963407
        return UInt8(truncatingIfNeeded: s >> 33)
    }
}

func bytesOf(_ values: [Float]) -> [UInt8] { values.withUnsafeBytes { Array($0) } }
