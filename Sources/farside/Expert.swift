import ArgumentParser
import Checkpoint
import ExpertNode
import Foundation
import Models

/// Parses sizes such as 8GiB, 512MiB, 2GB, 1.5GiB, 1000000 into bytes. Rejects, with a message
/// naming the text, anything that is not a finite non-negative size fitting 64 bits
/// (1e30GiB, NaN, -1GiB, inf).
func parseBytes(_ s: String, flag: String = "--memory-budget") throws -> Int {
    let units: [(String, Double)] = [("GiB", 1_073_741_824), ("MiB", 1_048_576), ("KiB", 1024), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("B", 1)]
    let (number, factor) = units.first { s.hasSuffix($0.0) }.map { (String(s.dropLast($0.0.count)), $0.1) } ?? (s, 1)
    if let exact = Int(number) {
        do { return try CheckedSize.product([exact, Int(factor)], "\(flag) '\(s)'") } catch { throw ValidationError("\(error)") }
    }
    guard let v = Double(number) else {
        throw ValidationError("\(flag) '\(s)' is not a size (e.g. 8GiB, 512MiB, 1.5GB, 1000000)")
    }
    do { return try CheckedSize.int(v * factor, "\(flag) '\(s)'") } catch { throw ValidationError("\(error)") }
}

struct Expert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run an expert node: hold routed experts and compute them for coordinators.")

    @Option(name: .long, help: "Data-plane endpoint to bind, e.g. tcp://127.0.0.1:5600 (port * picks a free one).")
    var listen: String

    @Option(name: .long, help: "The coordinator's control endpoint, e.g. tcp://127.0.0.1:5500.")
    var coordinator: String

    @Option(name: .long, help: "This node's local copy of the model: a GGUF file or a Hugging Face checkpoint directory (default: the default model).")
    var model: String?

    @Option(name: .long, help: "Node id (default: hostname-pid).")
    var nodeId: String?

    @Option(name: .long, help: "Memory for expert weights, e.g. 8GiB (0: no limit).")
    var memoryBudget: String = "0"

    @Option(name: .long, help: "Largest inbound message part in bytes; larger ones drop the sender's connection.")
    var maxMessageBytes: Int64 = 1 << 30

    @Option(name: .long, help: "Dense FFNs cut into E neuron slices (must match the coordinator's --split-dense).")
    var splitDense: Int?

    @Flag(name: .long, help: "Run each routed expert whole on one thread instead of sharing its rows between threads: fewer thread barriers per layer, faster when the node shares its cores with other busy processes (local nodes do).")
    var wholeExperts = false

    @Option(name: .long, help: "Microseconds to keep polling for the next request with sched_yield() before blocking (0: block at once). Saves the wake-up of a blocked thread at every request while requests come often (decode), at the price of a busy core for that long after each.")
    var pollYieldUs: Int = 3000

    @Flag(name: .long, help: "Log nothing but errors.")
    var quiet = false

    @OptionGroup var threadOptions: ThreadOptions

    func validate() throws {
        if let e = splitDense, !(1...1024).contains(e) { throw ValidationError("--split-dense must be in 1...1024, got \(e)") }
        guard (0...1_000_000).contains(pollYieldUs) else { throw ValidationError("--poll-yield-us must be in 0...1000000, got \(pollYieldUs)") }
        guard maxMessageBytes >= 1024 else { throw ValidationError("--max-message-bytes must be at least 1024") }
        _ = try parseBytes(memoryBudget)
        for (flag, v) in [("--listen", listen), ("--coordinator", coordinator)] where !(v.hasPrefix("tcp://") || v.hasPrefix("ipc://") || v.hasPrefix("inproc://")) {
            throw ValidationError("\(flag) '\(v)' is not a ZeroMQ endpoint (tcp://HOST:PORT)")
        }
    }

    func run() throws {
        try runReportingErrors {
            let (m, fingerprint) = try openModel(path: try model ?? DefaultModel.path(), denseSlices: splitDense)
            let id = nodeId ?? "\(ProcessInfo.processInfo.hostName)-\(getpid())"
            var options = ExpertNodeServer.Options(listen: listen, coordinator: coordinator, nodeID: id,
                                                   memoryBudget: try parseBytes(memoryBudget))
            options.maxMessageBytes = maxMessageBytes
            options.splitExpertRows = !wholeExperts
            options.pollYieldWindow = Double(pollYieldUs) * 1e-6
            let server = ExpertNodeServer(
                model: m, fingerprint: fingerprint, options: options,
                log: { msg in if !quiet { FileHandle.standardError.write(Data("expert[\(id)]: \(msg)\n".utf8)) } })
            try server.run()
        }
    }
}

struct Cluster: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage a local cluster.", subcommands: [Up.self])

    struct Up: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Start a coordinator and N expert nodes on loopback; stop them all on Ctrl-C or SIGTERM.")

        @Option(name: .long, help: "A GGUF file or a Hugging Face checkpoint directory (default: the default model).")
        var model: String?

        @Option(name: .long, help: "Number of expert-node processes.")
        var nodes: Int = 2

        func validate() throws {
            guard nodes >= 1 && nodes <= 64 else { throw ValidationError("--nodes must be in 1...64, got \(nodes)") }
        }

        func run() throws {
            try runReportingErrors {
                signal(SIGINT, SIG_IGN)
                signal(SIGTERM, SIG_IGN)
                let stop = DispatchSemaphore(value: 0)
                var sources: [DispatchSourceSignal] = []
                for sig in [SIGINT, SIGTERM] {
                    let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
                    s.setEventHandler { stop.signal() }
                    s.resume()
                    sources.append(s)
                }
                let opts = try ModelOptions.parse(["--model", try model ?? DefaultModel.path(), "--tokens", "0", "--local-nodes", "\(nodes)"])
                let m = try opts.load()
                FileHandle.standardError.write(Data("cluster up: \(m.architecture) with \(nodes) expert nodes; Ctrl-C stops it\n".utf8))
                stop.wait()
                FileHandle.standardError.write(Data("cluster: stopping\n".utf8))
                _ = sources
            }
        }
    }
}
