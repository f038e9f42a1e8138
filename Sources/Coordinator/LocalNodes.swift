import Foundation

/// Expert-node processes on this machine, started by the coordinator for `--local-nodes N` and
/// `cluster up`: real processes talking over loopback TCP, stopped (SIGTERM, then SIGKILL) when
/// this object is stopped or deallocated.
///
/// They never outlive this process, however it ends:
/// - each node gets `--parent-pid` and has the kernel SIGKILL it when its parent goes (and polls
///   its parent besides). Linux counts the *thread* that started a child as its parent, so call
///   `start` from a thread that lives as long as the nodes should (the main thread);
/// - `start` installs handlers for SIGINT, SIGTERM and SIGHUP (where they still have their default
///   action: a program that handles them itself, such as `cluster up`, stops the nodes itself)
///   that kill every node and then end the process by the same signal, and a SIGPIPE handler that
///   kills the nodes and exits with status 0 — a closed stdout (`| head`) is a normal end.
public final class LocalNodes {
    public private(set) var processes: [Process] = []

    /// This program's own executable, to start `farside expert` children.
    public static var executable: URL {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    }

    public init() {}

    /// Starts `count` nodes serving `model`, registering with `coordinator`.
    /// `environment` is added to each node's (secrets go there, not on a command line anyone can
    /// read in /proc).
    public func start(count: Int, model: String, coordinator: String, quiet: Bool = true,
                      extraArguments: [String] = [], environment: [String: String] = [:]) throws {
        LocalNodeSignals.install()
        for i in 0..<count {
            let p = Process()
            p.executableURL = Self.executable
            p.arguments = ["expert", "--listen", "tcp://127.0.0.1:*", "--coordinator", coordinator,
                           "--model", model, "--node-id", "local-\(i + 1)", "--whole-experts",
                           "--parent-pid", "\(getpid())"] + (quiet ? ["--quiet"] : []) + extraArguments
            p.standardInput = FileHandle.nullDevice
            // Nodes on this machine share its cores with the coordinator and each other. Each
            // node gets every core (the node with more of a token's experts then finishes on
            // both cores while the other sleeps), and its workers spin only briefly after a job
            // so that an idle node does not hold a core the busy one needs (the coordinator parks
            // its own workers while it waits: `ExpertCluster.receive`). Measured on the 2-core
            // synthetic DeepSeek decode, alternating with the previous setting (one thread per
            // node, default spin, no parking): 54.4/43.2/43.6/43.0 vs 44.5/37.8/38.0/34.3 tok/s.
            // For the same reason they run experts whole (`--whole-experts`, see
            // `LocalExperts.splitsRows`).
            var env = ProcessInfo.processInfo.environment
            if env["FARSIDE_THREADS"] == nil {
                env["FARSIDE_THREADS"] = "\(ProcessInfo.processInfo.activeProcessorCount)"
            }
            if env["FARSIDE_SPIN"] == nil { env["FARSIDE_SPIN"] = "500" }
            // systemd's notify socket is the coordinator's: a child speaking on it would be
            // refused (NotifyAccess=main) or, worse, taken for the service.
            for k in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] { env[k] = nil }
            env.merge(environment) { _, new in new }
            p.environment = env
            try p.run()
            processes.append(p)
            LocalNodeSignals.add(p.processIdentifier)
        }
    }

    /// Stops every node: SIGTERM, a short grace period, then SIGKILL.
    public func stop() {
        for p in processes { LocalNodeSignals.remove(p.processIdentifier) }
        for p in processes where p.isRunning { p.terminate() }
        let deadline = Date().addingTimeInterval(2)
        for p in processes {
            while p.isRunning && Date() < deadline { usleep(10_000) }
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        }
        for p in processes { p.waitUntilExit() }
        processes.removeAll()
    }

    deinit { stop() }
}

/// The pids of this process's local nodes, for signal handlers: a fixed table of slots (0: free)
/// written with single aligned stores, because a handler may neither lock nor allocate.
enum LocalNodeSignals {
    static let capacity = 1024
    nonisolated(unsafe) static let pids: UnsafeMutablePointer<pid_t> = {
        let p = UnsafeMutablePointer<pid_t>.allocate(capacity: capacity)
        p.initialize(repeating: 0, count: capacity)
        return p
    }()
    static let lock = NSLock()
    nonisolated(unsafe) static var installed = false

    static func add(_ pid: pid_t) {
        lock.lock()
        defer { lock.unlock() }
        // Over the capacity a node is not in the table: it still dies with this process
        // (--parent-pid), only not before it.
        if let free = (0..<capacity).first(where: { pids[$0] == 0 }) { pids[free] = pid }
    }

    static func remove(_ pid: pid_t) {
        lock.lock()
        defer { lock.unlock() }
        for i in 0..<capacity where pids[i] == pid { pids[i] = 0 }
    }

    /// Installs the handlers once (see `LocalNodes`).
    static func install() {
        lock.lock()
        defer { lock.unlock() }
        guard !installed else { return }
        installed = true
        _ = pids  // initialised now, not first in a handler
        for sig in [SIGINT, SIGTERM, SIGHUP] where currentHandler(sig) == 0 /* SIG_DFL */ {
            signal(sig, killNodesAndRaise)
        }
        // Also when SIGPIPE was inherited ignored: the write would then fail with EPIPE, which
        // Foundation's FileHandle turns into a crash.
        if currentHandler(SIGPIPE) <= 1 /* SIG_DFL or SIG_IGN */ { signal(SIGPIPE, killNodesAndExit) }
    }

    /// The handler's address as a number (SIG_DFL is 0, SIG_IGN 1).
    static func currentHandler(_ sig: Int32) -> Int {
        var old = sigaction()
        sigaction(sig, nil, &old)
        return unsafeBitCast(old.__sigaction_handler.sa_handler, to: Int.self)
    }

    /// Async-signal-safe: kill(2) of each node.
    static func killAll() {
        for i in 0..<capacity where pids[i] > 0 { kill(pids[i], SIGKILL) }
    }
}

/// SIGINT/SIGTERM/SIGHUP: kill the nodes, then die of the same signal (its default action runs
/// once this handler returns, the signal being blocked until then), so the exit status tells
/// the shell what happened.
private func killNodesAndRaise(_ sig: Int32) {
    LocalNodeSignals.killAll()
    signal(sig, SIG_DFL)
    raise(sig)
}

/// SIGPIPE: stdout (or stderr) was closed by the reader, e.g. `farside generate ... | head -c1`:
/// a normal end of the command.
private func killNodesAndExit(_ sig: Int32) {
    LocalNodeSignals.killAll()
    _exit(0)
}
