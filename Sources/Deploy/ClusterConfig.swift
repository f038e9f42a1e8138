import Foundation
import Yams

/// Why a cluster config file was refused. Every case names the file, and where it can the line
/// and the key, so the operator knows what to change.
public enum ConfigError: Error, CustomStringConvertible, Equatable {
    case unreadable(file: String, reason: String)
    case syntax(file: String, line: Int, column: Int, problem: String)
    case notMapping(file: String, line: Int, key: String)
    case unknownKey(file: String, line: Int, key: String, known: [String])
    case wrongType(file: String, line: Int, key: String, expected: String, got: String)
    case missingSection(file: String, section: String)
    case missingModel(file: String, line: Int, key: String, path: String)
    case invalidValue(file: String, line: Int, key: String, problem: String)

    public var description: String {
        switch self {
        case let .unreadable(file, reason):
            return "\(file): cannot read the config file: \(reason)"
        case let .syntax(file, line, column, problem):
            return "\(file):\(line):\(column): not valid YAML: \(problem)"
        case let .notMapping(file, line, key):
            return "\(file):\(line): \(key.isEmpty ? "the file" : "'\(key)'") must be a mapping of keys to values"
        case let .unknownKey(file, line, key, known):
            return "\(file):\(line): unknown key '\(key)' (known here: \(known.joined(separator: ", ")))"
        case let .wrongType(file, line, key, expected, got):
            return "\(file):\(line): '\(key)' must be \(expected), got \(got)"
        case let .missingSection(file, section):
            return "\(file): no '\(section):' section (the file needs it for this command)"
        case let .missingModel(file, line, key, path):
            return "\(file):\(line): '\(key)': model '\(path)' does not exist"
        case let .invalidValue(file, line, key, problem):
            return "\(file):\(line): '\(key)': \(problem)"
        }
    }
}

/// The cluster config file (YAML): one file per host, with a `coordinator:` section for
/// `farside serve` and/or a `node:` section for `farside expert`. Each key stands for one
/// command-line flag; flags given on the command line override the file (they are parsed after
/// the file's). `deploy/farside.yaml` is the annotated example.
public enum ClusterConfig {
    /// What a key's value must be.
    public enum Kind: Sendable {
        case text, integer, number, size, endpoint, path, model
        /// A boolean: `true` gives `flag`, `false` gives `off` (nil: nothing, the default).
        case flag(off: String?)
        /// One of a fixed set of words.
        case choice([String])

        var expected: String {
            switch self {
            case .text, .path, .model: return "a string"
            case .integer: return "an integer"
            case .number: return "a number"
            case .size: return "a size such as 4GiB or 512MiB"
            case .endpoint: return "a ZeroMQ endpoint such as tcp://10.0.0.1:5500"
            case .flag: return "true or false"
            case .choice(let words): return "one of \(words.joined(separator: ", "))"
            }
        }
    }

    /// One key: its dotted path inside the section, the flag it becomes, what it holds.
    public struct Key: Sendable {
        public let path: String
        public let flag: String
        public let kind: Kind
    }

    /// The sections and the command each configures.
    public enum Section: String, CaseIterable, Sendable {
        case coordinator, node

        /// The subcommand the section's flags are for.
        public var command: String { self == .coordinator ? "serve" : "expert" }

        public var keys: [Key] {
            switch self {
            case .coordinator: return ClusterConfig.coordinatorKeys
            case .node: return ClusterConfig.nodeKeys
            }
        }
    }

    // The one visible table of what a config file may say, section by section.
    static let coordinatorKeys: [Key] = [
        Key(path: "model", flag: "--model", kind: .model),
        Key(path: "served_model_name", flag: "--served-model-name", kind: .text),
        Key(path: "chat_template", flag: "--chat-template", kind: .path),
        Key(path: "threads", flag: "--threads", kind: .integer),
        Key(path: "http.host", flag: "--host", kind: .text),
        Key(path: "http.port", flag: "--port", kind: .integer),
        Key(path: "http.api_key_file", flag: "--api-key-file", kind: .path),
        Key(path: "http.max_body_bytes", flag: "--max-body-bytes", kind: .integer),
        Key(path: "http.drain_timeout", flag: "--drain-timeout", kind: .number),
        Key(path: "nodes.listen", flag: "--node-listen", kind: .endpoint),
        Key(path: "nodes.expect", flag: "--nodes", kind: .integer),
        Key(path: "nodes.local", flag: "--local-nodes", kind: .integer),
        Key(path: "nodes.timeout", flag: "--node-timeout", kind: .number),
        Key(path: "nodes.split_dense", flag: "--split-dense", kind: .integer),
        Key(path: "batching.max_batch_tokens", flag: "--max-batch-tokens", kind: .integer),
        Key(path: "batching.max_seqs", flag: "--max-seqs", kind: .integer),
        Key(path: "batching.max_waiting", flag: "--max-waiting", kind: .integer),
        Key(path: "batching.default_max_tokens", flag: "--default-max-tokens", kind: .integer),
        Key(path: "kv.block_size", flag: "--kv-block-size", kind: .integer),
        Key(path: "kv.budget", flag: "--kv-budget", kind: .size),
        Key(path: "kv.prefix_cache", flag: "--prefix-cache", kind: .flag(off: "--no-prefix-cache")),
        Key(path: "kv.dtype", flag: "--kv-dtype", kind: .choice(["f32", "f16", "bf16", "q8_0"])),
        Key(path: "kv.disk", flag: "--kv-disk", kind: .path),
        Key(path: "kv.disk_budget", flag: "--kv-disk-budget", kind: .size),
        Key(path: "placement", flag: "--placement", kind: .text),
        Key(path: "redundant_experts", flag: "--redundant-experts", kind: .integer),
        Key(path: "rebalance_every", flag: "--rebalance-every", kind: .number),
        Key(path: "keys.secret_key_file", flag: "--secret-key-file", kind: .path),
        Key(path: "keys.allowed_nodes_file", flag: "--allowed-nodes-file", kind: .path),
        Key(path: "keys.insecure_links", flag: "--insecure-links", kind: .flag(off: nil)),
    ]

    static let nodeKeys: [Key] = [
        Key(path: "id", flag: "--node-id", kind: .text),
        Key(path: "model", flag: "--model", kind: .model),
        Key(path: "stream_weights", flag: "--stream-weights", kind: .flag(off: nil)),
        Key(path: "listen", flag: "--listen", kind: .endpoint),
        Key(path: "advertise", flag: "--advertise", kind: .endpoint),
        Key(path: "coordinator", flag: "--coordinator", kind: .endpoint),
        Key(path: "memory_budget", flag: "--memory-budget", kind: .size),
        Key(path: "threads", flag: "--threads", kind: .integer),
        Key(path: "coordinator_timeout", flag: "--coordinator-timeout", kind: .number),
        Key(path: "power.device", flag: "--power-device", kind: .text),
        Key(path: "power.idle_watts", flag: "--idle-watts", kind: .number),
        Key(path: "power.busy_watts", flag: "--busy-watts", kind: .number),
        Key(path: "power.hardware_class", flag: "--hardware-class", kind: .text),
        Key(path: "power.memory_bandwidth_gbs", flag: "--memory-bandwidth-gbs", kind: .number),
        Key(path: "power.price_per_kwh", flag: "--price-per-kwh", kind: .number),
        Key(path: "power.carbon_per_kwh", flag: "--carbon-per-kwh", kind: .number),
        Key(path: "power.pue", flag: "--pue", kind: .number),
        Key(path: "keys.secret_key_file", flag: "--secret-key-file", kind: .path),
        Key(path: "keys.coordinator_public_key", flag: "--coordinator-public-key", kind: .text),
        Key(path: "keys.insecure_links", flag: "--insecure-links", kind: .flag(off: nil)),
    ]

    /// One flag made from the file, and where it came from (to name the key and line when the
    /// command then rejects its value).
    public struct Argument: Equatable, Sendable {
        public let argument: String
        public let flag: String
        public let key: String
        public let line: Int
    }

    /// The parsed file: which sections it has and their flags.
    public struct File: Sendable {
        public let path: String
        public let sections: [Section: [Argument]]
    }

    /// Reads and checks `path`: YAML syntax, known keys only, each value of its key's type, the
    /// model paths existing. Values are checked against the command's own ranges later, when the
    /// flags are parsed (`farside config check` does both).
    public static func load(_ path: String) throws -> File {
        let text: String
        do {
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            guard let s = String(data: data, encoding: .utf8) else {
                throw ConfigError.unreadable(file: path, reason: "not UTF-8 text")
            }
            text = s
        } catch let e as ConfigError {
            throw e
        } catch {
            throw ConfigError.unreadable(file: path, reason: (error as NSError).localizedDescription)
        }
        return try parse(text, file: path)
    }

    /// As `load`, on text already read (`file` names it in messages).
    public static func parse(_ text: String, file: String) throws -> File {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let e as YamlError {
            throw syntaxError(e, file: file)
        } catch {
            throw ConfigError.syntax(file: file, line: 1, column: 1, problem: "\(error)")
        }
        guard let root else { return File(path: file, sections: [:]) }  // an empty file
        guard case .mapping(let top) = root else { throw ConfigError.notMapping(file: file, line: root.mark?.line ?? 1, key: "") }
        var sections: [Section: [Argument]] = [:]
        for (k, v) in top {
            let name = k.string ?? ""
            guard let section = Section(rawValue: name) else {
                throw ConfigError.unknownKey(file: file, line: k.mark?.line ?? 1, key: name, known: Section.allCases.map(\.rawValue))
            }
            var args: [Argument] = []
            try flatten(v, prefix: "", section: section, file: file, into: &args)
            sections[section] = args
        }
        return File(path: file, sections: sections)
    }

    /// The flags of `section`, or `missingSection`.
    public static func arguments(_ file: File, section: Section) throws -> [Argument] {
        guard let args = file.sections[section] else { throw ConfigError.missingSection(file: file.path, section: section.rawValue) }
        return args
    }

    static func flatten(_ node: Node, prefix: String, section: Section, file: String, into args: inout [Argument]) throws {
        let where_ = prefix.isEmpty ? section.rawValue : "\(section.rawValue).\(prefix)"
        guard case .mapping(let m) = node else {
            if case .scalar(let s) = node, isNull(s) { return }  // an empty section
            throw ConfigError.notMapping(file: file, line: node.mark?.line ?? 1, key: where_)
        }
        let keys = section.keys
        for (k, v) in m {
            let name = k.string ?? ""
            let path = prefix.isEmpty ? name : "\(prefix).\(name)"
            let line = k.mark?.line ?? 1
            let full = "\(section.rawValue).\(path)"
            if let key = keys.first(where: { $0.path == path }) {
                if let a = try argument(key, value: v, full: full, line: line, file: file) { args.append(a) }
            } else if keys.contains(where: { $0.path.hasPrefix(path + ".") }) {
                try flatten(v, prefix: path, section: section, file: file, into: &args)
            } else {
                let known = Set(keys.compactMap { key -> String? in
                    guard prefix.isEmpty || key.path.hasPrefix(prefix + ".") else { return nil }
                    let rest = prefix.isEmpty ? key.path : String(key.path.dropFirst(prefix.count + 1))
                    return String(rest.split(separator: ".")[0])
                }).sorted()
                throw ConfigError.unknownKey(file: file, line: line, key: full, known: known)
            }
        }
    }

    static func argument(_ key: Key, value: Node, full: String, line: Int, file: String) throws -> Argument? {
        guard case .scalar(let s) = value else {
            throw ConfigError.wrongType(file: file, line: line, key: full, expected: key.kind.expected, got: { if case .mapping = value { return "a mapping" } else { return "a list" } }())
        }
        if isNull(s) { return nil }  // unset: the default
        let text = s.string
        func wrong() -> ConfigError { .wrongType(file: file, line: line, key: full, expected: key.kind.expected, got: "'\(text)'") }
        let quoted = s.style != .plain
        let arg: String
        switch key.kind {
        case .text, .path:
            arg = "\(key.flag)=\(text)"
        case .model:
            guard FileManager.default.fileExists(atPath: text) else {
                throw ConfigError.missingModel(file: file, line: line, key: full, path: text)
            }
            arg = "\(key.flag)=\(text)"
        case .integer:
            guard !quoted, Int(text) != nil else { throw wrong() }
            arg = "\(key.flag)=\(text)"
        case .number:
            guard !quoted, let d = Double(text), d.isFinite else { throw wrong() }
            arg = "\(key.flag)=\(text)"
        case .size:
            guard text.first.map({ $0.isNumber }) == true else { throw wrong() }
            arg = "\(key.flag)=\(text)"
        case .endpoint:
            guard text.hasPrefix("tcp://") || text.hasPrefix("ipc://") else { throw wrong() }
            arg = "\(key.flag)=\(text)"
        case .flag(let off):
            guard !quoted, let b = Node.scalar(s).bool else { throw wrong() }
            if b { arg = key.flag } else if let off { arg = off } else { return nil }
        case .choice(let words):
            guard words.contains(text) else { throw wrong() }
            arg = "\(key.flag)=\(text)"
        }
        return Argument(argument: arg, flag: key.flag, key: full, line: line)
    }

    /// YAML's null: `~`, `null`, or nothing, unquoted.
    static func isNull(_ s: Node.Scalar) -> Bool {
        s.style == .plain && ["", "~", "null", "Null", "NULL"].contains(s.string)
    }

    static func syntaxError(_ e: YamlError, file: String) -> ConfigError {
        switch e {
        case let .scanner(context, problem, mark, _), let .parser(context, problem, mark, _):
            let what = context.map { "\($0.text) (from line \($0.mark.line)): \(problem)" } ?? problem
            return .syntax(file: file, line: mark.line, column: mark.column, problem: what)
        case let .composer(context, problem, mark, _):
            let what = context.map { "\($0.text) (from line \($0.mark.line)): \(problem)" } ?? problem
            return .syntax(file: file, line: mark.line, column: mark.column, problem: what)
        case let .duplicatedKeysInMapping(duplicates, context):
            return .syntax(file: file, line: context.mark.line, column: context.mark.column,
                           problem: "the key '\(duplicates.joined(separator: "', '"))' appears twice in one mapping")
        default:
            return .syntax(file: file, line: 1, column: 1, problem: "\(e)")
        }
    }

    /// Where a flag the command rejected came from: the argument whose flag the message names.
    public static func origin(of message: String, in args: [Argument]) -> Argument? {
        args.first { a in
            let off: String? = a.argument.hasPrefix("--no-") ? a.argument : nil
            return message.contains(a.flag + " ") || message.contains(a.flag + ":") || message.contains(a.flag + "'")
                || message.hasSuffix(a.flag) || (off.map { message.contains($0) } ?? false)
        }
    }
}
