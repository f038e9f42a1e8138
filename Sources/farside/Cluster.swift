import ArgumentParser
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Placement

/// `farside cluster …`: a running server's expert nodes through its admin API (`/admin/cluster*`,
/// behind the server's API key).
struct Cluster: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Look at and change a running server's expert nodes: status, drain, rebalance, load.",
        subcommands: [Status.self, Drain.self, Rebalance.self, Load.self, Up.self])

    /// Where the server is and its key.
    struct Connection: ParsableArguments {
        @Option(name: .long, help: "The server's base URL.")
        var url: String = "http://127.0.0.1:8000"

        @Option(name: .long, help: "Read the server's API key from this file (default: $FARSIDE_API_KEY).")
        var apiKeyFile: String?

        func validate() throws {
            guard let u = URL(string: url), ["http", "https"].contains(u.scheme ?? ""), u.host != nil else {
                throw ValidationError("--url '\(url)' is not an http(s) URL such as http://127.0.0.1:8000")
            }
        }

        func apiKey() throws -> String? {
            if let path = apiKeyFile {
                guard let text = try? String(contentsOfFile: path, encoding: .utf8),
                      let key = text.split(whereSeparator: \.isNewline).first.map({ $0.trimmingCharacters(in: .whitespaces) }), !key.isEmpty else {
                    throw ValidationError("--api-key-file '\(path)' cannot be read or holds no key on its first line")
                }
                return key
            }
            return ProcessInfo.processInfo.environment["FARSIDE_API_KEY"].flatMap { $0.isEmpty ? nil : $0 }
        }

        /// The response body of `method path` with a JSON `body`; a non-2xx answer throws the
        /// server's error message.
        func call(_ method: String, _ path: String, body: [String: Any]? = nil, timeout: Double = 180) throws -> Data {
            var request = URLRequest(url: URL(string: url.trimmingCharacters(in: CharacterSet(charactersIn: "/")) + path)!)
            request.httpMethod = method
            request.timeoutInterval = timeout
            if let key = try apiKey() { request.setValue("Bearer \(key)", forHTTPHeaderField: "Authorization") }
            if let body {
                request.httpBody = try JSONSerialization.data(withJSONObject: body)
                request.setValue("application/json", forHTTPHeaderField: "Content-Type")
            }
            nonisolated(unsafe) var result: (Data?, URLResponse?, Error?)
            let done = DispatchSemaphore(value: 0)
            URLSession.shared.dataTask(with: request) { d, r, e in
                result = (d, r, e)
                done.signal()
            }.resume()
            done.wait()
            if let e = result.2 { throw AdminError.unreachable(url: url, reason: e.localizedDescription) }
            let status = (result.1 as? HTTPURLResponse)?.statusCode ?? 0
            let data = result.0 ?? Data()
            guard (200..<300).contains(status) else {
                let message = ((try? JSONSerialization.jsonObject(with: data)) as? [String: Any])
                    .flatMap { ($0["error"] as? [String: Any])?["message"] as? String } ?? String(decoding: data, as: UTF8.self)
                throw AdminError.refused(status: status, message: message)
            }
            return data
        }
    }

    enum AdminError: Error, CustomStringConvertible {
        case unreachable(url: String, reason: String)
        case refused(status: Int, message: String)
        var description: String {
            switch self {
            case let .unreachable(url, why): return "cannot reach the server at \(url): \(why)"
            case let .refused(status, message): return "the server answered \(status): \(message)"
            }
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Nodes, experts and replicas per node, load, round trip, modelled watts, energy, $ and gCO2 (per million tokens).")
        @OptionGroup var connection: Connection
        @Flag(name: .long, help: "Print the server's JSON instead of a table.")
        var json = false

        func run() throws {
            try runReportingErrors {
                let data = try connection.call("GET", "/admin/cluster")
                if json {
                    print(String(decoding: data, as: UTF8.self))
                    return
                }
                guard let s = try JSONSerialization.jsonObject(with: data) as? [String: Any], let nodes = s["nodes"] as? [[String: Any]] else {
                    throw AdminError.refused(status: 200, message: "an answer that is not a cluster status")
                }
                func num(_ o: [String: Any], _ k: String) -> Double { (o[k] as? NSNumber)?.doubleValue ?? 0 }
                print("placement \(s["strategy"] ?? "?"), epoch \(s["epoch"] ?? "?")\((s["replacing"] as? Bool) == true ? " (re-placement under way)" : "")")
                let header = ["node", "state", "experts", "replicated", "MiB", "routed", "rtt ms", "busy", "W", "J", "$", "gCO2"]
                var rows = [header]
                for n in nodes {
                    rows.append([n["id"] as? String ?? "?", n["state"] as? String ?? "?", "\(Int(num(n, "experts")))", "\(Int(num(n, "replicated")))",
                                 String(format: "%.0f", num(n, "expert_bytes") / 1_048_576), String(format: "%.0f", num(n, "routed_tokens")),
                                 String(format: "%.2f", num(n, "round_trip_ms")), String(format: "%.0f%%", num(n, "utilisation") * 100),
                                 String(format: "%.1f", num(n, "watts")), String(format: "%.1f", num(n, "joules")),
                                 String(format: "%.6f", num(n, "dollars")), String(format: "%.3f", num(n, "grams_co2"))])
                }
                let widths = header.indices.map { c in rows.map { $0[c].count }.max()! }
                for r in rows { print(r.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")) }
                let tokens = Int(num(s, "generated_tokens"))
                if let j = s["joules_per_million_tokens"] as? NSNumber {
                    print(String(format: "%d tokens generated; per million tokens: %.0f J (%.3f kWh), $%.4f, %.1f gCO2", tokens, j.doubleValue,
                                 j.doubleValue / 3.6e6, num(s, "dollars_per_million_tokens"), num(s, "grams_co2_per_million_tokens")))
                } else {
                    print("no tokens generated yet")
                }
                if let m = s["measured_joules"] as? NSNumber { print(String(format: "measured (RAPL): %.1f J", m.doubleValue)) }
            }
        }
    }

    struct Drain: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move a node's experts to the other nodes (they load them before routing switches), then tell it to exit.")
        @OptionGroup var connection: Connection
        @Argument(help: "The node's id (as `farside cluster status` shows it).")
        var node: String

        func run() throws {
            try runReportingErrors {
                _ = try connection.call("POST", "/admin/cluster/drain", body: ["node": node])
                print("node \(node) drained: its experts moved, and it was told to exit")
            }
        }
    }

    struct Rebalance: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Place the experts anew from the live routing statistics (make-before-break).")
        @OptionGroup var connection: Connection
        @Option(name: .long, help: "memory, balanced[:R] or power[:energy|cost|carbon] (default: the server's --placement); becomes the server's strategy.")
        var strategy: String?

        func validate() throws {
            if let s = strategy {
                do { _ = try PlacementStrategy(parsing: s) } catch { throw ValidationError("--strategy: \(error)") }
            }
        }

        func run() throws {
            try runReportingErrors {
                _ = try connection.call("POST", "/admin/cluster/rebalance", body: strategy.map { ["strategy": $0] } ?? [:])
                print("rebalanced" + (strategy.map { " (\($0))" } ?? ""))
            }
        }
    }

    struct Load: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Routed tokens per MoE layer and expert over the server's statistics window, as JSON (the simulator's routing input).")
        @OptionGroup var connection: Connection
        @Option(name: .long, help: "Write to this file instead of stdout.")
        var out: String?

        func run() throws {
            try runReportingErrors {
                let data = try connection.call("GET", "/admin/cluster/load")
                if let out {
                    do { try data.write(to: URL(fileURLWithPath: out)) } catch {
                        throw ValidationError("--out '\(out)' cannot be written: \(error.localizedDescription)")
                    }
                } else {
                    print(String(decoding: data, as: UTF8.self))
                }
            }
        }
    }

    struct Up: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The same as `farside serve --local-nodes N`: the model served over HTTP with N local expert nodes until Ctrl-C or SIGTERM.")

        @Option(name: .long, help: "A GGUF file or a Hugging Face checkpoint directory (default: the default model).")
        var model: String?

        @Option(name: .long, help: "Number of expert-node processes.")
        var nodes: Int = 2

        @Option(name: .long, help: "Address to listen on.")
        var host: String = "127.0.0.1"

        @Option(name: .long, help: "Port to listen on (0: any free port; the chosen one is printed).")
        var port: Int = 8000

        func validate() throws {
            guard nodes >= 1 && nodes <= 64 else { throw ValidationError("--nodes must be in 1...64, got \(nodes)") }
        }

        func run() throws {
            var args = ["--local-nodes", "\(nodes)", "--host", host, "--port", "\(port)"]
            if let model { args += ["--model", model] }
            FileHandle.standardError.write(Data("cluster up: running `farside serve \(args.joined(separator: " "))`\n".utf8))
            try Serve.parse(args).run()
        }
    }
}
