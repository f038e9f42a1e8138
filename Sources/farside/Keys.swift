import ArgumentParser
import Foundation
import Transport

/// `farside keys generate`: CurveZMQ key pairs for the coordinator and each expert node.
struct Keys: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "CurveZMQ keys for encrypted, authenticated links between the coordinator and its expert nodes.",
        subcommands: [Generate.self])

    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write NAME.key (the secret key, mode 0600) and NAME.pub (the public key) into a directory.",
            discussion: "The coordinator gets --secret-key-file coordinator.key and an --allowed-nodes-file that lists the nodes' .pub lines "
                + "(cat nodes/*.pub > allowed-nodes); each node gets --secret-key-file NAME.key and --coordinator-public-key coordinator.pub.")

        @Option(name: .long, help: "Directory to write the files into (created if missing).")
        var out: String = "."

        @Option(name: .long, help: "Name of the key pair: the file names and the comment in NAME.pub (letters, digits, '.', '_', '-').")
        var name: String

        @Flag(name: .long, help: "Replace existing files of that name.")
        var force = false

        func validate() throws {
            guard !name.isEmpty, name.count <= 100,
                  name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }), !name.hasPrefix(".") else {
                throw ValidationError("--name must be 1 to 100 letters, digits, '.', '_' or '-' (not starting with '.'), got '\(name)'")
            }
        }

        func run() throws {
            try runReportingErrors {
                let dir = URL(fileURLWithPath: out)
                try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
                let secret = dir.appendingPathComponent("\(name).key"), pub = dir.appendingPathComponent("\(name).pub")
                for f in [secret, pub] where FileManager.default.fileExists(atPath: f.path) && !force {
                    throw KeyFileError.exists(f.path)
                }
                let keys = try CurveKeyPair.generate()
                // The secret is created 0600 before anything is written into it.
                try writeFile(secret.path, "# Farside CurveZMQ secret key of \(name): keep it private\n\(keys.secretKey)\n", mode: 0o600)
                try writeFile(pub.path, "\(keys.publicKey) \(name)\n", mode: 0o644)
                print("wrote \(secret.path) and \(pub.path) (public key \(keys.publicKey))")
            }
        }

        func writeFile(_ path: String, _ text: String, mode: mode_t) throws {
            unlink(path)
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
            guard fd >= 0 else { throw KeyFileError.unwritable(path, String(cString: strerror(errno))) }
            defer { close(fd) }
            let bytes = Array(text.utf8)
            guard write(fd, bytes, bytes.count) == bytes.count else { throw KeyFileError.unwritable(path, String(cString: strerror(errno))) }
        }
    }
}

/// Why a key file could not be used.
enum KeyFileError: Error, CustomStringConvertible {
    case exists(String)
    case unwritable(String, String)
    case unreadable(String)
    case empty(String)
    case badLine(file: String, line: Int, problem: String)
    case notPrivate(String, mode: mode_t)

    var description: String {
        switch self {
        case .exists(let p): return "\(p) exists; give --force to replace it, or another --name"
        case let .unwritable(p, why): return "cannot write \(p): \(why)"
        case .unreadable(let p): return "cannot read the key file \(p)"
        case .empty(let p): return "\(p) holds no key"
        case let .badLine(file, line, problem): return "\(file):\(line): \(problem)"
        case let .notPrivate(p, mode): return "the secret key file \(p) can be read by others (mode \(String(mode & 0o777, radix: 8))); chmod 600 it"
        }
    }
}

/// Reading keys from the files `keys generate` writes: `#` comments and blank lines skipped, one
/// key per line, optionally followed by a name.
enum KeyFiles {
    static func lines(_ path: String) throws -> [(line: Int, key: String)] {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw KeyFileError.unreadable(path)
        }
        var out: [(Int, String)] = []
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            guard !line.isEmpty, !line.hasPrefix("#") else { continue }
            let key = String(line.split(separator: " ", maxSplits: 1)[0])
            do { try CurveKeyPair.check(key, what: "key") } catch { throw KeyFileError.badLine(file: path, line: i + 1, problem: "\(error)") }
            out.append((i + 1, key))
        }
        return out
    }

    /// The key pair of a secret key file, which must not be readable by group or others.
    static func secret(_ path: String) throws -> CurveKeyPair {
        var st = stat()
        guard stat(path, &st) == 0 else { throw KeyFileError.unreadable(path) }
        guard st.st_mode & 0o077 == 0 else { throw KeyFileError.notPrivate(path, mode: st.st_mode) }
        guard let first = try lines(path).first else { throw KeyFileError.empty(path) }
        return try CurveKeyPair(secretKey: first.key)
    }

    /// The public keys of an allowlist file (`cat nodes/*.pub > allowed-nodes`).
    static func allowlist(_ path: String) throws -> Set<String> {
        let keys = try lines(path).map(\.key)
        guard !keys.isEmpty else { throw KeyFileError.empty(path) }
        return Set(keys)
    }

    /// A public key given as its text or as the path of a `.pub` file.
    static func publicKey(_ textOrPath: String) throws -> String {
        if (try? CurveKeyPair.check(textOrPath, what: "key")) != nil { return textOrPath }
        guard let first = try lines(textOrPath).first else { throw KeyFileError.empty(textOrPath) }
        return first.key
    }
}

/// Says yes to the first occurrence of a key in each interval: log lines about something that
/// repeats every few milliseconds (a refused peer reconnecting) once a minute.
final class OncePerInterval: @unchecked Sendable {
    private let seconds: Double
    private let lock = NSLock()
    private var last: [String: Double] = [:]

    init(seconds: Double) { self.seconds = seconds }

    func first(_ key: String) -> Bool {
        let now = ProcessInfo.processInfo.systemUptime
        lock.lock()
        defer { lock.unlock() }
        if let t = last[key], now - t < seconds { return false }
        if last.count > 10_000 { last.removeAll() }  // bounded, whatever a scanner sends
        last[key] = now
        return true
    }
}
