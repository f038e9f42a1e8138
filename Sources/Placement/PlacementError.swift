/// Every way a placement request can be refused. Each message names the offending value and what
/// to change, so it can be shown to whoever wrote the flags or the cluster file.
public enum PlacementError: Error, Equatable, CustomStringConvertible {
    /// A power figure is NaN or infinite.
    case nonFiniteFigure(device: String, field: String)
    /// A power, bandwidth, compute, price or carbon figure is below zero.
    case negativeFigure(device: String, field: String, value: Double)
    /// A wattage above `PowerProfile.maximumWatts`: almost certainly a unit slip (mW, or a whole rack).
    case absurdWatts(device: String, field: String, value: Double)
    /// Busy power below idle power.
    case busyBelowIdle(device: String, idleWatts: Double, busyWatts: Double)
    /// A power usage effectiveness outside 1...`PowerProfile.maximumPUE`.
    case pueOutOfRange(device: String, value: Double)
    /// `HardwareClass.profile(named:)` was given a name it does not know.
    case unknownHardwareClass(name: String, known: [String])
    /// A strategy string `PlacementStrategy(parsing:)` cannot read.
    case unknownStrategy(String)
    /// Two nodes share one id.
    case duplicateNodeID(String)
    /// `available` does not have one entry per node.
    case availabilityCountMismatch(nodes: Int, available: Int)
    /// Every node is dead or draining.
    case noAvailableNode
    /// A node with a memory budget too small for even one expert.
    case nodeFitsNoExpert(node: String, memoryBytes: UInt64, expertBytes: UInt64)
    /// The available nodes' budgets together cannot hold one copy of every expert.
    case insufficientMemory(neededBytes: UInt64, availableBytes: UInt64)
    /// A layout with no layers, no experts, or a negative/non-finite figure.
    case invalidLayout(field: String, value: Double)
    /// The load's shape is not [layers][experts] of the layout.
    case loadShapeMismatch(layers: Int, experts: Int)
    /// A load entry (or its step count / duration) is negative, zero where it must not be, or not finite.
    case invalidLoad(field: String, value: Double)
    /// The current placement's shape is not [layers][experts] of the layout, or names a node that does not exist.
    case currentPlacementMismatch(String)
    /// `balanced(redundantExperts:)` outside `0...experts × (nodes − 1)`: more would need two copies on one node.
    case redundantExpertsOutOfRange(value: Int, maximum: Int)
    /// `maxStepWorkRatio` below 1 or not finite.
    case invalidStepWorkRatio(Double)
    /// `EPLB.rebalance` was given counts that do not divide as its policies require.
    case eplbShape(String)
    /// The power strategy needs a memory bandwidth or a compute figure for every available node.
    case unknownNodeSpeed(node: String)

    public var description: String {
        switch self {
        case let .nonFiniteFigure(device, field):
            return "power profile '\(device)': \(field) is not a finite number; give a plain number"
        case let .negativeFigure(device, field, value):
            return "power profile '\(device)': \(field) is \(value); it cannot be negative"
        case let .absurdWatts(device, field, value):
            return "power profile '\(device)': \(field) = \(value) W is above \(PowerProfile.maximumWatts) W for one node; give watts (not milliwatts) per node"
        case let .busyBelowIdle(device, idle, busy):
            return "power profile '\(device)': busy power \(busy) W is below idle power \(idle) W; busy must be at least idle"
        case let .pueOutOfRange(device, value):
            return "power profile '\(device)': PUE \(value) is outside 1...\(PowerProfile.maximumPUE); PUE is facility power over IT power (1 = no overhead)"
        case let .unknownHardwareClass(name, known):
            return "unknown hardware class '\(name)'; known: \(known.joined(separator: ", "))"
        case let .unknownStrategy(text):
            return "unknown placement strategy '\(text)'; use memory, balanced, balanced:R (R redundant experts per layer), power, power:energy, power:cost or power:carbon"
        case let .duplicateNodeID(id):
            return "two nodes have the id '\(id)'; give every node its own id"
        case let .availabilityCountMismatch(nodes, available):
            return "\(nodes) nodes but \(available) availability flags; give one flag per node"
        case .noAvailableNode:
            return "no node is available to hold experts (all dead or draining); start or undrain an expert node"
        case let .nodeFitsNoExpert(node, memory, expert):
            return "node '\(node)' has a memory budget of \(memory) bytes, less than one expert (\(expert) bytes); raise its budget, give 0 for unlimited, or leave the node out"
        case let .insufficientMemory(needed, available):
            return "the available nodes can hold \(available) bytes of experts but one copy of every expert needs \(needed) bytes; add nodes or raise their memory budgets"
        case let .invalidLayout(field, value):
            return "expert layout: \(field) = \(value) is not usable; layers and experts must be at least 1 and figures finite and non-negative"
        case let .loadShapeMismatch(layers, experts):
            return "expert load must have \(layers) rows (one per MoE layer) of \(experts) entries (one per expert)"
        case let .invalidLoad(field, value):
            return "expert load: \(field) = \(value); token counts must be finite and non-negative, steps and seconds positive"
        case let .currentPlacementMismatch(why):
            return "current placement does not match the layout or nodes: \(why); plan without it"
        case let .redundantExpertsOutOfRange(value, maximum):
            return "redundant experts per layer = \(value); it must be between 0 and \(maximum) (experts × (nodes − 1): no node holds two copies of one expert)"
        case let .invalidStepWorkRatio(value):
            return "maximum step work ratio \(value) must be a finite number ≥ 1 (1 = no slower than a balanced spread)"
        case let .eplbShape(why):
            return "EPLB: \(why)"
        case let .unknownNodeSpeed(node):
            return "node '\(node)' has neither a memory bandwidth nor a compute figure; the power strategy needs one (give a hardware class or --memory-bandwidth)"
        }
    }
}
