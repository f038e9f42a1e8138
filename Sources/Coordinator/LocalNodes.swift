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
                           "--model", model, "--node-id", "local-\(i + 1)"] + (quiet ? ["--quiet"] : []) + extraArguments
            p.standardInput = FileHandle.nullDevice
            // Nodes on this machine share its cores with the coordinator and each other: split
            // them, or spinning worker pools starve each other.
            var env = ProcessInfo.processInfo.environment
            if env["FARSIDE_THREADS"] == nil {
                env["FARSIDE_THREADS"] = "\(max(1, ProcessInfo.processInfo.activeProcessorCount / count))"
            }
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
