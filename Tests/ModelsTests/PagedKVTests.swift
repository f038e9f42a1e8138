import Coordinator
import Foundation
import Models
import XCTest

/// The paged KV cache (block tables over one pool, prefix sharing, copy-on-write) against the
/// contiguous cache: logits must be equal bit for bit, whatever the block size.
final class PagedKVTests: XCTestCase {
    static func allocator(_ m: DecoderModel, blockSize: Int, blocks: Int = 4096) throws -> KVCacheAllocator {
        let perPosition = m.layers.reduce(0) { $0 + ($1.attention.cacheWidths.0 + $1.attention.cacheWidths.1) * 4 }
        return try m.makeKVAllocator(blockSize: blockSize, budgetBytes: blocks * blockSize * perPosition)
    }

    /// Runs `tokens` as a prefill of `split` tokens, then one token per step, returning every
    /// step's logits (all rows of the prefill, then each decode step's).
    static func run(_ m: DecoderModel, _ tokens: [Int], cache: any KVStore, from: Int = 0, split: Int) throws -> [Float] {
        var out = try m.forward(Array(tokens[from..<split]), cache: cache, logits: .all)
        for p in split..<tokens.count { out += try m.forward([tokens[p]], cache: cache, logits: .last) }
        return out
    }

    /// Every fixture, block sizes 1, 3 and 16: a chunked prefill then decode steps give the
    /// contiguous cache's logits bit for bit.
    func testPagedLogitsEqualContiguousOnEveryFixture() throws {
        for name in Fixtures.names {
            let m = try Fixtures.model(name)
            let tokens = try Fixtures.reference(name).cases.max { $0.tokens.count < $1.tokens.count }!.tokens
            let split = tokens.count / 2
            let want = try Self.run(m, tokens, cache: m.makeCache(capacity: 4), split: split)
            for bs in [1, 3, 16] {
                let kv = try Self.allocator(m, blockSize: bs)
                let seq = kv.sequence()
                let got = try Self.run(m, tokens, cache: seq, split: split)
                XCTAssertEqual(got, want, "\(name), block size \(bs)")
                XCTAssertEqual(seq.blockCount, (tokens.count + bs - 1) / bs, "\(name): blocks allocated as it grew")
                kv.free(seq)
                XCTAssertEqual(kv.pool.freeCount, kv.pool.blockCount)
            }
        }
    }

    /// Several sequences in one batch, each over its own block table drawn from one pool (their
    /// blocks interleave), give each one's contiguous logits.
    func testBatchedSequencesOverOnePool() throws {
        for name in ["llama", "qwen3_moe", "deepseek_v3"] {
            let m = try Fixtures.model(name)
            let prompts = [[5, 9, 2, 7, 1], [3, 3, 8], [11, 4, 6, 2, 9, 13, 1]]
            let kv = try Self.allocator(m, blockSize: 2)
            let paged = prompts.map { _ in kv.sequence() }
            let contiguous = prompts.map { _ in m.makeCache() }
            for step in 0..<3 {
                var batch = Batch()
                for (i, p) in prompts.enumerated() {
                    let tok = step == 0 ? p : [p[0] + step]
                    batch.append(tok, sequence: i, start: paged[i].length, logitsForLast: true)
                }
                let got = try m.forward(batch, caches: paged)
                let want = try m.forward(batch, caches: contiguous)
                XCTAssertEqual(got, want, "\(name), step \(step)")
            }
            XCTAssertEqual(Set(paged.flatMap(\.blocks)).count, paged.reduce(0) { $0 + $1.blockCount }, "no block is shared")
        }
    }

    /// A prefix hit (full blocks, then a finished sequence's partly filled last block) gives the
    /// logits of computing the whole prompt again, and computes only the rest.
    func testPrefixHitEqualsRecompute() throws {
        for name in ["llama", "qwen2_moe", "deepseek_v3", "kimi_k2"] {
            let m = try Fixtures.model(name)
            for bs in [1, 3, 16] {
                let kv = try Self.allocator(m, blockSize: bs)
                let shared = (0..<21).map { ($0 * 7 + 3) % m.vocabSize }
                let first = kv.sequence()
                _ = try m.forward(shared + [1, 2], cache: first, logits: .none)
                kv.free(first, tokens: shared + [1, 2])
                let prompt = shared + [4, 5, 6]
                let again = kv.sequence(reusing: prompt, upTo: prompt.count - 1)
                XCTAssertEqual(again.length, shared.count, "\(name), block size \(bs): the shared prefix is found")
                let got = try m.forward(Array(prompt[again.length...]), cache: again, logits: .all)
                let want = try m.forward(prompt, cache: m.makeCache(), logits: .all)
                XCTAssertEqual(got, Array(want.suffix(got.count)), "\(name), block size \(bs)")
                // The whole earlier sequence (its partly filled last block included) is found.
                let whole = kv.sequence(reusing: shared + [1, 2, 9], upTo: 23)
                XCTAssertEqual(whole.length, 23, "\(name), block size \(bs): partial last block cached")
                kv.free(whole)
                kv.free(again)
            }
        }
    }

    /// Two sequences sharing a partly filled block (and a third reading it afterwards) stay
    /// independent: each writes to its own copy, and the cached block keeps its rows.
    func testCopyOnWriteKeepsSharersIndependent() throws {
        let m = try Fixtures.model("llama")
        let kv = try Self.allocator(m, blockSize: 16)
        let prefix = [7, 3, 9, 1, 4, 8, 2, 6, 5, 10, 12]  // 11 positions: one partly filled block
        let a = kv.sequence()
        _ = try m.forward(prefix, cache: a, logits: .none)
        kv.free(a, tokens: prefix)
        let cachedBlock = kv.pool.freeQueue.last!
        XCTAssertNotNil(kv.pool.key(cachedBlock))
        let b = kv.sequence(reusing: prefix + [20], upTo: prefix.count)
        let c = kv.sequence(reusing: prefix + [30], upTo: prefix.count)
        XCTAssertEqual(b.blocks, [cachedBlock])
        XCTAssertEqual(c.blocks, [cachedBlock])
        XCTAssertEqual(kv.pool.refCount(cachedBlock), 2)
        let gotB = try Self.run(m, prefix + [20, 21, 22], cache: b, from: prefix.count, split: prefix.count + 1)
        let gotC = try Self.run(m, prefix + [30, 31], cache: c, from: prefix.count, split: prefix.count + 1)
        XCTAssertNotEqual(b.blocks[0], cachedBlock, "b copied the shared block before writing")
        XCTAssertNotEqual(c.blocks[0], cachedBlock, "c copied the shared block before writing")
        XCTAssertNotEqual(b.blocks[0], c.blocks[0])
        XCTAssertEqual(kv.pool.refCount(cachedBlock), 0)
        let wantB = try Self.run(m, prefix + [20, 21, 22], cache: m.makeCache(), split: prefix.count + 1)
        let wantC = try Self.run(m, prefix + [30, 31], cache: m.makeCache(), split: prefix.count + 1)
        let vocab = m.vocabSize
        XCTAssertEqual(gotB, Array(wantB.suffix(gotB.count)))
        XCTAssertEqual(gotC, Array(wantC.suffix(gotC.count)))
        XCTAssertEqual(gotB.count, 3 * vocab)
        // The cached block still holds the prefix alone: a third sequence gets the recompute's logits.
        let d = kv.sequence(reusing: prefix + [40], upTo: prefix.count)
        XCTAssertEqual(d.length, prefix.count)
        let gotD = try m.forward([40], cache: d, logits: .last)
        XCTAssertEqual(gotD, try m.forward(prefix + [40], cache: m.makeCache(), logits: .last))
    }

    /// A prefix cut inside a cached full block (the prompt's last token must be computed) takes
    /// that block for its first rows and copies it before writing the rest.
    func testPrefixEndingInsideAFullBlockCopiesIt() throws {
        let m = try Fixtures.model("qwen2")
        let kv = try Self.allocator(m, blockSize: 4)
        let prompt = [9, 8, 7, 6, 5, 4, 3, 2]
        let a = kv.sequence()
        let want = try m.forward(prompt, cache: a, logits: .last)
        kv.cacheFullBlocks(a, tokens: prompt)
        let b = kv.sequence(reusing: prompt, upTo: prompt.count - 1)
        XCTAssertEqual(b.length, 7)
        XCTAssertEqual(b.blocks, a.blocks, "both full blocks shared, the second for 3 of its rows")
        XCTAssertEqual(try m.forward([2], cache: b, logits: .last), want)
        XCTAssertNotEqual(b.blocks[1], a.blocks[1], "copied on write")
        XCTAssertEqual(b.blocks[0], a.blocks[0], "the full block stays shared")
        XCTAssertEqual(kv.pool.refCount(a.blocks[0]), 2)
    }

    /// The budget bounds the blocks; running out is an error naming the flag, not a crash.
    func testBudgetLimitsBlocks() throws {
        let m = try Fixtures.model("llama")
        let perPosition = m.layers.reduce(0) { $0 + ($1.attention.cacheWidths.0 + $1.attention.cacheWidths.1) * 4 }
        XCTAssertThrowsError(try m.makeKVAllocator(blockSize: 16, budgetBytes: 16 * perPosition - 1)) { e in
            XCTAssertTrue("\(e)".contains("--kv-budget"), "\(e)")
        }
        XCTAssertThrowsError(try m.makeKVAllocator(blockSize: 0, budgetBytes: 1 << 20))
        let kv = try m.makeKVAllocator(blockSize: 4, budgetBytes: 2 * 4 * perPosition + 5)
        XCTAssertEqual(kv.pool.blockCount, 2)
        let seq = kv.sequence()
        _ = try m.forward(Array(1...8), cache: seq)
        XCTAssertThrowsError(try m.forward([9], cache: seq)) { e in
            XCTAssertEqual(e as? KVCacheError, .outOfBlocks(needed: 1, free: 0))
        }
        XCTAssertEqual(seq.length, 8, "a refused step stores nothing")
    }
}

/// The block pool's bookkeeping alone: reference counts, the free queue's order, eviction.
final class BlockPoolTests: XCTestCase {
    func key(_ h: UInt64, _ tokens: [Int] = [1]) -> BlockPool.Key { .init(hash: h, parent: 0, tokens: tokens) }

    func testCachedBlocksAreEvictedLeastRecentlyFreedFirst() {
        let pool = BlockPool(blockCount: 4)
        let b = (0..<4).map { _ in pool.allocate()! }
        XCTAssertNil(pool.allocate(), "all 4 in use")
        pool.register(b[0], key: key(10))
        pool.register(b[1], key: key(11))
        pool.release(b[1])  // cached, freed first
        pool.release(b[0])  // cached, freed second
        pool.release(b[2])  // uncached: handed out before any cached block
        XCTAssertEqual(pool.freeQueue, [b[2], b[1], b[0]])
        XCTAssertEqual(pool.allocate(), b[2])
        XCTAssertEqual(pool.lookup(key(11)), b[1])
        XCTAssertEqual(pool.allocate(), b[1], "least recently freed cached block goes first")
        XCTAssertNil(pool.lookup(key(11)), "evicted")
        XCTAssertEqual(pool.evictions, 1)
        XCTAssertEqual(pool.lookup(key(10)), b[0])
        XCTAssertNil(pool.lookup(key(10, [2])), "same hash, other tokens: never a hit")
        pool.retain(b[0])  // a hit takes the free cached block back out of the queue
        XCTAssertEqual(pool.freeCount, 0)
        XCTAssertNil(pool.allocate())
        pool.release(b[0])
        XCTAssertEqual(pool.freeQueue, [b[0]])
        XCTAssertEqual(pool.cachedCount, 1)
    }

    func testHashesChainAndDiffer() {
        let root = BlockHash.fingerprint(["llama", "64"])
        XCTAssertNotEqual(root, BlockHash.fingerprint(["llama", "65"]))
        let h1 = BlockHash.chain(parent: root, tokens: [1, 2, 3])
        XCTAssertEqual(h1, BlockHash.chain(parent: root, tokens: [1, 2, 3]), "deterministic")
        XCTAssertNotEqual(h1, BlockHash.chain(parent: root, tokens: [1, 2]))
        XCTAssertNotEqual(h1, BlockHash.chain(parent: root, tokens: [1, 2, 4]))
        XCTAssertNotEqual(BlockHash.chain(parent: h1, tokens: [5]), BlockHash.chain(parent: root, tokens: [5]))
    }
}

/// The scheduler's KV-driven admission and preemption, with a fake block budget.
final class SchedulerKVTests: XCTestCase {
    /// A fake KV: `capacity` tokens in all; each sequence holds what it reserved.
    struct FakeKV {
        var capacity: Int
        var held: [Int: Int] = [:]
        var used: Int { held.values.reduce(0, +) }
        mutating func reserve(_ id: Int, _ k: Int) -> Int {
            let got = min(k, capacity - used)
            held[id, default: 0] += got
            return got
        }
    }

    func testPreemptsNewestWhenBlocksRunOutAndStopsAloneSequence() {
        var s = Scheduler(limits: .init(maxBatchTokens: 100, maxSequences: 8))
        var kv = FakeKV(capacity: 10)
        var pending = [0: 4, 1: 4]
        s.enqueue(0)
        s.enqueue(1)
        var step = s.schedule(pending: { pending[$0]! }, reserve: { kv.reserve($0, $1) }, release: { kv.held[$0] = nil })
        XCTAssertEqual(step.slices, [.init(id: 0, tokens: 4), .init(id: 1, tokens: 4)])
        // Both decode: 2 tokens of room left, then none.
        pending = [0: 1, 1: 1]
        step = s.schedule(pending: { pending[$0]! }, reserve: { kv.reserve($0, $1) }, release: { kv.held[$0] = nil })
        XCTAssertEqual(step.slices.count, 2)
        step = s.schedule(pending: { pending[$0]! }, reserve: { kv.reserve($0, $1) }, release: { kv.held[$0] = nil })
        XCTAssertEqual(step.preempted, [1], "the newest gives its blocks to the oldest")
        XCTAssertEqual(step.slices, [.init(id: 0, tokens: 1)])
        XCTAssertEqual(s.waiting, [1])
        XCTAssertNil(kv.held[1])
        // Sequence 1 comes back when there is room only (admission reserves or waits).
        pending[1] = 6
        step = s.schedule(pending: { pending[$0]! }, reserve: { kv.reserve($0, $1) }, release: { kv.held[$0] = nil })
        XCTAssertEqual(step.slices.map(\.id), [0, 1])
        XCTAssertEqual(step.slices[1].tokens, 3, "a shorter chunk: what fits")
        // Full: sequence 1, newer, is preempted again, and not readmitted in the same step.
        step = s.schedule(pending: { pending[$0]! }, reserve: { kv.reserve($0, $1) }, release: { kv.held[$0] = nil })
        XCTAssertEqual(step.preempted, [1])
        XCTAssertEqual(step.slices, [.init(id: 0, tokens: 1)])
        XCTAssertEqual(s.waiting, [1])
        // Sequence 0 alone fills the cache: exhausted; 1 finds no room and keeps waiting.
        kv.capacity = kv.used
        step = s.schedule(pending: { pending[$0]! }, reserve: { kv.reserve($0, $1) }, release: { kv.held[$0] = nil })
        XCTAssertEqual(step.exhausted, [0], "alone and no room: it cannot grow")
        XCTAssertEqual(s.waiting, [1])
        XCTAssertTrue(step.slices.isEmpty)
    }
}

/// The engine over a small KV budget: preemption and recompute keep every request's tokens.
final class EngineKVTests: XCTestCase {
    func testTightBudgetPreemptsAndKeepsTokens() throws {
        let model = try Fixtures.model("qwen3_moe")
        let prompts = EngineTests.prompts(vocab: model.vocabSize, count: 8, seed: 3)
        let alone = try prompts.map { try Generator(model: model).generate(prompt: $0, maxTokens: 10, ignoreEOS: true) }
        var opts = Engine.Options()
        opts.limits = .init(maxBatchTokens: 32, maxSequences: 8)
        opts.kvBlockSize = 4
        let perPosition = model.layers.reduce(0) { $0 + ($1.attention.cacheWidths.0 + $1.attention.cacheWidths.1) * 4 }
        opts.kvBudgetBytes = 24 * 4 * perPosition  // 96 positions for 8 prompts of up to 41 tokens + 10
        let engine = try Engine(model: model, options: opts)
        engine.start()
        defer { engine.shutdown(drainTimeout: 0) }
        let lock = NSLock()
        var got = [[Int]](repeating: [], count: prompts.count)
        let done = DispatchGroup()
        for (i, p) in prompts.enumerated() {
            done.enter()
            try engine.submit(GenerationRequest(prompt: p, maxTokens: 10, ignoreEOS: true)) { e in
                lock.lock()
                defer { lock.unlock() }
                switch e {
                case .token(let t): got[i].append(t.id)
                case .finished: done.leave()
                case .failed(let why): XCTFail("\(i): \(why)")
                }
            }
        }
        XCTAssertEqual(done.wait(timeout: .now() + 300), .success)
        XCTAssertEqual(got, alone)
        XCTAssertGreaterThan(engine.snapshot().preemptions, 0, "the budget was tight enough to preempt")
        // A prompt that can never fit is refused up front.
        XCTAssertThrowsError(try engine.submit(GenerationRequest(prompt: [Int](repeating: 1, count: 96), maxTokens: 1)) { _ in }) { e in
            XCTAssertTrue("\(e)".contains("--kv-budget"), "\(e)")
        }
    }
}
