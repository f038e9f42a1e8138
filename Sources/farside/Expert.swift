import ArgumentParser
import Checkpoint
import Deploy
import ExpertNode
import Foundation
import Kernels
import Models
import Placement
import Transport

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

    @Option(name: .long, help: "The data endpoint to give the coordinator instead of the one bound (behind NAT, a port forward or a relay), e.g. tcp://203.0.113.7:5600.")
    var advertise: String?

    @Option(name: .long, help: "This node's local copy of the model: a GGUF file or a Hugging Face checkpoint directory (default: the default model).")
    var model: String?

    @Flag(name: .long, help: "Hold no model file: the coordinator sends this node the weights of every expert it assigns it (a bare machine joins without a copy of the model).")
    var streamWeights = false

    @Option(name: .long, help: "Node id (default: hostname-pid).")
    var nodeId: String?

    @Option(name: .long, help: "Memory for expert weights, e.g. 8GiB (0: no limit).")
    var memoryBudget: String = "0"

    @Option(name: .long, help: "Largest inbound message part in bytes; larger ones drop the sender's connection.")
    var maxMessageBytes: Int64 = 1 << 30

    @Option(name: .long, help: "Reply bytes one client may leave unread before its further requests are refused with an error reply, e.g. 256MiB (one reply of any size is always sent).")
    var maxUnreadReplyBytes: String = "256MiB"

    @Option(name: .long, help: "Dense FFNs cut into E neuron slices (must match the coordinator's --split-dense).")
    var splitDense: Int?

    @Flag(name: .long, help: "Run each routed expert whole on one thread instead of sharing its rows between threads: fewer thread barriers per layer, faster when the node shares its cores with other busy processes (local nodes do).")
    var wholeExperts = false

    @Option(name: .long, help: "Microseconds to keep polling for the next request with sched_yield() before blocking (0: block at once). Saves the wake-up of a blocked thread at every request while requests come often (decode), at the price of a busy core for that long after each.")
    var pollYieldUs: Int = 3000

    @Option(name: .long, help: "Give up and exit (status 1) after this many seconds without a connection to the coordinator (0: keep trying, warning every 10 s).")
    var coordinatorTimeout: Double = 0

    @Option(name: .long, help: ArgumentHelp("Die with this process: the pid of the process that started this node.",
                                            discussion: "The node asks the kernel to kill it when its parent exits (PR_SET_PDEATHSIG), and exits at once if PID is no longer its parent. Local nodes (--local-nodes, cluster up) get it."))
    var parentPid: Int32?

    @Option(name: .long, help: "A built-in hardware class for this node's power profile: \(HardwareClass.names.joined(separator: ", ")) (public figures; the flags below override them).")
    var hardwareClass: String?

    @Option(name: .long, help: "What this node computes on, as reported to the coordinator (default: the hardware class, else cpu).")
    var powerDevice: String?

    @Option(name: .long, help: "This node's power draw when idle, in watts (default: the hardware class's, else 10).")
    var idleWatts: Double?

    @Option(name: .long, help: "This node's power draw when computing, in watts (default: the hardware class's, else 60).")
    var busyWatts: Double?

    @Option(name: .long, help: "The rate this node reads expert weights at, in GB/s (default: measured when the node starts).")
    var memoryBandwidthGbs: Double?

    @Option(name: .customLong("price-per-kwh"), help: "Electricity price at this node's site, $/kWh.")
    var pricePerKWh: Double = HardwareClass.defaultPricePerKWh

    @Option(name: .customLong("carbon-per-kwh"), help: "Carbon intensity of this node's grid, gCO2/kWh.")
    var carbonPerKWh: Double = HardwareClass.defaultCarbonPerKWh

    @Option(name: .long, help: "Power usage effectiveness of this node's site (1 ... 5).")
    var pue: Double = HardwareClass.defaultPUE

    @Option(name: .long, help: "This node's CurveZMQ secret key (`farside keys generate`; default: $FARSIDE_NODE_SECRET_KEY).")
    var secretKeyFile: String?

    @Option(name: .long, help: "The coordinator's public key, or its .pub file (default: $FARSIDE_COORDINATOR_PUBLIC_KEY): the only server this node talks to.")
    var coordinatorPublicKey: String?

    @Flag(name: .long, help: "Plaintext, unauthenticated links: anyone who reaches --listen can send this node work. Only on a trusted network.")
    var insecureLinks = false

    @Option(name: .long, help: "Settings from a cluster config file's 'node:' section (flags given here override it).")
    var config: String?

    @Flag(name: .long, help: "Log nothing but errors and warnings.")
    var quiet = false

    @OptionGroup var threadOptions: ThreadOptions

    func validate() throws {
        if streamWeights && (model != nil || splitDense != nil) {
            throw ValidationError("--stream-weights: this node gets its weights from the coordinator; give it without --model and --split-dense")
        }
        if let e = splitDense, !(1...1024).contains(e) { throw ValidationError("--split-dense must be in 1...1024, got \(e)") }
        guard (0...1_000_000).contains(pollYieldUs) else { throw ValidationError("--poll-yield-us must be in 0...1000000, got \(pollYieldUs)") }
        if let id = nodeId, id.isEmpty || id.utf8.count > 200 || id.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) {
            throw ValidationError("--node-id must be 1 to 200 bytes of printable text, got '\(id)'")
        }
        guard coordinatorTimeout >= 0 && coordinatorTimeout.isFinite else {
            throw ValidationError("--coordinator-timeout must be a number of seconds >= 0, got \(coordinatorTimeout)")
        }
        if let d = powerDevice, d.isEmpty || d.utf8.count > 64 { throw ValidationError("--power-device must be 1 to 64 bytes, got '\(d)'") }
        if let b = memoryBandwidthGbs, !(b > 0 && b <= 1e6) {
            throw ValidationError("--memory-bandwidth-gbs must be a number of GB/s in (0, 1000000], got \(b)")
        }
        _ = try profile(measuredBandwidth: 1)
        if let p = parentPid, p <= 1 { throw ValidationError("--parent-pid must be a process id above 1, got \(p)") }
        guard maxMessageBytes >= 1024 else { throw ValidationError("--max-message-bytes must be at least 1024") }
        guard try parseBytes(maxUnreadReplyBytes, flag: "--max-unread-reply-bytes") >= 1 else {
            throw ValidationError("--max-unread-reply-bytes '\(maxUnreadReplyBytes)' must be at least 1 byte (e.g. 256MiB)")
        }
        _ = try parseBytes(memoryBudget)
        for (flag, v, binding) in [("--listen", listen, true), ("--coordinator", coordinator, false)] + (advertise.map { [("--advertise", $0, false)] } ?? []) {
            guard v.hasPrefix("tcp://") || v.hasPrefix("ipc://") else {
                throw ValidationError("\(flag) '\(v)' is not a ZeroMQ endpoint (tcp://HOST:PORT or ipc://PATH)")
            }
            do {
                try ZMQSocket.checkEndpoint(v, binding: binding)
            } catch {
                throw ValidationError("\(flag): \(error)")
            }
        }
        // Last: what is wrong with the flags themselves is said before what is missing.
        _ = try curve()
    }

    /// This node's power profile: the hardware class's figures (or 10/60 W "cpu"), overridden by
    /// the flags given, with this site's price, carbon and PUE. Bandwidth: the flag's, else
    /// `measuredBandwidth` (bytes/s).
    func profile(measuredBandwidth: Double) throws -> PowerProfile {
        do {
            var p = try hardwareClass.map { try HardwareClass.profile(named: $0) }
                ?? PowerProfile(device: "cpu", idleWatts: 10, busyWatts: 60)
            if let d = powerDevice { p.device = d }
            if let w = idleWatts { p.idleWatts = w }
            if let w = busyWatts { p.busyWatts = w }
            // A class's bandwidth is its hardware's (a GPU's HBM, not this CPU's); without a
            // class, what this process reaches is measured.
            p.memoryBandwidth = memoryBandwidthGbs.map { $0 * 1e9 } ?? (hardwareClass == nil ? measuredBandwidth : p.memoryBandwidth)
            p.pricePerKWh = pricePerKWh
            p.carbonPerKWh = carbonPerKWh
            p.pue = pue
            try p.validate()
            return p
        } catch let e as PlacementError {
            throw ValidationError("\(e)")
        }
    }

    /// This node's keys and its coordinator's public key, or nil with --insecure-links. Secrets
    /// come from a file or, for local nodes, the environment their coordinator gives them.
    func curve() throws -> (keys: CurveKeyPair, coordinatorKey: String)? {
        let env = ProcessInfo.processInfo.environment
        if insecureLinks {
            guard secretKeyFile == nil && coordinatorPublicKey == nil else {
                throw ValidationError("--insecure-links turns encryption off: give it without --secret-key-file and --coordinator-public-key")
            }
            return nil
        }
        do {
            let keys = try secretKeyFile.map { try KeyFiles.secret($0) }
                ?? env["FARSIDE_NODE_SECRET_KEY"].map { try CurveKeyPair(secretKey: $0) }
            let server = try coordinatorPublicKey.map { try KeyFiles.publicKey($0) } ?? env["FARSIDE_COORDINATOR_PUBLIC_KEY"]
            guard let keys, let server else {
                throw ValidationError("links to the coordinator are encrypted and authenticated: give --secret-key-file (this node's, from "
                    + "`farside keys generate`) and --coordinator-public-key (the coordinator's .pub), or --insecure-links for plaintext")
            }
            try CurveKeyPair.check(server, what: "coordinator's public key")
            return (keys, server)
        } catch let e as ValidationError {
            throw e
        } catch {
            throw ValidationError("\(error)")
        }
    }

    func run() throws {
        try runReportingErrors {
            // First, before the model loads: a parent killed meanwhile must not leave us behind.
            if let parentPid { try dieWithParent(parentPid) }
            let (m, fingerprint): (DecoderModel?, String) = streamWeights
                ? (nil, "") : try openModel(path: try model ?? DefaultModel.path(), denseSlices: splitDense)
            let id = nodeId ?? "\(ProcessInfo.processInfo.hostName)-\(getpid())"
            var options = ExpertNodeServer.Options(listen: listen, coordinator: coordinator, nodeID: id,
                                                   memoryBudget: try parseBytes(memoryBudget),
                                                   power: try profile(measuredBandwidth: memoryBandwidthGbs == nil && hardwareClass == nil ? MemoryBandwidth.measure() : 0))
            options.curve = try curve()
            options.advertise = advertise
            options.maxMessageBytes = maxMessageBytes
            options.splitExpertRows = !wholeExperts
            options.pollYieldWindow = Double(pollYieldUs) * 1e-6
            options.maxUnreadReplyBytes = try parseBytes(maxUnreadReplyBytes, flag: "--max-unread-reply-bytes")
            options.coordinatorTimeout = coordinatorTimeout
            options.parentPID = parentPid
            let server = ExpertNodeServer(
                model: m, fingerprint: fingerprint, options: options,
                log: { msg in if !quiet { FileHandle.standardError.write(Data("expert[\(id)]: \(msg)\n".utf8)) } },
                warn: { msg in FileHandle.standardError.write(Data("expert[\(id)]: warning: \(msg)\n".utf8)) })
            // systemd (Type=notify): READY=1 once the first assignment is loaded, STATUS= on
            // changes, WATCHDOG=1 from the serving loop, STOPPING=1 when leaving.
            let notify = SystemdNotify()
            var lastPing = 0.0
            let pingEvery = notify.watchdogInterval.map { $0 / 2 }
            server.onEvent = { event in
                switch event {
                case .ready(let s): notify.ready(status: s)
                case .status(let s): notify.status(s)
                case .stopping(let s): notify.stopping(status: s)
                case .alive:
                    guard let every = pingEvery else { return }
                    let t = ProcessInfo.processInfo.systemUptime
                    if t - lastPing >= every {
                        lastPing = t
                        notify.watchdog()
                    }
                }
            }
            notify.status("loaded the model; registering with the coordinator at \(coordinator)")
            // A node started on its own (by systemd, by hand) stops cleanly on SIGTERM or SIGINT
            // (STOPPING=1, status 0). A local node (--parent-pid) keeps the default action: its
            // coordinator is the one stopping it.
            var signalSources: [DispatchSourceSignal] = []
            if parentPid == nil {
                for sig in [SIGTERM, SIGINT] {
                    signal(sig, SIG_IGN)
                    let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
                    source.setEventHandler { server.leave() }
                    source.resume()
                    signalSources.append(source)
                }
            }
            defer { signalSources.forEach { $0.cancel() } }
            try server.run()
        }
    }
}

/// Asks Linux to SIGKILL this process when its parent exits (`prctl(PR_SET_PDEATHSIG)`), then
/// checks that `parent` still is the parent: if it died before the request, the kernel will not
/// send the signal and this process has been re-parented already. prctl is variadic in C, which
/// Swift cannot call directly; it is reached through dlsym with its five register arguments
/// (what glibc's wrapper passes to the system call on x86-64 and arm64). Where prctl is
/// missing, the server's check of its parent at every poll still ends the node within 100 ms.
func dieWithParent(_ parent: Int32) throws {
    #if os(Linux)
    typealias Prctl = @convention(c) (Int32, UInt, UInt, UInt, UInt) -> Int32
    let PR_SET_PDEATHSIG: Int32 = 1
    if let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "prctl") {
        let prctl = unsafeBitCast(symbol, to: Prctl.self)
        if prctl(PR_SET_PDEATHSIG, UInt(SIGKILL), 0, 0, 0) != 0 {
            FileHandle.standardError.write(Data("warning: prctl(PR_SET_PDEATHSIG) failed (errno \(errno)); relying on polling the parent\n".utf8))
        }
    }
    #endif
    guard getppid() == parent else { throw ExpertNodeError.parentGone(pid: parent) }
}
