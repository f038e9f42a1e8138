import Foundation
import Placement
import Scheduling
import Yams

/// One machine of a simulated cluster: its power profile (hardware and site), the expert memory it
/// offers, its link to the coordinator and its fixed cost per step.
public struct SimulatedNode: Sendable, Equatable {
    public var id: String
    public var profile: PowerProfile
    /// Bytes of expert weights it may hold (for the coordinator: its KV cache budget; 0 = no limit).
    public var memoryBytes: UInt64
    /// One-way link latency to the coordinator, seconds.
    public var linkLatency: Double
    /// Link bandwidth, bytes per second (0 = not limiting).
    public var linkBandwidth: Double
    /// Fixed seconds per layer call (kernel launches, dispatch); for the coordinator, per step.
    public var overhead: Double
    /// The machine it runs on when it shares one with other nodes (`host:` in the cluster file;
    /// nil: a machine of its own). Nodes on one host share its cores and memory bandwidth.
    public var host: String? = nil
    /// How nodes sharing its host slow each other, as measured there (a calibrated profile's
    /// `hostSharing`); used instead of processor sharing when its host holds as many nodes.
    public var hostSharing: HostSharing? = nil
}

/// A simulated cluster: the coordinator's node (attention, scheduler), the expert nodes and the
/// scheduler's limits, read from a YAML file (docs/simulator.md describes it).
public struct ClusterSpec: Sendable, Equatable {
    public var file: String
    public var coordinator: SimulatedNode
    public var nodes: [SimulatedNode]
    public var limits: Scheduler.Limits
    /// Requests that may wait; more are refused (`--max-waiting`).
    public var maxWaiting: Int
    /// How the coordinator's step times scatter around the cost model's (`coordinator:
    /// jitter:`); nil: every step takes exactly the model's time.
    public var stepJitter: StepJitter? = nil

    /// Reads a cluster file.
    public static func load(_ path: String) throws -> ClusterSpec {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw SimulatorError.unreadableFile(file: path, reason: error.localizedDescription)
        }
        return try parse(text, file: path)
    }

    /// As `load`, on text already read (`file` names it in messages; `profile_file` paths are
    /// relative to its directory).
    public static func parse(_ text: String, file: String) throws -> ClusterSpec {
        let root: Node?
        do { root = try Yams.compose(yaml: text) } catch let e as YamlError {
            throw SimulatorError.syntax(file: file, line: Self.line(of: e), problem: "not valid YAML: \(e)")
        } catch {
            throw SimulatorError.syntax(file: file, line: 1, problem: "not valid YAML: \(error)")
        }
        guard let root else { throw SimulatorError.missingKey(file: file, line: 1, key: "nodes") }
        let top = try Fields(root, file: file, key: "", known: ["sites", "coordinator", "nodes", "scheduler"])

        var sites: [String: (price: Double, carbon: Double, pue: Double)] = [:]
        if let s = top.node("sites") {
            guard case .mapping(let m) = s else { throw SimulatorError.invalidValue(file: file, line: top.line("sites"), key: "sites", problem: "must be a mapping of site names") }
            for (k, v) in m {
                let name = k.string ?? ""
                let f = try Fields(v, file: file, key: "sites.\(name)", known: ["price_per_kwh", "carbon_per_kwh", "pue"])
                sites[name] = (try f.number("price_per_kwh") ?? HardwareClass.defaultPricePerKWh,
                               try f.number("carbon_per_kwh") ?? HardwareClass.defaultCarbonPerKWh,
                               try f.number("pue") ?? HardwareClass.defaultPUE)
            }
        }
        let directory = URL(fileURLWithPath: file).deletingLastPathComponent()
        let nodeKeys = ["id", "count", "class", "profile", "profile_file", "gpus", "memory", "site", "link", "overhead_us", "host"]

        func machine(_ f: Fields, id: String) throws -> SimulatedNode {
            var profile: PowerProfile
            var sharing: HostSharing?
            if let name = try f.text("class") {
                do { profile = try HardwareClass.profile(named: name) } catch {
                    throw SimulatorError.unknownNodeClass(file: file, line: f.line("class"), name: name, known: HardwareClass.names)
                }
            } else if let p = f.node("profile") {
                let g = try Fields(p, file: file, key: f.key + ".profile",
                                   known: ["device", "idle_watts", "busy_watts", "memory_bandwidth_gbs", "tflops"])
                profile = PowerProfile(device: try g.text("device") ?? "custom", idleWatts: try g.required("idle_watts"),
                                       busyWatts: try g.required("busy_watts"),
                                       memoryBandwidth: (try g.number("memory_bandwidth_gbs") ?? 0) * 1e9,
                                       flopsPerSecond: (try g.number("tflops") ?? 0) * 1e12)
            } else if let path = try f.text("profile_file") {
                let url = path.hasPrefix("/") ? URL(fileURLWithPath: path) : directory.appendingPathComponent(path)
                do {
                    let data = try Data(contentsOf: url)
                    profile = try JSONDecoder().decode(PowerProfile.self, from: data)
                    sharing = try JSONDecoder().decode(CalibratedExtras.self, from: data).hostSharing
                } catch {
                    throw SimulatorError.invalidValue(file: file, line: f.line("profile_file"), key: "profile_file",
                                                      problem: "cannot read a profile from \(url.path): \(error)")
                }
                if let problem = sharing?.problem {
                    throw SimulatorError.invalidValue(file: file, line: f.line("profile_file"), key: "profile_file", problem: "\(url.path): \(problem)")
                }
            } else {
                throw SimulatorError.missingKey(file: file, line: f.line, key: f.key + ".class (or profile, profile_file)")
            }
            if let gpus = try f.integer("gpus") {
                guard gpus >= 1 else { throw SimulatorError.invalidValue(file: file, line: f.line("gpus"), key: "gpus", problem: "must be ≥ 1") }
                // A class describes one board; a node of several sums them.
                let k = Double(gpus)
                profile.idleWatts *= k; profile.busyWatts *= k; profile.memoryBandwidth *= k; profile.flopsPerSecond *= k
            }
            if let site = try f.text("site") {
                guard let s = sites[site] else {
                    throw SimulatorError.unknownSite(file: file, line: f.line("site"), name: site, known: sites.keys.sorted())
                }
                (profile.pricePerKWh, profile.carbonPerKWh, profile.pue) = s
            }
            do { try profile.validate() } catch {
                throw SimulatorError.invalidValue(file: file, line: f.line, key: f.key, problem: "\(error)")
            }
            var latency = 0.0, bandwidth = 0.0
            if let l = f.node("link") {
                let g = try Fields(l, file: file, key: f.key + ".link", known: ["latency_us", "bandwidth_gbs"])
                latency = (try g.number("latency_us") ?? 0) * 1e-6
                bandwidth = (try g.number("bandwidth_gbs") ?? 0) * 1e9
            }
            let host = try f.text("host")
            if let host, host.isEmpty {
                throw SimulatorError.invalidValue(file: file, line: f.line("host"), key: "host", problem: "must name a machine (nodes with the same host share it)")
            }
            return SimulatedNode(id: id, profile: profile, memoryBytes: try f.size("memory") ?? 0, linkLatency: latency,
                                 linkBandwidth: bandwidth, overhead: (try f.number("overhead_us") ?? 0) * 1e-6, host: host,
                                 hostSharing: sharing)
        }

        guard let c = top.node("coordinator") else { throw SimulatorError.missingKey(file: file, line: 1, key: "coordinator") }
        let coordinator = try machine(try Fields(c, file: file, key: "coordinator",
                                                 known: ["class", "profile", "profile_file", "gpus", "kv_budget", "site", "overhead_us", "jitter"]),
                                      id: "coordinator")
        var coord = coordinator
        let coordinatorFields = try Fields(c, file: file, key: "coordinator", known: nil)
        coord.memoryBytes = try coordinatorFields.size("kv_budget") ?? 0
        var jitter: StepJitter?
        if let j = coordinatorFields.node("jitter") {
            let g = try Fields(j, file: file, key: "coordinator.jitter", known: ["sigma", "autocorrelation"])
            let sigma = try g.required("sigma"), rho = try g.number("autocorrelation") ?? 0
            guard sigma <= 2 else { throw SimulatorError.invalidValue(file: file, line: g.line("sigma"), key: "sigma", problem: "must be in 0...2 (the spread of log step time), got \(sigma)") }
            guard rho < 1 else { throw SimulatorError.invalidValue(file: file, line: g.line("autocorrelation"), key: "autocorrelation", problem: "must be in 0..<1, got \(rho)") }
            jitter = StepJitter(sigma: sigma, autocorrelation: rho)
        }

        guard let list = top.node("nodes") else { throw SimulatorError.missingKey(file: file, line: 1, key: "nodes") }
        guard case .sequence(let seq) = list, !seq.isEmpty else {
            throw SimulatorError.invalidValue(file: file, line: top.line("nodes"), key: "nodes", problem: "must be a non-empty list of nodes")
        }
        var nodes: [SimulatedNode] = []
        for (i, n) in seq.enumerated() {
            let f = try Fields(n, file: file, key: "nodes[\(i)]", known: nodeKeys)
            let count = try f.integer("count") ?? 1
            guard count >= 1 else { throw SimulatorError.invalidValue(file: file, line: f.line("count"), key: "count", problem: "must be ≥ 1") }
            let base = try f.text("id") ?? "node\(i)"
            for k in 0..<count {
                let id = count == 1 ? base : "\(base)-\(k)"
                guard !nodes.contains(where: { $0.id == id }) else {
                    throw SimulatorError.invalidValue(file: file, line: f.line("id"), key: "id", problem: "'\(id)' is given twice")
                }
                nodes.append(try machine(f, id: id))
            }
        }
        var limits = Scheduler.Limits()
        var maxWaiting = 256
        if let s = top.node("scheduler") {
            let f = try Fields(s, file: file, key: "scheduler", known: ["max_batch_tokens", "max_seqs", "max_waiting"])
            for (key, value) in [("max_batch_tokens", try f.integer("max_batch_tokens")), ("max_seqs", try f.integer("max_seqs")),
                                 ("max_waiting", try f.integer("max_waiting"))] {
                if let v = value, v < 1 { throw SimulatorError.invalidValue(file: file, line: f.line(key), key: key, problem: "must be ≥ 1") }
            }
            limits.maxBatchTokens = try f.integer("max_batch_tokens") ?? limits.maxBatchTokens
            limits.maxSequences = try f.integer("max_seqs") ?? limits.maxSequences
            maxWaiting = try f.integer("max_waiting") ?? maxWaiting
        }
        return ClusterSpec(file: file, coordinator: coord, nodes: nodes, limits: limits, maxWaiting: maxWaiting, stepJitter: jitter)
    }

    static func line(of e: YamlError) -> Int {
        switch e {
        case let .scanner(_, _, mark, _), let .parser(_, _, mark, _), let .composer(_, _, mark, _): return mark.line
        default: return 1
        }
    }
}

/// A YAML mapping's keys with their lines, for messages that say where.
struct Fields {
    let file: String
    let key: String
    let line: Int
    let entries: [String: (key: Node, value: Node)]

    init(_ node: Node, file: String, key: String, known: [String]?) throws {
        self.file = file
        self.key = key
        line = node.mark?.line ?? 1
        guard case .mapping(let m) = node else {
            throw SimulatorError.invalidValue(file: file, line: line, key: key.isEmpty ? "the file" : key, problem: "must be a mapping of keys to values")
        }
        var e: [String: (key: Node, value: Node)] = [:]
        for (k, v) in m {
            let name = k.string ?? ""
            if let known, !known.contains(name) {
                throw SimulatorError.unknownKey(file: file, line: k.mark?.line ?? line, key: key.isEmpty ? name : "\(key).\(name)", known: known)
            }
            e[name] = (k, v)
        }
        entries = e
    }

    func node(_ name: String) -> Node? { entries[name]?.value }
    func line(_ name: String) -> Int { entries[name]?.key.mark?.line ?? line }

    private func scalar(_ name: String) throws -> String? {
        guard let v = entries[name]?.value else { return nil }
        guard case .scalar(let s) = v else {
            throw SimulatorError.invalidValue(file: file, line: line(name), key: name, problem: "must be a single value")
        }
        return s.string
    }

    func text(_ name: String) throws -> String? { try scalar(name) }

    func number(_ name: String) throws -> Double? {
        guard let s = try scalar(name) else { return nil }
        guard let v = Double(s), v.isFinite, v >= 0 else {
            throw SimulatorError.invalidValue(file: file, line: line(name), key: name, problem: "'\(s)' is not a number ≥ 0")
        }
        return v
    }

    func required(_ name: String) throws -> Double {
        guard let v = try number(name) else { throw SimulatorError.missingKey(file: file, line: line, key: "\(key).\(name)") }
        return v
    }

    func integer(_ name: String) throws -> Int? {
        guard let s = try scalar(name) else { return nil }
        guard let v = Int(s) else { throw SimulatorError.invalidValue(file: file, line: line(name), key: name, problem: "'\(s)' is not an integer") }
        return v
    }

    /// A size: bytes, or a number with kB/MB/GB/TB (powers of 1000) or KiB/MiB/GiB/TiB.
    func size(_ name: String) throws -> UInt64? {
        guard let s = try scalar(name) else { return nil }
        let units: [(String, Double)] = [("TiB", 0x1p40), ("GiB", 0x1p30), ("MiB", 0x1p20), ("KiB", 0x1p10),
                                         ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("B", 1)]
        var number = s.trimmingCharacters(in: .whitespaces), scale = 1.0
        for (u, k) in units where number.hasSuffix(u) {
            number = String(number.dropLast(u.count)).trimmingCharacters(in: .whitespaces)
            scale = k
            break
        }
        guard let v = Double(number), v.isFinite, v >= 0 else {
            throw SimulatorError.invalidValue(file: file, line: line(name), key: name, problem: "'\(s)' is not a size such as 640GB or 80GiB")
        }
        return UInt64(v * scale)
    }
}
