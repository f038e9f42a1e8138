import Foundation
import SeededRandom

/// How a machine's step times scatter around their mean: each step's time is the cost model's
/// times exp(σ·z − σ²/2) (mean 1), z an AR(1) process of standard normals with lag-one
/// autocorrelation ρ, so a slow step tends to be followed by slow ones, as on a shared VM whose
/// speed drifts over tens of milliseconds. A percentile near a knee of its distribution moves
/// with it: TPOT p50 where half the requests decode alone and half share steps with others
/// sits on one, and a simulation without scatter puts it at the alone requests' exact step
/// time. `farside simulate calibrate --step-log` measures σ and ρ from a live server's
/// one-token steps (`StepLog.jitter`).
public struct StepJitter: Sendable, Equatable, Codable {
    /// The standard deviation of the log of step time.
    public var sigma: Double
    /// The lag-one autocorrelation of the log step time from one step to the next.
    public var autocorrelation: Double

    public init(sigma: Double, autocorrelation: Double) {
        self.sigma = sigma
        self.autocorrelation = autocorrelation
    }

    /// A seeded stream of step-time factors.
    public struct Stream {
        let jitter: StepJitter
        var rng: SplitMix64
        var z = 0.0
        var spare: Double?

        public init(_ jitter: StepJitter, seed: UInt64) {
            self.jitter = jitter
            rng = SplitMix64(seed: seed ^ 0x5DEE_CE66_D1CE_4E5B)
            z = normal()
        }

        /// The next step's factor (mean 1 over many steps).
        public mutating func next() -> Double {
            let rho = jitter.autocorrelation, s = jitter.sigma
            z = rho * z + (1 - rho * rho).squareRoot() * normal()
            return exp(s * z - s * s / 2)
        }

        /// A standard normal draw (Box-Muller, the pair's second kept for the next call).
        mutating func normal() -> Double {
            if let v = spare {
                spare = nil
                return v
            }
            // (0, 1]: log(0) never happens.
            let u = (Double(rng.next() >> 11) + 1) / 9_007_199_254_740_992
            let v = Double(rng.next() >> 11) / 9_007_199_254_740_992
            let r = (-2 * log(u)).squareRoot()
            spare = r * sin(2 * .pi * v)
            return r * cos(2 * .pi * v)
        }
    }
}
