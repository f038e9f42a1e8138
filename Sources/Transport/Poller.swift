import CZeroMQ
import Glibc

/// Waits on several sockets at once (zmq_poll), for a thread that serves more than one socket.
///
/// The poller only borrows its sockets: the usual one-thread-at-a-time rule applies to them while
/// it polls. Build it once and poll repeatedly; it holds no libzmq resources of its own.
public struct Poller {
    /// What a socket is ready for.
    public struct Events: OptionSet, Sendable {
        /// The libzmq flag bits.
        public let rawValue: Int16
        /// Creates events from libzmq's ZMQ_POLLIN/ZMQ_POLLOUT bits.
        public init(rawValue: Int16) { self.rawValue = rawValue }
        /// At least one whole message can be received without blocking.
        public static let readable = Events(rawValue: Int16(ZMQ_POLLIN))
        /// At least one message can be sent without blocking.
        public static let writable = Events(rawValue: Int16(ZMQ_POLLOUT))
    }

    /// The sockets polled and the events asked of each, in result order.
    public private(set) var items: [(socket: ZMQSocket, events: Events)]

    /// A poller over `items`.
    public init(_ items: [(socket: ZMQSocket, events: Events)] = []) {
        self.items = items
    }

    /// Adds `socket`, asking for `events`; its results come after those of earlier sockets.
    public mutating func add(_ socket: ZMQSocket, events: Events = .readable) {
        items.append((socket, events))
    }

    /// Waits up to `timeout` ms (0: just look; negative: without limit) until some socket is ready
    /// for an event asked of it, and returns each socket's ready events (all empty on timeout).
    /// Signals do not end the wait early. Throws `.closed` if a socket is closed or its context
    /// shut down.
    public func poll(timeout: Int) throws -> [Events] {
        try poll(timeout: timeout, yieldingFor: 0)
    }

    /// Like `poll(timeout:)`, but first keeps looking without blocking, calling `sched_yield()`
    /// between looks, for up to `window` seconds (within `timeout`), and only then blocks.
    ///
    /// For a thread that expects a reply within a millisecond or so on a machine whose cores
    /// are shared with its peers (expert nodes on the coordinator's host): a thread blocked in
    /// `zmq_poll` lets its core halt, and under a hypervisor waking a halted vCPU costs of the
    /// order of 100 µs; a yielding thread keeps the core awake yet hands it to any runnable
    /// thread, so it takes almost nothing from the peers it is waiting for.
    public func poll(timeout: Int, yieldingFor window: Double) throws -> [Events] {
        var pollItems = try items.map { item -> zmq_pollitem_t in
            guard let h = item.socket.handle else { throw TransportError.closed }
            return zmq_pollitem_t(socket: h, fd: 0, events: item.events.rawValue, revents: 0)
        }
        let start = monotonicMilliseconds()
        if window > 0 && timeout != 0 {
            let windowEnd = monotonicSeconds() + window
            while true {
                let rc = pollItems.withUnsafeMutableBufferPointer { zmq_poll($0.baseAddress, Int32($0.count), 0) }
                if rc > 0 { return pollItems.map { Events(rawValue: $0.revents) } }
                if rc < 0 {
                    let code = lastZMQErrno()
                    guard code == EINTR else { throw transportError(code, "poll") }
                }
                if monotonicSeconds() >= windowEnd { break }
                if timeout > 0 && monotonicMilliseconds() - start >= Int64(timeout) { return pollItems.map { _ in [] } }
                sched_yield()
            }
        }
        let deadline = timeout > 0 ? start + Int64(timeout) : 0
        var wait = timeout > 0 ? Int(max(0, deadline - monotonicMilliseconds())) : timeout
        while true {
            let rc = pollItems.withUnsafeMutableBufferPointer {
                zmq_poll($0.baseAddress, Int32($0.count), wait)
            }
            if rc >= 0 { break }
            let code = lastZMQErrno()
            guard code == EINTR else { throw transportError(code, "poll") }
            if timeout > 0 {
                wait = Int(max(0, deadline - monotonicMilliseconds()))
            }
        }
        return pollItems.map { Events(rawValue: $0.revents) }
    }
}
