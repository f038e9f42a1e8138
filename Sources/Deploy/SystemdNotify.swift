#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// systemd's readiness protocol (`sd_notify(3)`, "Type=notify"), spoken directly: one datagram
/// of `KEY=VALUE` lines per call to the `AF_UNIX` socket named by `$NOTIFY_SOCKET` (a path, or an
/// abstract name written with a leading `@`). No libsystemd is needed, and without the variable
/// (not started by systemd) every call does nothing.
///
/// The watchdog interval is systemd's `$WATCHDOG_USEC` (set from the unit's `WatchdogSec=`) when
/// `$WATCHDOG_PID` is unset or names this process; callers ping at half of it.
public final class SystemdNotify: @unchecked Sendable {
    /// The socket address, or nil when not run under a notify-type unit.
    private let address: sockaddr_un?
    private let addressLength: socklen_t
    private let fd: Int32
    private let lock = NSLock()
    /// How often systemd expects `WATCHDOG=1`, or nil when the unit has no `WatchdogSec=`.
    public let watchdogInterval: Double?

    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from `environment`.
    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        if let usec = environment["WATCHDOG_USEC"].flatMap(UInt64.init), usec > 0,
           environment["WATCHDOG_PID"].flatMap(Int32.init).map({ $0 == getpid() }) ?? true {
            watchdogInterval = Double(usec) / 1e6
        } else {
            watchdogInterval = nil
        }
        guard let name = environment["NOTIFY_SOCKET"], let (addr, len) = Self.address(name) else {
            address = nil
            addressLength = 0
            fd = -1
            return
        }
        #if os(Linux)
        let s = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        #else
        let s = socket(AF_UNIX, SOCK_DGRAM, 0)
        #endif
        fd = s
        address = s >= 0 ? addr : nil
        addressLength = len
    }

    deinit { if fd >= 0 { close(fd) } }

    /// Whether a notify socket was given (the process runs under a `Type=notify` unit).
    public var isActive: Bool { address != nil }

    /// The `sockaddr_un` for a `$NOTIFY_SOCKET` value: an absolute path, or `@name` for Linux's
    /// abstract namespace (leading NUL, length without a terminator). Nil for anything else or a
    /// name longer than `sun_path`.
    static func address(_ name: String) -> (sockaddr_un, socklen_t)? {
        var bytes = Array(name.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        guard abstract || bytes.first == UInt8(ascii: "/") else { return nil }
        if abstract { bytes[0] = 0 }
        var addr = sockaddr_un()
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        // A path needs its terminating NUL inside sun_path; an abstract name does not.
        guard bytes.count + (abstract ? 0 : 1) <= capacity, bytes.count > 1 else { return nil }
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            p.copyBytes(from: bytes)
        }
        let offset = MemoryLayout<sockaddr_un>.offset(of: \.sun_path)!
        return (addr, socklen_t(offset + bytes.count + (abstract ? 0 : 1)))
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines, e.g. `"READY=1\nSTATUS=serving"`).
    /// Returns false when there is no socket or the datagram could not be sent: systemd going
    /// away must never stop the service, so failures are not errors.
    @discardableResult
    public func send(_ state: String) -> Bool {
        guard var addr = address else { return false }
        let bytes = Array(state.utf8)
        lock.lock()
        defer { lock.unlock() }
        let sent = withUnsafePointer(to: &addr) { a in
            a.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bytes.withUnsafeBytes { b in
                    sendto(fd, b.baseAddress, b.count, Int32(MSG_NOSIGNAL), sa, addressLength)
                }
            }
        }
        return sent == bytes.count
    }

    /// `READY=1` with a status line.
    public func ready(status: String) { send("READY=1\nSTATUS=\(Self.oneLine(status))\nMAINPID=\(getpid())") }

    /// A `STATUS=` line for `systemctl status`.
    public func status(_ text: String) { send("STATUS=\(Self.oneLine(text))") }

    /// `STOPPING=1`: the service begins its shutdown (and drains).
    public func stopping(status: String) { send("STOPPING=1\nSTATUS=\(Self.oneLine(status))") }

    /// `WATCHDOG=1`: the service is alive.
    public func watchdog() { send("WATCHDOG=1") }

    /// Status text is one line: a newline would start another assignment.
    static func oneLine(_ s: String) -> String {
        String(s.map { $0.isNewline ? " " : $0 })
    }
}
