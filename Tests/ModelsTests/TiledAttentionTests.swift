import Checkpoint
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

    /// A one-layer cache of `length` positions holding rows `keys` (`[length, widths.0]`) and
    /// `values` (`[length, widths.1]`), contiguous (`blockSize` nil) or paged.
    static func cache(keys: [Float], values: [Float], widths: (Int, Int), length: Int, dtype: KVDType,
                      blockSize: Int?) throws -> (any KVStore, AnyObject?) {
        let store: any KVStore, owner: AnyObject?
        if let blockSize {
            let kv = try KVCacheAllocator(widths: [widths], dtype: dtype, blockSize: blockSize,
                                          budgetBytes: (length / blockSize + 2) * blockSize * 2 * dtype.bytes(max(widths.0, widths.1)),
                                          fingerprint: 1)
            store = kv.sequence()
            owner = kv
        } else {
            store = KVCache(widths: [widths], dtype: dtype, capacity: length)
            owner = nil
        }
        try store.reserve(additional: length)
        let view = store.view(layer: 0)
        keys.withUnsafeBufferPointer { k in
            values.withUnsafeBufferPointer { v in
                for p in 0..<length {
                    view.storeA(p, k.baseAddress! + p * widths.0)
                    view.storeB(p, v.baseAddress! + p * widths.1)
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

    /// Rows at positions 0, 6, 14, 16 (context lengths 1, 7 and 16 ± 1, a KV block of 16),
    /// 250..<257 (across the first tile boundary) and 4991..<5000 (the last of 5000 positions)
    /// of one sequence, as six spans.
    static let positions: [Int] = [0, 6, 14, 16] + Array(250..<257) + Array(4991..<5000)

    static func spans(_ store: any KVStore) -> [SequenceSpan] {
        [SequenceSpan(rows: 0..<1, cache: store, start: 0), SequenceSpan(rows: 1..<2, cache: store, start: 6),
         SequenceSpan(rows: 2..<3, cache: store, start: 14), SequenceSpan(rows: 3..<4, cache: store, start: 16),
         SequenceSpan(rows: 4..<11, cache: store, start: 250), SequenceSpan(rows: 11..<20, cache: store, start: 4991)]
    }

    func testTiledAttentionMatchesReferenceAndIsInvariant() throws {
        let length = 5000
        // (heads, kvHeads, headDim): odd head counts and group sizes, head dims that are not a
        // multiple of 8 (the kernels' scalar tails); q8_0 needs whole 32-blocks.
        let shapes = [(3, 1, 32), (9, 3, 64), (5, 5, 96), (6, 2, 24), (7, 7, 20), (4, 2, 13)]
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
                let (contiguous, _) = try Self.cache(keys: keys, values: values, widths: (width, width), length: length, dtype: dtype, blockSize: nil)
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
                    let (paged, owner) = try Self.cache(keys: keys, values: values, widths: (width, width), length: length, dtype: dtype, blockSize: bs)
                    XCTAssertEqual(run(Self.spans(paged), splitK: false), want, "\(label): block size \(bs)")
                    XCTAssertEqual(run(Self.spans(paged), splitK: true), want, "\(label): block size \(bs), split-K")
                    withExtendedLifetime(owner) {}
                }
            }
        }
    }

    /// MLA's tile layout (every head scores a position's latent plus its rotary key and
    /// accumulates the latent) against a plain fp64 softmax over the stored rows, for every KV
    /// dtype and an odd head count; the same bits for split-K and query tiles, each row alone,
    /// and any KV block size.
    func testLatentTilesMatchReferenceAndAreInvariant() throws {
        let length = 5000, heads = 5, r = 64, rd = 32, n = Self.positions.count
        let latents = Self.values(length * r, seed: 4, scale: 1), ropeKeys = Self.values(length * rd, seed: 5, scale: 2)
        let qLat = Self.values(heads * n * r, seed: 6, scale: 1), qRope = Self.values(n * heads * rd, seed: 7, scale: 2)
        let scale: Float = 0.11
        for dtype in KVDType.allCases {
            let ws = Workspace()
            // Output `[heads, rows, r]` (MLA's head-major latent output) for the rows `spans`
            // cover, whose queries are rows `first...` of `qLat` (head-major) and `qRope`.
            func run(_ spans: [SequenceSpan], splitK: Bool?, first: Int = 0) -> [Float] {
                let rows = spans.last!.rows.upperBound
                var out = [Float](repeating: .nan, count: heads * rows * r)
                qLat.withUnsafeBufferPointer { ql in
                    qRope.withUnsafeBufferPointer { qr in
                        out.withUnsafeMutableBufferPointer { o in
                            let layout = TileQueries(query: { t, _, h in ql.baseAddress! + (h * n + first + t) * r },
                                                     rope: { t, _, h in qr.baseAddress! + ((first + t) * heads + h) * rd },
                                                     ropeWidth: rd)
                            attendCausal(rows: rows, spans: spans, layer: 0, groups: 1, queries: heads, width: r, scale: scale,
                                         layout: layout, workspace: ws, splitK: splitK,
                                         output: { t, _, h in o.baseAddress! + (h * rows + t) * r })
                        }
                    }
                }
                return out
            }
            func cache(blockSize: Int?) throws -> (any KVStore, AnyObject?) {
                try Self.cache(keys: latents, values: ropeKeys, widths: (r, rd), length: length, dtype: dtype, blockSize: blockSize)
            }
            let (contiguous, _) = try cache(blockSize: nil)
            let want = run(Self.spans(contiguous), splitK: false)
            // Against fp64 softmax over the rows as stored.
            let view = contiguous.view(layer: 0)
            var lat = [[Float]](), rope = [[Float]]()
            for p in 0..<length {
                var a = [Float](repeating: 0, count: r), b = [Float](repeating: 0, count: rd)
                dtype.load(view.rowA(p), into: &a, count: r)
                dtype.load(view.rowB(p), into: &b, count: rd)
                lat.append(a)
                rope.append(b)
            }
            var worst: Double = 0
            for (t, pos) in Self.positions.enumerated() {
                for h in 0..<heads {
                    var scores = [Double]()
                    for p in 0...pos {
                        var s = 0.0
                        for i in 0..<r { s += Double(qLat[(h * n + t) * r + i]) * Double(lat[p][i]) }
                        for i in 0..<rd { s += Double(qRope[(t * heads + h) * rd + i]) * Double(rope[p][i]) }
                        scores.append(s * Double(scale))
                    }
                    let m = scores.max()!, e = scores.map { Foundation.exp($0 - m) }, sum = e.reduce(0, +)
                    for i in 0..<r {
                        var o = 0.0
                        for p in 0...pos { o += e[p] / sum * Double(lat[p][i]) }
                        worst = max(worst, abs(Double(want[(h * n + t) * r + i]) - o))
                    }
                }
            }
            XCTAssertLessThan(worst, 1e-5, "\(dtype)")
            XCTAssertEqual(run(Self.spans(contiguous), splitK: true), want, "\(dtype): split-K")
            for (t, pos) in Self.positions.enumerated() {
                let alone = run([SequenceSpan(rows: 0..<1, cache: contiguous, start: pos)], splitK: nil, first: t)
                for h in 0..<heads {
                    XCTAssertTrue(Array(alone[h * r ..< (h + 1) * r]) == Array(want[(h * n + t) * r ..< (h * n + t + 1) * r]),
                                  "\(dtype): row \(t) alone, head \(h)")
                }
            }
            for bs in [1, 16, 300] {
                let (paged, owner) = try cache(blockSize: bs)
                XCTAssertEqual(run(Self.spans(paged), splitK: false), want, "\(dtype): block size \(bs)")
                XCTAssertEqual(run(Self.spans(paged), splitK: true), want, "\(dtype): block size \(bs), split-K")
                withExtendedLifetime(owner) {}
            }
        }
    }

    /// A Llama-shaped GQA model (3 query heads on one KV head of 32 values, a whole q8_0 block)
    /// with room for 1024 positions, written once per run.
    static let gqaDirectory: URL = {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("farside-tiled-gqa-\(getpid())")
        var c = try! SyntheticModel.preset("tiny", arch: "llama")
        c.merge(["vocab_size": 512, "hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 3,
                 "num_key_value_heads": 1, "head_dim": 32, "max_position_embeddings": 1024]) { $1 }
        try! SyntheticModel.write(config: c, dtype: .f32, seed: 9, to: dir)
        return dir
    }()

    /// A prompt run whole and the same prompt run in chunks (of sizes that cross the tiles at
    /// odd offsets) give the same logits bit for bit, for GQA and MLA and every KV dtype the
    /// model can store.
    func testChunkedPromptsGiveTheSameLogits() throws {
        let cases: [(String, DecoderModel)] = [("llama", try ModelRegistry.load(path: Self.gqaDirectory).model),
                                               ("mla", try KVDTypeTests.mla())]
        for (name, m) in cases {
            let tokens = (0..<600).map { ($0 * 37 + 11) % min(512, m.vocabSize) }
            for dtype in KVDType.allCases {
                guard (try? m.makeCache(dtype: dtype)) != nil else { continue }
                let whole = try m.forward(tokens, cache: m.makeCache(capacity: 4, dtype: dtype), logits: .all)
                let c = try m.makeCache(capacity: 4, dtype: dtype)
                var chunked = [Float]()
                var p = 0
                for size in [1, 6, 250, 7, 300, 36] {
                    chunked += try m.forward(Array(tokens[p..<(p + size)]), cache: c, logits: .all)
                    p += size
                }
                XCTAssertEqual(p, tokens.count)
                XCTAssertTrue(chunked == whole, "\(name), \(dtype)")
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
