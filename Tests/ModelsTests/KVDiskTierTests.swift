import Foundation
import Kernels
import Models
import XCTest

/// The KV disk tier (`--kv-disk`): block files round-trip, and a file that is damaged, cut short
/// or made for another model or dtype is never read as KV but ignored and removed.
final class KVDiskTierTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "farside-kvdisk-\(UUID().uuidString)"
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: dir)
    }

    static let layout = KVBlockFile.Layout(fingerprint: 0x1234_5678, dtype: .f32, blockSize: 4, layers: 2, payloadBytes: 256)

    static func key(_ tokens: [Int], parent: UInt64 = layout.fingerprint) -> BlockPool.Key {
        BlockPool.Key(hash: BlockHash.chain(parent: parent, tokens: tokens[...]), parent: parent, tokens: tokens)
    }

    static func payload(_ seed: UInt8) -> [UInt8] { (0..<256).map { UInt8(truncatingIfNeeded: Int($0) &* 31 &+ Int(seed)) } }

    func tier(_ layout: KVBlockFile.Layout = layout, budget: Int = 1 << 20) throws -> KVDiskTier {
        try KVDiskTier(directory: dir, budgetBytes: budget, layout: layout, warn: { _ in })
    }

    func store(_ t: KVDiskTier, _ key: BlockPool.Key, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { t.store(key, from: $0.baseAddress!) }
        t.flush()
    }

    func load(_ t: KVDiskTier, _ key: BlockPool.Key) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: 256)
        let ok = out.withUnsafeMutableBytes { t.load(key, into: $0.baseAddress!) }
        return ok ? out : nil
    }

    var files: [String] { ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(".kvb") } }

    func testRoundTripAndAfterRestart() throws {
        let k = Self.key([5, 6, 7, 8])
        var t: KVDiskTier? = try tier()
        store(t!, k, Self.payload(1))
        XCTAssertEqual(files, [KVBlockFile.name(k.hash)])
        XCTAssertEqual(load(t!, k), Self.payload(1))
        XCTAssertEqual(t!.snapshot.hits, 1)
        XCTAssertEqual(t!.snapshot.bytesWritten, Self.layout.fileBytes)
        // Same hash, other tokens (a collision): not this block.
        XCTAssertFalse(t!.contains(BlockPool.Key(hash: k.hash, parent: k.parent, tokens: [5, 6, 7, 9])))
        t!.shutdown()
        t = nil
        let again = try tier()
        XCTAssertEqual(again.snapshot.blocks, 1, "the index is rebuilt from the files")
        XCTAssertEqual(load(again, k), Self.payload(1))
        again.shutdown()
    }

    func testCorruptedByteIsRejectedAndRemoved() throws {
        let k = Self.key([1, 2, 3, 4])
        let t = try tier()
        store(t, k, Self.payload(2))
        let path = dir + "/" + KVBlockFile.name(k.hash)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        bytes[Self.layout.headerBytes + 100] ^= 0x01
        try bytes.write(to: URL(fileURLWithPath: path))
        XCTAssertNil(load(t, k), "a flipped payload bit fails the checksum")
        XCTAssertFalse(FileManager.default.fileExists(atPath: path), "and the file is removed")
        XCTAssertFalse(t.contains(k))
        XCTAssertEqual(t.snapshot.rejected, 1)
        // A flipped token in the header no longer chains to the hash.
        store(t, k, Self.payload(2))
        bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        bytes[KVBlockFile.fixedHeaderBytes] ^= 0x01
        try bytes.write(to: URL(fileURLWithPath: path))
        XCTAssertNil(load(t, k))
        XCTAssertFalse(FileManager.default.fileExists(atPath: path))
        t.shutdown()
    }

    func testTruncatedFileIsRejectedAtLoadAndAtStart() throws {
        let a = Self.key([1, 2, 3, 4]), b = Self.key([9, 9, 9, 9])
        var t: KVDiskTier? = try tier()
        store(t!, a, Self.payload(3))
        store(t!, b, Self.payload(4))
        for k in [a, b] {
            let h = try FileHandle(forWritingTo: URL(fileURLWithPath: dir + "/" + KVBlockFile.name(k.hash)))
            try h.truncate(atOffset: UInt64(Self.layout.fileBytes - 10))
            try h.close()
        }
        XCTAssertNil(load(t!, a))
        XCTAssertEqual(files, [KVBlockFile.name(b.hash)])
        t!.shutdown()
        t = nil
        // A write cut short by a crash leaves a temporary file: removed at start too.
        _ = FileManager.default.createFile(atPath: dir + "/" + KVBlockFile.name(a.hash) + ".part", contents: Data([1, 2, 3]))
        let again = try tier()
        XCTAssertEqual(again.snapshot.blocks, 0)
        XCTAssertEqual(again.snapshot.rejected, 1)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).filter { !$0.hasPrefix(".lock") }, [])
        again.shutdown()
    }

    func testAnotherModelOrDTypeIsRejectedAndRemoved() throws {
        let L = Self.layout
        let others = [
            KVBlockFile.Layout(fingerprint: L.fingerprint ^ 1, dtype: L.dtype, blockSize: L.blockSize, layers: L.layers, payloadBytes: L.payloadBytes),
            KVBlockFile.Layout(fingerprint: L.fingerprint, dtype: .f16, blockSize: L.blockSize, layers: L.layers, payloadBytes: L.payloadBytes),
            KVBlockFile.Layout(fingerprint: L.fingerprint, dtype: L.dtype, blockSize: L.blockSize, layers: L.layers + 1, payloadBytes: L.payloadBytes),
        ]
        for other in others {
            var t: KVDiskTier? = try tier()
            store(t!, Self.key([1, 2, 3, 4]), Self.payload(5))
            t!.shutdown()
            t = nil
            let reopened = try tier(other)
            XCTAssertEqual(reopened.snapshot.blocks, 0, "\(other)")
            XCTAssertEqual(reopened.snapshot.rejected, 1)
            XCTAssertEqual(files, [], "the other layout's file is removed")
            reopened.shutdown()
        }
        // The header parser names what differs.
        let k = Self.key([1, 2, 3, 4])
        let header = KVBlockFile.header(L, key: k, checksum: 0)
        XCTAssertThrowsError(try header.withUnsafeBytes { try KVBlockFile.parseHeader($0, fileBytes: L.fileBytes, layout: others[1]) }) {
            XCTAssertEqual($0 as? KVBlockFileError, .mismatch(field: "kv dtype", found: "f32", expected: "f16"))
        }
        XCTAssertThrowsError(try header.withUnsafeBytes { try KVBlockFile.parseHeader($0, fileBytes: L.fileBytes - 1, layout: L) }) {
            XCTAssertEqual($0 as? KVBlockFileError, .truncated(bytes: L.fileBytes - 1, expected: L.fileBytes))
        }
        var bad = header
        bad[0] = UInt8(ascii: "X")
        XCTAssertThrowsError(try bad.withUnsafeBytes { try KVBlockFile.parseHeader($0, fileBytes: L.fileBytes, layout: L) }) {
            XCTAssertEqual($0 as? KVBlockFileError, .badMagic)
        }
    }

    func testBudgetEvictsTheLeastRecentlyUsedFile() throws {
        let t = try tier(budget: 2 * Self.layout.fileBytes)
        let a = Self.key([1, 1, 1, 1]), b = Self.key([2, 2, 2, 2]), c = Self.key([3, 3, 3, 3])
        store(t, a, Self.payload(1))
        store(t, b, Self.payload(2))
        XCTAssertNotNil(load(t, a))  // a is now more recently used than b
        store(t, c, Self.payload(3))
        XCTAssertTrue(t.contains(a))
        XCTAssertFalse(t.contains(b))
        XCTAssertTrue(t.contains(c))
        XCTAssertEqual(Set(files), Set([a, c].map { KVBlockFile.name($0.hash) }))
        XCTAssertEqual(t.snapshot.evictions, 1)
        t.shutdown()
    }

    /// Streamed sequences' files count toward the budget: reserving evicts the least recently
    /// used block files, a stream larger than the budget or than what other streams leave is
    /// refused, no block is written while streams hold the whole budget, and a released share
    /// makes room again.
    func testStreamedSequencesShareTheBudget() throws {
        let f = Self.layout.fileBytes
        let t = try tier(budget: 3 * f)
        let a = Self.key([1, 1, 1, 1]), b = Self.key([2, 2, 2, 2]), c = Self.key([3, 3, 3, 3])
        store(t, a, Self.payload(1))
        store(t, b, Self.payload(2))
        XCTAssertTrue(t.couldHoldStream(bytes: 3 * f))
        XCTAssertFalse(t.couldHoldStream(bytes: 3 * f + 1))
        XCTAssertThrowsError(try t.reserveStream(bytes: 3 * f + 1)) {
            XCTAssertEqual($0 as? KVDiskError, .streamExceedsBudget(bytes: 3 * f + 1, budget: 3 * f))
        }
        let first = try t.reserveStream(bytes: f + 1)  // two files' worth: a (least recently used) goes
        XCTAssertEqual(first, 2)
        XCTAssertFalse(t.contains(a))
        XCTAssertTrue(t.contains(b))
        XCTAssertEqual(t.snapshot.streamBytes, 2 * f)
        XCTAssertThrowsError(try t.reserveStream(bytes: 2 * f)) {
            XCTAssertEqual($0 as? KVDiskError, .budgetHeldByStreams(bytes: 2 * f, free: f))
        }
        let second = try t.reserveStream(bytes: f)  // the last file's worth: b goes too
        XCTAssertEqual(t.snapshot.blocks, 0)
        store(t, c, Self.payload(3))
        XCTAssertFalse(t.contains(c), "no room for a block while streams hold the budget")
        XCTAssertEqual(t.snapshot.dropped, 1)
        XCTAssertEqual(files, [])
        t.releaseStream(second)
        store(t, c, Self.payload(3))
        XCTAssertTrue(t.contains(c))
        t.releaseStream(first)
        XCTAssertEqual(t.snapshot.streamBytes, 0)
        t.shutdown()
    }

    func testDirectoryErrorsAreClear() throws {
        _ = FileManager.default.createFile(atPath: dir, contents: Data("x".utf8))
        XCTAssertThrowsError(try tier()) { XCTAssertEqual($0 as? KVDiskError, .notADirectory(dir)) }
        XCTAssertThrowsError(try KVDiskTier(directory: dir + "/sub", budgetBytes: 1 << 20, layout: Self.layout)) {
            guard case .cannotCreate(let p, _)? = $0 as? KVDiskError else { return XCTFail("\($0)") }
            XCTAssertEqual(p, dir + "/sub")
        }
        try FileManager.default.removeItem(atPath: dir)
        let t = try tier()
        XCTAssertThrowsError(try tier()) { XCTAssertEqual($0 as? KVDiskError, .inUse(dir)) }
        XCTAssertThrowsError(try tier(budget: 100)) {
            XCTAssertEqual($0 as? KVDiskError, .budgetTooSmall(budget: 100, fileBytes: Self.layout.fileBytes))
        }
        t.shutdown()
    }

    /// A sequence streamed from a file, one layer in RAM at a time, gives the contiguous cache's
    /// logits bit for bit on every fixture (chunked prefill, then decode steps),
    /// and reads its rows back from the file.
    func testStreamedSequenceGivesTheContiguousLogits() throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for name in Fixtures.names {
            let m = try Fixtures.model(name)
            let tokens = try Fixtures.reference(name).cases.max { $0.tokens.count < $1.tokens.count }!.tokens
            let split = tokens.count / 2
            let want = try PagedKVTests.run(m, tokens, cache: m.makeCache(capacity: 4), split: split)
            let widths = m.layers.map { $0.attention.cacheWidths }
            let streamed = try StreamedKVCache(widths: widths, dtype: .f32, capacity: m.maxPositions, directory: dir)
            XCTAssertEqual(try PagedKVTests.run(m, tokens, cache: streamed, split: split), want, name)
            XCTAssertNil(streamed.failure)
            XCTAssertGreaterThan(streamed.bytesRead, 0, "\(name): rows came back from the file")
            XCTAssertLessThan(streamed.residentBytes, streamed.bytesPerPosition * 256 + 1, "one layer's rows in RAM")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [], "the files are unlinked once open")
    }

    /// Through the allocator: a prefix written by one pool is found by a fresh pool (a restarted
    /// server) on the same disk tier, with the same bytes; a partly filled last block is not stored.
    func testAllocatorFindsItsPrefixOnDiskAfterARestart() throws {
        let widths = [(8, 8), (8, 8)]
        func allocator() throws -> KVCacheAllocator {
            let kv = try KVCacheAllocator(widths: widths, blockSize: 4, budgetBytes: 8 * 4 * 2 * 16 * 4, fingerprint: 77)
            kv.disk = try KVDiskTier(directory: dir, budgetBytes: 1 << 20, layout: kv.diskLayout, warn: { _ in })
            return kv
        }
        let tokens = Array(100..<110)  // 2 full blocks and 2 positions of a third
        let first = try allocator()
        let seq = first.sequence()
        try seq.reserve(additional: tokens.count)
        for l in 0..<2 {
            let v = seq.view(layer: l)
            for p in 0..<tokens.count {
                let row = (0..<8).map { Float(p * 100 + l * 10 + $0) }
                row.withUnsafeBufferPointer { v.storeA(p, $0.baseAddress!); v.storeB(p, $0.baseAddress!) }
            }
        }
        seq.commit(tokens.count)
        first.free(seq, tokens: tokens)
        first.disk!.shutdown()
        XCTAssertEqual(first.disk!.snapshot.writes, 2, "full blocks only")

        let second = try allocator()
        let again = second.sequence(reusing: tokens, upTo: tokens.count - 1)
        XCTAssertEqual(again.length, 8, "both full blocks come from disk")
        XCTAssertEqual(second.disk!.snapshot.hits, 2)
        XCTAssertEqual(second.pool.cachedCount, 2, "and are cached in RAM again")
        for l in 0..<2 {
            let v = again.view(layer: l)
            for p in 0..<8 {
                let row = UnsafeRawPointer(v.rowA(p)).assumingMemoryBound(to: Float.self)
                XCTAssertEqual((0..<8).map { row[$0] }, (0..<8).map { Float(p * 100 + l * 10 + $0) }, "layer \(l) position \(p)")
            }
        }
        second.free(again)
        second.disk!.shutdown()
    }
}
