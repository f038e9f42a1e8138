/// The bookkeeping of a paged KV cache's blocks, as vLLM v1's `BlockPool`
/// (`vllm/v1/core/block_pool.py`): reference counts, a free queue, and the prefix cache's
/// hash → block map. Pure: no storage, no weights; `KVCacheAllocator` owns the floats.
///
/// A block is *used* while some sequence holds it (reference count > 0) and *free* otherwise.
/// A free block may still be *cached*: registered under the hash of the tokens whose KV it holds,
/// so a later request with the same prefix takes it back instead of computing it again. Free
/// blocks are handed out from the front of the free queue: blocks that cache nothing first, then
/// cached ones least recently freed first (LRU eviction); `allocate` drops the hash of a cached
/// block it hands out.
public final class BlockPool {
    /// What a cached block holds: the chained hash, its parent's hash and its tokens (compared on
    /// lookup, so a 64-bit hash collision can never hand out the wrong KV).
    public struct Key: Equatable, Sendable {
        public let hash: UInt64
        public let parent: UInt64
        public let tokens: [Int]

        public init(hash: UInt64, parent: UInt64, tokens: [Int]) {
            self.hash = hash
            self.parent = parent
            self.tokens = tokens
        }
    }

    /// Blocks in the pool.
    public let blockCount: Int
    private var refs: [Int32]
    private var keys: [Key?]
    private var byHash: [UInt64: Int32] = [:]
    /// Cached blocks by their parent's hash: where a prefix that ends inside a block looks.
    private var children: [UInt64: [Int32]] = [:]
    // The free queue: a doubly linked list over block ids (-1 ends it), so that taking a cached
    // block back out of the middle is O(1).
    private var prev: [Int32]
    private var next: [Int32]
    private var inQueue: [Bool]
    private var head: Int32 = -1
    private var tail: Int32 = -1
    /// Blocks with reference count 0.
    public private(set) var freeCount: Int
    /// Blocks registered under a hash (used or free).
    public private(set) var cachedCount = 0
    /// Cached blocks handed out for other contents (their prefix forgotten).
    public private(set) var evictions = 0

    /// A pool of `blockCount` free, uncached blocks.
    public init(blockCount: Int) {
        precondition(blockCount > 0 && blockCount < Int(Int32.max), "a block pool needs 1..<2^31 blocks")
        self.blockCount = blockCount
        refs = [Int32](repeating: 0, count: blockCount)
        keys = [Key?](repeating: nil, count: blockCount)
        prev = [Int32](repeating: -1, count: blockCount)
        next = [Int32](repeating: -1, count: blockCount)
        inQueue = [Bool](repeating: false, count: blockCount)
        freeCount = blockCount
        for b in 0..<blockCount { append(Int32(b)) }
    }

    /// Blocks some sequence holds.
    public var usedCount: Int { blockCount - freeCount }

    /// How many sequences hold `block`.
    public func refCount(_ block: Int) -> Int { Int(refs[block]) }

    /// The prefix-cache key `block` is registered under, if any.
    public func key(_ block: Int) -> Key? { keys[block] }

    /// Takes a free block (evicting the prefix it caches, if any) with reference count 1, or nil
    /// when every block is in use.
    public func allocate() -> Int? {
        guard head >= 0 else { return nil }
        let b = Int(head)
        unlink(head)
        if keys[b] != nil {
            unregister(b)
            evictions += 1
        }
        refs[b] = 1
        freeCount -= 1
        return b
    }

    /// One more holder of `block` (a prefix-cache hit); a free block leaves the free queue.
    public func retain(_ block: Int) {
        if refs[block] == 0 {
            unlink(Int32(block))
            freeCount -= 1
        }
        refs[block] += 1
    }

    /// One holder fewer. At zero the block is free: a cached one joins the back of the free queue
    /// (most recently used, evicted last), an uncached one the front (handed out first).
    public func release(_ block: Int) {
        precondition(refs[block] > 0, "block \(block) released more often than held")
        refs[block] -= 1
        guard refs[block] == 0 else { return }
        freeCount += 1
        if keys[block] != nil { append(Int32(block)) } else { prepend(Int32(block)) }
    }

    /// The block cached under `key` (same hash, parent and tokens), if any; it is not retained.
    public func lookup(_ key: Key) -> Int? {
        guard let b = byHash[key.hash], keys[Int(b)] == key else { return nil }
        return Int(b)
    }

    /// The cached block after `parent` whose tokens share the longest beginning with `tokens`,
    /// and how many they share (at least 1); nil when none shares any. Its first `count` rows
    /// are the KV of those tokens, whether the block is full or a partly filled last block.
    public func longestChild(of parent: UInt64, matching tokens: ArraySlice<Int>) -> (block: Int, count: Int)? {
        var best: (block: Int, count: Int)? = nil
        for b in children[parent] ?? [] {
            guard let k = keys[Int(b)] else { continue }
            var n = 0
            for (x, y) in zip(k.tokens, tokens) {
                guard x == y else { break }
                n += 1
            }
            if n > (best?.count ?? 0) { best = (Int(b), n) }
        }
        return best
    }

    /// Registers `block`'s contents under `key`, so `lookup` finds it. A block holds one key; when
    /// another block already caches the same key, nothing changes (that one stays the cached copy).
    public func register(_ block: Int, key: Key) {
        guard keys[block] == nil, byHash[key.hash] == nil else { return }
        keys[block] = key
        byHash[key.hash] = Int32(block)
        children[key.parent, default: []].append(Int32(block))
        cachedCount += 1
    }

    /// Forgets what `block` caches.
    public func unregister(_ block: Int) {
        guard let k = keys[block] else { return }
        keys[block] = nil
        if byHash[k.hash] == Int32(block) { byHash[k.hash] = nil }
        children[k.parent]?.removeAll { $0 == Int32(block) }
        if children[k.parent]?.isEmpty == true { children[k.parent] = nil }
        cachedCount -= 1
    }

    /// Free blocks in queue order (the next one `allocate` hands out first); for tests.
    public var freeQueue: [Int] {
        var out: [Int] = []
        var b = head
        while b >= 0 { out.append(Int(b)); b = next[Int(b)] }
        return out
    }

    private func append(_ b: Int32) {
        prev[Int(b)] = tail
        next[Int(b)] = -1
        if tail >= 0 { next[Int(tail)] = b } else { head = b }
        tail = b
        inQueue[Int(b)] = true
    }

    private func prepend(_ b: Int32) {
        next[Int(b)] = head
        prev[Int(b)] = -1
        if head >= 0 { prev[Int(head)] = b } else { tail = b }
        head = b
        inQueue[Int(b)] = true
    }

    private func unlink(_ b: Int32) {
        precondition(inQueue[Int(b)], "block \(b) is not free")
        let p = prev[Int(b)], n = next[Int(b)]
        if p >= 0 { next[Int(p)] = n } else { head = n }
        if n >= 0 { prev[Int(n)] = p } else { tail = p }
        prev[Int(b)] = -1
        next[Int(b)] = -1
        inQueue[Int(b)] = false
    }
}

/// The prefix cache's block identity (vLLM's `hash_block_tokens`): a 64-bit hash chained over
/// the parent block's hash and this block's tokens, rooted at the model fingerprint, so equal
/// hashes mean the same tokens at the same positions after the same prefix of the same model.
/// Deterministic across runs (no per-process seed), so it can name blocks on disk later.
public enum BlockHash {
    /// The root of every chain: a hash of what makes KV rows differ between models (architecture,
    /// layer shapes, context, and any caller-supplied identity such as the weights' path).
    public static func fingerprint(_ parts: [String]) -> UInt64 {
        var h: UInt64 = 0x6661_7273_6964_6521  // "farside!"
        for p in parts {
            for byte in p.utf8 { h = mix(h ^ UInt64(byte)) }
            h = mix(h ^ 0xff)
        }
        return h
    }

    /// The hash of a block holding `tokens` (a full block, or the filled part of a last block:
    /// the count is hashed too) after the block hashed `parent`.
    public static func chain(parent: UInt64, tokens: ArraySlice<Int>) -> UInt64 {
        var h = mix(parent ^ 0x9e37_79b9_7f4a_7c15)
        for t in tokens { h = mix(h ^ UInt64(bitPattern: Int64(t))) }
        return mix(h ^ UInt64(tokens.count))
    }

    /// SplitMix64's finaliser: every input bit affects every output bit.
    @inline(__always)
    static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9e37_79b9_7f4a_7c15
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
