import Foundation
import CZeroMQ

/// One part of a multipart message.
///
/// Outbound, a frame is either bytes the caller owns (`data`, `bytes`, copied once into libzmq
/// when sent) or a zero-copy view of memory that an object owns (`noCopy`), which libzmq reads
/// in place. Inbound, every part arrives as `received`, a view of libzmq's own buffer; read it
/// through `withUnsafeBytes` to avoid copying, or take `data` / `bytes` for a copy. A received
/// frame can be sent on again (e.g. a ROUTER's routing-id frame) without copying its bytes.
public enum Frame {
    /// Bytes copied into a libzmq message when sent.
    case data(Data)
    /// Bytes copied into a libzmq message when sent.
    case bytes([UInt8])
    /// `count` bytes at `pointer`, sent without copying.
    ///
    /// libzmq keeps reading the memory after `send` returns (an I/O thread writes it to the
    /// socket later, or an inproc peer receives the very same memory). `owner` is retained until
    /// libzmq is done with the bytes and released from whichever thread finishes with them
    /// (an I/O thread, or the thread that drops the inproc receiver's frame). Until that release:
    /// `owner` must keep the memory alive and nobody may modify it. A failed send releases the
    /// owner before `send` throws.
    case noCopy(pointer: UnsafeRawPointer, count: Int, owner: AnyObject)
    /// A part received from a socket: libzmq's buffer, not copied.
    case received(ReceivedFrame)

    /// A frame with no bytes (e.g. the delimiter REQ/REP envelopes use).
    public static let empty = Frame.bytes([])

    /// The UTF-8 bytes of `string`.
    public init(_ string: String) {
        self = .data(Data(string.utf8))
    }

    /// The number of bytes in the frame.
    public var count: Int {
        switch self {
        case .data(let d): return d.count
        case .bytes(let b): return b.count
        case .noCopy(_, let count, _): return count
        case .received(let r): return r.count
        }
    }

    /// Calls `body` with the frame's bytes in place (no copy for `noCopy` and `received`).
    /// The buffer is valid only during the call and may be unaligned.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        switch self {
        case .data(let d):
            return try d.withUnsafeBytes(body)
        case .bytes(let b):
            return try b.withUnsafeBytes(body)
        case .noCopy(let pointer, let count, let owner):
            return try withExtendedLifetime(owner) {
                try body(UnsafeRawBufferPointer(start: pointer, count: count))
            }
        case .received(let r):
            return try r.withUnsafeBytes(body)
        }
    }

    /// The frame's bytes as `Data` (a copy unless the frame already is `.data`).
    public var data: Data {
        if case .data(let d) = self { return d }
        return withUnsafeBytes { Data($0) }
    }

    /// The frame's bytes as an array (a copy unless the frame already is `.bytes`).
    public var bytes: [UInt8] {
        if case .bytes(let b) = self { return b }
        return withUnsafeBytes { Array($0) }
    }

    /// The frame's bytes decoded as UTF-8 (invalid sequences repaired), for text frames.
    public var string: String {
        withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
    }

    /// Fills `message` (uninitialised) with this frame's bytes; on failure `message` is left
    /// uninitialised and, for `noCopy`, the owner already released.
    func initialize(_ message: UnsafeMutablePointer<zmq_msg_t>) throws {
        switch self {
        case .data, .bytes:
            try withUnsafeBytes { src in
                guard zmq_msg_init_size(message, src.count) == 0 else {
                    throw transportError(lastZMQErrno(), "zmq_msg_init_size \(src.count)")
                }
                if src.count > 0 {
                    zmq_msg_data(message).copyMemory(from: src.baseAddress!, byteCount: src.count)
                }
            }
        case .noCopy(let pointer, let count, let owner):
            precondition(count >= 0, "Frame.noCopy with negative count \(count)")
            let hint = Unmanaged.passRetained(owner as AnyObject).toOpaque()
            guard zmq_msg_init_data(message, UnsafeMutableRawPointer(mutating: pointer), count,
                                    releaseNoCopyOwner, hint) == 0 else {
                // libzmq never calls the free function when init_data fails.
                let code = lastZMQErrno()
                Unmanaged<AnyObject>.fromOpaque(hint).release()
                throw transportError(code, "zmq_msg_init_data \(count)")
            }
        case .received(let r):
            // zmq_msg_copy shares the buffer (reference count) for large parts and copies the
            // small ones libzmq stores inline; the received frame stays readable either way.
            guard zmq_msg_init(message) == 0 else {
                throw transportError(lastZMQErrno(), "zmq_msg_init")
            }
            guard zmq_msg_copy(message, r.message) == 0 else {
                let code = lastZMQErrno()
                zmq_msg_close(message)
                throw transportError(code, "zmq_msg_copy")
            }
        }
    }
}

/// libzmq's free callback for `Frame.noCopy`: drops the retain taken when the message was built.
/// A C function pointer, so it may capture nothing; the owner travels in `hint`.
private let releaseNoCopyOwner: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutableRawPointer?) -> Void = { _, hint in
    if let hint { Unmanaged<AnyObject>.fromOpaque(hint).release() }
}

/// A message part received from a socket, owning libzmq's message and its buffer.
///
/// Reading through `withUnsafeBytes` costs no copy beyond the one libzmq made from the kernel.
/// The bytes are immutable, so a received frame may be read from any thread. Hold frames only as
/// long as needed: a small part may share (and pin) libzmq's 8 KB receive buffer with its
/// neighbours. The buffer's address has no particular alignment; load multi-byte values with
/// `loadUnaligned` or copy into aligned storage.
public final class ReceivedFrame: @unchecked Sendable {
    /// The libzmq message; heap-allocated because libzmq needs a stable address for its lifetime.
    let message: UnsafeMutablePointer<zmq_msg_t>

    /// Takes over an initialised message that holds received bytes.
    init(adopting message: UnsafeMutablePointer<zmq_msg_t>) {
        self.message = message
    }

    deinit {
        zmq_msg_close(message)
        message.deallocate()
    }

    /// The number of bytes in the part.
    public var count: Int {
        zmq_msg_size(message)
    }

    /// Calls `body` with the part's bytes in place. The buffer is valid only during the call.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withExtendedLifetime(self) {
            try body(UnsafeRawBufferPointer(start: zmq_msg_data(message), count: zmq_msg_size(message)))
        }
    }

    /// The part's bytes, copied.
    public var data: Data {
        withUnsafeBytes { Data($0) }
    }

    /// The part's bytes, copied.
    public var bytes: [UInt8] {
        withUnsafeBytes { Array($0) }
    }

    /// The start of the part's bytes, valid while this object is alive; for handing the buffer
    /// to code that keeps the frame alive itself (e.g. as the owner of a `Frame.noCopy`).
    public var baseAddress: UnsafeRawPointer {
        UnsafeRawPointer(zmq_msg_data(message))
    }
}
