import ArgumentParser
import ChatTemplate
import Coordinator
import Deploy
import Foundation
import Kernels
import Logging
import Models
import Placement
import Server
import Transport

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve a model over an OpenAI-compatible HTTP API (chat and text completions, streaming) with continuous batching.",
        discussion: "Requests share forward steps: every step runs the next token of each running sequence plus chunks of waiting prompts, "
            + "and all of a step's tokens travel to the expert nodes as one batch per MoE layer. A request's tokens do not depend on "
            + "what else is running. SIGTERM or Ctrl-C stops accepting, lets running requests finish (--drain-timeout) and stops the nodes.")

    @Option(name: .long, help: "A GGUF file or a Hugging Face checkpoint directory (default: the default model).")
    var model: String?

    @OptionGroup var threads: ThreadOptions

    @Option(name: .long, help: "Address to listen on.")
    var host: String = "127.0.0.1"

    @Option(name: .long, help: "Port to listen on (0: any free port; the chosen one is printed).")
    var port: Int = 8000

    @Option(name: .long, help: "Expert-node processes to start on this machine (0: experts in this process).")
    var localNodes: Int = 0

    @Option(name: .long, help: "Expert nodes started elsewhere (farside expert --coordinator ENDPOINT) to wait for before serving.")
    var nodes: Int = 0

    @Option(name: .long, help: "The control endpoint expert nodes register at, e.g. tcp://0.0.0.0:5500 (default: an ephemeral loopback port).")
    var nodeListen: String?

    @Option(name: .long, help: "Seconds without a reply before an expert node is declared dead.")
    var nodeTimeout: Double = 2

    @Option(name: .long, help: "Cut each dense FFN into E neuron slices computed as experts (default with --local-nodes N on a dense model: N).")
    var splitDense: Int?

    @Option(name: .long, help: "Tokens one forward step may compute (decode tokens plus prompt chunks).")
    var maxBatchTokens: Int = 512

    @Option(name: .long, help: "Sequences generated at once.")
    var maxSeqs: Int = 64

    @Option(name: .long, help: "Requests that may wait for a slot; more get 503 with Retry-After.")
    var maxWaiting: Int = 256

    @Option(name: .long, help: "Positions per KV cache block (1...4096).")
    var kvBlockSize: Int = 16

    @Option(name: .long, help: "Memory for KV cache blocks, all sequences and the prefix cache together (e.g. 512MiB, 4GiB).")
    var kvBudget: String = "1GiB"

    @Option(name: .customLong("kv-dtype"), help: "How KV rows are stored: \(KVDType.names). f16 and bf16 take half the bytes of f32 (so --kv-budget holds twice the positions), q8_0 34 bytes per 32 values.")
    var kvDType: KVDType = .f32

    @Flag(name: .long, inversion: .prefixedNo, help: "Keep KV blocks cached for later requests that share a prefix (a system prompt, earlier chat turns).")
    var prefixCache = true

    @Option(name: .customLong("kv-disk"), help: "A directory for the KV cache's disk tier: full prefix-cache blocks are written there and read back when no longer in RAM, also after a restart on the same model (created if missing; one server per directory).")
    var kvDisk: String?

    @Option(name: .customLong("kv-disk-budget"), help: "Disk space for --kv-disk (e.g. 64GiB): block files, least recently used removed first, and the files of sequences longer than --kv-budget.")
    var kvDiskBudget: String = "64GiB"

    @Option(name: .long, help: "Require 'Authorization: Bearer KEY' on /v1/* (default: $FARSIDE_API_KEY, or none).")
    var apiKey: String?

    @Option(name: .long, help: "Read the API key from this file (its first line), so that it appears in no command line.")
    var apiKeyFile: String?

    @Option(name: .long, help: ArgumentHelp("How routed experts are placed on the nodes: memory, balanced[:R] or power[:energy|cost|carbon].",
                                            discussion: "memory: one copy of each, in proportion to each node's --memory-budget. balanced: DeepSeek's EPLB over the routing statistics, with R extra replicas of the hottest experts per layer (or --redundant-experts). power: the least predicted energy (or $, or gCO2) per token from the nodes' power profiles, within a bound on the slowest node's work per step."))
    var placement: String = "memory"

    @Option(name: .long, help: "Extra replicas of hot experts per MoE layer for --placement balanced.")
    var redundantExperts: Int?

    @Option(name: .long, help: "Seconds between re-placements from the live routing statistics (0: only when asked, `farside cluster rebalance`).")
    var rebalanceEvery: Double = 0

    @Option(name: .long, help: "The coordinator's CurveZMQ secret key (`farside keys generate`); links to expert nodes are encrypted with it.")
    var secretKeyFile: String?

    @Option(name: .long, help: "Public keys of the expert nodes allowed to join, one per line (cat nodes/*.pub); others are refused.")
    var allowedNodesFile: String?

    @Flag(name: .long, help: "Plaintext, unauthenticated links to expert nodes: anyone who reaches --node-listen can join and see activations. Only on a trusted network.")
    var insecureLinks = false

    @Option(name: .long, help: "Settings from a cluster config file's 'coordinator:' section (flags given here override it).")
    var config: String?

    @Option(name: .long, help: "Seconds SIGTERM/SIGINT waits for running requests before cancelling them.")
    var drainTimeout: Double = 30

    @Option(name: .long, help: "Largest request body in bytes (larger ones get 413).")
    var maxBodyBytes: Int = 4 << 20

    @Option(name: .long, help: "New tokens for requests that give no max_tokens (default: as many as fit in the context).")
    var defaultMaxTokens: Int?

    @Option(name: .long, help: "The model name clients send and /v1/models lists (default: the model file's name).")
    var servedModelName: String?

    @Option(name: .long, help: "A Jinja chat template file to use instead of the model's own.")
    var chatTemplate: String?

    @Option(name: .long, help: "Write one CSV line per engine step to this file (tokens, sequences, positions, KV read, wall seconds, the expert nodes' reported compute): where a step's time goes, and what `farside simulate calibrate --step-log` fits the simulator to.")
    var stepLog: String?

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be in 0...65535, got \(port)") }
        guard (0...64).contains(localNodes) else { throw ValidationError("--local-nodes must be in 0...64, got \(localNodes)") }
        guard (0...64).contains(nodes) else { throw ValidationError("--nodes must be in 0...64, got \(nodes)") }
        if nodes > 0 && nodeListen == nil { throw ValidationError("--nodes needs --node-listen ENDPOINT for the nodes to register at") }
        if let e = nodeListen {
            guard e.hasPrefix("tcp://") || e.hasPrefix("ipc://") else {
                throw ValidationError("--node-listen '\(e)' is not a ZeroMQ endpoint (tcp://HOST:PORT or ipc://PATH)")
            }
            do { try ZMQSocket.checkEndpoint(e, binding: true) } catch { throw ValidationError("--node-listen: \(error)") }
        }
        guard nodeTimeout > 0 && nodeTimeout.isFinite else { throw ValidationError("--node-timeout must be a positive number of seconds") }
        if let e = splitDense, !(1...1024).contains(e) { throw ValidationError("--split-dense must be in 1...1024, got \(e)") }
        guard (1...65536).contains(maxBatchTokens) else { throw ValidationError("--max-batch-tokens must be in 1...65536, got \(maxBatchTokens)") }
        guard (1...4096).contains(maxSeqs) else { throw ValidationError("--max-seqs must be in 1...4096, got \(maxSeqs)") }
        guard (0...1_000_000).contains(maxWaiting) else { throw ValidationError("--max-waiting must be in 0...1000000, got \(maxWaiting)") }
        guard (1...4096).contains(kvBlockSize) else { throw ValidationError("--kv-block-size must be in 1...4096, got \(kvBlockSize)") }
        _ = try kvBudgetBytes()
        _ = try parseBytes(kvDiskBudget, flag: "--kv-disk-budget")
        if let d = kvDisk {
            guard !d.isEmpty else { throw ValidationError("--kv-disk must name a directory") }
            guard prefixCache else {
                throw ValidationError("--kv-disk keeps prefix-cache blocks on disk, so it needs the prefix cache: drop --no-prefix-cache")
            }
        }
        guard drainTimeout >= 0 && drainTimeout.isFinite else { throw ValidationError("--drain-timeout must be a finite number of seconds >= 0") }
        guard (1024...(1 << 30)).contains(maxBodyBytes) else { throw ValidationError("--max-body-bytes must be in 1024...1073741824, got \(maxBodyBytes)") }
        if let n = defaultMaxTokens, n < 1 { throw ValidationError("--default-max-tokens must be at least 1, got \(n)") }
        if let p = stepLog, p.isEmpty { throw ValidationError("--step-log must name a file") }
        if let k = apiKey, k.isEmpty { throw ValidationError("--api-key must not be empty") }
        if apiKey != nil && apiKeyFile != nil { throw ValidationError("--api-key and --api-key-file are exclusive: give one") }
        if apiKeyFile != nil { _ = try readAPIKeyFile() }
        if insecureLinks && (secretKeyFile != nil || allowedNodesFile != nil) {
            throw ValidationError("--insecure-links turns encryption off: give it without --secret-key-file and --allowed-nodes-file")
        }
        if nodes > 0 && !insecureLinks && (secretKeyFile == nil || allowedNodesFile == nil) {
            throw ValidationError("links to expert nodes started elsewhere (--nodes) are encrypted and authenticated: give --secret-key-file "
                + "(the coordinator's, from `farside keys generate`) and --allowed-nodes-file (the nodes' public keys), or --insecure-links for plaintext")
        }
        if secretKeyFile != nil || allowedNodesFile != nil { _ = try nodeLinks() }
        _ = try placementStrategy()
        guard rebalanceEvery >= 0 && rebalanceEvery.isFinite else { throw ValidationError("--rebalance-every must be a number of seconds >= 0, got \(rebalanceEvery)") }
    }

    /// `--placement` with `--redundant-experts`.
    func placementStrategy() throws -> PlacementStrategy {
        let s: PlacementStrategy
        do { s = try PlacementStrategy(parsing: placement) } catch { throw ValidationError("--placement: \(error)") }
        guard let r = redundantExperts else { return s }
        guard (0...4096).contains(r) else { throw ValidationError("--redundant-experts must be in 0...4096, got \(r)") }
        guard case .balanced = s else {
            if r == 0 { return s }
            throw ValidationError("--redundant-experts applies to --placement balanced, not \(s)")
        }
        return .balanced(redundantExperts: r)
    }

    /// How node links are secured: plaintext with --insecure-links, else CurveZMQ with the key
    /// files (a fresh coordinator key when only local nodes are used).
    func nodeLinks() throws -> NodeLinks {
        if insecureLinks { return .insecure }
        do {
            let keys = try secretKeyFile.map { try KeyFiles.secret($0) }
            let allowed = try allowedNodesFile.map { try KeyFiles.allowlist($0) } ?? []
            return .curve(coordinator: keys, allowed: allowed)
        } catch {
            throw ValidationError("\(error)")
        }
    }

    /// The first line of `--api-key-file`, or nil without the flag.
    func readAPIKeyFile() throws -> String? {
        guard let path = apiKeyFile else { return nil }
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw ValidationError("--api-key-file '\(path)' cannot be read")
        }
        let key = text.split(whereSeparator: \.isNewline).first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        guard !key.isEmpty else { throw ValidationError("--api-key-file '\(path)' holds no key on its first line") }
        return key
    }

    /// What names the weights in the prefix hashes' root, and so in the `--kv-disk` block files:
    /// the path and the size and modification time of each weights file (and config.json), so a
    /// model replaced at the same path (re-quantised, fine-tuned) never meets the KV of the one
    /// before, while the same files after a restart do.
    func weightsIdentity(_ path: String) -> String {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir) else { return path }
        let files = isDir.boolValue
            ? ((try? fm.contentsOfDirectory(atPath: path)) ?? []).filter { $0.hasSuffix(".safetensors") || $0 == "config.json" }
                .sorted().map { path + "/" + $0 }
            : [path]
        return ([path] + files.map { f in
            let a = try? fm.attributesOfItem(atPath: f)
            let size = (a?[.size] as? NSNumber)?.intValue ?? -1
            let mtime = (a?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
            return "\(f):\(size):\(mtime)"
        }).joined(separator: ";")
    }

    /// `--kv-budget` in bytes.
    func kvBudgetBytes() throws -> Int {
        try parseBytes(kvBudget, flag: "--kv-budget")
    }

    func run() throws {
        try runReportingErrors {
            var logger = Logger(label: "farside") { StreamLogHandler.standardError(label: $0) }
            logger.logLevel = .info
            // A client or stdout that goes away must not end the server (and LocalNodes must not
            // take SIGPIPE for its node-killing handler). SIGTERM/SIGINT keep their default
            // action while the model loads and nodes register (LocalNodes' handler kills the
            // nodes, then the process dies of the signal: there is nothing to drain yet); once
            // the server exists they drain it (below).
            signal(SIGPIPE) { _ in }
            // systemd (Type=notify): STATUS while loading, READY=1 once serving, WATCHDOG=1
            // while the engine thread goes round, STOPPING=1 on SIGTERM.
            let notify = SystemdNotify()
            notify.status("loading the model")
            // Opened first, so a path that cannot be written fails before the model loads.
            let stepLogWriter = try stepLog.map { path in
                try StepLogWriter(path: path, nodes: localNodes + nodes) { [logger] in logger.warning("\($0)") }
            }
            let path = try model ?? DefaultModel.path()
            let (m, cluster) = try loadModel(path: path, localNodes: localNodes, nodeTimeout: nodeTimeout, splitDense: splitDense,
                                             remoteNodes: nodes, controlEndpoint: nodeListen, logNodeEvents: true,
                                             links: try nodeLinks(), strategy: try placementStrategy(), rebalanceEvery: rebalanceEvery)
            let tokenizer = try? openTokenizer(path: path)
            let format = try? ChatFormat(modelPath: path, override: chatTemplate)
            if chatTemplate != nil && format == nil {
                _ = try ChatFormat(modelPath: path, override: chatTemplate)  // rethrows the reason
            }
            var opts = Engine.Options()
            opts.limits = Scheduler.Limits(maxBatchTokens: maxBatchTokens, maxSequences: maxSeqs)
            opts.maxWaiting = maxWaiting
            opts.kvBlockSize = kvBlockSize
            opts.kvBudgetBytes = try kvBudgetBytes()
            opts.kvDType = kvDType
            opts.prefixCaching = prefixCache
            opts.modelIdentity = weightsIdentity(path)
            opts.kvDiskDirectory = kvDisk
            opts.kvDiskBudgetBytes = try parseBytes(kvDiskBudget, flag: "--kv-disk-budget")
            opts.warn = { [logger] in logger.warning("\($0)") }
            // Set once the engine exists (it is the cluster's thread); read by that thread only.
            nonisolated(unsafe) var control: ClusterControl?
            if let cluster {
                opts.nodeProbe = { [cluster] in
                    let states = cluster.nodeStates
                    return (states.filter(\.alive).count, states.count)
                }
                // Nodes started elsewhere may register at --node-listen while the server runs;
                // placements move on, heartbeats are read, between steps.
                opts.idleWork = { control?.tend() }
            }
            if let log = stepLogWriter {
                opts.onStep = { [cluster] step in
                    log.record(step, layerSteps: cluster?.layerSteps ?? 0, nodeCompute: cluster?.nodeComputeSeconds ?? 0)
                }
            }
            let engine = try Engine(model: m, options: opts)
            if let cluster { control = ClusterControl(engine: engine, cluster: cluster) }
            let kvState = engine.snapshot()
            logger.info("KV cache: \(kvState.kvDType), \(kvState.kvBytesPerToken) bytes per token, \(kvState.kvBlocksTotal) blocks of \(kvBlockSize) positions (\(engine.kvCapacity) positions)")
            if let d = kvState.kvDisk, let dir = kvDisk {
                logger.info("KV disk tier: \(dir), \(d.blocks) blocks on disk (\(d.bytes) bytes) from earlier runs, budget \(kvDiskBudget)")
            }
            engine.start()
            let name = servedModelName ?? URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent
            let served = ServedModel(
                id: name, engine: engine, tokenizer: tokenizer,
                chat: format.map { f in { @Sendable messages in try f.tokens(messages) } },
                chatStopTokens: format?.stopTokens ?? [],
                isReady: { true }, cluster: control)
            var server = ServerOptions()
            server.host = host
            server.port = port
            server.apiKey = try apiKey ?? readAPIKeyFile() ?? ProcessInfo.processInfo.environment["FARSIDE_API_KEY"].flatMap { $0.isEmpty ? nil : $0 }
            server.drainTimeout = drainTimeout
            server.maxBodyBytes = maxBodyBytes
            server.defaultMaxTokens = defaultMaxTokens
            let http = OpenAIServer(model: served, options: server, logger: logger)
            // From here SIGTERM/SIGINT drain: running requests finish (--drain-timeout), then the
            // local nodes stop. (As ServiceLifecycle does: the default action off first, then a
            // dispatch source, which libdispatch on Linux only delivers for an ignored signal.)
            var signalSources: [DispatchSourceSignal] = []
            for sig in [SIGTERM, SIGINT] {
                signal(sig, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
                source.setEventHandler {
                    notify.stopping(status: "stopping: finishing running requests (up to \(Int(drainTimeout)) s)")
                    http.shutdown()
                }
                source.resume()
                signalSources.append(source)
            }
            let host = self.host, nodeCount = localNodes + nodes, arch = m.architecture
            let done = DispatchSemaphore(value: 0)
            nonisolated(unsafe) var failure: Error?
            Task {
                do {
                    try await http.run { port in
                        // One line on stdout that scripts and tests wait for.
                        print("farside serve: \(arch) as '\(name)' on http://\(host):\(port) (\(nodeCount) expert nodes)")
                        fflush(stdout)
                        notify.ready(status: "serving '\(name)' on http://\(host):\(port) with \(nodeCount) expert nodes")
                    }
                } catch {
                    failure = error
                }
                done.signal()
            }
            let watchdog = notify.watchdogInterval.map { interval in
                Self.watchdog(notify, engine: engine, interval: interval, name: name)
            }
            done.wait()
            watchdog?.cancel()
            signalSources.forEach { $0.cancel() }
            engine.shutdown(drainTimeout: 0)
            if let failure { throw failure }
            logger.info("stopped")
        }
    }

    /// Pings systemd's watchdog at half its interval while the engine thread is alive (it goes
    /// round its loop at least every 0.2 s when idle, after every step when busy), with a status
    /// line of what runs. A stuck engine stops the pings, and systemd restarts the service.
    static func watchdog(_ notify: SystemdNotify, engine: Engine, interval: Double, name: String) -> DispatchSourceTimer {
        let timer = DispatchSource.makeTimerSource(queue: .global())
        timer.schedule(deadline: .now(), repeating: interval / 2)
        timer.setEventHandler {
            let s = engine.snapshot()
            guard ProcessInfo.processInfo.systemUptime - s.lastLoop < interval else { return }
            notify.send("WATCHDOG=1\nSTATUS=serving '\(name)': \(s.running) running, \(s.waiting) waiting, "
                + "\(s.nodesAlive)/\(s.nodesKnown) expert nodes, KV \(s.kvBlocksUsed)/\(s.kvBlocksTotal) blocks")
        }
        timer.resume()
        return timer
    }
}
