import Checkpoint
import Foundation

/// RoPE parameters as config.json gives them, in either spelling: published checkpoints write
/// `rope_theta` plus an optional `rope_scaling` object (`type` or `rope_type`); transformers 5
/// writes one `rope_parameters` object holding `rope_theta` and the scaling keys.
public struct RopeParameters: Sendable, Equatable {
    public enum Kind: String, Sendable { case `default`, linear, llama3, yarn }
    public var kind: Kind
    public var theta: Double
    public var factor: Double
    public var originalMaxPositions: Int
    // llama3
    public var lowFreqFactor: Double
    public var highFreqFactor: Double
    // YaRN
    public var betaFast: Double
    public var betaSlow: Double
    public var mscale: Double?
    public var mscaleAllDim: Double?
    public var attentionFactor: Double?
    public var truncate: Bool
    /// Per-pair divisors of the inverse frequencies, applied after the schedule: llama.cpp's
    /// `rope_freqs` tensor, which GGUF files carry instead of Llama 3's scaling parameters
    /// (`freq_factors` in a config the GGUF loader builds; not a Hugging Face key).
    public var frequencyFactors: [Double]?

    /// Reads the RoPE settings of `config`; `defaultTheta` applies when neither spelling names one.
    public init(config: ConfigJSON, defaultTheta: Double = 10_000) throws {
        let params = try config.object("rope_parameters")
        let scaling = try config.object("rope_scaling")
        theta = try params?.optionalDouble("rope_theta") ?? config.optionalDouble("rope_theta") ?? defaultTheta
        // `rope_parameters` wins when present: transformers 5 folds `rope_scaling` into it.
        let s = params ?? scaling
        let typeName = try s?.optionalString("rope_type") ?? s?.optionalString("type") ?? "default"
        guard let k = Kind(rawValue: typeName) else {
            throw ModelError.invalidConfig(
                "rope type '\(typeName)' is not supported (supported: default, linear, llama3, yarn)")
        }
        kind = k
        let maxPos = try config.int("max_position_embeddings", default: 2048)
        factor = try s?.optionalDouble("factor") ?? 1
        originalMaxPositions = try s?.optionalInt("original_max_position_embeddings")
            ?? config.optionalInt("original_max_position_embeddings") ?? maxPos
        lowFreqFactor = try s?.optionalDouble("low_freq_factor") ?? 1
        highFreqFactor = try s?.optionalDouble("high_freq_factor") ?? 4
        betaFast = try s?.optionalDouble("beta_fast") ?? 32
        betaSlow = try s?.optionalDouble("beta_slow") ?? 1
        if betaFast == 0 { betaFast = 32 }
        if betaSlow == 0 { betaSlow = 1 }
        mscale = try s?.optionalDouble("mscale")
        mscaleAllDim = try s?.optionalDouble("mscale_all_dim")
        attentionFactor = try s?.optionalDouble("attention_factor")
        truncate = try s?.optionalBool("truncate") ?? true
        frequencyFactors = try s?.optionalDoubleArray("freq_factors")
        if let ff = frequencyFactors, !ff.allSatisfy({ $0 > 0 && $0.isFinite }) {
            throw ModelError.invalidConfig("rope frequency factors must be finite and > 0")
        }
        try DecoderConfig.requireFinite(theta, "rope_theta")
        try DecoderConfig.requireFinite(factor, "rope_scaling.factor")
        try DecoderConfig.requireFinite(lowFreqFactor, "rope_scaling.low_freq_factor")
        try DecoderConfig.requireFinite(highFreqFactor, "rope_scaling.high_freq_factor")
        try DecoderConfig.requireFinite(betaFast, "rope_scaling.beta_fast")
        try DecoderConfig.requireFinite(betaSlow, "rope_scaling.beta_slow")
        for (v, key) in [(mscale, "mscale"), (mscaleAllDim, "mscale_all_dim"), (attentionFactor, "attention_factor")] {
            if let v { try DecoderConfig.requireFinite(v, "rope_scaling." + key, positive: false) }
        }
        try DecoderConfig.requireSize(originalMaxPositions, "original_max_position_embeddings", limit: DecoderConfig.Limits.positions)
    }
}

/// YaRN's magnitude correction (Peng et al. 2023, eq. 8 as DeepSeek-V2 parameterises it).
@inlinable
public func yarnMscale(_ scale: Double, _ mscale: Double = 1) -> Double {
    scale <= 1 ? 1 : 0.1 * mscale * log(scale) + 1
}

/// Rotary position embedding (Su et al. 2021) with the frequency schedules of transformers'
/// `modeling_rope_utils` (default, linear, llama3, YaRN), computed in fp32 as the reference does.
public struct RotaryEmbedding: Sendable {
    /// Number of rotated dimensions (even).
    public let dim: Int
    /// `dim / 2` inverse frequencies.
    public let invFreq: [Float]
    /// Factor applied to cos and sin (YaRN's attention factor; 1 otherwise).
    public let attentionScaling: Float
    /// DeepSeek pairs `(x0, x1), (x2, x3), …`; everyone else pairs `(x_i, x_{i+dim/2})`.
    public let interleaved: Bool

    public init(dim: Int, parameters p: RopeParameters, interleaved: Bool) {
        self.dim = dim
        self.interleaved = interleaved
        let half = dim / 2
        let base = Float(p.theta)
        var inv = (0..<half).map { i -> Float in 1 / powf(base, Float(2 * i) / Float(dim)) }
        var scaling: Float = 1
        switch p.kind {
        case .default:
            break
        case .linear:
            inv = inv.map { $0 / Float(p.factor) }
        case .llama3:
            let factor = Float(p.factor)
            let old = Float(p.originalMaxPositions)
            let lowWavelen = old / Float(p.lowFreqFactor)
            let highWavelen = old / Float(p.highFreqFactor)
            inv = inv.map { f in
                let wavelen = 2 * Float.pi / f
                var scaled = wavelen > lowWavelen ? f / factor : f
                let smooth = (old / wavelen - Float(p.lowFreqFactor)) / Float(p.highFreqFactor - p.lowFreqFactor)
                let smoothed = (1 - smooth) * scaled / factor + smooth * scaled
                if !(wavelen < highWavelen) && !(wavelen > lowWavelen) { scaled = smoothed }
                return scaled
            }
        case .yarn:
            let factor = p.factor
            if let a = p.attentionFactor {
                scaling = Float(a)
            } else if let m = p.mscale, let mAll = p.mscaleAllDim, m != 0, mAll != 0 {
                scaling = Float(yarnMscale(factor, m) / yarnMscale(factor, mAll))
            } else {
                scaling = Float(yarnMscale(factor))
            }
            func correctionDim(_ rotations: Double) -> Double {
                Double(dim) * log(Double(p.originalMaxPositions) / (rotations * 2 * Double.pi)) / (2 * log(p.theta))
            }
            var low = correctionDim(p.betaFast)
            var high = correctionDim(p.betaSlow)
            if p.truncate { low = floor(low); high = ceil(high) }
            low = max(low, 0)
            high = min(high, Double(dim - 1))
            if low == high { high += 0.001 }
            inv = (0..<half).map { i in
                let posFreq = powf(base, Float(2 * i) / Float(dim))
                let extrapolation = 1 / posFreq
                let interpolation = 1 / (Float(factor) * posFreq)
                let ramp = min(max((Float(i) - Float(low)) / Float(high - low), 0), 1)
                let extrapolationFactor = 1 - ramp
                return interpolation * (1 - extrapolationFactor) + extrapolation * extrapolationFactor
            }
        }
        if let ff = p.frequencyFactors, ff.count == half {
            inv = zip(inv, ff).map { $0 / Float($1) }
        }
        invFreq = inv
        attentionScaling = scaling
    }

    /// Fills `cos`/`sin` (`[positions.count, dim/2]`) for consecutive positions.
    public func table(positions: Range<Int>, cos c: inout [Float], sin s: inout [Float]) {
        let half = dim / 2
        let n = positions.count * half
        if c.count < n { c = [Float](repeating: 0, count: n); s = c }
        for (row, p) in positions.enumerated() {
            for i in 0..<half {
                let angle = Float(p) * invFreq[i]
                c[row * half + i] = cosf(angle) * attentionScaling
                s[row * half + i] = sinf(angle) * attentionScaling
            }
        }
    }

    /// Rotates one head vector `x[0..<dim]` in place with the table row at `cos`/`sin`.
    @inline(__always)
    public func rotate(_ x: UnsafeMutablePointer<Float>, cos: UnsafePointer<Float>, sin: UnsafePointer<Float>) {
        let half = dim / 2
        if interleaved {
            // Pairs (x_{2i}, x_{2i+1}); transformers emits them de-interleaved (evens then odds),
            // a fixed permutation shared by q and k, so dot products — all attention uses — agree.
            for i in 0..<half {
                let a = x[2 * i], b = x[2 * i + 1]
                x[2 * i] = a * cos[i] - b * sin[i]
                x[2 * i + 1] = b * cos[i] + a * sin[i]
            }
        } else {
            for i in 0..<half {
                let a = x[i], b = x[i + half]
                x[i] = a * cos[i] - b * sin[i]
                x[i + half] = b * cos[i] + a * sin[i]
            }
        }
    }
}
