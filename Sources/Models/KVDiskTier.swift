import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why `--kv-disk DIR` cannot be used, found at start so the server does not come up with a tier
/// it cannot write (at runtime a failed write is a warning and the server goes on RAM only).
public enum KVDiskError: Error, CustomStringConvertible, Equatable {
    case notADirectory(String)
    case cannotCreate(String, reason: String)
    case unwritable(String, reason: String)
    case inUse(String)
    case budgetTooSmall(budget: Int, fileBytes: Int)
    /// A sequence streaming its KV into the directory needs more than the whole budget.
    case streamExceedsBudget(bytes: Int, budget: Int)
    /// Sequences streaming their KV hold the part of the budget this one would need.
    case budgetHeldByStreams(bytes: Int, free: Int)

    public var description: String {
        switch self {
        case .notADirectory(let p):
            return "--kv-disk '\(p)' exists and is not a directory; give a directory for the KV block files"
        case let .cannotCreate(p, reason):
            return "--kv-disk '\(p)' cannot be created: \(reason)"
        case let .unwritable(p, reason):
            return "--kv-disk '\(p)' is not writable: \(reason); give a directory this user can write"
        case .inUse(let p):
            return "--kv-disk '\(p)' is in use by another farside server; give each server its own directory"
        case let .budgetTooSmall(budget, fileBytes):
            return "a --kv-disk-budget of \(budget) bytes holds no KV block file (one takes \(fileBytes) bytes for this model); raise --kv-disk-budget"
        case let .streamExceedsBudget(bytes, budget):
            return "this request's KV (\(bytes) bytes, more than --kv-budget holds) would stream to a file in --kv-disk, but --kv-disk-budget is \(budget) bytes; raise --kv-disk-budget or ask for fewer tokens"
        case let .budgetHeldByStreams(bytes, free):
            return "this request's KV (\(bytes) bytes) would stream to a file in --kv-disk, but other long requests streaming there leave \(free) bytes of --kv-disk-budget; retry later"
        }
    }
}

/// The KV cache's disk tier (`--kv-disk DIR --kv-disk-budget N`): full prefix-cache blocks as
/// files in one directory, one file per block named by its chained hash (`KVBlockFile`), so a
/// block that has left RAM is read back instead of computed again, also by a server started
/// later on the same model (the index is rebuilt from the files' headers at start).
///
/// - Writes are write-through and asynchronous: `store` copies a block as it fills (on the
///   engine thread, a memcpy) and a writer thread writes it to a temporary file and renames it
///   into place, so a file is whole or absent, even after SIGKILL. Writing when a block fills
///   rather than when it is evicted is what lets a killed server's blocks survive it; it also
///   means an eviction from RAM costs nothing. No fsync: the page cache outlives the process,
///   and a file lost to a power cut is only a cache miss.
/// - Reads are synchronous (`load`, on the engine thread while a request is admitted): the
///   header must match this server's `Layout`, the tokens must chain to the hash, and the
///   checksum must match before the block is handed to the pool; otherwise the file is removed.
/// - The budget counts whole files; the least recently used go first.
/// - A failed write (full disk, directory gone) warns once and turns writing off: the server
///   goes on with what is in RAM and on disk, and no request fails for it.
///
/// Thread-safe: the engine thread calls `contains`, `load` and `store`; the writer thread
/// updates the index under the same lock.
public final class KVDiskTier: @unchecked Sendable {
    /// Counters for metrics.
    public struct Stats: Sendable, Equatable {
        /// Block files on disk, and their bytes.
        public var blocks = 0
        public var bytes = 0
        /// Blocks read back into RAM, and their file bytes.
        public var hits = 0
        public var bytesRead = 0
        /// Block files written, and their bytes.
        public var writes = 0
        public var bytesWritten = 0
        /// Files ignored and removed because they did not match (another model, damaged, cut short).
        public var rejected = 0
        /// Files removed to stay within the budget.
        public var evictions = 0
        /// Blocks not written because the writer was too far behind, writing is off, or streamed
        /// sequences hold the whole budget.
        public var dropped = 0
        /// Bytes of the budget held by sequences streaming their KV into the directory.
        public var streamBytes = 0
        /// Whether blocks are still being written (false after a failed write).
        public var writable = true
    }

    public let directory: String
    public let layout: KVBlockFile.Layout
    /// Files the budget holds.
    public let capacity: Int

    private struct Entry {
        let parent: UInt64
        let tokens: [Int]
        var lastUse: UInt64
    }

    private struct Job {
        let key: BlockPool.Key
        let payload: UnsafeMutableRawBufferPointer
    }

    private let lock = NSCondition()
    private var index: [UInt64: Entry] = [:]
    private var queue: [Job] = []
    private var queued: Set<UInt64> = []
    private var queuedBytes = 0
    private var writing = false
    private var closed = false
    private var tick: UInt64 = 0
    private var stats = Stats()
    /// Files' worth of the budget held by sequences streaming their KV here (`reserveStream`).
    private var streamFiles = 0
    private let warn: @Sendable (String) -> Void
    private var lockFD: Int32
    /// Blocks waiting to be written at most, in bytes: a writer that falls behind drops blocks
    /// (cache misses later) rather than growing memory without bound.
    private let maxQueuedBytes: Int
    /// The engine thread's buffer for a file's header.
    private var headerBuffer: [UInt8]

    /// Opens (creating it if needed) `directory` as the disk tier of a pool whose blocks look
    /// like `layout`, within `budgetBytes` of files, and indexes the block files already there:
    /// files that do not match `layout` (another model or dtype, a damaged or cut-short header,
    /// an older format) and leftover temporary files are removed. Throws when the directory is
    /// not one, cannot be created or written, is used by another server, or the budget holds
    /// no file. `warn` hears about files removed and a write that failed.
    public init(directory: String, budgetBytes: Int, layout: KVBlockFile.Layout,
                warn: @escaping @Sendable (String) -> Void = { FileHandle.standardError.write(Data("warning: \($0)\n".utf8)) }) throws {
        self.directory = directory
        self.layout = layout
        self.warn = warn
        capacity = max(budgetBytes, 0) / layout.fileBytes
        guard capacity >= 1 else { throw KVDiskError.budgetTooSmall(budget: budgetBytes, fileBytes: layout.fileBytes) }
        maxQueuedBytes = max(256 << 20, 8 * layout.payloadBytes)
        headerBuffer = [UInt8](repeating: 0, count: layout.headerBytes)
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: directory, isDirectory: &isDir) {
            guard isDir.boolValue else { throw KVDiskError.notADirectory(directory) }
        } else {
            do {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            } catch {
                throw KVDiskError.cannotCreate(directory, reason: Self.reason(error))
            }
        }
        // One server per directory: its index would not see the other's writes and evictions.
        // flock is released by the kernel when the process dies, SIGKILL included.
        let fd = open(directory + "/.lock", O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw KVDiskError.unwritable(directory, reason: String(cString: strerror(errno))) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw KVDiskError.inUse(directory)
        }
        lockFD = fd
        // The lock file may predate a change of permissions: a real write shows what will happen.
        let probe = directory + "/.probe-\(getpid()).part"
        let pfd = open(probe, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0o644)
        guard pfd >= 0, write(pfd, "farside", 7) == 7 else {
            let reason = String(cString: strerror(errno))
            if pfd >= 0 { close(pfd); unlink(probe) }
            close(lockFD)
            throw KVDiskError.unwritable(directory, reason: reason)
        }
        close(pfd)
        unlink(probe)
        scan()
        let t = Thread { [self] in writerLoop() }
        t.name = "farside-kv-disk"
        t.start()
    }

    deinit { releaseLock() }

    /// Current counters.
    public var snapshot: Stats {
        lock.lock()
        defer { lock.unlock() }
        var s = stats
        s.blocks = index.count
        s.bytes = index.count * layout.fileBytes
        s.streamBytes = streamFiles * layout.fileBytes
        return s
    }

    /// Whether a sequence streaming `bytes` of KV into the directory fits the budget at all.
    public func couldHoldStream(bytes: Int) -> Bool { files(bytes) <= capacity }

    /// Takes `bytes` of the budget for a sequence streaming its KV into the directory (the
    /// budget bounds everything Farside writes there), removing least recently used block files
    /// to make room. Returns the share to give back with `releaseStream` when the sequence ends.
    /// Throws `streamExceedsBudget` when the budget could never hold it, `budgetHeldByStreams`
    /// when other streamed sequences hold too much of it now.
    public func reserveStream(bytes: Int) throws -> Int {
        let n = files(bytes)
        lock.lock()
        defer { lock.unlock() }
        guard n <= capacity else { throw KVDiskError.streamExceedsBudget(bytes: bytes, budget: capacity * layout.fileBytes) }
        guard n <= capacity - streamFiles else {
            throw KVDiskError.budgetHeldByStreams(bytes: bytes, free: (capacity - streamFiles) * layout.fileBytes)
        }
        streamFiles += n
        makeRoom(for: 0)
        return n
    }

    /// Gives back a share `reserveStream` returned.
    public func releaseStream(_ share: Int) {
        lock.lock()
        streamFiles -= share
        lock.unlock()
    }

    /// Block files' worth of `bytes` (rounded up).
    private func files(_ bytes: Int) -> Int { (max(bytes, 0) + layout.fileBytes - 1) / layout.fileBytes }

    /// Whether a file for `key` (same hash, parent and tokens) is on disk.
    public func contains(_ key: BlockPool.Key) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard let e = index[key.hash] else { return false }
        return e.parent == key.parent && e.tokens == key.tokens
    }

    /// Reads `key`'s block into `destination` (`layout.payloadBytes` bytes), checking the file
    /// header against `layout` and `key` and the checksum over what was read. Returns false when
    /// there is no such file or it does not check out; such a file is removed, and whatever was
    /// read into `destination` must not be used.
    public func load(_ key: BlockPool.Key, into destination: UnsafeMutableRawPointer) -> Bool {
        guard contains(key) else { return false }
        let path = self.path(key.hash)
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        // Evicted by the writer since `contains`: a miss, nothing to remove.
        guard fd >= 0 else { forget(key.hash, removing: false); return false }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return false }
        let size = Int(st.st_size)
        let headerBytes = layout.headerBytes, payloadBytes = layout.payloadBytes
        let verdict: Result<Void, KVBlockFileError> = headerBuffer.withUnsafeMutableBytes { hb in
            guard readFully(fd, hb.baseAddress!, headerBytes, at: 0),
                  readFully(fd, destination, payloadBytes, at: headerBytes) else {
                return .failure(.truncated(bytes: size, expected: layout.fileBytes))
            }
            do throws(KVBlockFileError) {
                let header = try KVBlockFile.parseHeader(UnsafeRawBufferPointer(hb), fileBytes: size, layout: layout)
                guard header.key == key else { return .failure(.hashMismatch) }
                let tokens = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(hb)[KVBlockFile.fixedHeaderBytes...])
                let sum = KVBlockFile.checksum(tokens: tokens, payload: UnsafeRawBufferPointer(start: destination, count: payloadBytes))
                return sum == header.checksum ? .success(()) : .failure(.badChecksum)
            } catch {
                return .failure(error)
            }
        }
        if case .failure(let why) = verdict {
            warn("ignored and removed \(path): \(why)")
            forget(key.hash, removing: true)
            lock.lock()
            stats.rejected += 1
            lock.unlock()
            return false
        }
        lock.lock()
        tick += 1
        index[key.hash]?.lastUse = tick
        stats.hits += 1
        stats.bytesRead += layout.fileBytes
        lock.unlock()
        return true
    }

    /// Queues `key`'s block (`layout.payloadBytes` bytes at `source`, copied now) to be written,
    /// unless it is on disk or queued already, writing is off, or the writer is too far behind.
    public func store(_ key: BlockPool.Key, from source: UnsafeRawPointer) {
        guard key.tokens.count == layout.blockSize else { return }
        lock.lock()
        defer { lock.unlock() }
        guard !closed, index[key.hash] == nil, !queued.contains(key.hash) else { return }
        guard stats.writable, streamFiles < capacity, queuedBytes + layout.payloadBytes <= maxQueuedBytes else {
            stats.dropped += 1
            return
        }
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: layout.payloadBytes, alignment: 64)
        copy.baseAddress!.copyMemory(from: source, byteCount: layout.payloadBytes)
        queue.append(Job(key: key, payload: copy))
        queued.insert(key.hash)
        queuedBytes += layout.payloadBytes
        lock.signal()
    }

    /// Waits until every queued block is written (or dropped).
    public func flush() {
        lock.lock()
        while !queue.isEmpty || writing { lock.wait() }
        lock.unlock()
    }

    /// Writes what is queued, then stops the writer and lets another server open the directory;
    /// later `store`s are ignored, `load`s still work.
    public func shutdown() {
        flush()
        lock.lock()
        closed = true
        releaseLock()
        lock.broadcast()
        lock.unlock()
    }

    private func releaseLock() {
        guard lockFD >= 0 else { return }
        close(lockFD)
        lockFD = -1
    }

    // MARK: Files

    private func path(_ hash: UInt64) -> String { directory + "/" + KVBlockFile.name(hash) }

    /// Indexes the directory's block files; removes the ones that do not match and leftovers.
    private func scan() {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        var found: [(hash: UInt64, entry: Entry, mtime: Double)] = []
        var rejected: [String] = []
        var buffer = [UInt8](repeating: 0, count: layout.headerBytes)
        for name in names {
            let p = directory + "/" + name
            if name.hasSuffix(".part") {  // a write cut short by a crash
                unlink(p)
                continue
            }
            guard name.hasSuffix(".kvb") else { continue }  // not ours: leave it
            let fd = open(p, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { continue }
            var st = stat()
            let ok = fstat(fd, &st) == 0
            let result: Result<KVBlockFile.Header, KVBlockFileError> = buffer.withUnsafeMutableBytes { b in
                let n = ok ? pread(fd, b.baseAddress!, b.count, 0) : -1
                do throws(KVBlockFileError) {
                    return .success(try KVBlockFile.parseHeader(UnsafeRawBufferPointer(rebasing: b[..<max(n, 0)]),
                                                                fileBytes: Int(st.st_size), layout: layout))
                } catch {
                    return .failure(error)
                }
            }
            close(fd)
            switch result {
            case .success(let h) where KVBlockFile.name(h.key.hash) == name:
                let mtime = Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9
                found.append((h.key.hash, Entry(parent: h.key.parent, tokens: h.key.tokens, lastUse: 0), mtime))
            case .success:
                unlink(p)
                rejected.append("\(name): named for another block")
            case .failure(let why):
                unlink(p)
                rejected.append("\(name): \(why)")
            }
        }
        if !rejected.isEmpty {
            warn("\(directory): ignored and removed \(rejected.count) KV block file(s) that do not match this server, e.g. \(rejected[0])")
        }
        // The most recently written are the most recently used as far as anyone knows.
        found.sort { $0.mtime < $1.mtime }
        lock.lock()
        for f in found {
            tick += 1
            var e = f.entry
            e.lastUse = tick
            index[f.hash] = e
        }
        stats.rejected += rejected.count
        makeRoom(for: 0)
        lock.unlock()
    }

    /// Removes least recently used files until `incoming` more fit beside the streamed
    /// sequences' share. Holds `lock`. A scan of the
    /// index per eviction (O(files)): it runs on the writer thread, beside a file write that
    /// costs far more, and keeps the index one dictionary.
    private func makeRoom(for incoming: Int) {
        while index.count + incoming + streamFiles > capacity, let oldest = index.min(by: { $0.value.lastUse < $1.value.lastUse }) {
            index[oldest.key] = nil
            unlink(path(oldest.key))
            stats.evictions += 1
        }
    }

    /// Drops `hash` from the index (and its file, when `removing`).
    private func forget(_ hash: UInt64, removing: Bool) {
        lock.lock()
        index[hash] = nil
        lock.unlock()
        if removing { unlink(path(hash)) }
    }

    private func writerLoop() {
        while true {
            lock.lock()
            while queue.isEmpty && !closed { lock.wait() }
            if queue.isEmpty && closed {
                lock.unlock()
                return
            }
            let job = queue.removeFirst()
            writing = true
            // Streamed sequences may hold the whole budget: then there is no room for the block.
            let on = stats.writable && streamFiles < capacity
            lock.unlock()

            let error = on ? writeFile(job) : nil
            job.payload.deallocate()

            lock.lock()
            queued.remove(job.key.hash)
            queuedBytes -= layout.payloadBytes
            writing = false
            if !on {
                stats.dropped += 1
            } else if let error {
                stats.writable = false
                stats.dropped += 1
                warn("cannot write KV block files in \(directory) (\(error)); the disk tier stops writing and the server goes on with RAM (and the blocks already on disk)")
            } else if streamFiles >= capacity {
                // A streamed sequence took the rest of the budget while the file was written.
                unlink(path(job.key.hash))
                stats.dropped += 1
            } else {
                makeRoom(for: 1)
                tick += 1
                index[job.key.hash] = Entry(parent: job.key.parent, tokens: job.key.tokens, lastUse: tick)
                stats.writes += 1
                stats.bytesWritten += layout.fileBytes
            }
            lock.broadcast()
            lock.unlock()
        }
    }

    /// Writes one block file: to a temporary name, then renamed into place, so a reader (or the
    /// next start's scan) sees a whole file or none. Returns why it failed, or nil.
    private func writeFile(_ job: Job) -> String? {
        let tokenBytes = job.key.tokens.map { UInt64(bitPattern: Int64($0)).littleEndian }
        let sum = tokenBytes.withUnsafeBytes { KVBlockFile.checksum(tokens: $0, payload: UnsafeRawBufferPointer(job.payload)) }
        let header = KVBlockFile.header(layout, key: job.key, checksum: sum)
        let final = path(job.key.hash), temp = final + ".part"
        let fd = open(temp, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return String(cString: strerror(errno)) }
        let ok = header.withUnsafeBytes { writeFully(fd, $0.baseAddress!, $0.count) }
            && writeFully(fd, job.payload.baseAddress!, job.payload.count)
        let failure = ok ? nil : String(cString: strerror(errno))
        close(fd)
        guard ok, rename(temp, final) == 0 else {
            let why = failure ?? String(cString: strerror(errno))
            unlink(temp)
            return why
        }
        return nil
    }

    private static func reason(_ error: Error) -> String {
        (error as NSError).localizedFailureReason ?? (error as NSError).localizedDescription
    }
}

/// `count` bytes from `fd` at `offset` into `p`, however many reads it takes; false at EOF or error.
private func readFully(_ fd: Int32, _ p: UnsafeMutableRawPointer, _ count: Int, at offset: Int) -> Bool {
    var done = 0
    while done < count {
        let n = pread(fd, p + done, count - done, off_t(offset + done))
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { return false }
        done += n
    }
    return true
}

/// `count` bytes from `p` to `fd`, however many writes it takes; false on error (errno says why).
private func writeFully(_ fd: Int32, _ p: UnsafeRawPointer, _ count: Int) -> Bool {
    var done = 0
    while done < count {
        #if canImport(Glibc)
        let n = Glibc.write(fd, p + done, count - done)
        #else
        let n = Darwin.write(fd, p + done, count - done)
        #endif
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { return false }
        done += n
    }
    return true
}
