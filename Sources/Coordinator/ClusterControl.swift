import Foundation
import Placement

/// The running cluster as the admin API reaches it from HTTP threads: every command is carried
/// to the engine thread (`Engine.perform`), the only one that may touch the `ExpertCluster`, and
/// answered from there. A cached status, refreshed by the engine thread about once a second,
/// serves `/metrics` without a round trip to it.
public final class ClusterControl: @unchecked Sendable {
    let engine: Engine
    let cluster: ExpertCluster
    private let lock = NSLock()
    private var cached: ClusterStatus?
    private var refreshedAt = 0.0

    public init(engine: Engine, cluster: ExpertCluster) {
        self.engine = engine
        self.cluster = cluster
    }

    /// For `Engine.Options.idleWork`: the cluster's between-steps work, and the cached status
    /// at most once a second. Engine thread only.
    public func tend() {
        cluster.tend()
        let now = ProcessInfo.processInfo.systemUptime
        guard now - refreshedAt >= 1 else { return }
        refreshedAt = now
        let s = cluster.status(generatedTokens: engine.snapshot().generatedTokens)
        lock.lock()
        cached = s
        lock.unlock()
    }

    /// The status as of the last refresh (nil before the first).
    public var lastStatus: ClusterStatus? {
        lock.lock()
        defer { lock.unlock() }
        return cached
    }

    /// Runs `body` on the engine thread; it calls its completion there once. Times out (the
    /// engine stopped, or the command hangs) after `timeout` seconds.
    func onEngine<T: Sendable>(timeout: Double = 120, _ body: @escaping (ExpertCluster, @escaping (Result<T, PlacementCommandError>) -> Void) -> Void) async throws -> T {
        let once = Once<Result<T, PlacementCommandError>>()
        return try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, Error>) in
            once.onValue = { c.resume(with: $0.mapError { $0 as Error }) }
            let cluster = self.cluster
            engine.perform { body(cluster) { once.set($0) } }
            DispatchQueue.global().asyncAfter(deadline: .now() + timeout) {
                once.set(.failure(.failed("no answer from the engine within \(Int(timeout)) s")))
            }
        }
    }

    public func status() async throws -> ClusterStatus {
        let engine = self.engine
        return try await onEngine { cluster, done in done(.success(cluster.status(generatedTokens: engine.snapshot().generatedTokens))) }
    }

    /// Moves node `id`'s experts to the others, then tells it to exit; returns once it has left.
    public func drain(node id: String) async throws {
        try await onEngine { (cluster, done: @escaping (Result<Void, PlacementCommandError>) -> Void) in
            cluster.drain(node: id) { done($0.map(Result.failure) ?? .success(())) }
        }
    }

    /// Places the experts anew (by `strategy`, else the configured one); returns once routing
    /// follows the new placement.
    public func rebalance(strategy: PlacementStrategy?) async throws {
        try await onEngine { (cluster, done: @escaping (Result<Void, PlacementCommandError>) -> Void) in
            cluster.rebalance(strategy: strategy) { done($0.map(Result.failure) ?? .success(())) }
        }
    }

    /// The routing statistics as a JSON document (`farside cluster load`).
    public func load() async throws -> RoutingLoadFile {
        try await onEngine { cluster, done in done(.success(cluster.loadFile())) }
    }
}

/// The first value wins; later ones are dropped. Thread-safe.
final class Once<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var fired = false
    var onValue: ((T) -> Void)?
    func set(_ v: T) {
        lock.lock()
        let first = !fired
        fired = true
        let f = onValue
        lock.unlock()
        if first { f?(v) }
    }
}

/// Routed tokens per MoE layer and expert over the statistics window, as written by
/// `farside cluster load --out FILE` (the simulator's routing input).
public struct RoutingLoadFile: Codable, Sendable {
    public var format = "farside-routing-load-v1"
    public var windowSeconds: Double
    /// Model layer index of each MoE layer, in order.
    public var layers: [Int]
    public var experts: Int
    /// tokens[i][e]: routed tokens of expert e in MoE layer layers[i].
    public var tokens: [[Double]]
}

extension ExpertCluster {
    func loadFile() -> RoutingLoadFile {
        RoutingLoadFile(windowSeconds: statistics.windowSeconds, layers: model.sparseLayers.map(\.layer),
                        experts: statistics.experts, tokens: statistics.load(now: Self.now()).tokens)
    }
}
