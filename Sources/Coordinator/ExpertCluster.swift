import ExpertNode
import Foundation
import Kernels
import Models
import Placement
import Protocol
import Transport

/// Errors of the distributed expert side.
public enum ClusterError: Error, CustomStringConvertible {
    case registrationTimeout(expected: Int, registered: Int)
    case noLiveNodes
    case nodeRefused(node: String, reason: String)
    case remote(node: String, message: String)
    case placement(String)

    public var description: String {
        switch self {
        case .registrationTimeout(let e, let r):
            return "only \(r) of \(e) expert nodes registered in time; check that they run and can reach the coordinator"
        case .noLiveNodes:
            return "no live expert node holds or can load the routed experts"
        case .nodeRefused(let n, let why):
            return "expert node \(n) refused its assignment: \(why)"
        case .remote(let n, let m):
            return "expert node \(n): \(m)"
        case .placement(let why):
            return "cannot place the routed experts: \(why)"
        }
    }
}

/// The coordinator's view of the expert nodes: registration, placement, and the data plane.
///
/// Per MoE layer it groups the batch's routes by the node holding each expert, sends every node
/// its rows at once, and adds the nodes' fp64 partial sums in node order before rounding once to
/// fp32 — the same function `LocalExperts` computes in-process. A node that does not answer
/// within `nodeTimeout` is declared dead: its experts move to live nodes (which map them from
/// their own checkpoint copies) and the step is sent again, so no request is lost.
/// Not thread-safe: one coordinator thread drives it (libzmq sockets are single-threaded).
public final class ExpertCluster: ExpertBackend {
    public struct Options {
        public var controlEndpoint = "tcp://127.0.0.1:*"
        /// Seconds without a reply after which a node is declared dead (when another node can
        /// take its experts; see `lastNodesGrace`).
        public var nodeTimeout = 2.0
        /// Seconds from a step's dispatch that it waits for slow nodes still connected when no
        /// other node could take their experts, instead of declaring them dead after
        /// `nodeTimeout` (which would leave no node to serve).
        public var lastNodesGrace = 30.0
        public var maxMessageBytes: Int64 = 1 << 30
        /// Seconds to wait for replies polling with `sched_yield()` before blocking in
        /// `zmq_poll` (see `Poller.poll(timeout:yieldingFor:)`). A layer's round trip at decode
        /// is about a millisecond, and a blocked thread's wake-up alone cost ~100-200 µs on this
        /// project's 2-core VM. Measured there on the 1 GB synthetic MoE through 2 local nodes
        /// (decode, 5 alternating rounds in one run, ratio to in process), with an experimental
        /// build of this and of the pool's yielding workers: 0.82-1.03 (median 0.93), against
        /// 0.72-0.78 (median 0.76) blocking at once.
        public var yieldWindow = 0.005
        /// The coordinator's CurveZMQ keys: with them, every node link (the control socket and
        /// each data connection) is encrypted, this side is the CURVE server, and the context's
        /// ZAP handler (`CurveAuthenticator`) decides which node keys get in. Nil: plaintext.
        public var curve: CurveKeyPair?
        /// How experts are placed (`--placement`, `--redundant-experts`).
        public var strategy = PlacementStrategy.memory
        /// Seconds between re-placements from the routing statistics (`--rebalance-every`); 0: never.
        public var rebalanceEvery = 0.0
        public init() {}
    }

    final class Node {
        let id: String
        /// The routing id of the node's control connection: unique per node process, so two
        /// processes claiming the same node id are told apart (and the second refused).
        var route: Data
        var endpoint: String { didSet { onThisMachine = ExpertCluster.isLocal(endpoint: endpoint) } }
        /// Whether `endpoint` is on the coordinator's machine (asked once per MoE layer).
        private(set) var onThisMachine: Bool
        var memoryBudget: UInt64
        var data: ZMQSocket?
        /// Connection events of `data` (`ZMQSocket.monitor`): a dropped connection means the
        /// node process ended (or the network failed), noticed at once instead of after
        /// `nodeTimeout`, also between steps and while placing experts.
        var events: ZMQSocket?
        var alive = true
        /// Being drained: gets no expert in new placements.
        var draining = false
        /// Drained and told to exit: no longer part of the cluster.
        var left = false
        /// Asked to leave (it is stopping): to be drained when no other re-placement runs.
        var leaving = false
        var experts: [(layer: Int, expert: Int)] = []
        var acknowledgedEpoch: UInt64 = 0
        var ackError: String?
        var profile: PowerProfile
        /// Energy accounting from the node's heartbeats (busy seconds per interval).
        var energy = NodeEnergy()
        var lastHeartbeat: Double?
        /// Round trip of the node's data requests, smoothed (seconds; 0 before the first).
        var roundTrip = 0.0
        /// The node has no model file: every expert it is assigned is sent to it first.
        var streamsWeights = false
        /// Experts (`layer << 20 | expert`) the node holds weights of, as far as the messages
        /// sent say (it may hold more: a refused assignment keeps what arrived).
        var streamed: Set<Int> = []
        init(id: String, route: Data, endpoint: String, memoryBudget: UInt64, profile: PowerProfile) {
            self.id = id
            self.route = route
            self.endpoint = endpoint
            onThisMachine = ExpertCluster.isLocal(endpoint: endpoint)
            self.memoryBudget = memoryBudget
            self.profile = profile
        }
    }

    public let options: Options
    public let controlEndpoint: String
    let model: DecoderModel
    let fingerprint: String
    let control: ZMQSocket
    var nodes: [Node] = []
    /// `placement[layer][expert]` = the indices into `nodes` of the expert's replicas (≥ 1).
    var placement: [Int: [[Int]]] = [:]
    var epoch: UInt64 = 0
    var nextRequest: UInt64 = 1
    /// Set when a node joins or comes back after placement: experts are spread anew between steps.
    var rebalancePending = false
    /// The placement strategy of rebalances (`Options.strategy`, or the last one asked for).
    public internal(set) var strategy: PlacementStrategy
    /// Tokens routed per (MoE layer, expert) over a moving window.
    public internal(set) var statistics: RoutingStatistics
    /// Layer index -> position in `model.sparseLayers` (the statistics' and planner's index).
    let layerPosition: [Int: Int]
    /// A placement being applied (make-before-break), if any.
    var transition: Transition?
    /// The routed experts' layout (`layout`), worked out once.
    var layoutCache: ExpertLayout?
    var lastRebalance = 0.0
    let log: (String) -> Void
    /// Bytes sent and received on the data plane (headers and payloads), for accounting.
    public private(set) var bytesSent = 0
    public private(set) var bytesReceived = 0
    /// Bytes of expert weights sent to weight-streaming nodes.
    public internal(set) var streamedBytes = 0
    /// Steps re-sent after a node failure.
    public private(set) var retries = 0

    public init(model: DecoderModel, fingerprint: String, options: Options = Options(),
                log: @escaping (String) -> Void = { _ in }) throws {
        self.model = model
        self.fingerprint = fingerprint
        self.options = options
        self.log = log
        strategy = options.strategy
        let sparse = model.sparseLayers
        statistics = RoutingStatistics(layers: sparse.count, experts: sparse.map(\.experts).max() ?? 0)
        layerPosition = Dictionary(uniqueKeysWithValues: sparse.enumerated().map { ($1.layer, $0) })
        control = try ZMQSocket(kind: .router)
        try control.setLinger(0)
        if let keys = options.curve { try control.makeCurveServer(keys) }
        try control.setMaxMessageSize(1 << 20)
        // No send limit per node: a ROUTER drops what is over it, and a weight-streaming node is
        // sent one message per expert before its assignment (zero-copy views of the mapped
        // weights, so the queue costs little memory).
        try control.setSendHighWaterMark(0)
        controlEndpoint = try control.bind(options.controlEndpoint)
    }

    deinit {
        for n in nodes {
            n.data?.close()
            n.events?.close()
        }
        control.close()
    }

    /// Compute the shared expert while the routed experts are at the nodes (true) or after they
    /// return (false); nil (the default) decides from the nodes' endpoints: after, when any live
    /// node is on this machine, since it then shares the coordinator's cores and the overlap
    /// only delays it. Measured on the 2-core VM through 2 local nodes (1 GB synthetic MoE,
    /// decode, 5 alternating rounds in one run, ratio to in process): after 0.89-1.08 (median
    /// 0.99), while 0.73-0.96 (median 0.84). Results are the same bit for bit either way.
    public var overlapSharedExpert: Bool? = nil

    public var overlapsSharedExpert: Bool {
        overlapSharedExpert ?? !nodes.contains { $0.alive && $0.onThisMachine }
    }

    /// Whether a ZeroMQ endpoint names this machine: ipc/inproc, or tcp to a loopback or
    /// wildcard address (which is where a connect to it goes).
    public static func isLocal(endpoint: String) -> Bool {
        guard let scheme = endpoint.range(of: "://") else { return false }
        let transport = endpoint[..<scheme.lowerBound]
        if transport == "ipc" || transport == "inproc" { return true }
        var host = endpoint[scheme.upperBound...]
        if let colon = host.lastIndex(of: ":") { host = host[..<colon] }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        return host == "localhost" || host.hasPrefix("127.") || host == "::1" || host == "0.0.0.0" || host == "*" || host == "::"
    }

    /// Data-plane endpoints of the live nodes.
    public var nodeEndpoints: [String] { nodes.filter(\.alive).map(\.endpoint) }

    /// Node ids and their live state, for status output (drained nodes left out).
    public var nodeStates: [(id: String, alive: Bool, experts: Int)] {
        nodes.filter { !$0.left }.map { ($0.id, $0.alive, $0.experts.count) }
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    func envelope(_ body: Farside_V1_Envelope.OneOf_Body) throws -> Frame {
        .data(try WireCodec.encode(body))
    }

    // MARK: control plane

    /// Handles control messages already queued (or waits up to `timeout` seconds for one).
    func pumpControl(timeout: Double) throws {
        // Deaths first: a node that restarted must not be taken for a duplicate of itself.
        pumpEvents()
        var wait = Int(timeout * 1000)
        while let frames = try control.receive(timeout: wait) {
            wait = 0
            guard frames.count >= 2 else { continue }
            let route = frames[0].data
            // Control messages other than Register come from the node whose connection this is.
            let node = nodes.first { $0.route == route }
            let id = node?.id ?? frames[0].string
            let env: Farside_V1_Envelope
            do {
                env = try WireCodec.decodeEnvelope(frames[1].data)
            } catch {
                log("control: dropped a message from \(id): \(error)")
                if let e = error as? WireError, e.code == .versionMismatch {
                    var r = Farside_V1_RegisterReply()
                    r.accepted = false
                    r.reason = "\(e)"
                    try? control.send([frames[0], try envelope(.registerReply(r))], flags: .dontWait)
                }
                continue
            }
            switch env.body {
            case .register(let r):
                var reply = Farside_V1_RegisterReply()
                if r.streamsWeights {
                    // It serves what it is told: the model is described to it, weights follow.
                    reply.layout = StreamedLayout.message(of: model, fingerprint: fingerprint)
                }
                if !r.streamsWeights && r.modelFingerprint != fingerprint {
                    reply.accepted = false
                    reply.reason = "node serves a different model (fingerprint \(r.modelFingerprint), coordinator \(fingerprint))"
                    log("refused node \(id): \(reply.reason)")
                } else if r.nodeID.isEmpty {
                    reply.accepted = false
                    reply.reason = "registration without a node id"
                    log("refused a node: \(reply.reason)")
                } else if let refusal = register(id: r.nodeID, route: route, endpoint: r.endpoint, memory: r.memoryBudgetBytes,
                                                 power: r.hasPower ? r.power : nil, streamsWeights: r.streamsWeights) {
                    reply.accepted = false
                    reply.reason = refusal
                    log("refused node \(r.nodeID): \(refusal)")
                } else {
                    reply.accepted = true
                }
                try? control.send([frames[0], try envelope(.registerReply(reply))], flags: .dontWait)
            case .assignmentAck(let a):
                if let n = node {
                    n.acknowledgedEpoch = a.epoch
                    n.ackError = a.error.isEmpty ? nil : a.error
                }
            case .heartbeat(let h):
                guard let n = node else { break }
                // The interval is measured here, between arrivals: the node's clock is its own.
                let t = Self.now()
                if let last = n.lastHeartbeat, h.busySeconds >= 0, h.busySeconds.isFinite {
                    n.energy.add(profile: n.profile, busySeconds: h.busySeconds, intervalSeconds: t - last)
                }
                n.lastHeartbeat = t
            case .drain:
                // The node is stopping (SIGTERM) and hands its experts back first.
                if let n = node, n.alive, !n.draining {
                    n.leaving = true
                    log("node \(n.id) asks to leave: moving its experts first")
                }
            default:
                log("control: ignored a message from \(id)")
            }
        }
    }

    /// Adds a node, or takes back one that returns; nil when accepted, else why not. The data
    /// socket is connected first, so an endpoint libzmq cannot use (it comes from the node, i.e.
    /// from outside) refuses the registration and changes nothing: in particular it never ends
    /// the steps in flight, and a known node keeps its current state.
    ///
    /// Node ids are unique: a registration under the id of a live node from another process
    /// (another control connection) at another endpoint is refused, and the node exits saying
    /// so. The same process saying hello again (after a lost control connection) changes
    /// nothing; a process at the same endpoint (the node restarted there: the old one cannot
    /// hold the port any more) or under the id of a dead node is taken back, empty.
    func register(id: String, route: Data, endpoint: String, memory: UInt64, power: Farside_V1_PowerProfile?,
                  streamsWeights: Bool = false) -> String? {
        let profile = PowerProfile(device: power?.device ?? "unknown", idleWatts: power?.idleWatts ?? 0,
                                   busyWatts: power?.activeWatts ?? 0, memoryBandwidth: power?.memoryBandwidth ?? 0,
                                   flopsPerSecond: power?.flopsPerSecond ?? 0,
                                   pricePerKWh: power?.pricePerKwh ?? 0, carbonPerKWh: power?.carbonPerKwh ?? 0,
                                   pue: (power?.pue ?? 0) == 0 ? 1 : power!.pue)
        do { try profile.validate() } catch { return "its power profile is invalid: \(error)" }
        let bytes = layout.expertBytes
        if memory > 0 && memory < bytes {
            return "its memory budget (\(memory) bytes) fits no expert (one takes \(bytes) bytes); give it a larger --memory-budget"
        }
        if let n = nodes.first(where: { $0.id == id }), n.alive {
            if n.route == route && n.endpoint == endpoint && n.streamsWeights == streamsWeights { return nil }
            if n.route != route && n.endpoint != endpoint {
                return "node id \"\(id)\" is already in use by a live node at \(n.endpoint); give every node its own --node-id"
            }
        }
        let socket: ZMQSocket, events: ZMQSocket
        do {
            (socket, events) = try dataSocket(endpoint)
        } catch {
            return "cannot connect to its data endpoint \"\(endpoint)\": \(error)"
        }
        if let n = nodes.first(where: { $0.id == id }) {
            // A node that comes back (restarted, or reachable again) starts empty.
            n.data?.close()
            n.events?.close()
            n.events = events
            n.route = route
            n.endpoint = endpoint
            n.memoryBudget = memory
            n.profile = profile
            n.experts = []
            n.streamsWeights = streamsWeights
            n.streamed = []
            n.alive = true
            n.draining = false
            n.left = false
            n.leaving = false
            n.lastHeartbeat = Self.now()
            n.data = socket
            rebalancePending = !placement.isEmpty
            log("node \(id) re-registered at \(endpoint)")
        } else {
            let n = Node(id: id, route: route, endpoint: endpoint, memoryBudget: memory, profile: profile)
            n.streamsWeights = streamsWeights
            // Energy is accounted from registration on: the node draws power from then.
            n.lastHeartbeat = Self.now()
            n.data = socket
            n.events = events
            nodes.append(n)
            rebalancePending = !placement.isEmpty
            log("node \(id) registered at \(endpoint)\(streamsWeights ? " (no model file: its experts are streamed to it)" : "")")
        }
        return nil
    }

    /// A DEALER connected to a node's data endpoint, and the monitor of its connection.
    func dataSocket(_ endpoint: String) throws -> (ZMQSocket, events: ZMQSocket) {
        let s = try ZMQSocket(kind: .dealer)
        try s.setLinger(0)
        try s.setMaxMessageSize(options.maxMessageBytes)
        // The coordinator is the CURVE server on its data connections too, so a node's bound
        // data socket (a CURVE client of the coordinator's key) talks to nobody else.
        if let keys = options.curve { try s.makeCurveServer(keys) }
        let events = try s.monitor(.disconnected)
        do {
            try s.connect(endpoint)
        } catch {
            events.close()
            throw error
        }
        return (s, events)
    }

    /// Declares dead every live node whose data connection dropped since the last look. Asked
    /// every layer step: without events it costs a getsockopt per node and allocates nothing.
    func pumpEvents() {
        for (i, n) in nodes.enumerated() where n.alive {
            guard let events = n.events, (try? events.isReadable) == true else { continue }
            while let e = try? events.readMonitorEvent() {
                if e.event == .disconnected {
                    markDead(i, "its connection dropped (the process ended, or the network failed)")
                    break
                }
            }
        }
    }

    /// Waits until `count` nodes have registered, then places every routed expert and waits for
    /// all nodes to load their share.
    public func start(expecting count: Int, timeout: Double = 60) throws {
        let deadline = Self.now() + timeout
        while nodes.filter(\.alive).count < count {
            let left = deadline - Self.now()
            if left <= 0 { throw ClusterError.registrationTimeout(expected: count, registered: nodes.count) }
            try pumpControl(timeout: min(left, 0.2))
        }
        try place()
    }

    /// Takes in what happened while no step ran: control messages (a node registering with a
    /// running server, heartbeats) and dropped connections; a node that joined gets its share
    /// of the experts (a rebalance over every live node) before this returns. Only between
    /// steps: with a step in flight the rebalance waits for the next `beginExperts`. Failures
    /// are logged, not thrown: serving goes on with the nodes it had.
    public func tend() {
        pumpEvents()
        do {
            try pumpControl(timeout: 0)
        } catch {
            log("control: \(error)")
        }
        moveOn()
    }

    /// Between steps (none in flight): moves a placement in progress on, and starts the next
    /// one that is due — a leaving node's drain, a joining node's share, a periodic rebalance.
    /// Called by `tend` and at the first MoE layer of every step, so a caller that drives the
    /// cluster without an engine (a `Generator`) gets the same behaviour.
    func moveOn() {
        guard steps.isEmpty else { return }
        advanceTransition()
        guard transition == nil, !placement.isEmpty else { return }
        let now = Self.now()
        if let i = nodes.indices.first(where: { nodes[$0].leaving && available($0) }) {
            nodes[i].leaving = false
            let id = nodes[i].id
            drain(node: id) { [weak self] error in
                guard let self, let error else { return }
                // It goes anyway: its experts are placed again as for a node that died.
                self.log("could not move the experts of leaving node \(id) first: \(error)")
                guard let j = self.nodes.firstIndex(where: { $0.id == id && $0.alive }) else { return }
                self.sendShutdown(j)
                self.markDead(j, "it left before its experts could be moved")
            }
        } else if rebalancePending {
            // A node joined: it gets its share at once (make-before-break, as a rebalance).
            rebalancePending = false
            lastRebalance = now
            rebalance { [log] error in if let error { log("could not give the joining node experts: \(error)") } }
        } else if options.rebalanceEvery > 0 && now - lastRebalance >= options.rebalanceEvery && statistics.total > 0 {
            lastRebalance = now
            rebalance { [log] error in if let error { log("periodic rebalance: \(error)") } }
        }
    }

    func markDead(_ i: Int, _ why: String) {
        guard nodes[i].alive else { return }
        if nodes[i].draining { nodes[i].draining = false }
        nodes[i].alive = false
        nodes[i].data?.close()
        nodes[i].data = nil
        nodes[i].events?.close()
        nodes[i].events = nil
        log("node \(nodes[i].id) declared dead: \(why)")
    }

    // MARK: data plane

    /// One node's share of a step while it is being grouped: the batch rows it receives (in
    /// batch order) and its routes `(expert, row in the request, weight)`. Kept per node index
    /// and reused across steps, so grouping allocates nothing once the arrays have grown.
    struct Work {
        var tokens: [Int32] = []
        var routes: [(expert: Int32, local: UInt32, weight: Float)] = []
    }
    var work: [Work] = []
    /// Per expert of the layer being dispatched: the replica node its tokens go to in this step
    /// (valid where `replicaStamp[e] == dispatchStamp`); reused across steps, so choosing
    /// allocates nothing.
    var replicaNode: [Int] = []
    var replicaStamp: [UInt64] = []
    var dispatchStamp: UInt64 = 0
    /// A replicated expert's tokens stay on one replica until its node has this many more routes
    /// in the step than the least loaded replica's: each replica that gets a token reads the
    /// expert's weights, which costs a node about as much as computing several tokens through it
    /// (expert GEMVs are bandwidth-bound), so a few tokens are cheapest together and only a hot
    /// expert's many are worth spreading.
    static let replicaSplitRoutes = 8
    /// The fp64 sum of a step's partial sums, reused by every `finishExperts`.
    var sum: [Double] = []
    /// A step's messages between building and sending: (node, its socket, request id, header, rows).
    var outgoing: [(node: Int, socket: ZMQSocket, requestID: UInt64, header: Frame, payload: FloatRows)] = []

    /// One layer step in flight: what was asked, what is still awaited, what came back.
    final class Step {
        let layer: Int
        let batch: RoutedBatch
        let input: UnsafePointer<Float>
        let output: UnsafeMutablePointer<Float>
        /// request id -> the node it went to, the batch rows it carries, when it was sent.
        var pending: [UInt64: (node: Int, tokens: [Int32], sentAt: Double)] = [:]
        /// node -> (batch rows, reply payload of fp64 partial sums, one row each) for the
        /// replies received; summed in node order once all are in.
        var results: [Int: [(tokens: [Int32], payload: Frame)]] = [:]
        var deadline = 0.0
        /// For `StepTiming`: when the dispatch began and ended, and the request answered last.
        var dispatchStart = 0.0, dispatchEnd = 0.0
        var lastReply: (at: Double, roundTrip: Double, compute: Double) = (0, 0, 0)
        /// The compute seconds every reply reported, summed (the nodes' busy time for the step).
        var computeSum = 0.0
        /// A node this step waits on died: the step must be sent again.
        var lost = false
        var attempts = 0
        /// The step outlived its deadline waiting for the last nodes (`graceDeadline`), said once.
        var waitedForSlowNodes = false
        init(layer: Int, batch: RoutedBatch, input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>) {
            self.layer = layer; self.batch = batch; self.input = input; self.output = output
        }
    }

    /// Where one layer step's time went, as the coordinator saw it. Every figure is a duration
    /// measured on one machine (the coordinator's clock, or the node's for `lastCompute`), so
    /// it holds for nodes on other machines too.
    public struct StepTiming: Sendable {
        /// Grouping the routes, building the requests and sending them.
        public var dispatch: Double
        /// From the last send to the arrival of the last reply.
        public var wait: Double
        /// The request answered last: from its send to its reply's arrival.
        public var lastRoundTrip: Double
        /// That request's compute time as its node reported it (`compute_seconds`); the rest
        /// of `lastRoundTrip` is transport, queueing and the node's decoding and encoding.
        public var lastCompute: Double
        /// Every request's compute time as its node reported it, summed: the busy seconds the
        /// step cost the nodes (what their heartbeats report).
        public var compute: Double
        /// Adding the nodes' partial sums after the last reply.
        public var combine: Double
    }

    /// Record a `StepTiming` per finished step into `timings` (steps re-sent after a node
    /// failure are left out). `timings` grows by one entry per step while this is on: turn it
    /// off or `clearTimings()` in a long-running process.
    public var recordsTimings = false
    public private(set) var timings: [StepTiming] = []
    /// Layer steps finished since the start, and the compute seconds their replies reported,
    /// summed over nodes and attempts (the nodes' busy time they cost): always kept, two adds
    /// per layer step, for `farside serve --step-log` to difference per engine step.
    public private(set) var layerSteps = 0
    public private(set) var nodeComputeSeconds = 0.0
    public func clearTimings() { timings.removeAll(keepingCapacity: true) }

    /// Outstanding steps by id, and which step each outstanding request belongs to.
    var steps: [UInt64: Step] = [:]
    var requestStep: [UInt64: UInt64] = [:]
    var nextStep: UInt64 = 1

    public func computeExperts(layer: Int, batch: RoutedBatch, input: UnsafePointer<Float>,
                               output: UnsafeMutablePointer<Float>) throws {
        try finishExperts(try beginExperts(layer: layer, batch: batch, input: input, output: output))
    }

    public func beginExperts(layer: Int, batch: RoutedBatch, input: UnsafePointer<Float>,
                             output: UnsafeMutablePointer<Float>) throws -> ExpertStep {
        let n = batch.rows, k = batch.topK, d = model.hidden
        guard batch.hidden == d, batch.experts.count == n * k, batch.weights.count == n * k else {
            throw ExpertBackendError.shapeMismatch("batch of \(n) rows × top-\(k) does not fit hidden \(d)")
        }
        guard let row = placement[layer] else { throw ExpertBackendError.unknownLayer(layer) }
        for e in batch.experts where e < 0 || Int(e) >= row.count {
            throw ExpertBackendError.unknownExpert(layer: layer, expert: Int(e))
        }
        // Send nothing to a node known to be gone (its dropped connection is news here first).
        pumpEvents()
        if let pos = layerPosition[layer] {
            statistics.advance(to: Self.now())
            if pos == 0 {
                statistics.recordStep()
                moveOn()
            }
            for e in batch.experts { statistics.record(position: pos, expert: Int(e)) }
        }
        let step = Step(layer: layer, batch: batch, input: input, output: output)
        let id = nextStep
        nextStep += 1
        steps[id] = step
        do {
            try send(step, id: id)
        } catch {
            forget(id)
            throw error
        }
        return ExpertStep(id: id)
    }

    public func finishExperts(_ handle: ExpertStep) throws {
        guard let step = steps[handle.id] else {
            throw ExpertBackendError.shapeMismatch("expert step \(handle.id) is not outstanding")
        }
        defer { forget(handle.id) }
        while true {
            try receive(until: step)
            if !step.lost { break }
            try send(step, id: handle.id)
        }
        let combineStart = Self.now()
        layerSteps += 1
        nodeComputeSeconds += step.computeSum
        let n = step.batch.rows, d = model.hidden
        sum.removeAll(keepingCapacity: true)
        sum.append(contentsOf: repeatElement(0, count: n * d))
        // Node order is fixed (registration order), so the fp64 sum is reproducible. Payloads
        // were checked for size when they arrived; libzmq gives no alignment guarantee, hence
        // unaligned loads.
        sum.withUnsafeMutableBufferPointer { acc in
            for (_, replies) in step.results.sorted(by: { $0.key < $1.key }) {
                for (tokens, payload) in replies {
                    payload.withUnsafeBytes { raw in
                        for (i, t) in tokens.enumerated() {
                            let dst = acc.baseAddress! + Int(t) * d, src = i * d * 8
                            for j in 0..<d { dst[j] += raw.loadUnaligned(fromByteOffset: src + j * 8, as: Double.self) }
                        }
                    }
                }
            }
            for i in 0..<(n * d) { step.output[i] = Float(acc[i]) }
        }
        if recordsTimings && step.attempts == 1 {
            timings.append(StepTiming(dispatch: step.dispatchEnd - step.dispatchStart, wait: step.lastReply.at - step.dispatchEnd,
                                      lastRoundTrip: step.lastReply.roundTrip, lastCompute: step.lastReply.compute,
                                      compute: step.computeSum, combine: Self.now() - combineStart))
        }
    }

    public func cancelExperts(_ handle: ExpertStep) { forget(handle.id) }

    func forget(_ id: UInt64) {
        guard let step = steps.removeValue(forKey: id) else { return }
        for r in step.pending.keys { requestStep[r] = nil }
    }

    /// Sends (or, after a node died, re-sends) a step. When a send finds a dead node the experts
    /// are placed anew and the whole step goes again, at most once per node.
    func send(_ step: Step, id: UInt64) throws {
        while true {
            step.attempts += 1
            if step.attempts > 1 {
                retries += 1
                guard step.attempts <= nodes.count + 1 else { throw ClusterError.noLiveNodes }
                try place()
            }
            for r in step.pending.keys { requestStep[r] = nil }
            step.pending = [:]
            step.results = [:]
            step.lost = false
            if try dispatch(step, id: id) { return }
        }
    }

    /// Groups a step's routes by the node holding each expert and sends every node its rows.
    /// Returns false when a node was found dead (it is marked dead).
    /// Grouping reuses per-node arrays; the protobuf header, the request rows libzmq owns until
    /// sent, and the step's bookkeeping are allocated per layer step (a few small objects against
    /// a round trip of ~1 ms).
    func dispatch(_ step: Step, id: UInt64) throws -> Bool {
        step.dispatchStart = Self.now()
        let batch = step.batch, k = batch.topK, d = model.hidden
        guard let row = placement[step.layer] else { throw ExpertBackendError.unknownLayer(step.layer) }
        if work.count < nodes.count { work += Array(repeating: Work(), count: nodes.count - work.count) }
        for i in work.indices {
            work[i].tokens.removeAll(keepingCapacity: true)
            work[i].routes.removeAll(keepingCapacity: true)
        }
        // Routes come token-major, so each node sees its tokens in ascending order and a token's
        // routes together: its row in the request is the last one appended, or a new one.
        // A replicated expert's first token goes to the replica whose node has the fewest routes
        // of this step so far (the first listed on a tie), and its next ones follow it until
        // that node is `replicaSplitRoutes` ahead of the least loaded replica: deterministic, and
        // every replica computes the same bits, so the choice never changes a result.
        dispatchStamp &+= 1
        if replicaNode.count < row.count {
            replicaNode = Array(repeating: 0, count: row.count)
            replicaStamp = Array(repeating: 0, count: row.count)
        }
        for r in 0..<(batch.rows * k) {
            let t = Int32(r / k), e = batch.experts[r]
            let replicas = row[Int(e)]
            var node = replicas[0]
            if replicas.count > 1 {
                var least = replicas[0]
                for i in replicas.dropFirst() where work[i].routes.count < work[least].routes.count { least = i }
                node = least
                if replicaStamp[Int(e)] == dispatchStamp {
                    let current = replicaNode[Int(e)]
                    if work[current].routes.count - work[least].routes.count < Self.replicaSplitRoutes { node = current }
                }
                replicaNode[Int(e)] = node
                replicaStamp[Int(e)] = dispatchStamp
            }
            if work[node].tokens.last != t { work[node].tokens.append(t) }
            work[node].routes.append((e, UInt32(work[node].tokens.count - 1), batch.weights[r]))
        }
        // Every node's message is built before the first is sent, so the sends go out back to
        // back: a node that has its request starts computing, and on a machine whose cores it
        // shares with this thread it can take this thread's core while the next is being built.
        outgoing.removeAll(keepingCapacity: true)
        for node in work.indices where !work[node].tokens.isEmpty {
            guard nodes[node].alive, let socket = nodes[node].data else { return false }
            work[node].routes.sort { ($0.expert, $0.local) < ($1.expert, $1.local) }
            let tokens = work[node].tokens
            var req = Farside_V1_ExpertRequest()
            req.requestID = nextRequest
            nextRequest += 1
            req.layer = UInt32(step.layer)
            req.rows = UInt32(tokens.count)
            req.hidden = UInt32(d)
            req.dtype = .f32
            var groups: [Farside_V1_ExpertRows] = []
            for route in work[node].routes {
                if groups.last?.expert != UInt32(route.expert) {
                    var g = Farside_V1_ExpertRows()
                    g.expert = UInt32(route.expert)
                    groups.append(g)
                }
                groups[groups.count - 1].rows.append(route.local)
                groups[groups.count - 1].weights.append(route.weight)
            }
            req.groups = groups
            let payload = FloatRows(count: tokens.count * d)
            for (i, t) in tokens.enumerated() { (payload.pointer + i * d).update(from: step.input + Int(t) * d, count: d) }
            outgoing.append((node, socket, req.requestID, try envelope(.expertRequest(req)), payload))
        }
        for (node, socket, requestID, header, payload) in outgoing {
            let tokens = work[node].tokens
            do {
                try socket.send([header, .noCopy(pointer: UnsafeRawPointer(payload.pointer), count: tokens.count * d * 4, owner: payload)],
                                flags: .dontWait)
            } catch {
                markDead(node, "send failed: \(error)")
                return false
            }
            bytesSent += header.count + tokens.count * d * 4
            step.pending[requestID] = (node, tokens, Self.now())
            requestStep[requestID] = id
        }
        outgoing.removeAll(keepingCapacity: true)
        step.dispatchEnd = Self.now()
        step.deadline = step.dispatchEnd + options.nodeTimeout
        return true
    }

    /// How long a step may still wait for `slow` nodes that missed its deadline, or nil to
    /// declare them dead now. Declaring dead the nodes that every remaining expert would have to
    /// move to fails the step for certain (`noLiveNodes`), while a node that is merely slow (a
    /// loaded machine, page faults on first touch of its experts) answers in the end: so when no
    /// other node is available and the slow ones' connections are still up (a process that ends
    /// drops its connection and is noticed at once), the step waits up to `lastNodesGrace`
    /// after its dispatch. With another node available the slow ones are declared dead as
    /// before and their experts move there: failing over is the faster way on.
    func graceDeadline(_ step: Step, slow: Set<Int>) -> Double? {
        guard nodes.indices.allSatisfy({ slow.contains($0) || !available($0) }) else { return nil }
        pumpEvents()
        guard slow.allSatisfy({ nodes[$0].alive && nodes[$0].data != nil }) else { return nil }
        let until = step.dispatchEnd + options.lastNodesGrace
        return Self.now() < until ? until : nil
    }

    /// Reads replies for every outstanding step until `step` has all of its own, or has lost a
    /// node (`step.lost`). Replies to other steps are kept in those steps.
    func receive(until step: Step) throws {
        let d = model.hidden
        while !step.pending.isEmpty {
            if step.pending.values.contains(where: { !nodes[$0.node].alive }) {
                step.lost = true
                return
            }
            // Past the deadline the sockets are still read once: replies may be queued there
            // while this thread was busy with another step.
            let left = step.deadline - Self.now()
            var waitingSet = Set<Int>()
            for s in steps.values { for p in s.pending.values where nodes[p.node].alive { waitingSet.insert(p.node) } }
            // Node and socket side by side, so `ready[i]` always belongs to `waiting[i]`.
            let waiting = waitingSet.sorted().compactMap { i in nodes[i].data.map { (node: i, socket: $0) } }
            let sockets = waiting.map(\.socket)
            // The nodes' connection monitors are polled too: a node that dies is noticed when
            // its connection drops, not `nodeTimeout` later.
            let monitors = waitingSet.sorted().compactMap { nodes[$0].events }
            // Nodes on this machine need the cores while this thread waits for them.
            if left > 0 { ThreadPool.shared.park() }
            let ready = try ZMQSocket.poll(sockets + monitors + [control], timeout: left > 0 ? max(1, Int(left * 1000)) : 0,
                                           yieldingFor: options.yieldWindow)
            if ready.last == true { try pumpControl(timeout: 0) }
            if ready[sockets.count..<(sockets.count + monitors.count)].contains(true) { pumpEvents() }
            if left <= 0 && !ready[..<sockets.count].contains(true) {
                let slow = Set(step.pending.values.map(\.node))
                if let until = graceDeadline(step, slow: slow) {
                    if !step.waitedForSlowNodes {
                        step.waitedForSlowNodes = true
                        log("node(s) \(slow.sorted().map { nodes[$0].id }.joined(separator: ", ")) gave no reply within "
                            + "\(options.nodeTimeout) s, but no other node could take their experts: waiting up to "
                            + "\(String(format: "%.0f", until - step.dispatchEnd)) s while their connections stay up")
                    }
                    step.deadline = min(Self.now() + options.nodeTimeout, until)
                    continue
                }
                for node in slow { markDead(node, "no reply within \(options.nodeTimeout) s") }
                step.lost = true
                return
            }
            for (i, (node, socket)) in waiting.enumerated() where ready[i] && nodes[node].alive {
                guard let frames = try socket.receive(timeout: 0) else { continue }
                bytesReceived += frames.reduce(0) { $0 + $1.count }
                guard let first = frames.first, let env = try? WireCodec.decodeEnvelope(first.data) else {
                    log("node \(nodes[node].id): dropped an undecodable reply")
                    continue
                }
                switch env.body {
                case .expertReply(let rep):
                    // A reply to a step already finished, cancelled or re-sent is stale.
                    guard let sid = requestStep[rep.requestID], let owner = steps[sid],
                          let p = owner.pending[rep.requestID], p.node == node else { continue }
                    guard frames.count == 2 else {
                        throw ClusterError.remote(node: nodes[node].id, message: "reply without its payload frame")
                    }
                    try WireCodec.validateReply(rep, payloadByteCount: frames[1].count, expectedRows: p.tokens.count, hidden: d,
                                                requestID: rep.requestID, dtype: .f64)
                    owner.results[node, default: []].append((p.tokens, frames[1]))
                    let at = Self.now()
                    owner.lastReply = (at, at - p.sentAt, rep.computeSeconds)
                    owner.computeSum += rep.computeSeconds
                    nodes[node].roundTrip = nodes[node].roundTrip == 0 ? at - p.sentAt : 0.9 * nodes[node].roundTrip + 0.1 * (at - p.sentAt)
                    owner.pending[rep.requestID] = nil
                    requestStep[rep.requestID] = nil
                case .error(let e):
                    guard let sid = requestStep[e.requestID], let owner = steps[sid], owner.pending[e.requestID] != nil else { continue }
                    if e.code == .unknownExpert || e.code == .unknownLayer {
                        // The node lost its assignment (restarted): treat like a failure.
                        markDead(node, e.message)
                        continue
                    }
                    throw ClusterError.remote(node: nodes[node].id, message: e.message)
                default:
                    continue
                }
            }
        }
    }
}

/// fp32 rows of one request, kept alive by libzmq until sent (zero-copy).
final class FloatRows {
    let pointer: UnsafeMutablePointer<Float>
    init(count: Int) { pointer = .allocate(capacity: max(count, 1)) }
    deinit { pointer.deallocate() }
}
