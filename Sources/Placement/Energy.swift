import Foundation

/// The linear power model: P = (P_idle + (P_busy − P_idle)·u)·PUE for utilisation u in 0...1, and
/// what the energy costs at the node's site.
public enum EnergyModel {
    /// Joules in one kWh.
    public static let joulesPerKWh: Double = 3.6e6

    /// Wall watts (PUE included) of a node at utilisation `utilisation` (clamped to 0...1).
    public static func watts(_ profile: PowerProfile, utilisation: Double) -> Double {
        let u = min(max(utilisation.isFinite ? utilisation : 0, 0), 1)
        return (profile.idleWatts + (profile.busyWatts - profile.idleWatts) * u) * profile.pue
    }

    /// Wall joules of a node busy for `busySeconds` of an interval of `intervalSeconds` (busy
    /// time beyond the interval is clamped to it).
    public static func joules(_ profile: PowerProfile, busySeconds: Double, intervalSeconds: Double) -> Double {
        guard intervalSeconds > 0 else { return 0 }
        return watts(profile, utilisation: busySeconds / intervalSeconds) * intervalSeconds
    }

    /// Dollars `joules` cost at the node's price.
    public static func dollars(joules: Double, _ profile: PowerProfile) -> Double {
        joules / joulesPerKWh * profile.pricePerKWh
    }

    /// Grams of CO2 `joules` emit at the node's grid intensity.
    public static func grams(joules: Double, _ profile: PowerProfile) -> Double {
        joules / joulesPerKWh * profile.carbonPerKWh
    }

    /// `joules` in the unit of `objective`: joules, dollars or grams.
    public static func amount(joules: Double, _ profile: PowerProfile, _ objective: PowerObjective) -> Double {
        switch objective {
        case .energy: return joules
        case .cost: return dollars(joules: joules, profile)
        case .carbon: return grams(joules: joules, profile)
        }
    }
}

/// Running totals of energy, cost and carbon per node, fed with each node's busy time per
/// interval (e.g. from its reported compute time) and the tokens served.
public struct EnergyMeter: Sendable {
    public private(set) var profiles: [PowerProfile]
    /// Per node, cumulative wall joules.
    public private(set) var joules: [Double]
    /// Per node, cumulative dollars.
    public private(set) var dollars: [Double]
    /// Per node, cumulative grams of CO2.
    public private(set) var grams: [Double]
    /// Per node, cumulative seconds metered.
    public private(set) var seconds: [Double]
    /// Tokens served while metering.
    public private(set) var tokens: Double = 0

    public init(profiles: [PowerProfile]) {
        self.profiles = profiles
        joules = [Double](repeating: 0, count: profiles.count)
        dollars = joules
        grams = joules
        seconds = joules
    }

    /// Meters node `node` over an interval in which it was busy `busySeconds`; returns its wall
    /// watts over the interval.
    @discardableResult
    public mutating func add(node: Int, busySeconds: Double, intervalSeconds: Double) -> Double {
        let p = profiles[node]
        let j = EnergyModel.joules(p, busySeconds: busySeconds, intervalSeconds: intervalSeconds)
        joules[node] += j
        dollars[node] += EnergyModel.dollars(joules: j, p)
        grams[node] += EnergyModel.grams(joules: j, p)
        seconds[node] += max(intervalSeconds, 0)
        return intervalSeconds > 0 ? j / intervalSeconds : 0
    }

    /// Counts `count` tokens served.
    public mutating func add(tokens count: Double) { tokens += count }

    public var totalJoules: Double { joules.reduce(0, +) }
    public var totalDollars: Double { dollars.reduce(0, +) }
    public var totalGrams: Double { grams.reduce(0, +) }

    /// Joules, dollars and grams per million tokens served, or nil before the first token.
    public var perMillionTokens: (joules: Double, dollars: Double, grams: Double)? {
        guard tokens > 0 else { return nil }
        let k = 1e6 / tokens
        return (totalJoules * k, totalDollars * k, totalGrams * k)
    }
}
