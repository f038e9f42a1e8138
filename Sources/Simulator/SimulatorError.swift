import Placement

/// Why a simulation was refused. Every case names the input (file, and line where there is one)
/// and says what to change.
public enum SimulatorError: Error, CustomStringConvertible, Equatable {
    case unreadableFile(file: String, reason: String)
    case unwritableFile(file: String, reason: String)
    case syntax(file: String, line: Int, problem: String)
    case malformedTraceLine(file: String, line: Int, problem: String)
    case emptyTrace(file: String)
    case unknownKey(file: String, line: Int, key: String, known: [String])
    case missingKey(file: String, line: Int, key: String)
    case invalidValue(file: String, line: Int, key: String, problem: String)
    case unknownNodeClass(file: String, line: Int, name: String, known: [String])
    case unknownSite(file: String, line: Int, name: String, known: [String])
    case unknownModel(name: String, known: [String])
    case invalidModelConfig(file: String, problem: String)
    case modelFitsNoNode(file: String, model: String, neededBytes: UInt64, availableBytes: UInt64)
    case routingShapeMismatch(file: String, layers: Int, experts: Int, expectedLayers: Int, expectedExperts: Int)
    case invalidOption(name: String, problem: String)
    case placement(file: String, problem: String)

    public var description: String {
        switch self {
        case let .unreadableFile(file, reason):
            return "\(file): cannot read: \(reason)"
        case let .unwritableFile(file, reason):
            return "\(file): cannot write: \(reason)"
        case let .syntax(file, line, problem):
            return "\(file):\(line): \(problem)"
        case let .malformedTraceLine(file, line, problem):
            return "\(file):\(line): bad trace line: \(problem) (want arrived_at,num_prefill_tokens,num_decode_tokens)"
        case let .emptyTrace(file):
            return "\(file): the trace has no requests"
        case let .unknownKey(file, line, key, known):
            return "\(file):\(line): unknown key '\(key)' (known here: \(known.joined(separator: ", ")))"
        case let .missingKey(file, line, key):
            return "\(file):\(line): '\(key)' is required here"
        case let .invalidValue(file, line, key, problem):
            return "\(file):\(line): '\(key)': \(problem)"
        case let .unknownNodeClass(file, line, name, known):
            return "\(file):\(line): unknown hardware class '\(name)' (known: \(known.joined(separator: ", ")); or give a 'profile:')"
        case let .unknownSite(file, line, name, known):
            return "\(file):\(line): unknown site '\(name)' (sites in this file: \(known.isEmpty ? "none" : known.joined(separator: ", ")))"
        case let .unknownModel(name, known):
            return "unknown model '\(name)': give a preset (\(known.joined(separator: ", "))) or a config.json"
        case let .invalidModelConfig(file, problem):
            return "\(file): \(problem)"
        case let .modelFitsNoNode(file, model, needed, available):
            return "\(file): \(model)'s experts need \(Self.gigabytes(needed)) but the expert nodes hold \(Self.gigabytes(available)) together: add nodes or memory, or use INT4 experts"
        case let .routingShapeMismatch(file, layers, experts, expectedLayers, expectedExperts):
            return "\(file): routing statistics of \(layers) MoE layers × \(experts) experts, but the model has \(expectedLayers) × \(expectedExperts)"
        case let .invalidOption(name, problem):
            return "\(name): \(problem)"
        case let .placement(file, problem):
            return "\(file): placement refused: \(problem)"
        }
    }

    static func gigabytes(_ bytes: UInt64) -> String {
        let g = Double(bytes) / 1e9
        return g >= 100 ? "\(Int(g.rounded())) GB" : "\((g * 10).rounded() / 10) GB"
    }
}
