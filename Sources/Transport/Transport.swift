// The libzmq layer that carries Farside's messages between the coordinator and expert nodes.
//
// Files:
//   Transport.swift   TransportError and the errno plumbing every call shares
//   ZMQContext.swift  the libzmq context (I/O threads) and library capabilities
//   ZMQSocket.swift   sockets: lifecycle, endpoints, options, multipart send/receive
//   Frame.swift       message parts: owned bytes, zero-copy views, received parts
//   Poller.swift      readiness polling over several sockets
//
// The layer is deliberately thin: one Swift call maps onto one or a few libzmq calls, nothing
// is queued, retried or threaded behind the caller's back (only EINTR is retried, because a
// signal is never a failure the caller can act on). libzmq's own rules therefore hold: a socket
// is used by one thread at a time, a context may be shared by all threads.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CZeroMQ

/// A failed transport operation.
///
/// libzmq failures carry the errno and the operation that failed, so a log line reads like
/// `bind tcp://127.0.0.1:5555: Address already in use` without the caller adding context.
public enum TransportError: Error, CustomStringConvertible, Equatable {
    /// libzmq reported `errno` while performing `operation` (which names the endpoint, if any).
    case zmq(errno: Int32, operation: String)
    /// A send did not complete within the socket's send timeout, or at once with `.dontWait`
    /// (libzmq's EAGAIN on send: no peer, or every peer's high-water mark reached).
    /// A receive timeout is not an error: `receive` returns nil instead.
    case timeout
    /// The socket was closed, or its context was shut down or terminated (libzmq's ETERM).
    case closed
    /// libzmq refused a message part as too large for the transport (EMSGSIZE).
    /// Inbound parts above a receiver's `maxMessageSize` never reach the caller; libzmq drops
    /// the sending connection instead, so this case is not raised for them.
    case messageTooLarge
    /// The endpoint string is not one libzmq can bind or connect to (malformed address, unknown
    /// or unsupported transport, transport not compatible with the socket kind).
    case invalidEndpoint(String)
    /// A tcp endpoint whose port libzmq would not refuse but cannot mean what was asked: a number
    /// outside 0...65535 (libzmq keeps only its low 16 bits and would use another port), or `*`
    /// (any port) given to `connect`. `reason` says which.
    case invalidPort(endpoint: String, reason: String)

    /// The libzmq errno behind this error, if it came from libzmq.
    public var errno: Int32? {
        if case .zmq(let code, _) = self { return code }
        return nil
    }

    /// A one-line, human-readable account of the failure.
    public var description: String {
        switch self {
        case .zmq(let code, let operation):
            return "\(operation): \(zmqErrorText(code))"
        case .timeout:
            return "transport timed out (no peer ready to take the message)"
        case .closed:
            return "transport closed (socket closed or context terminated)"
        case .messageTooLarge:
            return "message part too large for the transport"
        case .invalidEndpoint(let endpoint):
            return "invalid endpoint \"\(endpoint)\" (expected e.g. tcp://127.0.0.1:5555, tcp://127.0.0.1:*, inproc://name)"
        case .invalidPort(let endpoint, let reason):
            return "invalid endpoint \"\(endpoint)\": \(reason)"
        }
    }
}

/// zmq_strerror covers both the system errnos and libzmq's own (ETERM, EFSM, EMTHREAD).
@inline(__always)
func zmqErrorText(_ code: Int32) -> String {
    String(cString: zmq_strerror(code))
}

/// The calling thread's libzmq errno (libzmq sets the C errno; zmq_errno reads it portably).
@inline(__always)
func lastZMQErrno() -> Int32 {
    zmq_errno()
}

/// Maps an errno to the error callers can act on; the few errnos with a dedicated case get it
/// so callers need not compare raw numbers.
func transportError(_ code: Int32, _ operation: @autoclosure () -> String) -> TransportError {
    switch code {
    case ETERM, ENOTSOCK:
        return .closed
    case EMSGSIZE:
        return .messageTooLarge
    default:
        return .zmq(errno: code, operation: operation())
    }
}

/// Monotonic milliseconds, for deadlines that must not move with the wall clock.
func monotonicMilliseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
}

/// CLOCK_MONOTONIC in seconds.
func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
