import Foundation
import CZeroMQ

/// A libzmq socket.
///
/// Thread-safety: like the libzmq socket it wraps, a `ZMQSocket` must be used by one thread at a
/// time. Handing it to another thread is fine when the hand-over itself synchronises (a lock, a
/// queue, thread start); using it from two threads at once corrupts libzmq's state. The type is
/// deliberately not `Sendable` so the compiler can point at such sharing. To wake a thread blocked
/// in `receive` from elsewhere, shut its context down (`ZMQContext.shutdown()`).
///
/// Sockets are created with linger 0: closing discards unsent messages at once instead of letting
/// `close`, `deinit` and context termination wait for absent peers. Set `setLinger(_:)` on a
/// socket whose last messages must go out before it closes.
public final class ZMQSocket {
    /// The socket patterns Farside uses (and their classic companions).
    public enum Kind: Sendable, CaseIterable {
        /// Asynchronous request side: load-balances sends over peers, fair-queues receives.
        case dealer
        /// Asynchronous reply side: each received message starts with the sender's routing id,
        /// and each sent message starts with the routing id of its destination.
        case router
        /// Exactly one peer, both directions.
        case pair
        /// Publishes to every subscriber; drops messages for slow subscribers.
        case pub
        /// Receives the publisher's messages whose first frame starts with a subscribed prefix.
        case sub
        /// Strict send/receive alternation, client side.
        case req
        /// Strict receive/send alternation, server side.
        case rep

        var zmqType: Int32 {
            switch self {
            case .dealer: return ZMQ_DEALER
            case .router: return ZMQ_ROUTER
            case .pair: return ZMQ_PAIR
            case .pub: return ZMQ_PUB
            case .sub: return ZMQ_SUB
            case .req: return ZMQ_REQ
            case .rep: return ZMQ_REP
            }
        }
    }

    /// How a `send` hands its parts to libzmq.
    public struct SendFlags: OptionSet, Sendable {
        /// The libzmq flag bits.
        public let rawValue: Int32
        /// Creates flags from libzmq's bit values.
        public init(rawValue: Int32) { self.rawValue = rawValue }
        /// Fail with `TransportError.timeout` instead of blocking when no peer can take the
        /// message now.
        public static let dontWait = SendFlags(rawValue: ZMQ_DONTWAIT)
        /// More parts of the same message follow in a later `send` (the last part sent here also
        /// carries the "more" flag).
        public static let more = SendFlags(rawValue: ZMQ_SNDMORE)
    }

    /// The socket's pattern.
    public let kind: Kind
    /// The context the socket was created from; held so the context outlives the socket.
    public let context: ZMQContext
    /// The libzmq socket, nil once closed.
    private(set) var handle: UnsafeMutableRawPointer?

    /// Creates a socket of `kind` in `context` with linger 0.
    public init(context: ZMQContext = .shared, kind: Kind) throws {
        self.kind = kind
        self.context = context
        let socket = try context.makeSocket(type: kind.zmqType)
        handle = socket
        var zero: Int32 = 0
        guard zmq_setsockopt(socket, ZMQ_LINGER, &zero, MemoryLayout<Int32>.size) == 0 else {
            let code = lastZMQErrno()
            zmq_close(socket)
            handle = nil
            throw transportError(code, "setsockopt ZMQ_LINGER")
        }
    }

    deinit {
        close()
    }

    /// Whether `close()` has run.
    public var isClosed: Bool { handle == nil }

    /// Closes the socket; later calls do nothing. Messages still queued are kept for the linger
    /// period (0 unless changed), then discarded.
    public func close() {
        guard let h = handle else { return }
        // A monitored socket reports its connections' end from libzmq's I/O thread, which
        // *blocks* sending the event while the monitor's PAIR has no peer (its reader closed):
        // every socket of the context then stalls for good. Stop reporting first, under
        // libzmq's monitor lock, so no event is sent after this socket or its reader closes.
        if isMonitored { zmq_socket_monitor(h, nil, 0) }
        isMonitored = false
        if let source = monitoredSource, !source.isClosed { source.stopMonitor() }
        monitoredSource = nil
        handle = nil
        zmq_close(h)
    }

    /// Whether `monitor(_:)` is reporting this socket's events.
    private var isMonitored = false
    /// For a socket returned by `monitor(_:)`: the socket whose events it receives, told to stop
    /// reporting when this one closes first (see `close`).
    private weak var monitoredSource: ZMQSocket?

    /// Stops the reports `monitor(_:)` started; the PAIR it returned receives nothing more.
    public func stopMonitor() {
        guard isMonitored, let h = handle else { return }
        zmq_socket_monitor(h, nil, 0)
        isMonitored = false
    }

    private func open() throws -> UnsafeMutableRawPointer {
        guard let h = handle else { throw TransportError.closed }
        return h
    }

    // MARK: Endpoints

    /// Binds to `endpoint` and returns the endpoint actually bound, so `tcp://127.0.0.1:*` yields
    /// the ephemeral port chosen (e.g. `tcp://127.0.0.1:41235`). Binding a port another socket
    /// holds throws `.zmq(EADDRINUSE, "bind <endpoint>")`.
    @discardableResult
    public func bind(_ endpoint: String) throws -> String {
        let h = try open()
        try Self.checkEndpoint(endpoint, binding: true)
        guard zmq_bind(h, endpoint) == 0 else {
            throw endpointError(lastZMQErrno(), "bind", endpoint)
        }
        return try lastEndpoint() ?? endpoint
    }

    /// Starts connecting to `endpoint`. libzmq connects (and reconnects) in the background, so
    /// success here does not mean a peer is listening.
    public func connect(_ endpoint: String) throws {
        let h = try open()
        try Self.checkEndpoint(endpoint, binding: false)
        guard zmq_connect(h, endpoint) == 0 else {
            throw endpointError(lastZMQErrno(), "connect", endpoint)
        }
    }

    /// Stops connecting to `endpoint` and drops that connection.
    public func disconnect(_ endpoint: String) throws {
        let h = try open()
        guard zmq_disconnect(h, endpoint) == 0 else {
            throw endpointError(lastZMQErrno(), "disconnect", endpoint)
        }
    }

    /// Stops listening on `endpoint`; pass the string `bind` returned, not a wildcard.
    public func unbind(_ endpoint: String) throws {
        let h = try open()
        guard zmq_unbind(h, endpoint) == 0 else {
            throw endpointError(lastZMQErrno(), "unbind", endpoint)
        }
    }

    /// The endpoint most recently bound or connected, resolved (nil if none).
    public func lastEndpoint() throws -> String? {
        let h = try open()
        var buffer = [CChar](repeating: 0, count: 1024)
        var size = buffer.count
        guard zmq_getsockopt(h, ZMQ_LAST_ENDPOINT, &buffer, &size) == 0 else {
            throw transportError(lastZMQErrno(), "getsockopt ZMQ_LAST_ENDPOINT")
        }
        let text = String(cString: buffer)
        return text.isEmpty ? nil : text
    }

    /// Rejects strings that cannot be endpoints before libzmq sees them, for `bind` (`binding`)
    /// or `connect`; libzmq's own verdict on the rest is mapped by `endpointError`. Throws
    /// `.invalidEndpoint` for a string without `transport://address`, and `.invalidPort` for a
    /// tcp port that is a number outside 0...65535 (libzmq would silently keep its low 16 bits)
    /// or `*`/0 given to `connect`. `*` (and 0) ask `bind` for an ephemeral port. Public so that
    /// command-line flags can be checked before anything is started.
    public static func checkEndpoint(_ endpoint: String, binding: Bool) throws {
        guard let range = endpoint.range(of: "://"),
              !endpoint[..<range.lowerBound].isEmpty,
              !endpoint[range.upperBound...].isEmpty else {
            throw TransportError.invalidEndpoint(endpoint)
        }
        guard endpoint[..<range.lowerBound] == "tcp" else { return }
        // tcp://[source;]host:port: check every port named (the source's too).
        let addresses = endpoint[range.upperBound...].split(separator: ";", omittingEmptySubsequences: false)
        for (i, address) in addresses.enumerated() {
            // A source address (before `;`) is bound locally: any port is fine there.
            let binding = binding || i < addresses.count - 1
            guard let colon = address.lastIndex(of: ":") else { continue }  // no port: libzmq refuses it
            let port = address[address.index(after: colon)...]
            if port == "*" {
                if !binding { throw TransportError.invalidPort(endpoint: endpoint, reason: "port * (any free port) can only be bound, not connected to") }
            } else if !port.isEmpty, port.allSatisfy({ $0.isASCII && $0.isNumber }) {
                guard port.count <= 5, let value = Int(port), value <= 65535 else {
                    throw TransportError.invalidPort(endpoint: endpoint, reason: "port \(port) is not in 0...65535")
                }
                if value == 0 && !binding {
                    throw TransportError.invalidPort(endpoint: endpoint, reason: "port 0 (any free port) can only be bound, not connected to")
                }
            }
        }
    }

    private func endpointError(_ code: Int32, _ verb: String, _ endpoint: String) -> TransportError {
        switch code {
        case EINVAL, EPROTONOSUPPORT, ENOCOMPATPROTO:
            return .invalidEndpoint(endpoint)
        default:
            return transportError(code, "\(verb) \(endpoint)")
        }
    }

    // MARK: Monitoring

    /// Connection events of a socket, as `monitor(_:)` reports them (libzmq's ZMQ_EVENT_* bits).
    public struct MonitorEvents: OptionSet, Sendable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        /// A connect completed at the TCP level (the ZMTP handshake follows).
        public static let connected = MonitorEvents(rawValue: UInt16(ZMQ_EVENT_CONNECTED))
        /// A connect failed and will be retried after the reconnect interval.
        public static let connectRetried = MonitorEvents(rawValue: UInt16(ZMQ_EVENT_CONNECT_RETRIED))
        /// The ZMTP handshake with a peer succeeded: messages flow from now on.
        public static let handshakeSucceeded = MonitorEvents(rawValue: UInt16(ZMQ_EVENT_HANDSHAKE_SUCCEEDED))
        /// An established connection ended (the peer closed it or exited, a heartbeat timed
        /// out, or the network failed).
        public static let disconnected = MonitorEvents(rawValue: UInt16(ZMQ_EVENT_DISCONNECTED))
    }

    /// One event read from a monitor socket.
    public struct MonitorEvent: Sendable, Equatable {
        /// Exactly one of `MonitorEvents`' bits (or another ZMQ_EVENT_* bit).
        public var event: MonitorEvents
        /// The event's value (a file descriptor, an errno or an interval, depending on the event).
        public var value: UInt32
        /// The endpoint the event is about.
        public var endpoint: String
    }

    /// Starts reporting `events` of this socket and returns the PAIR socket that receives them,
    /// to be polled like any other and read with `readMonitorEvent`. Close the returned socket
    /// when done, on the thread that uses this one: closing either socket ends the reports
    /// (`close` stops them before libzmq could block on a reader that is gone). Uses an inproc endpoint of this socket's
    /// context, named uniquely per call.
    public func monitor(_ events: MonitorEvents) throws -> ZMQSocket {
        let h = try open()
        let address = "inproc://farside-monitor-\(ZMQSocket.nextMonitorNumber())"
        guard zmq_socket_monitor(h, address, Int32(events.rawValue)) == 0 else {
            throw transportError(lastZMQErrno(), "zmq_socket_monitor \(address)")
        }
        isMonitored = true
        let pair: ZMQSocket
        do {
            pair = try ZMQSocket(context: context, kind: .pair)
            try pair.connect(address)
        } catch {
            stopMonitor()
            throw error
        }
        pair.monitoredSource = self
        return pair
    }

    /// Whether a message can be received now (ZMQ_EVENTS has POLLIN): one getsockopt, no
    /// allocation, so it is cheap enough to ask on every layer step.
    public var isReadable: Bool {
        get throws { try getInt32(ZMQ_EVENTS, "ZMQ_EVENTS") & Int32(ZMQ_POLLIN) != 0 }
    }

    /// The next event queued on a socket returned by `monitor`, or nil when none is queued (or
    /// the message is not an event: two frames, the first 6 bytes of event and value).
    public func readMonitorEvent() throws -> MonitorEvent? {
        guard let frames = try receive(timeout: 0) else { return nil }
        guard frames.count >= 2, frames[0].count == 6 else { return nil }
        return frames[0].withUnsafeBytes { raw in
            MonitorEvent(event: MonitorEvents(rawValue: UInt16(littleEndian: raw.loadUnaligned(as: UInt16.self))),
                         value: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 2, as: UInt32.self)),
                         endpoint: frames[1].string)
        }
    }

    private static let monitorLock = NSLock()
    nonisolated(unsafe) private static var monitorCount = 0
    private static func nextMonitorNumber() -> Int {
        monitorLock.lock()
        defer { monitorLock.unlock() }
        monitorCount += 1
        return monitorCount
    }

    // MARK: Subscriptions (SUB)

    /// Receives published messages whose first frame starts with `prefix` (empty: all).
    public func subscribe(_ prefix: Data = Data()) throws {
        try setBytes(ZMQ_SUBSCRIBE, prefix, "ZMQ_SUBSCRIBE")
    }

    /// Removes one earlier `subscribe(prefix)`.
    public func unsubscribe(_ prefix: Data = Data()) throws {
        try setBytes(ZMQ_UNSUBSCRIBE, prefix, "ZMQ_UNSUBSCRIBE")
    }

    // MARK: Sending

    /// Sends `frames` as one multipart message (atomically: peers get all parts or none).
    ///
    /// Blocks while no peer can take the message, up to the send timeout; throws `.timeout` when
    /// that expires or, with `.dontWait`, at once. `.data`/`.bytes` parts are copied once into
    /// libzmq; `.noCopy` and `.received` parts are not copied. Every libzmq message built here is
    /// closed on every failure path, releasing `noCopy` owners. A failure after the first part was
    /// accepted (only possible if the peer vanishes mid-message) leaves libzmq to discard the
    /// incomplete message.
    public func send(_ frames: [Frame], flags: SendFlags = []) throws {
        let h = try open()
        guard !frames.isEmpty else {
            throw TransportError.zmq(errno: EINVAL, operation: "send: a message needs at least one frame")
        }
        let messages = UnsafeMutablePointer<zmq_msg_t>.allocate(capacity: frames.count)
        // Parts [sent, built) still belong to us and must be closed on exit.
        var built = 0
        var sent = 0
        defer {
            for i in sent..<built { zmq_msg_close(messages + i) }
            messages.deallocate()
        }
        // Build every part before sending any, so a failure to build sends nothing.
        for frame in frames {
            try frame.initialize(messages + built)
            built += 1
        }
        let dontWait = flags.rawValue & ZMQ_DONTWAIT
        let moreAtEnd = flags.contains(.more)
        while sent < built {
            let isLast = sent == built - 1
            let partFlags = dontWait | ((!isLast || moreAtEnd) ? ZMQ_SNDMORE : 0)
            if zmq_msg_send(messages + sent, h, partFlags) >= 0 {
                // libzmq now owns the part's content; the zmq_msg_t is empty.
                sent += 1
                continue
            }
            let code = lastZMQErrno()
            if code == EINTR { continue }
            if code == EAGAIN { throw TransportError.timeout }
            throw transportError(code, "send part \(sent + 1) of \(built)")
        }
    }

    // MARK: Receiving

    /// Receives one multipart message, or nil if none arrived in time.
    ///
    /// `timeout` in milliseconds: nil uses the socket's receive timeout (blocking forever by
    /// default), 0 only takes a message already queued, a negative value waits without limit.
    /// Signals (EINTR) neither end the wait nor extend it. Parts are returned as `.received`
    /// frames, each a view of libzmq's buffer; no copy is made here. For a ROUTER the first part
    /// is the sender's routing id.
    public func receive(timeout: Int? = nil) throws -> [Frame]? {
        let h = try open()
        var frames: [Frame] = []
        if let timeout {
            // Take an already-queued message without a poll; otherwise poll until the deadline.
            let deadline = timeout > 0 ? monotonicMilliseconds() + Int64(timeout) : 0
            while true {
                if let first = try receivePart(h, flags: ZMQ_DONTWAIT) {
                    frames.append(.received(first))
                    break
                }
                if timeout == 0 { return nil }
                var wait = -1
                if timeout > 0 {
                    let left = deadline - monotonicMilliseconds()
                    if left <= 0 { return nil }
                    wait = Int(left)
                }
                var item = zmq_pollitem_t(socket: h, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)
                if zmq_poll(&item, 1, wait) < 0 {
                    let code = lastZMQErrno()
                    if code == EINTR { continue }
                    throw transportError(code, "poll")
                }
            }
        } else {
            guard let first = try receivePart(h, flags: 0) else { return nil }
            frames.append(.received(first))
        }
        // libzmq delivers messages atomically: once the first part is here, so are the rest.
        while case .received(let last)? = frames.last, zmq_msg_more(last.message) != 0 {
            guard let next = try receivePart(h, flags: 0) else {
                throw TransportError.zmq(errno: EAGAIN, operation: "receive part \(frames.count + 1)")
            }
            frames.append(.received(next))
        }
        return frames
    }

    /// Receives one part; nil on EAGAIN (nothing queued or receive timeout), retrying EINTR.
    private func receivePart(_ h: UnsafeMutableRawPointer, flags: Int32) throws -> ReceivedFrame? {
        let message = UnsafeMutablePointer<zmq_msg_t>.allocate(capacity: 1)
        zmq_msg_init(message)
        while zmq_msg_recv(message, h, flags) < 0 {
            let code = lastZMQErrno()
            if code == EINTR { continue }
            zmq_msg_close(message)
            message.deallocate()
            if code == EAGAIN { return nil }
            throw transportError(code, "receive")
        }
        return ReceivedFrame(adopting: message)
    }

    // MARK: Polling

    /// Waits up to `timeout` ms (negative: without limit) until one of `sockets` has a message to
    /// receive, and returns one readable flag per socket (all false on timeout).
    public static func poll(_ sockets: [ZMQSocket], timeout: Int) throws -> [Bool] {
        try Poller(sockets.map { ($0, .readable) }).poll(timeout: timeout).map { $0.contains(.readable) }
    }

    /// `poll(_:timeout:)` that first looks without blocking, yielding the core between looks, for
    /// up to `window` seconds (see `Poller.poll(timeout:yieldingFor:)`).
    public static func poll(_ sockets: [ZMQSocket], timeout: Int, yieldingFor window: Double) throws -> [Bool] {
        try Poller(sockets.map { ($0, .readable) }).poll(timeout: timeout, yieldingFor: window).map { $0.contains(.readable) }
    }

    // MARK: Options

    /// Milliseconds that `close` keeps unsent messages for delivery (-1: until sent). 0 here by
    /// default.
    public var linger: Int { get throws { Int(try getInt32(ZMQ_LINGER, "ZMQ_LINGER")) } }
    /// Sets `linger`.
    public func setLinger(_ milliseconds: Int) throws {
        try setInt32(ZMQ_LINGER, milliseconds, "ZMQ_LINGER")
    }

    /// Complete messages queued per peer before sends block or drop (0: no limit; libzmq's
    /// default is 1000). Takes effect for connections made after it is set.
    public var sendHighWaterMark: Int { get throws { Int(try getInt32(ZMQ_SNDHWM, "ZMQ_SNDHWM")) } }
    /// Sets `sendHighWaterMark`.
    public func setSendHighWaterMark(_ messages: Int) throws {
        try setInt32(ZMQ_SNDHWM, messages, "ZMQ_SNDHWM")
    }

    /// Complete messages queued per peer on the receiving side (0: no limit; default 1000).
    /// Takes effect for connections made after it is set.
    public var receiveHighWaterMark: Int { get throws { Int(try getInt32(ZMQ_RCVHWM, "ZMQ_RCVHWM")) } }
    /// Sets `receiveHighWaterMark`.
    public func setReceiveHighWaterMark(_ messages: Int) throws {
        try setInt32(ZMQ_RCVHWM, messages, "ZMQ_RCVHWM")
    }

    /// Largest inbound part, in bytes, accepted from a peer (-1: no limit, the default).
    ///
    /// libzmq checks each part (not the whole multipart message) as its header arrives. A peer
    /// announcing a larger part is disconnected: the oversize message is never delivered, nothing
    /// is reported to the receiver, and other peers are unaffected. A DEALER-like peer will
    /// reconnect on its own. Only stream transports (tcp, ipc) enforce it; inproc does not.
    /// Takes effect for connections made after it is set.
    public var maxMessageSize: Int64 { get throws { try getInt64(ZMQ_MAXMSGSIZE, "ZMQ_MAXMSGSIZE") } }
    /// Sets `maxMessageSize`.
    public func setMaxMessageSize(_ bytes: Int64) throws {
        try setInt64(ZMQ_MAXMSGSIZE, bytes, "ZMQ_MAXMSGSIZE")
    }

    /// The identity a DEALER (or REQ/ROUTER) presents to ROUTER peers, which see it as the first
    /// frame of each message; 1–255 bytes, not starting with a zero byte. Set before `connect`.
    public var routingID: Data { get throws { try getBytes(ZMQ_ROUTING_ID, "ZMQ_ROUTING_ID") } }
    /// Sets `routingID`.
    public func setRoutingID(_ id: Data) throws {
        try setBytes(ZMQ_ROUTING_ID, id, "ZMQ_ROUTING_ID")
    }

    /// Milliseconds a blocking `receive()` waits before returning nil (-1: forever, the default).
    public var receiveTimeout: Int { get throws { Int(try getInt32(ZMQ_RCVTIMEO, "ZMQ_RCVTIMEO")) } }
    /// Sets `receiveTimeout`.
    public func setReceiveTimeout(_ milliseconds: Int) throws {
        try setInt32(ZMQ_RCVTIMEO, milliseconds, "ZMQ_RCVTIMEO")
    }

    /// Milliseconds a blocking `send` waits before throwing `.timeout` (-1: forever, the default).
    public var sendTimeout: Int { get throws { Int(try getInt32(ZMQ_SNDTIMEO, "ZMQ_SNDTIMEO")) } }
    /// Sets `sendTimeout`.
    public func setSendTimeout(_ milliseconds: Int) throws {
        try setInt32(ZMQ_SNDTIMEO, milliseconds, "ZMQ_SNDTIMEO")
    }

    /// Queue messages only for completed connections (a DEALER then blocks rather than queueing
    /// for a peer that is not up yet). Set before `connect`.
    public var immediate: Bool { get throws { try getInt32(ZMQ_IMMEDIATE, "ZMQ_IMMEDIATE") != 0 } }
    /// Sets `immediate`.
    public func setImmediate(_ on: Bool) throws {
        try setInt32(ZMQ_IMMEDIATE, on ? 1 : 0, "ZMQ_IMMEDIATE")
    }

    /// ROUTER only: a send to an unknown routing id throws `.zmq(EHOSTUNREACH, …)` instead of
    /// being dropped silently, and a full peer queue blocks (or `.timeout`) instead of dropping.
    /// libzmq cannot read this option back.
    public func setRouterMandatory(_ on: Bool) throws {
        try setInt32(ZMQ_ROUTER_MANDATORY, on ? 1 : 0, "ZMQ_ROUTER_MANDATORY")
    }

    /// ROUTER only: a new connection presenting a routing id already in use takes it over
    /// (useful when a peer restarts before its old connection times out). Write-only.
    public func setRouterHandover(_ on: Bool) throws {
        try setInt32(ZMQ_ROUTER_HANDOVER, on ? 1 : 0, "ZMQ_ROUTER_HANDOVER")
    }

    /// Enables or disables TCP keepalive; nil parameters keep the OS defaults (seconds for
    /// `idle`/`interval`, probes for `count`). Takes effect for connections made after it is set.
    public func setTCPKeepalive(_ enabled: Bool, idle: Int? = nil, interval: Int? = nil, count: Int? = nil) throws {
        try setInt32(ZMQ_TCP_KEEPALIVE, enabled ? 1 : 0, "ZMQ_TCP_KEEPALIVE")
        if let idle { try setInt32(ZMQ_TCP_KEEPALIVE_IDLE, idle, "ZMQ_TCP_KEEPALIVE_IDLE") }
        if let interval { try setInt32(ZMQ_TCP_KEEPALIVE_INTVL, interval, "ZMQ_TCP_KEEPALIVE_INTVL") }
        if let count { try setInt32(ZMQ_TCP_KEEPALIVE_CNT, count, "ZMQ_TCP_KEEPALIVE_CNT") }
    }

    /// ZMTP heartbeats, so a dead peer is noticed (and its connection dropped) even when no
    /// traffic flows: a PING every `interval` ms, the connection closed when nothing arrives for
    /// `timeout` ms (nil: `interval`), and `ttl` ms (nil: none; 100 ms resolution) asking the peer
    /// to drop us if it hears nothing for that long. Takes effect for connections made after it
    /// is set.
    public func setHeartbeat(interval: Int, timeout: Int? = nil, ttl: Int? = nil) throws {
        try setInt32(ZMQ_HEARTBEAT_IVL, interval, "ZMQ_HEARTBEAT_IVL")
        if let timeout { try setInt32(ZMQ_HEARTBEAT_TIMEOUT, timeout, "ZMQ_HEARTBEAT_TIMEOUT") }
        if let ttl { try setInt32(ZMQ_HEARTBEAT_TTL, ttl, "ZMQ_HEARTBEAT_TTL") }
    }

    /// Milliseconds between reconnection attempts (default 100; -1: never reconnect).
    public var reconnectInterval: Int { get throws { Int(try getInt32(ZMQ_RECONNECT_IVL, "ZMQ_RECONNECT_IVL")) } }
    /// Sets `reconnectInterval`, and optionally the ceiling the interval backs off to
    /// exponentially (`maximum`; 0, the default, means no back-off).
    public func setReconnectInterval(_ milliseconds: Int, maximum: Int? = nil) throws {
        try setInt32(ZMQ_RECONNECT_IVL, milliseconds, "ZMQ_RECONNECT_IVL")
        if let maximum { try setInt32(ZMQ_RECONNECT_IVL_MAX, maximum, "ZMQ_RECONNECT_IVL_MAX") }
    }

    /// Kernel send/receive buffer sizes in bytes (-1: OS default). Larger buffers help large
    /// frames on high-latency links. Takes effect for connections made after it is set.
    public func setKernelBufferSizes(send: Int? = nil, receive: Int? = nil) throws {
        if let send { try setInt32(ZMQ_SNDBUF, send, "ZMQ_SNDBUF") }
        if let receive { try setInt32(ZMQ_RCVBUF, receive, "ZMQ_RCVBUF") }
    }

    // MARK: Option plumbing

    func setInt32(_ option: Int32, _ value: Int, _ name: String) throws {
        let h = try open()
        guard let v = Int32(exactly: value) else {
            throw TransportError.zmq(errno: EINVAL, operation: "setsockopt \(name)=\(value)")
        }
        var value32 = v
        guard zmq_setsockopt(h, option, &value32, MemoryLayout<Int32>.size) == 0 else {
            throw transportError(lastZMQErrno(), "setsockopt \(name)=\(value)")
        }
    }

    private func getInt32(_ option: Int32, _ name: String) throws -> Int32 {
        let h = try open()
        var value: Int32 = 0
        var size = MemoryLayout<Int32>.size
        guard zmq_getsockopt(h, option, &value, &size) == 0 else {
            throw transportError(lastZMQErrno(), "getsockopt \(name)")
        }
        return value
    }

    private func setInt64(_ option: Int32, _ value: Int64, _ name: String) throws {
        let h = try open()
        var v = value
        guard zmq_setsockopt(h, option, &v, MemoryLayout<Int64>.size) == 0 else {
            throw transportError(lastZMQErrno(), "setsockopt \(name)=\(value)")
        }
    }

    private func getInt64(_ option: Int32, _ name: String) throws -> Int64 {
        let h = try open()
        var value: Int64 = 0
        var size = MemoryLayout<Int64>.size
        guard zmq_getsockopt(h, option, &value, &size) == 0 else {
            throw transportError(lastZMQErrno(), "getsockopt \(name)")
        }
        return value
    }

    func setBytes(_ option: Int32, _ value: Data, _ name: String) throws {
        let h = try open()
        // An empty value still needs a non-null pointer: libzmq rejects (NULL, 0) for some options.
        var placeholder: UInt8 = 0
        let rc = value.isEmpty
            ? zmq_setsockopt(h, option, &placeholder, 0)
            : value.withUnsafeBytes { zmq_setsockopt(h, option, $0.baseAddress, $0.count) }
        guard rc == 0 else {
            throw transportError(lastZMQErrno(), "setsockopt \(name) (\(value.count) bytes)")
        }
    }

    private func getBytes(_ option: Int32, _ name: String) throws -> Data {
        let h = try open()
        var buffer = [UInt8](repeating: 0, count: 256)
        var size = buffer.count
        guard zmq_getsockopt(h, option, &buffer, &size) == 0 else {
            throw transportError(lastZMQErrno(), "getsockopt \(name)")
        }
        return Data(buffer[..<size])
    }
}
