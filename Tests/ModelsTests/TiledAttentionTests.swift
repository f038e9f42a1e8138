import Foundation
import Kernels
@testable import Models
import XCTest

/// The tiled attention kernel (`attendCausal`: partial softmax states per `attentionTile`
/// positions, merged in tile order) against a plain fp64 softmax over the stored rows, and its
/// invariances: the same bits for any KV block size, for split-K and query-tile scheduling, and
/// for a row computed inside a prompt batch or alone as a decode step.
final class TiledAttentionTests: XCTestCase {
    /// Deterministic values in [-1, 1) (a linear congruential generator), scaled.
    static func values(_ count: Int, seed: UInt64, scale: Float = 1) -> [Float] {
        var s = seed &* 6364136223846793005 &+ 1442695040888963407
        return (0..<count).map { _ in
            s = s &* 6364136223846793005 &+ 1442695040888963407
            return (Float(s >> 40) / Float(1 << 24) * 2 - 1) * scale
        }
    }

    /// A one-layer cache of `length` positions holding `keys` and `values` (`[length, width]`),
    /// contiguous (`blockSize` nil) or paged.
    static func cache(keys: [Float], values: [Float], width: Int, length: Int, dtype: KVDType,
                      blockSize: Int?) throws -> (any KVStore, AnyObject?) {
        let store: any KVStore, owner: AnyObject?
        if let blockSize {
            let kv = try KVCacheAllocator(widths: [(width, width)], dtype: dtype, blockSize: blockSize,
                                          budgetBytes: (length / blockSize + 2) * blockSize * 2 * dtype.bytes(width), fingerprint: 1)
            store = kv.sequence()
            owner = kv
        } else {
            store = KVCache(widths: [(width, width)], dtype: dtype, capacity: length)
            owner = nil
        }
        try store.reserve(additional: length)
        let view = store.view(layer: 0)
        keys.withUnsafeBufferPointer { k in
            values.withUnsafeBufferPointer { v in
                for p in 0..<length {
                    view.storeA(p, k.baseAddress! + p * width)
                    view.storeB(p, v.baseAddress! + p * width)
                }
            }
        }
        store.commit(length)
        return (store, owner)
    }

    /// fp64 softmax attention of one head's query over positions `0..<length` of the rows as
    /// stored (widened with `KVDType.load`).
    static func reference(q: UnsafePointer<Float>, view: KVLayerView, head: Int, headDim hd: Int, length: Int,
                          scale: Float) -> [Double] {
        var k = [Float](repeating: 0, count: view.widthA), v = k
        var scores = [Double](), rowsV = [[Float]]()
        for p in 0..<length {
            view.dtype.load(view.rowA(p), into: &k, count: view.widthA)
            view.dtype.load(view.rowB(p), into: &v, count: view.widthB)
            var s = 0.0
            for i in 0..<hd { s += Double(q[i]) * Double(k[head * hd + i]) }
            scores.append(s * Double(scale))
            rowsV.append(Array(v[head * hd ..< (head + 1) * hd]))
        }
        let m = scores.max()!
        let e = scores.map { Foundation.exp($0 - m) }, sum = e.reduce(0, +)
        var out = [Double](repeating: 0, count: hd)
        for p in 0..<length { for i in 0..<hd { out[i] += e[p] / sum * Double(rowsV[p][i]) } }
        return out
    }

    /// Rows at positions 0, 6, 250..<257 (context lengths 1, 7 and across the first tile
    /// boundary) and 4991..<5000 (the last of 5000 positions) of one sequence, as four spans.
    static let positions: [Int] = [0, 6] + Array(250..<257) + Array(4991..<5000)

    static func spans(_ store: any KVStore) -> [SequenceSpan] {
        [SequenceSpan(rows: 0..<1, cache: store, start: 0), SequenceSpan(rows: 1..<2, cache: store, start: 6),
         SequenceSpan(rows: 2..<9, cache: store, start: 250), SequenceSpan(rows: 9..<18, cache: store, start: 4991)]
    }

    func testTiledAttentionMatchesReferenceAndIsInvariant() throws {
        let length = 5000
        // (heads, kvHeads, headDim): odd head counts and group sizes; q8_0 needs whole 32-blocks.
        let shapes = [(3, 1, 32), (9, 3, 64), (5, 5, 96), (6, 2, 24)]
        for dtype in KVDType.allCases {
            for (heads, kvHeads, hd) in shapes where hd % dtype.groupValues == 0 {
                let width = kvHeads * hd, n = Self.positions.count, qDim = heads * hd
                let keys = Self.values(length * width, seed: 1, scale: 2), values = Self.values(length * width, seed: 2)
                let q = Self.values(n * qDim, seed: 3, scale: 2)
                let scale = 1 / Float(hd).squareRoot()
                let ws = Workspace()
                // Rows `spans` cover, their queries from row `first` of `q` on.
                func run(_ spans: [SequenceSpan], splitK: Bool?, first: Int = 0) -> [Float] {
                    let rows = spans.last!.rows.upperBound
                    var ctx = [Float](repeating: .nan, count: rows * qDim)
                    q.withUnsafeBufferPointer { qp in
                        ctx.withUnsafeMutableBufferPointer { c in
                            GroupedQueryAttention.attend(q: qp.baseAddress! + first * qDim, count: rows, spans: spans, layer: 0, heads: heads,
                                                         kvHeads: kvHeads, headDim: hd, scale: scale, workspace: ws,
                                                         splitK: splitK, ctx: c.baseAddress!)
                        }
                    }
                    return ctx
                }
                let (contiguous, _) = try Self.cache(keys: keys, values: values, width: width, length: length, dtype: dtype, blockSize: nil)
                let want = run(Self.spans(contiguous), splitK: false)
                let label = "\(dtype) heads \(heads)/\(kvHeads) dim \(hd)"
                // Against fp64 softmax over the same stored rows.
                let view = contiguous.view(layer: 0)
                var worst: Double = 0
                q.withUnsafeBufferPointer { qp in
                    for (t, pos) in Self.positions.enumerated() {
                        for h in 0..<heads {
                            let ref = Self.reference(q: qp.baseAddress! + t * qDim + h * hd, view: view, head: h / (heads / kvHeads),
                                                     headDim: hd, length: pos + 1, scale: scale)
                            for i in 0..<hd { worst = max(worst, abs(Double(want[t * qDim + h * hd + i]) - ref[i])) }
                        }
                    }
                }
                XCTAssertLessThan(worst, 1e-5, label)
                XCTAssertEqual(run(Self.spans(contiguous), splitK: true), want, "\(label): split-K")
                // Each row alone, as a decode step at its position.
                var alone = [Float]()
                for (t, pos) in Self.positions.enumerated() {
                    alone += run([SequenceSpan(rows: 0..<1, cache: contiguous, start: pos)], splitK: nil, first: t)
                }
                XCTAssertEqual(alone.count, want.count)
                XCTAssertTrue(alone == want, "\(label): rows alone")
                for bs in [1, 3, 16, 300] {
                    let (paged, owner) = try Self.cache(keys: keys, values: values, width: width, length: length, dtype: dtype, blockSize: bs)
                    XCTAssertEqual(run(Self.spans(paged), splitK: false), want, "\(label): block size \(bs)")
                    XCTAssertEqual(run(Self.spans(paged), splitK: true), want, "\(label): block size \(bs), split-K")
                    withExtendedLifetime(owner) {}
                }
            }
        }
    }

    /// MLA (every head reads a position's latent once): a 600-token sequence crosses two tile
    /// boundaries; its logits are the same bits whether most of it runs as one prompt (query
    /// tiles) or as decode steps (split-K), and for any KV block size.
    func testLatentAttentionAcrossTilesIsChunkingAndBlockInvariant() throws {
        let m = try KVDTypeTests.mla()
        let tokens = (0..<600).map { ($0 * 37 + 11) % 512 }
        let want = try PagedKVTests.run(m, tokens, cache: m.makeCache(capacity: 4), split: 520)
        XCTAssertEqual(want.count, 600 * m.vocabSize)
        XCTAssertTrue(want.allSatisfy(\.isFinite))
        XCTAssertEqual(try PagedKVTests.run(m, tokens, cache: m.makeCache(capacity: 4), split: 200), want, "decode from 200")
        let kv = try PagedKVTests.allocator(m, blockSize: 7)
        XCTAssertEqual(try PagedKVTests.run(m, tokens, cache: kv.sequence(), split: 520), want, "block size 7")
    }
}
