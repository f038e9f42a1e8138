import Foundation

/// Expert-node processes on this machine, started by the coordinator for `--local-nodes N` and
/// `cluster up`: real processes talking over loopback TCP, stopped (SIGTERM, then SIGKILL) when
/// this object is stopped or deallocated.
public final class LocalNodes {
    public private(set) var processes: [Process] = []

    /// This program's own executable, to start `farside expert` children.
    public static var executable: URL {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    }

    public init() {}

    /// Starts `count` nodes serving `model`, registering with `coordinator`.
    public func start(count: Int, model: String, coordinator: String, quiet: Bool = true,
                      extraArguments: [String] = []) throws {
        for i in 0..<count {
            let p = Process()
            p.executableURL = Self.executable
            p.arguments = ["expert", "--listen", "tcp://127.0.0.1:*", "--coordinator", coordinator,
                           "--model", model, "--node-id", "local-\(i + 1)", "--whole-experts"] + (quiet ? ["--quiet"] : []) + extraArguments
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
            p.environment = env
            try p.run()
            processes.append(p)
        }
    }

    /// Stops every node: SIGTERM, a short grace period, then SIGKILL.
    public func stop() {
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
