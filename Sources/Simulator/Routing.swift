import Foundation
import SeededRandom

/// The live server's routing statistics file (`farside cluster load`, `RoutingLoadFile` in the
/// Coordinator): routed tokens per expert per MoE layer over a window. The simulator reads the
/// same format, so a recorded run's skew can be replayed.
public struct RoutingLoad: Codable, Sendable, Equatable {
    public var format: String
    public var windowSeconds: Double
    /// Model layer index of each MoE layer, in order.
    public var layers: [Int]
    public var experts: Int
    /// `tokens[i][e]`: routed tokens of expert e in MoE layer `layers[i]`.
    public var tokens: [[Double]]

    public static let formatName = "farside-routing-load-v1"

    /// Reads a statistics file (snake_case or camelCase keys).
    public static func load(_ path: String) throws -> RoutingLoad {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw SimulatorError.unreadableFile(file: path, reason: error.localizedDescription)
        }
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        let r: RoutingLoad
        do { r = try d.decode(RoutingLoad.self, from: data) } catch {
            throw SimulatorError.syntax(file: path, line: 1, problem: "not a \(formatName) file: \(error)")
        }
        guard r.format == formatName else {
            throw SimulatorError.syntax(file: path, line: 1, problem: "format '\(r.format)', expected '\(formatName)'")
        }
        return r
    }
}

/// Which experts a layer's tokens go to: per MoE layer, each expert's share of the routed tokens
/// (each row sums to 1). The simulator routes a step's tokens by these expected shares.
public struct RoutingShares: Sendable, Equatable {
    /// `shares[layer][expert]`.
    public var shares: [[Double]]

    /// Zipf over experts with exponent `skew` (0 = uniform), the ranks shuffled per layer by
    /// `seed` so that each layer has its own hot experts.
    public static func zipf(layers: Int, experts: Int, skew: Double, seed: UInt64) throws -> RoutingShares {
        guard skew.isFinite, skew >= 0 else { throw SimulatorError.invalidOption(name: "--zipf", problem: "\(skew) is not an exponent ≥ 0") }
        var rng = SplitMix64(seed: seed ^ 0x5EED_0F_2057)
        let weights = (1...experts).map { pow(Double($0), -skew) }
        let total = weights.reduce(0, +)
        var rows: [[Double]] = []
        for _ in 0..<layers {
            var order = Array(0..<experts)
            // Fisher–Yates with the seeded generator.
            for i in stride(from: experts - 1, to: 0, by: -1) {
                let j = Int(rng.next() % UInt64(i + 1))
                order.swapAt(i, j)
            }
            var row = [Double](repeating: 0, count: experts)
            for (rank, e) in order.enumerated() { row[e] = weights[rank] / total }
            rows.append(row)
        }
        return RoutingShares(shares: rows)
    }

    /// The shares a recorded statistics file shows (a layer with no tokens is taken as uniform).
    public static func recorded(_ load: RoutingLoad, file: String, layers: Int, experts: Int) throws -> RoutingShares {
        guard load.tokens.count == layers, load.experts == experts, load.tokens.allSatisfy({ $0.count == experts }) else {
            throw SimulatorError.routingShapeMismatch(file: file, layers: load.tokens.count, experts: load.experts,
                                                      expectedLayers: layers, expectedExperts: experts)
        }
        return RoutingShares(shares: load.tokens.map { row in
            let total = row.reduce(0) { $0 + max($1, 0) }
            return total > 0 ? row.map { max($0, 0) / total } : [Double](repeating: 1 / Double(experts), count: experts)
        })
    }
}
