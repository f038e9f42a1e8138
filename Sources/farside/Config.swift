import ArgumentParser
import Deploy
import Foundation

/// `farside config check FILE`: what `serve --config` and `expert --config` would refuse.
struct Config: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Work with cluster config files (YAML: a 'coordinator:' section for serve, a 'node:' section for expert).",
        subcommands: [Check.self])

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check a cluster config file: YAML syntax, known keys, value types and ranges, model paths. Exits 1 naming the key and line of the first problem.")

        @Argument(help: "The config file.")
        var file: String

        func run() throws {
            do {
                let parsed = try ClusterConfig.load(file)
                guard !parsed.sections.isEmpty else {
                    throw ConfigError.missingSection(file: file, section: "coordinator' or 'node")
                }
                for section in ClusterConfig.Section.allCases where parsed.sections[section] != nil {
                    _ = try ConfigFlags.validated(parsed, section: section)
                }
                let names = ClusterConfig.Section.allCases.filter { parsed.sections[$0] != nil }.map(\.rawValue)
                print("\(file): ok (\(names.joined(separator: ", ")))")
            } catch {
                FileHandle.standardError.write(Data("error: \(error)\n".utf8))
                throw ExitCode(1)
            }
        }
    }
}

/// How `--config FILE` becomes flags: the file's section is turned into arguments placed before
/// the command line's own, so that a flag given on the command line overrides the file (the
/// last value of an option wins).
enum ConfigFlags {
    /// `arguments` (without the program name) with `--config FILE` of `serve` or `expert`
    /// replaced by the file's flags; unchanged for other commands or without `--config`.
    /// Throws `ConfigError` naming the file, line and key of what is wrong.
    static func expand(_ arguments: [String]) throws -> [String] {
        guard let command = arguments.first,
              let section = ClusterConfig.Section.allCases.first(where: { $0.command == command }) else { return arguments }
        var rest = Array(arguments.dropFirst())
        var file: String?
        if let i = rest.firstIndex(of: "--config"), i + 1 < rest.count {
            file = rest[i + 1]
            rest.removeSubrange(i...(i + 1))
        } else if let i = rest.firstIndex(where: { $0.hasPrefix("--config=") }) {
            file = String(rest[i].dropFirst("--config=".count))
            rest.remove(at: i)
        }
        guard let file else { return arguments }
        let parsed = try ClusterConfig.load(file)
        let args = try ClusterConfig.arguments(parsed, section: section)
        let combined = args.map(\.argument) + rest
        // A value the command rejects that came from the file (and is not overridden on the
        // command line) is reported at its key and line; anything else the command reports.
        if !rest.contains(where: { ["--help", "-h", "--version"].contains($0) }),
           let message = rejection(section, combined),
           let origin = ClusterConfig.origin(of: message, in: args),
           !rest.contains(where: { $0 == origin.flag || $0.hasPrefix(origin.flag + "=") }) {
            throw ConfigError.invalidValue(file: parsed.path, line: origin.line, key: origin.key, problem: message)
        }
        return [command] + combined
    }

    /// What the section's command says about `arguments`, or nil when it accepts them.
    static func rejection(_ section: ClusterConfig.Section, _ arguments: [String]) -> String? {
        do {
            switch section {
            case .coordinator: _ = try Serve.parse(arguments)
            case .node: _ = try Expert.parse(arguments)
            }
            return nil
        } catch {
            return section == .coordinator ? Serve.message(for: error) : Expert.message(for: error)
        }
    }

    /// The section's flags, parsed by its command as on a command line (so its ranges apply);
    /// a value the command rejects becomes `ConfigError.invalidValue` at the key's line.
    static func validated(_ file: ClusterConfig.File, section: ClusterConfig.Section) throws -> [ClusterConfig.Argument] {
        let args = try ClusterConfig.arguments(file, section: section)
        var list = args.map(\.argument)
        if section == .node {
            // expert's --listen and --coordinator are required on the command line; the file
            // may leave them to it, so stand-ins fill the gaps for the check.
            if !args.contains(where: { $0.flag == "--listen" }) { list.append("--listen=tcp://127.0.0.1:*") }
            if !args.contains(where: { $0.flag == "--coordinator" }) { list.append("--coordinator=tcp://127.0.0.1:1") }
        }
        if let message = rejection(section, list) {
            let origin = ClusterConfig.origin(of: message, in: args)
            throw ConfigError.invalidValue(file: file.path, line: origin?.line ?? 1, key: origin?.key ?? section.rawValue, problem: message)
        }
        return args
    }
}
