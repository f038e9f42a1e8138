import CZeroMQ
import Foundation

/// A CurveZMQ key pair (RFC 26, CurveZMQ; Curve25519 via libsodium inside libzmq), both keys in
/// Z85 text: 40 characters each. The secret key never leaves its file or process.
public struct CurveKeyPair: Sendable, Equatable {
    public let publicKey: String
    public let secretKey: String

    /// A fresh random key pair.
    public static func generate() throws -> CurveKeyPair {
        var pub = [CChar](repeating: 0, count: 41), sec = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&pub, &sec) == 0 else { throw CurveError.unavailable }
        return CurveKeyPair(publicKey: String(cString: pub), secretKey: String(cString: sec))
    }

    /// The pair of a secret key (Z85); throws `CurveError.badKey` for anything that is not one.
    public init(secretKey: String) throws {
        try Self.check(secretKey, what: "secret key")
        var pub = [CChar](repeating: 0, count: 41)
        guard zmq_curve_public(&pub, secretKey) == 0 else { throw CurveError.badKey(what: "secret key", text: secretKey) }
        self.init(publicKey: String(cString: pub), secretKey: secretKey)
    }

    init(publicKey: String, secretKey: String) {
        self.publicKey = publicKey
        self.secretKey = secretKey
    }

    /// Throws unless `key` is 40 characters of Z85 (ZeroMQ's base-85 alphabet).
    public static func check(_ key: String, what: String) throws {
        let alphabet = Set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")
        guard key.count == 40, key.allSatisfy({ alphabet.contains($0) }) else {
            throw CurveError.badKey(what: what, text: key)
        }
    }

    /// The Z85 text of a 32-byte binary key (as ZAP requests carry it).
    public static func z85(_ binary: Data) -> String? {
        guard binary.count == 32 else { return nil }
        var out = [CChar](repeating: 0, count: 41)
        let ok = binary.withUnsafeBytes { b in zmq_z85_encode(&out, b.bindMemory(to: UInt8.self).baseAddress, 32) != nil }
        return ok ? String(cString: out) : nil
    }
}

/// Why CurveZMQ could not be set up.
public enum CurveError: Error, CustomStringConvertible, Equatable {
    case unavailable
    case badKey(what: String, text: String)
    case authenticatorRunning

    public var description: String {
        switch self {
        case .unavailable:
            return "this libzmq was built without CURVE security (libsodium); install Debian's libzmq5, or run with --insecure-links"
        case let .badKey(what, text):
            let shown = text.count > 48 ? String(text.prefix(48)) + "…" : text
            return "the \(what) '\(shown)' is not a CurveZMQ key (40 characters of Z85, as `farside keys generate` writes)"
        case .authenticatorRunning:
            return "a ZAP authenticator already runs in this ZeroMQ context"
        }
    }
}

extension ZMQSocket {
    /// Makes this socket the CURVE server of its connections (before bind/connect): peers must
    /// be CURVE clients that know `keys.publicKey`, and each one's public key is checked by the
    /// context's ZAP handler (`CurveAuthenticator`) under `domain`.
    public func makeCurveServer(_ keys: CurveKeyPair, domain: String = "farside") throws {
        try setInt32(ZMQ_CURVE_SERVER, 1, "ZMQ_CURVE_SERVER")
        try setBytes(ZMQ_CURVE_SECRETKEY, Data(keys.secretKey.utf8), "ZMQ_CURVE_SECRETKEY")
        try setBytes(ZMQ_ZAP_DOMAIN, Data(domain.utf8), "ZMQ_ZAP_DOMAIN")
    }

    /// Makes this socket a CURVE client (before bind/connect): it talks only to a CURVE server
    /// holding the secret of `serverKey`, and proves itself with `keys`. A bound client socket
    /// (an expert node's data endpoint) thereby accepts only that server's connections.
    public func makeCurveClient(_ keys: CurveKeyPair, serverKey: String) throws {
        try CurveKeyPair.check(serverKey, what: "coordinator's public key")
        try setBytes(ZMQ_CURVE_SERVERKEY, Data(serverKey.utf8), "ZMQ_CURVE_SERVERKEY")
        try setBytes(ZMQ_CURVE_PUBLICKEY, Data(keys.publicKey.utf8), "ZMQ_CURVE_PUBLICKEY")
        try setBytes(ZMQ_CURVE_SECRETKEY, Data(keys.secretKey.utf8), "ZMQ_CURVE_SECRETKEY")
    }
}

/// The ZAP handler (ZeroMQ RFC 27) of a context: every CURVE handshake on a server socket of
/// that context asks it, and only public keys on the allowlist get through. Without a handler,
/// libzmq would accept any client key. One per context; runs on its own thread until `stop()`.
public final class CurveAuthenticator: @unchecked Sendable {
    private let socket: ZMQSocket
    private let lock = NSLock()
    private var allowed: Set<String>
    private var running = true
    private var thread: Thread?
    /// Called (on the handler's thread) for every refused handshake: the peer's address and key.
    private let onRefusal: @Sendable (_ address: String, _ publicKey: String) -> Void

    /// Binds the context's ZAP endpoint and starts answering; `allowed` are Z85 public keys.
    public init(context: ZMQContext = .shared, allowed: Set<String>,
                onRefusal: @escaping @Sendable (String, String) -> Void = { _, _ in }) throws {
        for k in allowed { try CurveKeyPair.check(k, what: "allowed node key") }
        self.allowed = allowed
        self.onRefusal = onRefusal
        socket = try ZMQSocket(context: context, kind: .rep)
        do {
            _ = try socket.bind("inproc://zeromq.zap.01")
        } catch {
            throw CurveError.authenticatorRunning
        }
        let t = Thread { [self] in serve() }
        t.name = "farside-zap"
        thread = t
        t.start()
    }

    /// Lets `key` (Z85) in from now on (local nodes get fresh keys at start).
    public func allow(_ key: String) {
        lock.lock()
        allowed.insert(key)
        lock.unlock()
    }

    /// Whether `key` is on the allowlist.
    public func isAllowed(_ key: String) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        return allowed.contains(key)
    }

    /// Stops answering (within 200 ms); handshakes after that fail.
    public func stop() {
        lock.lock()
        running = false
        lock.unlock()
    }

    private func serve() {
        while true {
            lock.lock()
            let go = running
            lock.unlock()
            guard go else { break }
            guard let frames = try? socket.receive(timeout: 200) else { continue }
            // RFC 27: version, request id, domain, address, identity, mechanism, credentials.
            guard frames.count >= 6 else { continue }
            let version = frames[0].data, requestID = frames[1].data
            let address = frames[3].string, mechanism = frames[5].string
            var status = "400", text = "refused", user = ""
            if mechanism == "CURVE", frames.count >= 7, let key = CurveKeyPair.z85(frames[6].data) {
                if isAllowed(key) {
                    status = "200"
                    text = "OK"
                    user = key
                } else {
                    onRefusal(address, key)
                }
            } else {
                onRefusal(address, "(\(mechanism) without a CURVE key)")
            }
            try? socket.send([.data(version), .data(requestID), .data(Data(status.utf8)), .data(Data(text.utf8)),
                              .data(Data(user.utf8)), .data(Data())])
        }
        socket.close()
    }
}
