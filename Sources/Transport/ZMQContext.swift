import Foundation
import CZeroMQ

/// A libzmq context: the I/O threads and the registry of sockets created from it.
///
/// A context is thread-safe; share one per process (`shared`) unless a component needs its own
/// I/O threads or its own shutdown. Every socket keeps its context alive, so a context is only
/// destroyed after all of its sockets are gone; `deinit` then terminates it without blocking
/// (sockets made here default to linger 0; a socket given a longer linger delays it by at most
/// that long).
public final class ZMQContext: @unchecked Sendable {
    /// The process-wide context with one I/O thread. It is never terminated, so it is safe to use
    /// from anywhere for the life of the process.
    public static let shared: ZMQContext = {
        do {
            return try ZMQContext()
        } catch {
            // zmq_ctx_new only fails when the process is out of memory or file descriptors;
            // nothing transport-related can work then.
            fatalError("cannot create the shared ZeroMQ context: \(error)")
        }
    }()

    /// libzmq's context handle; valid until `terminate()` has run.
    private let handle: UnsafeMutableRawPointer
    /// Guards `state`, so socket creation never races termination (a socket created on a
    /// terminated context would use freed memory).
    private let lock = NSLock()
    private var state: State = .open

    private enum State { case open, shutDown, terminated }

    /// Creates a context with `ioThreads` I/O threads (libzmq's rule of thumb: one per gigabyte
    /// per second of traffic; more only help when several connections are busy at once).
    public init(ioThreads: Int = 1) throws {
        guard let h = zmq_ctx_new() else {
            throw transportError(lastZMQErrno(), "zmq_ctx_new")
        }
        if ioThreads != 1 {
            guard zmq_ctx_set(h, ZMQ_IO_THREADS, Int32(clamping: ioThreads)) == 0 else {
                let code = lastZMQErrno()
                zmq_ctx_term(h)
                throw transportError(code, "zmq_ctx_set ZMQ_IO_THREADS=\(ioThreads)")
            }
        }
        handle = h
    }

    deinit {
        // Reaching deinit means no ZMQSocket refers to this context any more, so every libzmq
        // socket is closed and zmq_ctx_term cannot wait on an open one.
        if state != .terminated { terminateHandle() }
    }

    /// Makes every blocking call on this context's sockets return `TransportError.closed` and
    /// refuses new sockets, without waiting. Use it to wake threads blocked in `receive` before
    /// they close their sockets. Idempotent.
    public func shutdown() {
        lock.lock()
        defer { lock.unlock() }
        guard state == .open else { return }
        state = .shutDown
        zmq_ctx_shutdown(handle)
    }

    /// Shuts the context down (as `shutdown()`) and then blocks until every socket created from
    /// it has been closed and its lingering messages are sent or dropped. Call it only when the
    /// other threads will close their sockets; calling it while this thread still holds an open
    /// socket deadlocks. Idempotent. Never call it on `shared`.
    public func terminate() {
        lock.lock()
        guard state != .terminated else {
            lock.unlock()
            return
        }
        state = .terminated
        lock.unlock()
        // Outside the lock: termination waits for other threads to close sockets, and they may
        // need the lock meanwhile (a socket creation attempt that should simply fail).
        terminateHandle()
    }

    private func terminateHandle() {
        while zmq_ctx_term(handle) != 0 && lastZMQErrno() == EINTR {}
    }

    /// Creates a libzmq socket under the lock so termination cannot interleave.
    func makeSocket(type: Int32) throws -> UnsafeMutableRawPointer {
        lock.lock()
        defer { lock.unlock() }
        guard state == .open else { throw TransportError.closed }
        guard let socket = zmq_socket(handle, type) else {
            throw transportError(lastZMQErrno(), "zmq_socket")
        }
        return socket
    }

    /// The linked libzmq version, e.g. (4, 3, 4).
    public static var libraryVersion: (major: Int, minor: Int, patch: Int) {
        var major: Int32 = 0, minor: Int32 = 0, patch: Int32 = 0
        zmq_version(&major, &minor, &patch)
        return (Int(major), Int(minor), Int(patch))
    }

    /// Whether the linked libzmq supports CURVE encryption (libsodium build).
    public static var hasCurve: Bool {
        zmq_has("curve") != 0
    }
}
