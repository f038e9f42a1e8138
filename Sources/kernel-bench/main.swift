// Kernel micro-benchmarks: GEMV bandwidth against the machine's read and memcpy bandwidth, GEMM
// throughput, and ThreadPool.parallelFor overhead. Every figure is the median of 7 runs.
//
//   swift run -c release --scratch-path .build-kernels kernel-bench [bandwidth|gemv|gemm|pool ...]
//
// (no arguments: all four parts). Other processes on the machine move these figures by ±20%:
// compare ratios from one run.
//
// Thread-count-dependent parts (GEMV, GEMM) run in child processes with FARSIDE_THREADS set,
// since the pool's size is fixed per process.
import Foundation
import Kernels

let runs = 7
let mib = 1 << 20

@inline(never) func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }

/// Median seconds of `runs` calls of `body` after one warm-up call.
func timeIt(_ body: () -> Void) -> Double {
    body()
    var t: [Double] = []
    for _ in 0..<runs {
        let s = now()
        body()
        t.append(now() - s)
    }
    return median(t)
}

/// A page-touched buffer of `bytes` filled with small pseudo-random values valid in every dtype.
func makeBuffer(_ bytes: Int, dtype: DType = .bf16) -> UnsafeMutableRawPointer {
    let p = UnsafeMutableRawPointer.allocate(byteCount: bytes + 64, alignment: 64)
    var s: UInt64 = 0x9E37_79B9_7F4A_7C15
    switch dtype {
    case .f32:
        let f = p.bindMemory(to: Float.self, capacity: bytes / 4)
        for i in 0..<(bytes / 4) { s = s &* 6364136223846793005 &+ 1; f[i] = Float(Int64(bitPattern: s) >> 44) / 1e6 }
    case .f16:
        let h = p.bindMemory(to: UInt16.self, capacity: bytes / 2 + 32)
        for i in 0..<(bytes / 2 + 32) { s = s &* 6364136223846793005 &+ 1; h[i] = Float16(Float(Int64(bitPattern: s) >> 44) / 1e6).bitPattern }
    case .bf16:
        let h = p.bindMemory(to: UInt16.self, capacity: bytes / 2 + 32)
        for i in 0..<(bytes / 2 + 32) { s = s &* 6364136223846793005 &+ 1; h[i] = UInt16((Float(Int64(bitPattern: s) >> 44) / 1e6).bitPattern >> 16) }
    default:
        // Quantized blocks: random bytes with every fp16 field a small scale; valid in every block format.
        let b = p.bindMemory(to: UInt8.self, capacity: bytes + 64)
        for i in 0..<(bytes + 64) { s = s &* 6364136223846793005 &+ 1; b[i] = UInt8(truncatingIfNeeded: s >> 33) & 0x3B }
    }
    return p
}

/// One page-touched `makeBuffer` matrix of `dtype` per `(rows, cols)` in `shapes`, and their
/// bytes together; `freeMatrices` releases them.
func makeMatrices(_ shapes: [(Int, Int)], dtype: DType) -> (mats: [Matrix], bytes: Int) {
    let mats = shapes.map { r, c in Matrix(data: makeBuffer(r * dtype.rowBytes(cols: c), dtype: dtype), dtype: dtype, rows: r, cols: c) }
    return (mats, mats.reduce(0) { $0 + $1.byteCount })
}

func freeMatrices(_ mats: [Matrix]) {
    for m in mats { UnsafeMutableRawPointer(mutating: m.data).deallocate() }
}

func vector(_ n: Int) -> UnsafeMutablePointer<Float> {
    let p = UnsafeMutablePointer<Float>.allocate(capacity: n)
    for i in 0..<n { p[i] = Float(sin(Double(i) * 0.37)) }
    return p
}

func fmt(_ x: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", x) }

func line(_ s: String) {
    print(s)
    fflush(stdout)
}

/// Sums `bytes` (a multiple of 64 · streams) read as `streams` sequential streams, one 64-byte
/// line from each per step, the way the GEMV kernel reads eight rows at once.
@inline(never) func readSum(_ p: UnsafeRawPointer, _ bytes: Int, streams: Int) -> Float {
    var a0 = SIMD8<Float>(), a1 = SIMD8<Float>()
    let len = bytes / streams
    var o = 0
    while o + 64 <= len {
        var q = p + o
        for _ in 0..<streams {
            a0 += q.load(as: SIMD8<Float>.self)
            a1 += q.load(fromByteOffset: 32, as: SIMD8<Float>.self)
            q += len
        }
        o += 64
    }
    return (a0 + a1).sum()
}

var sink: Float = 0

// MARK: - parts

func bandwidth() {
    let readBytes = 256 * mib
    let buf = makeBuffer(readBytes, dtype: .f32)
    for streams in [1, 8] {
        let t = timeIt { sink += readSum(buf, readBytes, streams: streams) }
        line("read bandwidth, 1 thread, 256 MiB sum, \(streams) stream\(streams > 1 ? "s" : ""): \(fmt(Double(readBytes) / t / 1e9)) GB/s")
    }
    let threads = ThreadPool.shared.threadCount
    let t2 = timeIt {
        ThreadPool.shared.parallelFor(threads) { lo, hi in
            let part = readBytes / threads
            for i in lo..<hi {
                let s = readSum(buf + i * part, part, streams: 8)
                if s == 12345 { print("") }
            }
        }
    }
    line("read bandwidth, \(threads) threads, 256 MiB sum, 8 streams each: \(fmt(Double(readBytes) / t2 / 1e9)) GB/s")
    buf.deallocate()

    let bytes = 64 * mib
    let src = makeBuffer(bytes), dst = makeBuffer(bytes)
    let tc = timeIt { memcpy(dst, src, bytes) }
    line("memcpy, 1 thread, 64 MiB (bytes copied/s): \(fmt(Double(bytes) / tc / 1e9)) GB/s")
    src.deallocate(); dst.deallocate()
}

/// GEMV over a 64 MiB matrix in each dtype (and shorter rows / many small matrices for bf16).
func gemv() {
    let threads = ThreadPool.shared.threadCount
    let bytes = 64 * mib
    func bench(_ label: String, _ dtype: DType, cols: Int, offset: Int = 0, pieces: Int = 1) {
        let rows = bytes / (cols * dtype.byteSize)
        let buf = makeBuffer(bytes + offset, dtype: dtype)
        let x = vector(cols), y = vector(rows)
        let per = rows / pieces
        let ms = (0..<pieces).map { Matrix(data: buf + offset, dtype: dtype, rows: rows, cols: cols).rows($0 * per, count: per) }
        let t = timeIt { for m in ms { Linear.forward(m, input: x, count: 1, output: y + 0) } }
        line("gemv \(label) \(dtype) \(pieces > 1 ? "\(pieces) × " : "")\(per)x\(cols)\(offset > 0 ? " (data +\(offset) B)" : ""), \(threads) thread\(threads > 1 ? "s" : ""): "
             + "\(fmt(Double(bytes) / t / 1e9)) GB/s  (\(fmt(t * 1e3, 2)) ms)")
        buf.deallocate(); x.deallocate(); y.deallocate()
    }
    for d in [DType.bf16, .f16, .f32] { bench("64 MiB", d, cols: 4096) }
    bench("64 MiB", .bf16, cols: 4096, offset: 2)
    bench("64 MiB", .bf16, cols: 1024)
    bench("64 MiB", .bf16, cols: 7168, offset: 2)
    bench("64 MiB", .bf16, cols: 1024, pieces: 64)  // 64 expert-sized (1 MiB) matrices in turn
}

/// GEMM: one bf16 4096×4096 matrix (and f16/f32 of the same shape) against 16 and 128 tokens.
func gemm() {
    let threads = ThreadPool.shared.threadCount
    let rows = 4096, cols = 4096
    for dtype in [DType.bf16, .f16, .f32] {
        let bytes = rows * cols * dtype.byteSize
        let buf = makeBuffer(bytes + 2, dtype: dtype)
        let m = Matrix(data: buf, dtype: dtype, rows: rows, cols: cols)
        let x = vector(128 * cols), y = vector(128 * rows)
        let tv = timeIt { Linear.forward(m, input: x, count: 1, output: y) }
        for n in [4, 16, 48, 128] {
            let t = timeIt { Linear.forward(m, input: x, count: n, output: y) }
            let gflops = 2.0 * Double(rows * cols * n) / t / 1e9
            line("gemm \(dtype) \(rows)x\(cols) count \(n), \(threads) thread\(threads > 1 ? "s" : ""): \(fmt(gflops)) GFLOP/s  "
                 + "(\(fmt(t * 1e3, 2)) ms; \(fmt(Double(n) * tv / t)) × faster than \(n) GEMVs)")
        }
        buf.deallocate(); x.deallocate(); y.deallocate()
    }
}

/// Quantized GEMV/GEMM at SmolLM2-135M's shapes: the 30 layers' matrices in turn (Q4_1, ~70 MB,
/// more than the L3) and the tied Q8_0 LM head; GB/s of weights and GFLOP/s.
func quantized() {
    let threads = ThreadPool.shared.threadCount
    let layers = 30
    let shapes = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
    for dtype in [DType.q4_1, .q4_0, .q8_0] {
        var mats: [Matrix] = []
        var bufs: [UnsafeMutableRawPointer] = []
        var bytes = 0, macs = 0
        for _ in 0..<layers {
            for (r, c) in shapes {
                let b = r * dtype.rowBytes(cols: c)
                let buf = makeBuffer(b, dtype: dtype)
                bufs.append(buf)
                mats.append(Matrix(data: buf, dtype: dtype, rows: r, cols: c))
                bytes += b; macs += r * c
            }
        }
        let x = vector(512 * 1536), y = vector(512 * 1536)
        let t = timeIt { for m in mats { Linear.forward(m, input: x, count: 1, output: y) } }
        line("gemv \(dtype) SmolLM2 layer matrices ×\(layers) (\(bytes >> 20) MiB), \(threads) thread\(threads > 1 ? "s" : ""): "
             + "\(fmt(Double(bytes) / t / 1e9)) GB/s, \(fmt(2 * Double(macs) / t / 1e9)) GFLOP/s (\(fmt(t * 1e3, 2)) ms)")
        for n in [8, 512] {
            let tn = timeIt { for m in mats.prefix(7) { Linear.forward(m, input: x, count: n, output: y) } }
            let m7 = shapes.reduce(0) { $0 + $1.0 * $1.1 }
            line("gemm \(dtype) one SmolLM2 layer, \(n) tokens: \(fmt(2 * Double(m7 * n) / tn / 1e9)) GFLOP/s (\(fmt(tn * 1e3, 2)) ms)")
        }
        for b in bufs { b.deallocate() }
        x.deallocate(); y.deallocate()
    }
    // k-quants need columns in multiples of 256: Llama-3.2-1B's layer shapes, 2 layers (~70 MB
    // at 4.5 bits), beside Q4_0/Q8_0 at the same shapes.
    let kShapes = [(2048, 2048), (512, 2048), (512, 2048), (2048, 2048), (8192, 2048), (8192, 2048), (2048, 8192)]
    for dtype in [DType.q4_0, .int4, .q4_K, .q5_K, .q6_K, .q8_0] {
        let (mats, bytes) = makeMatrices(kShapes + kShapes, dtype: dtype)
        let x = vector(8192), y = vector(8192)
        let t = timeIt { for m in mats { Linear.forward(m, input: x, count: 1, output: y) } }
        line("gemv \(dtype) Llama-3.2-1B layer matrices ×2 (\(bytes >> 20) MiB), \(threads) thread\(threads > 1 ? "s" : ""): "
             + "\(fmt(Double(bytes) / t / 1e9)) GB/s (\(fmt(t * 1e3, 2)) ms)")
        freeMatrices(mats)
        x.deallocate(); y.deallocate()
    }
    // One Kimi K2 routed expert (gate and up 2048×7168, down 7168×2048) as its published INT4
    // (compressed-tensors group 32, regrouped) against bf16: decode reads every weight once, and
    // a few tokens routed to the same expert share that read.
    let expertShapes = [(2048, 7168), (2048, 7168), (7168, 2048)]
    for dtype in [DType.int4, .bf16] {
        let (mats, bytes) = makeMatrices(expertShapes, dtype: dtype)
        let x = vector(16 * 7168), y = vector(16 * 7168)
        let t = timeIt { for m in mats { Linear.forward(m, input: x, count: 1, output: y) } }
        line("gemv \(dtype) Kimi K2 expert (\(bytes >> 20) MiB), \(threads) thread\(threads > 1 ? "s" : ""): "
             + "\(fmt(Double(bytes) / t / 1e9)) GB/s (\(fmt(t * 1e3, 2)) ms)")
        for n in [4, 16] {
            let tn = timeIt { for m in mats { Linear.forward(m, input: x, count: n, output: y) } }
            line("gemm \(dtype) Kimi K2 expert, \(n) tokens: \(fmt(2 * Double(3 * 2048 * 7168 * n) / tn / 1e9)) GFLOP/s (\(fmt(tn * 1e3, 2)) ms)")
        }
        freeMatrices(mats)
        x.deallocate(); y.deallocate()
    }
    let head = makeBuffer(49152 * DType.q8_0.rowBytes(cols: 576), dtype: .q8_0)
    let hm = Matrix(data: head, dtype: .q8_0, rows: 49152, cols: 576)
    let x = vector(576), y = vector(49152)
    let t = timeIt { Linear.forward(hm, input: x, count: 1, output: y) }
    line("gemv q8_0 49152x576 LM head, \(threads) thread\(threads > 1 ? "s" : ""): \(fmt(Double(hm.byteCount) / t / 1e9)) GB/s (\(fmt(t * 1e3, 2)) ms)")
    head.deallocate(); x.deallocate(); y.deallocate()
}

func poolOverhead() {
    let pool = ThreadPool.shared
    let calls = 20_000
    let t = timeIt { for _ in 0..<calls { pool.parallelFor(pool.threadCount) { _, _ in } } }
    line("parallelFor overhead, \(pool.threadCount) threads, empty body: \(fmt(t / Double(calls) * 1e6, 2)) µs/call")
    // Back-to-back calls separated by a little serial work, as between the kernels of a layer.
    let x = vector(4096)
    let t2 = timeIt {
        for _ in 0..<calls {
            sink += Elementwise.dot(x, x, count: 4096)
            pool.parallelFor(64, granularity: 4) { lo, hi in if lo > hi { print("") } }
        }
    }
    let tDot = timeIt { for _ in 0..<calls { sink += Elementwise.dot(x, x, count: 4096) } }
    line("parallelFor overhead after 4096-float serial work: \(fmt((t2 - tDot) / Double(calls) * 1e6, 2)) µs/call")
    // After idle gaps (spin-waiting the gap, so the caller's own wake-up latency is not counted):
    // shows how long workers keep spinning before they sleep, and what a sleeping wake costs.
    for gapMicros in [10, 50, 100, 200, 500, 2000, 50_000] {
        var samples: [Double] = []
        for _ in 0..<(gapMicros >= 50_000 ? runs : 41) {
            let until = now() + Double(gapMicros) * 1e-6
            while now() < until {}
            let s = now()
            pool.parallelFor(pool.threadCount) { _, _ in }
            samples.append(now() - s)
        }
        line("parallelFor after \(gapMicros) µs idle: \(fmt(median(samples) * 1e6, 2)) µs/call")
    }
}

/// `AttentionTile.run` on one thread over a 4096-position context in 256-position tiles, for a
/// GQA group (3 queries of 64 values: SmolLM2's decode step) and an MLA row (8 heads over a
/// 512-value latent plus a 64-value rotary key), every KV dtype: positions per second and the
/// KV bytes read per second.
func attention() {
    let length = 4096, tile = 256
    for (label, g, width, rope) in [("GQA 3×64", 3, 64, 0), ("GQA 8 rows×3×64 (prompt)", 24, 64, 0), ("MLA 8×(512+64)", 8, 512, 64)] {
        for dtype in KVDType.allCases {
            let rowA = dtype.bytes(width), rowB = dtype.bytes(max(rope, width))
            let a = makeBuffer(length * rowA + 64, dtype: .f16), b = makeBuffer(length * rowB + 64, dtype: .f16)
            // Stored rows from fp32 values in [-1, 1).
            let src = vector(max(width, 64))
            for p in 0..<length {
                dtype.store(src, into: a + p * rowA, count: width)
                dtype.store(src, into: b + p * rowB, count: rope > 0 ? rope : width)
            }
            let keys = UnsafeMutablePointer<UnsafeRawPointer>.allocate(capacity: length)
            let ropeKeys = UnsafeMutablePointer<UnsafeRawPointer>.allocate(capacity: length)
            let values = UnsafeMutablePointer<UnsafeRawPointer>.allocate(capacity: length)
            for p in 0..<length {
                keys[p] = UnsafeRawPointer(a + p * rowA)
                ropeKeys[p] = UnsafeRawPointer(b + p * rowB)
                values[p] = rope > 0 ? UnsafeRawPointer(a + p * rowA) : UnsafeRawPointer(b + p * rowB)
            }
            let q = vector(g * width), qr = vector(g * max(rope, 1))
            let qs = UnsafeMutablePointer<UnsafePointer<Float>>.allocate(capacity: g)
            let qrs = UnsafeMutablePointer<UnsafePointer<Float>>.allocate(capacity: g)
            for i in 0..<g { qs[i] = UnsafePointer(q + i * width); qrs[i] = UnsafePointer(qr + i * rope) }
            let scores = vector(g * tile), states = vector(g * (width + 2))
            let scratch = UnsafeMutableRawPointer.allocate(byteCount: AttentionTile.scratchBytes(width: width, ropeWidth: rope), alignment: 64)
            let t = timeIt {
                var lo = 0
                while lo < length {
                    AttentionTile.run(dtype: dtype, count: tile, keys: keys + lo, ropeKeys: rope > 0 ? UnsafePointer(ropeKeys + lo) : nil,
                                      values: values + lo, queries: qs, ropeQueries: rope > 0 ? UnsafePointer(qrs) : nil,
                                      count: g, width: width, ropeWidth: rope, scale: 0.125, scores: scores, scoreStride: tile,
                                      scratch: scratch, states: states, stateStride: width + 2)
                    lo += tile
                }
            }
            sink += states[2]
            let bytes = Double(length * (rope > 0 ? rowA + dtype.bytes(rope) : 2 * rowA))
            line("attention \(label), \(dtype): \(fmt(Double(length) / t / 1e6, 2)) M positions/s, "
                 + "\(fmt(Double(length * g) / t / 1e6, 1)) M query-positions/s, \(fmt(bytes / t / 1e9, 2)) GB/s of KV")
        }
    }
}

// MARK: - driver

let args = CommandLine.arguments
if args.count >= 3 && args[1] == "--part" {
    switch args[2] {
    case "gemv": gemv()
    case "gemm": gemm()
    case "pool": poolOverhead()
    case "bandwidth": bandwidth()
    case "quantized": quantized()
    case "attention": attention()
    default:
        FileHandle.standardError.write(Data("kernel-bench: unknown part '\(args[2])' (parts: bandwidth, gemv, gemm, quantized, pool, attention)\n".utf8))
        exit(2)
    }
    exit(0)
}

let selfPath = URL(fileURLWithPath: ProcessInfo.processInfo.arguments[0]).standardizedFileURL.path
func child(_ part: String, threads: Int?) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: selfPath)
    p.arguments = ["--part", part]
    var env = ProcessInfo.processInfo.environment
    if let threads { env["FARSIDE_THREADS"] = String(threads) }
    p.environment = env
    try! p.run()
    p.waitUntilExit()
}
let cores = ProcessInfo.processInfo.activeProcessorCount
let known = ["bandwidth", "gemv", "gemm", "quantized", "pool", "attention"]
let parts = args.count > 1 ? Array(args[1...]) : known
if let bad = parts.first(where: { !known.contains($0) }) {
    FileHandle.standardError.write(Data("kernel-bench: unknown part '\(bad)'; usage: kernel-bench [\(known.joined(separator: "|"))]...\n".utf8))
    exit(2)
}
for part in parts {
    switch part {
    case "gemv", "gemm", "quantized": for t in Set([1, cores]).sorted() { child(part, threads: t) }
    default: child(part, threads: nil)
    }
}
