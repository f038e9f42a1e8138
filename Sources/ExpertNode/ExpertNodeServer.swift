import Foundation
import Models
import Placement
import Protocol
import Transport

/// Why a node stopped serving on its own.
public enum ExpertNodeError: Error, CustomStringConvertible {
    /// No connection to the coordinator for `seconds` (`Options.coordinatorTimeout`).
    case coordinatorUnreachable(endpoint: String, seconds: Double)
    /// The process that started this node (`Options.parentPID`) has exited.
    case parentGone(pid: Int32)
    /// The coordinator refused the registration; `reason` is its answer.
    case refused(reason: String)

    public var description: String {
        switch self {
        case .coordinatorUnreachable(let endpoint, let seconds):
            return "gave up: no connection to the coordinator at \(endpoint) for \(Int(seconds)) s (--coordinator-timeout); check that it runs and is reachable"
        case .parentGone(let pid):
            return "the process that started this node (pid \(pid)) has exited; stopping with it"
        case .refused(let reason):
            return "the coordinator refused this node: \(reason)"
        }
    }
}

/// An expert node: a separate process holding some routed experts of a model and computing them
/// for batches of tokens sent by coordinators.
///
/// Sockets: a ROUTER bound at `listen` serves data-plane requests from any number of
/// coordinator DEALERs; a DEALER (routing id = node id) connected to the coordinator's control
/// ROUTER carries registration, assignments, heartbeats, drain and shutdown. One thread owns
/// both sockets (libzmq sockets are single-threaded); the kernels use the worker pool.
public final class ExpertNodeServer {
    public struct Options {
        public var listen: String
        public var coordinator: String
        public var nodeID: String
        public var memoryBudget: Int
        /// What this node is (power, site price and carbon, measured bandwidth), sent with its
        /// registration for power-aware placement and energy accounting.
        public var power: PowerProfile
        public var heartbeatInterval: Double = 0.5
        /// Seconds a leaving node (SIGTERM) waits for its coordinator to take its experts back.
        public var leaveTimeout: Double = 15
        /// The data endpoint registered with the coordinator instead of the bound one (NAT, a
        /// port forward, a relay); nil: the bound endpoint.
        public var advertise: String?
        /// Inbound messages larger than this are refused by libzmq (the peer is disconnected).
        public var maxMessageBytes: Int64 = 1 << 30
        /// Limits on one data-plane request, checked before anything is allocated for it; a
        /// request over one gets an error reply (TOO_LARGE). Rows per request, and header bytes
        /// (a header of `rows` rows × top-k routes takes about 6 bytes a route). Routes per row
        /// are bounded by the layer's top-k, and each group's rows must be distinct
        /// (`WireCodec.validateRequest`).
        public var maxRows = 1 << 16
        public var maxHeaderBytes = 16 << 20
        /// Reply bytes a peer may leave unread (handed to libzmq, not yet written to its
        /// connection) before its further requests are refused with an error reply; one reply
        /// of any size is always allowed, so the bound is max(this, the largest reply).
        public var maxUnreadReplyBytes = 256 << 20
        /// Messages libzmq queues per peer in each direction (ZMQ_SNDHWM/RCVHWM on the data
        /// socket): past it, inbound reading pauses (TCP back-pressure) and outbound replies to
        /// that peer are dropped. A coordinator has at most two steps in flight per node.
        public var queueLimit = 64
        /// See `LocalExperts.splitsRows`; false for nodes that share their cores with other
        /// busy processes (local nodes on the coordinator's machine).
        public var splitExpertRows = true
        /// Seconds to keep polling for the next message with `sched_yield()` before blocking
        /// (`Poller.poll(timeout:yieldingFor:)`). At decode a request comes every layer, about a
        /// millisecond apart; a node blocked in `zmq_poll` then pays a thread wake-up per request
        /// (its I/O thread handing it the message), which under a hypervisor costs tens of µs
        /// or more. Measured on the 1 GB synthetic MoE through 2 local nodes on the 2-core VM
        /// (decode, `bench --alternate-in-process`, 6 invocations of 12 run pairs each, alternating
        /// with 0): median ratio to in process 0.81-0.90 (mean 0.84) against 0.76-0.85 (mean 0.81).
        /// The window runs from the last request, so an idle node blocks and keeps no core busy.
        public var pollYieldWindow = 0.003
        /// Seconds without a connection to the coordinator after which `run` gives up and throws
        /// `ExpertNodeError.coordinatorUnreachable`; 0 keeps trying for ever (warning every
        /// `warningInterval` seconds). A connection counts from the ZMTP handshake to its loss:
        /// the coordinator exiting, or no ZMTP heartbeat answered for `heartbeatTimeout`.
        public var coordinatorTimeout = 0.0
        /// Seconds between two warnings that the coordinator is unreachable.
        public var warningInterval = 10.0
        /// Seconds of silence on the control connection (ZMTP heartbeats answered by the
        /// coordinator's I/O thread, so a busy coordinator still counts as present) after which
        /// the connection is dropped as dead.
        public var heartbeatTimeout = 5.0
        /// The process that started this node (local nodes): when it is no longer this process's
        /// parent, `run` throws `ExpertNodeError.parentGone`. Checked at every poll (≤ 100 ms).
        public var parentPID: Int32?
        /// This node's CurveZMQ keys and its coordinator's public key: both sockets become CURVE
        /// clients of that coordinator, so the links are encrypted and the node talks to no
        /// other server (its bound data socket refuses anyone else). Nil: plaintext.
        public var curve: (keys: CurveKeyPair, coordinatorKey: String)?
        public init(listen: String, coordinator: String, nodeID: String, memoryBudget: Int,
                    power: PowerProfile = PowerProfile(device: "cpu", idleWatts: 10, busyWatts: 60)) {
            self.listen = listen
            self.coordinator = coordinator
            self.nodeID = nodeID
            self.memoryBudget = memoryBudget
            self.power = power
        }
    }

    let options: Options
    /// The node's own copy of the model; nil for a node that streams weights from its coordinator.
    let model: DecoderModel?
    /// The model's fingerprint (a weight-streaming node learns it at registration).
    var fingerprint: String
    /// The model's hidden size (a weight-streaming node: 0 until registered).
    var hidden: Int
    /// Weights received from the coordinator (weight-streaming node, once registered).
    var streamed: StreamedExperts?
    var experts: LocalExperts?
    var epoch: UInt64 = 0
    var busySeconds = 0.0
    var requests: UInt64 = 0
    var loads: [Int: UInt64] = [:]   // layer << 20 | expert -> routed tokens since last heartbeat
    var running = true
    /// Experts of the current assignment.
    var heldExperts = 0
    /// Whether `.ready` went out (with the first assignment loaded).
    var announcedReady = false
    /// Set by `leave()` from any thread; the serving thread reads it every 50 ms.
    private let leaveLock = NSLock()
    private var leaveAsked = false
    /// Set when the node has asked its coordinator to take its experts back (SIGTERM): it
    /// stops at the coordinator's Shutdown, or at this time.
    private var leaveDeadline: Double?
    /// What the node is doing, for a supervisor (systemd's notify protocol): `.ready` once it
    /// holds its first assignment, `.status` on later ones, `.alive` every 50-100 ms, `.stopping`
    /// when it stops on request.
    public enum Event: Sendable {
        case ready(String)
        case status(String)
        case alive
        case stopping(String)
    }
    public var onEvent: (Event) -> Void = { _ in }
    /// Expert count and top-k of each routed layer, for checking requests before computing.
    var layerLimits: [Int: (experts: Int, topK: Int)]
    /// Reply bytes not yet written to each peer (see `Options.maxUnreadReplyBytes`).
    let unread = UnreadReplies()
    var log: (String) -> Void
    /// Problems a person must see even when `log` is silenced (`--quiet`).
    var warn: (String) -> Void

    /// `log` gets progress lines; `warn` (default: `log`) the problems a person must see even
    /// when progress is not wanted (coordinator unreachable, giving up).
    ///
    /// `model` nil: the node has no model file and streams weights. It registers saying so, learns
    /// the model's layout from the coordinator's reply, and receives every expert it is assigned
    /// (`ExpertWeights`, before the assignment) into memory of its own.
    public init(model: DecoderModel?, fingerprint: String, options: Options, log: @escaping (String) -> Void,
                warn: ((String) -> Void)? = nil) {
        self.model = model
        self.fingerprint = model == nil ? "" : fingerprint
        self.options = options
        self.log = log
        self.warn = warn ?? log
        hidden = model?.hidden ?? 0
        layerLimits = Dictionary((model?.sparseLayers ?? []).map { ($0.layer, (experts: $0.experts, topK: $0.router.topK)) },
                                 uniquingKeysWith: { a, _ in a })
    }

    /// Asks the node to stop (SIGTERM): after `.stopping`, it asks its coordinator to move its
    /// experts to the other nodes and serves until the coordinator's Shutdown (or
    /// `leaveTimeout`), then `run` returns. A node holding nothing, or not registered, returns at
    /// its next poll. Thread-safe.
    public func leave() {
        leaveLock.lock()
        leaveAsked = true
        leaveLock.unlock()
    }

    /// Serves until told to shut down (a `Shutdown` message). Throws for set-up failures (bind,
    /// connect) and for the ends in `ExpertNodeError`: coordinator gone for longer than
    /// `coordinatorTimeout`, parent process gone.
    public func run() throws {
        let data = try ZMQSocket(kind: .router)
        try data.setLinger(0)
        if let c = options.curve { try data.makeCurveClient(c.keys, serverKey: c.coordinatorKey) }
        try data.setMaxMessageSize(options.maxMessageBytes)
        try data.setSendHighWaterMark(options.queueLimit)
        try data.setReceiveHighWaterMark(options.queueLimit)
        let endpoint = try data.bind(options.listen)
        let control = try ZMQSocket(kind: .dealer)
        try control.setLinger(0)
        if let c = options.curve { try control.makeCurveClient(c.keys, serverKey: c.coordinatorKey) }
        // Unique per process (the node id names the node in the Register message): two
        // processes under one node id are then two connections the coordinator can tell apart.
        try control.setRoutingID(Data((String(options.nodeID.prefix(200)) + "#\(getpid())-\(UInt32.random(in: 1...UInt32.max))").utf8))
        try control.setMaxMessageSize(options.maxMessageBytes)
        // The coordinator's I/O thread answers the PINGs, so only a coordinator that is gone
        // (or cut off) goes silent.
        let heartbeatMs = Int(max(0.1, options.heartbeatTimeout) * 1000)
        try control.setHeartbeat(interval: max(100, heartbeatMs / 5), timeout: heartbeatMs)
        // Connection events of the control socket: whether the coordinator is there.
        let events = try control.monitor([.handshakeSucceeded, .disconnected])
        try control.connect(options.coordinator)
        defer {
            data.close()
            control.close()
            events.close()
        }
        log("expert node \(options.nodeID) serving \(endpoint), coordinator \(options.coordinator)")
        var register = Farside_V1_Register()
        register.nodeID = options.nodeID
        register.endpoint = options.advertise ?? endpoint
        register.memoryBudgetBytes = UInt64(max(0, options.memoryBudget))
        register.modelFingerprint = fingerprint
        register.streamsWeights = model == nil
        var power = Farside_V1_PowerProfile()
        power.device = options.power.device
        power.idleWatts = options.power.idleWatts
        power.activeWatts = options.power.busyWatts
        power.memoryBandwidth = options.power.memoryBandwidth
        power.flopsPerSecond = options.power.flopsPerSecond
        power.pricePerKwh = options.power.pricePerKWh
        power.carbonPerKwh = options.power.carbonPerKWh
        power.pue = options.power.pue
        register.power = power
        // The Register goes out when the connection is up (the monitor's handshake event), and
        // again after every reconnection: a coordinator that restarted knows nothing of us.

        var lastRequest = -Double.infinity
        var lastBeat = now()
        var lastRegister = now()
        var registered = false
        var connected = false
        var disconnectedSince = now()
        var lastWarning = now()
        var lastHousekeeping = -Double.infinity
        while running {
            // Yield-poll only within the window after the last request, so an idle node sleeps.
            let window = max(0, lastRequest + options.pollYieldWindow - now())
            let ready = try ZMQSocket.poll([data, control, events], timeout: 100, yieldingFor: window)
            if ready[1], let frames = try control.receive(timeout: 0) {
                handleControl(frames, control: control, registered: &registered)
            }
            if ready[0], let frames = try data.receive(timeout: 0) {
                handleData(frames, socket: data)
                lastRequest = now()
            }
            if ready[2] {
                while let e = try events.readMonitorEvent() {
                    if e.event == .handshakeSucceeded && !connected {
                        connected = true
                        if now() - disconnectedSince >= options.warningInterval { warn("connected to the coordinator at \(options.coordinator) again") }
                        try? send(control, [], .register(register))
                        lastRegister = now()
                    } else if e.event == .disconnected && connected {
                        connected = false
                        registered = false
                        disconnectedSince = now()
                        lastWarning = disconnectedSince
                        warn("lost the connection to the coordinator at \(options.coordinator); registering again when it is back")
                    }
                }
            }
            let t = now()
            // Supervisor housekeeping at most every 50 ms, not at every request (at decode one
            // arrives per layer): the watchdog's sign of life and whether SIGTERM asked to stop.
            if t - lastHousekeeping >= 0.05 {
                lastHousekeeping = t
                onEvent(.alive)
                leaveLock.lock()
                let asked = leaveAsked
                leaveLock.unlock()
                if asked && leaveDeadline == nil {
                    onEvent(.stopping("stopping: handing this node's experts back to the coordinator"))
                    if registered && connected && heldExperts > 0 {
                        // Hand back before leaving: the coordinator moves the experts to the other
                        // nodes (they load them before routing switches), then sends Shutdown.
                        // Serving goes on meanwhile. A coordinator that does not answer in time
                        // (or cannot place them elsewhere) is left to notice the dropped
                        // connection, which also loses no request.
                        try? send(control, [], .drain(Farside_V1_Drain()))
                        leaveDeadline = t + options.leaveTimeout
                        log("stopping on request: asked the coordinator to move this node's experts")
                    } else {
                        log("stopping on request")
                        running = false
                        continue
                    }
                }
                if let d = leaveDeadline, t >= d {
                    warn("the coordinator did not take this node's experts back within \(options.leaveTimeout) s; stopping anyway")
                    running = false
                    continue
                }
            }
            // These ends are thrown, and the command prints them as its error (also with --quiet).
            if let parent = options.parentPID, getppid() != parent {
                throw ExpertNodeError.parentGone(pid: parent)
            }
            if !connected {
                let down = t - disconnectedSince
                if options.coordinatorTimeout > 0 && down >= options.coordinatorTimeout {
                    throw ExpertNodeError.coordinatorUnreachable(endpoint: options.coordinator, seconds: down)
                }
                if t - lastWarning >= options.warningInterval {
                    warn("the coordinator at \(options.coordinator) has been unreachable for \(Int(down)) s; still trying")
                    lastWarning = t
                }
            }
            if connected && !registered && t - lastRegister > 1 {
                // No answer yet (the coordinator reads its control socket only while it works):
                // say hello again.
                try? send(control, [], .register(register))
                lastRegister = t
            }
            if registered && t - lastBeat >= options.heartbeatInterval {
                var hb = Farside_V1_Heartbeat()
                hb.nodeID = options.nodeID
                hb.epoch = epoch
                hb.busySeconds = busySeconds
                hb.requests = requests
                hb.loads = loads.sorted { $0.key < $1.key }.map { key, tokens in
                    var l = Farside_V1_ExpertLoad()
                    l.key.layer = UInt32(key >> 20)
                    l.key.expert = UInt32(key & 0xFFFFF)
                    l.tokens = tokens
                    return l
                }
                loads.removeAll(keepingCapacity: true)
                busySeconds = 0
                try? send(control, [], .heartbeat(hb))
                lastBeat = t
            }
        }
        if let refusal {
            throw ExpertNodeError.refused(reason: refusal)
        }
        log("expert node \(options.nodeID) stopped")
    }

    /// The coordinator's reason when it refused this node (which then stops).
    var refusal: String?

    func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    func send(_ socket: ZMQSocket, _ prefix: [Frame], _ body: Farside_V1_Envelope.OneOf_Body, payload: [Frame] = []) throws {
        try socket.send(prefix + [.data(try WireCodec.encode(body))] + payload, flags: .dontWait)
    }

    func handleControl(_ frames: [Frame], control: ZMQSocket, registered: inout Bool) {
        guard let first = frames.first else { return }
        let env: Farside_V1_Envelope
        do {
            env = try WireCodec.decodeEnvelope(first.data)
        } catch {
            log("control: dropped a message: \(error)")
            return
        }
        switch env.body {
        case .registerReply(let r):
            if r.accepted && model == nil {
                // A weight-streaming node serves whatever model its coordinator describes.
                do {
                    guard r.hasLayout else {
                        throw StreamedExpertError.badShape("the coordinator did not describe its model (it cannot stream weights)")
                    }
                    let layout = try StreamedLayout(r.layout)
                    if streamed?.layout != layout {
                        if streamed != nil { log("the coordinator serves another model now: dropped the experts held") }
                        streamed = StreamedExperts(layout: layout)
                        experts = nil
                        heldExperts = 0
                        fingerprint = layout.fingerprint
                        hidden = layout.hidden
                        layerLimits = layout.layers.mapValues { (experts: $0.experts, topK: $0.topK) }
                    }
                    registered = true
                } catch {
                    refusal = "\(error)"
                    running = false
                }
            } else if r.accepted {
                registered = true
            } else {
                refusal = r.reason
                running = false
            }
        case .assignment(let a):
            registered = true
            var ack = Farside_V1_AssignmentAck()
            ack.epoch = a.epoch
            do {
                let wanted = Set(a.experts.map { Int($0.layer) << 20 | Int($0.expert) })
                for key in a.experts {
                    guard let limits = layerLimits[Int(key.layer)], Int(key.expert) < limits.experts else {
                        throw ExpertBackendError.unknownExpert(layer: Int(key.layer), expert: Int(key.expert))
                    }
                }
                let held: LocalExperts
                if let model {
                    held = try LocalExperts(model: model) { l, e in wanted.contains(l << 20 | e) }
                } else if let streamed {
                    let (list, owners) = try streamed.experts(for: a.experts.map { (Int($0.layer), Int($0.expert)) })
                    held = LocalExperts(hidden: hidden, experts: list, owners: owners)
                } else {
                    throw StreamedExpertError.noLayout
                }
                held.splitsRows = options.splitExpertRows
                guard held.weightBytes <= options.memoryBudget || options.memoryBudget <= 0 else {
                    throw ExpertBackendError.shapeMismatch("assignment needs \(held.weightBytes) bytes, over the memory budget of \(options.memoryBudget)")
                }
                experts = held
                // What the assignment no longer names is released (make-before-break: the
                // coordinator stopped routing to it before sending this set).
                streamed?.keepOnly(wanted)
                epoch = a.epoch
                heldExperts = a.experts.count
                let status = "serving \(heldExperts) experts (epoch \(a.epoch)) for the coordinator at \(options.coordinator)"
                // The first assignment loaded makes the node ready; later ones change its status.
                if announcedReady { onEvent(.status(status)) } else { onEvent(.ready(status)) }
                announcedReady = true
                ack.loadedBytes = UInt64(held.weightBytes)
                log("assignment epoch \(a.epoch): \(a.experts.count) experts, \(held.weightBytes) bytes")
            } catch {
                ack.error = "\(error)"
                log("assignment epoch \(a.epoch) refused: \(error)")
            }
            try? send(control, [], .assignmentAck(ack))
        case .expertWeights(let w):
            // Checked in full before memory is taken; a refused expert makes the assignment
            // naming it fail (notStreamed), which the coordinator hears in the ack.
            guard let streamed else {
                log("expert weights dropped: \(model == nil ? "\(StreamedExpertError.noLayout)" : "this node serves its own model file")")
                return
            }
            do {
                try streamed.receive(w, payload: frames.dropFirst(), budget: options.memoryBudget)
            } catch {
                log("expert \(w.key.expert) of layer \(w.key.layer) refused: \(error)")
            }
        case .drain:
            experts = nil
            streamed?.keepOnly([])
            log("drained")
        case .shutdown:
            running = false
        default:
            log("control: ignored an unexpected message")
        }
    }

    /// Data plane: `[routing id, envelope(ExpertRequest), input rows]`. Bad input gets an error
    /// reply naming the problem; it never stops the node.
    func handleData(_ frames: [Frame], socket: ZMQSocket) {
        guard frames.count >= 2 else { return }
        let peer = frames[0]
        var requestID: UInt64 = 0
        func fail(_ code: Farside_V1_ErrorCode, _ message: String) {
            log("request \(requestID): \(message)")
            var e = Farside_V1_ErrorReply()
            e.requestID = requestID
            e.code = code
            e.message = message
            try? send(socket, [peer], .error(e))
        }
        let env: Farside_V1_Envelope
        guard frames[1].count <= options.maxHeaderBytes else {
            return fail(.tooLarge, "header: \(frames[1].count) bytes, limit \(options.maxHeaderBytes)")
        }
        do {
            env = try WireCodec.decodeEnvelope(frames[1].data, maxBytes: options.maxHeaderBytes)
        } catch let e as WireError {
            return fail(e.code, "\(e)")
        } catch {
            return fail(.malformed, "\(error)")
        }
        guard case .expertRequest(let req) = env.body else {
            return fail(.malformed, "data socket accepts only expert requests")
        }
        requestID = req.requestID
        guard frames.count == 3 else { return fail(.malformed, "expected 1 payload frame, got \(frames.count - 2)") }
        let payload = frames[2]
        // Everything about the request is checked before anything is allocated for it, so a
        // refused request leaves nothing behind.
        guard let limits = layerLimits[Int(req.layer)] else {
            return fail(.unknownLayer, "layer \(req.layer) has no routed experts")
        }
        do {
            try WireCodec.validateRequest(req, payloadByteCount: payload.count, maxRows: options.maxRows, maxHidden: 1 << 16,
                                          maxRoutesPerRow: limits.topK)
        } catch let e as WireError {
            return fail(e.code, "\(e)")
        } catch {
            return fail(.malformed, "\(error)")
        }
        for g in req.groups where Int(g.expert) >= limits.experts {
            return fail(.unknownExpert, "layer \(req.layer) has \(limits.experts) experts, no expert \(g.expert)")
        }
        guard let experts else { return fail(.unknownExpert, "no experts assigned to this node yet") }
        guard Int(req.hidden) == hidden else {
            return fail(.malformed, "hidden \(req.hidden) does not match the model's \(hidden)")
        }
        let n = Int(req.rows), d = Int(req.hidden)
        let replyBytes = n * d * 8  // n ≤ maxRows, d = model.hidden: no overflow
        let peerID = peer.data
        let waiting = unread.bytes(for: peerID)
        if waiting > 0 && waiting + replyBytes > options.maxUnreadReplyBytes {
            return fail(.tooLarge, "this client has not read \(waiting) bytes of replies yet (limit \(options.maxUnreadReplyBytes)); read replies before sending more requests")
        }
        let t0 = now()
        // A fresh reply buffer per request: libzmq owns it until the zero-copy send completes,
        // and it counts as unread for this peer until then.
        let out = DoubleBuffer(count: n * d, unread: unread, peer: peerID)
        do {
            // One copy of the input rows: libzmq's buffers carry no alignment guarantee, and
            // bf16/f16 payloads need widening anyway.
            var input = [Float](repeating: 0, count: n * d)
            try payload.withUnsafeBytes { raw in
                try input.withUnsafeMutableBufferPointer { try WireCodec.decodePayload(raw, dtype: req.dtype, into: $0) }
            }
            let groups = req.groups.map { (expert: Int($0.expert), rows: $0.rows, weights: $0.weights) }
            try input.withUnsafeBufferPointer { x in
                try experts.accumulate(layer: Int(req.layer), groups: groups, input: x.baseAddress!, rows: n, partial: out.pointer)
            }
        } catch let e as ExpertBackendError {
            switch e {
            case .unknownLayer: return fail(.unknownLayer, "\(e)")
            case .unknownExpert: return fail(.unknownExpert, "\(e)")
            case .shapeMismatch: return fail(.malformed, "\(e)")
            }
        } catch let e as WireError {
            return fail(e.code, "\(e)")
        } catch {
            return fail(.internal, "\(error)")
        }
        let dt = now() - t0
        busySeconds += dt
        requests += 1
        for g in req.groups { loads[Int(req.layer) << 20 | Int(g.expert), default: 0] += UInt64(g.rows.count) }
        var reply = Farside_V1_ExpertReply()
        reply.requestID = req.requestID
        reply.rows = req.rows
        reply.hidden = req.hidden
        reply.dtype = .f64
        reply.computeSeconds = dt
        do {
            try send(socket, [peer], .expertReply(reply),
                     payload: [.noCopy(pointer: UnsafeRawPointer(out.pointer), count: n * d * 8, owner: out)])
        } catch {
            log("request \(req.requestID): reply not sent: \(error)")
        }
    }
}

/// Heap storage for one reply's fp64 rows, kept alive by libzmq until sent (zero-copy); its
/// bytes count in `unread` for `peer` until then.
final class DoubleBuffer {
    let pointer: UnsafeMutablePointer<Double>
    let bytes: Int
    let unread: UnreadReplies
    let peer: Data
    init(count: Int, unread: UnreadReplies, peer: Data) {
        pointer = .allocate(capacity: max(count, 1))
        bytes = count * 8
        self.unread = unread
        self.peer = peer
        unread.add(bytes, for: peer)
    }
    // Runs on whichever thread libzmq frees the message on (its I/O thread, after the write).
    deinit {
        unread.add(-bytes, for: peer)
        pointer.deallocate()
    }
}

/// Reply bytes handed to libzmq and not yet written to each peer's connection, by routing id.
/// Locked: libzmq releases replies on its I/O thread. Peers without unread bytes are dropped,
/// so the table holds only peers with replies in flight.
final class UnreadReplies: @unchecked Sendable {
    private let lock = NSLock()
    private var table: [Data: Int] = [:]

    func add(_ bytes: Int, for peer: Data) {
        lock.lock()
        defer { lock.unlock() }
        let now = table[peer, default: 0] + bytes
        table[peer] = now > 0 ? now : nil
    }

    func bytes(for peer: Data) -> Int {
        lock.lock()
        defer { lock.unlock() }
        return table[peer] ?? 0
    }
}
