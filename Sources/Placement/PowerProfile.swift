/// What one node is in power terms: its draw idle and busy, how fast it reads weights and computes,
/// and the price and carbon intensity of the electricity at its site.
///
/// The energy model is linear in utilisation: P = (P_idle + (P_busy − P_idle)·u)·PUE.
/// `validate()` throws a `PlacementError` naming the first unusable figure.
public struct PowerProfile: Sendable, Equatable, Codable {
    /// A short name of the hardware, e.g. "h100", "cpu-2s", "custom". Used in messages only.
    public var device: String
    /// Watts drawn by the node when it holds experts but computes nothing.
    public var idleWatts: Double
    /// Watts drawn at full utilisation; at least `idleWatts`.
    public var busyWatts: Double
    /// Bytes per second at which the node reads expert weights; 0 = unknown (the byte term of the
    /// roofline is then left out for this node).
    public var memoryBandwidth: Double
    /// Floating-point operations per second the node sustains on expert matmuls; 0 = unknown (the
    /// compute term of the roofline is then left out for this node).
    public var flopsPerSecond: Double
    /// Electricity price in $/kWh.
    public var pricePerKWh: Double
    /// Carbon intensity of the site's grid in gCO2/kWh.
    public var carbonPerKWh: Double
    /// Power usage effectiveness of the site: facility power over IT power, ≥ 1.
    public var pue: Double

    /// Above this a per-node wattage is taken for a unit slip: a DGX H100 (8 GPUs) is specified at
    /// 10.2 kW maximum (NVIDIA DGX H100 datasheet), so 100 kW leaves room for any single node.
    public static let maximumWatts: Double = 100_000
    /// Above this a PUE is taken for a slip: surveyed data-centre averages are below 2 (Uptime
    /// Institute annual surveys), legacy server rooms rarely above 3.
    public static let maximumPUE: Double = 5

    public init(device: String, idleWatts: Double, busyWatts: Double, memoryBandwidth: Double = 0,
                flopsPerSecond: Double = 0,
                pricePerKWh: Double = HardwareClass.defaultPricePerKWh,
                carbonPerKWh: Double = HardwareClass.defaultCarbonPerKWh,
                pue: Double = HardwareClass.defaultPUE) {
        self.device = device
        self.idleWatts = idleWatts
        self.busyWatts = busyWatts
        self.memoryBandwidth = memoryBandwidth
        self.flopsPerSecond = flopsPerSecond
        self.pricePerKWh = pricePerKWh
        self.carbonPerKWh = carbonPerKWh
        self.pue = pue
    }

    private enum CodingKeys: String, CodingKey {
        case device, idleWatts, busyWatts, memoryBandwidth, flopsPerSecond, pricePerKWh, carbonPerKWh, pue
    }

    /// Decodes a profile from a config file: `device`, `idleWatts` and `busyWatts` are required;
    /// a missing speed figure is 0 (unknown) and missing site figures take `HardwareClass`'s defaults.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(device: try c.decode(String.self, forKey: .device),
                  idleWatts: try c.decode(Double.self, forKey: .idleWatts),
                  busyWatts: try c.decode(Double.self, forKey: .busyWatts),
                  memoryBandwidth: try c.decodeIfPresent(Double.self, forKey: .memoryBandwidth) ?? 0,
                  flopsPerSecond: try c.decodeIfPresent(Double.self, forKey: .flopsPerSecond) ?? 0,
                  pricePerKWh: try c.decodeIfPresent(Double.self, forKey: .pricePerKWh) ?? HardwareClass.defaultPricePerKWh,
                  carbonPerKWh: try c.decodeIfPresent(Double.self, forKey: .carbonPerKWh) ?? HardwareClass.defaultCarbonPerKWh,
                  pue: try c.decodeIfPresent(Double.self, forKey: .pue) ?? HardwareClass.defaultPUE)
    }

    /// Throws the first problem found: a NaN or infinite figure, a negative figure, watts above
    /// `maximumWatts`, busy below idle, or a PUE outside 1...`maximumPUE`.
    public func validate() throws {
        let figures: [(String, Double)] = [
            ("idleWatts", idleWatts), ("busyWatts", busyWatts), ("memoryBandwidth", memoryBandwidth),
            ("flopsPerSecond", flopsPerSecond), ("pricePerKWh", pricePerKWh),
            ("carbonPerKWh", carbonPerKWh), ("pue", pue),
        ]
        for (field, value) in figures {
            guard value.isFinite else { throw PlacementError.nonFiniteFigure(device: device, field: field) }
            guard value >= 0 else { throw PlacementError.negativeFigure(device: device, field: field, value: value) }
        }
        for (field, value) in [("idleWatts", idleWatts), ("busyWatts", busyWatts)] where value > Self.maximumWatts {
            throw PlacementError.absurdWatts(device: device, field: field, value: value)
        }
        guard busyWatts >= idleWatts else {
            throw PlacementError.busyBelowIdle(device: device, idleWatts: idleWatts, busyWatts: busyWatts)
        }
        guard pue >= 1, pue <= Self.maximumPUE else { throw PlacementError.pueOutOfRange(device: device, value: pue) }
    }

    /// Seconds this node needs to read `bytes` of weights and do `flops` of arithmetic, as a
    /// roofline that adds the two (a decode step's expert GEMV is bandwidth-bound, a prefill
    /// step's GEMM compute-bound; adding them never under-estimates either regime).
    public func seconds(bytes: Double, flops: Double) -> Double {
        (memoryBandwidth > 0 ? bytes / memoryBandwidth : 0) + (flopsPerSecond > 0 ? flops / flopsPerSecond : 0)
    }
}

/// Built-in power profiles of common expert-node hardware, from public figures.
///
/// GPU entries describe one GPU board (not its host): scale the watts for a multi-GPU node or give
/// a custom profile. Busy watts are the board's maximum power (TDP); idle watts are estimates, as
/// vendors publish no idle figure. Price, carbon and PUE are site properties, not hardware ones:
/// every entry carries `defaultPricePerKWh`, `defaultCarbonPerKWh` and `defaultPUE` unless the
/// caller passes its own to `profile(named:pricePerKWh:carbonPerKWh:pue:)`.
public enum HardwareClass {
    /// A round placeholder price ($/kWh) until the site's own is given.
    public static let defaultPricePerKWh: Double = 0.15
    /// A round placeholder grid intensity (gCO2/kWh) until the site's own is given.
    public static let defaultCarbonPerKWh: Double = 400
    /// No facility overhead counted unless the site's PUE is given.
    public static let defaultPUE: Double = 1.0

    private static let table: [(name: String, idle: Double, busy: Double, bandwidth: Double, flops: Double)] = [
        // NVIDIA H100 SXM5 datasheet: up to 700 W, HBM3 3.35 TB/s, BF16 tensor 989 TFLOPS dense
        // (1,979 with sparsity). Idle 70 W: an estimate.
        ("h100", 70, 700, 3.35e12, 989e12),
        // NVIDIA H200 SXM datasheet: up to 700 W, HBM3e 4.8 TB/s, BF16 tensor 989 TFLOPS dense.
        // Idle 75 W: an estimate.
        ("h200", 75, 700, 4.8e12, 989e12),
        // NVIDIA A100 80GB SXM datasheet: 400 W TDP, HBM2e 2,039 GB/s, BF16 tensor 312 TFLOPS dense.
        // Idle 55 W: an estimate.
        ("a100-80gb", 55, 400, 2.039e12, 312e12),
        // NVIDIA L40S datasheet: 350 W maximum, GDDR6 864 GB/s, BF16 tensor 362 TFLOPS dense.
        // Idle 35 W: an estimate.
        ("l40s", 35, 350, 864e9, 362e12),
        // Two Intel Xeon Platinum 8480+ (Intel ARK: 56 cores, 2.0 GHz base, 350 W TDP, 8 channels of
        // DDR5-4800): bandwidth 2 × 8 × 38.4 GB/s; compute 2 × 56 cores × 2 AVX-512 FMA units × 16
        // FP32 lanes × 2 flops × 2.0 GHz. Busy 2 × 350 W plus an estimated 150 W of memory, board
        // and fans; idle 200 W is an estimate for such a server.
        ("cpu-2s", 200, 850, 614.4e9, 14.3e12),
        // "This machine kind": a 2-vCPU cloud VM (AMD EPYC host). All four figures are estimates:
        // the VM's share of a ~280 W 64-core socket plus memory and platform (busy 10 W, idle 2 W),
        // the two-thread read bandwidth such VMs reach (order of 15 GB/s; BENCHMARKS.md has this
        // project's runs), and 2 vCPUs × AVX2 (2 FMA × 8 FP32 lanes × 2 flops) at ~3 GHz, halved for
        // SMT siblings sharing FMA units.
        ("vm-2vcpu", 2, 10, 15e9, 96e9),
    ]

    /// The names `profile(named:)` accepts.
    public static var names: [String] { table.map(\.name) }

    /// The built-in profile called `name` (case-insensitive), with the site figures given or the
    /// defaults. Throws `unknownHardwareClass` listing the known names.
    public static func profile(named name: String,
                               pricePerKWh: Double = defaultPricePerKWh,
                               carbonPerKWh: Double = defaultCarbonPerKWh,
                               pue: Double = defaultPUE) throws -> PowerProfile {
        guard let row = table.first(where: { $0.name == name.lowercased() }) else {
            throw PlacementError.unknownHardwareClass(name: name, known: names)
        }
        return PowerProfile(device: row.name, idleWatts: row.idle, busyWatts: row.busy,
                            memoryBandwidth: row.bandwidth, flopsPerSecond: row.flops,
                            pricePerKWh: pricePerKWh, carbonPerKWh: carbonPerKWh, pue: pue)
    }
}
