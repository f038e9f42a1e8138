import Foundation
import Kernels

/// config.json's `quantization_config` for a compressed-tensors checkpoint, as Kimi K2 Thinking
/// ships it: `quant_method: "compressed-tensors"`, `format: "pack-quantized"`, and config groups
/// whose `weights` are INT4 (`num_bits` 4, `type` "int"), `symmetric`, `strategy` "group" with
/// `group_size` 32, no activation reordering, static; no activation or KV-cache quantization.
/// Anything else is refused on open with a `QuantizationError` naming the field, so a checkpoint
/// is never computed with weights read the wrong way.
///
/// Which modules are quantized is read from the tensors themselves: a module whose checkpoint
/// has `weight_packed` (with `weight_scale` and `weight_shape`) instead of `weight`. A module
/// with packed weights that the config's `ignore` list names is refused (the checkpoint and its
/// config disagree).
public struct CompressedTensorsConfig: Sendable {
    /// Values per scale group (32).
    public let groupSize: Int
    /// The union of the config groups' `targets` (class names, module names, `re:` patterns).
    public let targets: [String]
    /// Modules left unquantized (`ignore`: names or `re:` patterns).
    public let ignore: [String]

    /// The `quantization_config` of `config`, nil when it has none. Throws `QuantizationError`
    /// for a config this reader does not support.
    public init?(_ config: ConfigJSON) throws {
        guard let q = try config.object("quantization_config") else { return nil }
        let src = config.source
        func require(_ ok: Bool, _ field: String, _ found: String, _ supported: String) throws {
            guard ok else { throw QuantizationError.unsupported(field: field, found: found, supported: supported, source: src) }
        }
        let method = try q.optionalString("quant_method") ?? "(none)"
        try require(method == "compressed-tensors", "quantization_config.quant_method", method, "\"compressed-tensors\"")
        let format = try q.optionalString("format") ?? "(none)"
        try require(format == "pack-quantized", "quantization_config.format", format, "\"pack-quantized\"")
        if let status = try q.optionalString("quantization_status") {
            try require(status == "compressed", "quantization_config.quantization_status", status, "\"compressed\"")
        }
        try require(!q.has("kv_cache_scheme"), "quantization_config.kv_cache_scheme", "set", "null (no KV-cache quantization)")
        guard let groups = try q.object("config_groups"), !groups.object.isEmpty else {
            throw QuantizationError.unsupported(field: "quantization_config.config_groups", found: "missing or empty",
                                                supported: "at least one group", source: src)
        }
        var targets: [String] = []
        for name in groups.object.keys.sorted() {
            let f = "quantization_config.config_groups.\(name)."
            guard let g = try groups.object(name) else {
                throw QuantizationError.unsupported(field: String(f.dropLast()), found: "null", supported: "an object", source: src)
            }
            if let gf = try g.optionalString("format") {
                try require(gf == "pack-quantized", f + "format", gf, "\"pack-quantized\"")
            }
            for a in ["input_activations", "output_activations"] {
                try require(!g.has(a), f + a, "set", "null (weight-only quantization)")
            }
            guard let w = try g.object("weights") else {
                throw QuantizationError.unsupported(field: f + "weights", found: "missing", supported: "an object", source: src)
            }
            let bits = try w.optionalInt("num_bits")
            try require(bits == 4, f + "weights.num_bits", bits.map(String.init) ?? "missing", "4")
            let type = try w.optionalString("type") ?? "missing"
            try require(type == "int", f + "weights.type", type, "\"int\"")
            let symmetric = try w.optionalBool("symmetric")
            try require(symmetric == true, f + "weights.symmetric", symmetric.map { "\($0)" } ?? "missing", "true")
            let strategy = try w.optionalString("strategy") ?? "missing"
            try require(strategy == "group", f + "weights.strategy", strategy, "\"group\"")
            let size = try w.optionalInt("group_size")
            try require(size == Int4Packing.groupSize, f + "weights.group_size", size.map(String.init) ?? "missing",
                        "\(Int4Packing.groupSize)")
            // actorder is null, false, or a string naming a reordering ("group", "weight", "static").
            let actorder = JSONValue(w.object["actorder"])
            switch actorder {
            case .null, .bool(false): break
            default: try require(false, f + "weights.actorder", actorder.brief, "null (no activation reordering)")
            }
            let dynamic = JSONValue(w.object["dynamic"])
            switch dynamic {
            case .null, .bool(false): break
            default: try require(false, f + "weights.dynamic", dynamic.brief, "false")
            }
            targets += try g.stringArray("targets", default: [])
        }
        self.groupSize = Int4Packing.groupSize
        self.targets = targets
        self.ignore = try q.stringArray("ignore", default: [])
    }

    /// Whether `ignore` names module `module` (exactly, or by a `re:` pattern that matches at
    /// its start, as compressed-tensors' `re.match`).
    public func ignores(_ module: String) -> Bool {
        ignore.contains { pattern in
            guard pattern.hasPrefix("re:") else { return pattern == module }
            guard let re = try? NSRegularExpression(pattern: String(pattern.dropFirst(3))) else { return false }
            let range = NSRange(module.startIndex..., in: module)
            return re.firstMatch(in: module, options: [.anchored], range: range) != nil
        }
    }
}

/// A compressed-tensors checkpoint that Farside cannot read, or whose packed tensors disagree
/// with their shapes. Each message names the field or tensor and what was expected.
public enum QuantizationError: Error, CustomStringConvertible, LocalizedError, Sendable {
    /// A `quantization_config` field with a value this reader does not support.
    case unsupported(field: String, found: String, supported: String, source: String)
    /// A module has `weight_packed` but config.json has no `quantization_config`.
    case missingConfig(tensor: String, source: String)
    /// A module has `weight_packed` but `quantization_config.ignore` names it.
    case ignoredButPacked(module: String)
    /// A packed, scale or shape tensor whose dtype or shape disagrees with the weight's shape.
    case badTensor(String, file: String, reason: String)

    public var description: String {
        switch self {
        case let .unsupported(field, found, supported, source):
            return "\(source): \(field) is \(found); Farside reads compressed-tensors INT4 weights only as "
                + "symmetric pack-quantized groups of 32, so \(field) must be \(supported)"
        case let .missingConfig(tensor, source):
            return "\(source) has no quantization_config, but the checkpoint holds the packed tensor '\(tensor)'; "
                + "add the quantization_config the checkpoint was written with"
        case let .ignoredButPacked(module):
            return "module '\(module)' has packed INT4 weights but quantization_config.ignore names it: "
                + "the checkpoint and its config.json disagree"
        case let .badTensor(name, file, reason):
            return "tensor '\(name)' in \(file): \(reason)"
        }
    }

    public var errorDescription: String? { description }
}

extension CheckpointDirectory {
    /// Whether the weight called `name` (`….weight`) is stored packed (`….weight_packed`).
    func isPackedInt4(_ name: String) -> Bool {
        name.hasSuffix(".weight") && !contains(name) && contains(name + "_packed")
    }

    /// The `[rows, cols]` weight of the module `name` names, from its compressed-tensors tensors,
    /// regrouped once into `DType.int4` blocks owned by this object (4.5 bits a value, like the
    /// file). Every tensor is checked against `[rows, cols]` first.
    func int4Matrix(_ name: String, rows: Int, cols: Int) throws -> Matrix {
        let module = String(name.dropLast(".weight".count))
        guard let q = quantization else {
            throw QuantizationError.missingConfig(tensor: name + "_packed", source: config.source)
        }
        if q.ignores(module) { throw QuantizationError.ignoredButPacked(module: module) }
        let packed = try tensor(name + "_packed"), scale = try tensor(name + "_scale"), shape = try tensor(name + "_shape")
        func bad(_ t: TensorInfo, _ reason: String) -> QuantizationError {
            .badTensor(t.name, file: t.file.path, reason: reason)
        }
        guard cols % Int4Packing.groupSize == 0 else {
            throw bad(packed, "the weight has \(cols) columns, not a multiple of the group size \(Int4Packing.groupSize)")
        }
        // weight_shape: the unpacked [rows, cols], as int64 (compressed-tensors) or int32.
        guard shape.shape == [2], shape.dtype == .i64 || shape.dtype == .i32 else {
            throw bad(shape, "expected 2 integers (I64 or I32), found \(shape.dtype.rawValue) \(shape.shape)")
        }
        let dims = (0..<2).map { i in
            shape.dtype == .i64 ? Int(Int64(littleEndian: shape.data.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self)))
                : Int(Int32(littleEndian: shape.data.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)))
        }
        guard dims == [rows, cols] else {
            throw bad(shape, "says \(dims) but config.json implies [\(rows), \(cols)]")
        }
        let words = cols / Int4Packing.valuesPerWord, groups = cols / Int4Packing.groupSize
        guard packed.dtype == .i32, packed.shape == [rows, words] else {
            throw bad(packed, "is \(packed.dtype.rawValue) \(packed.shape) but a [\(rows), \(cols)] weight packs into "
                + "I32 [\(rows), \(words)] (eight 4-bit values a word)")
        }
        guard scale.dtype == .bf16, scale.shape == [rows, groups] else {
            throw bad(scale, "is \(scale.dtype.rawValue) \(scale.shape) but a [\(rows), \(cols)] weight has BF16 "
                + "[\(rows), \(groups)] scales (one per \(Int4Packing.groupSize) values)")
        }
        let p = ownedCopy(key: name, byteCount: rows * DType.int4.rowBytes(cols: cols)) { out in
            Int4Packing.blocks(packed: packed.data, scales: scale.data, rows: rows, cols: cols, into: out)
        }
        return Matrix(data: p, dtype: .int4, rows: rows, cols: cols)
    }
}
