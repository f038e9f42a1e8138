import Foundation
import Kernels

/// A Hugging Face checkpoint directory: `config.json` plus either `model.safetensors` or
/// `model.safetensors.index.json` with the shards it names.
///
/// Every weight file is memory-mapped and validated when the directory is opened; the index is
/// checked against the shards (each listed shard exists and holds the tensors mapped to it), so
/// later lookups fail only for tensors the checkpoint truly lacks. Weights are handed out in
/// place (`matrix`) or widened to fp32 copies (`vector`, `floats`), always after checking the
/// shape config.json implies. Pointers into the mappings stay valid while this object is alive.
public final class CheckpointDirectory: @unchecked Sendable {
    /// The directory.
    public let url: URL
    /// The parsed config.json.
    public let config: ConfigJSON
    /// The mapped weight files: one, or every shard in file-name order.
    public let files: [SafetensorsFile]
    /// The index file when the checkpoint is sharded.
    public let indexURL: URL?
    /// config.json's compressed-tensors `quantization_config`, nil when it has none.
    public let quantization: CompressedTensorsConfig?

    private let tensorsByName: [String: TensorInfo]
    private let sortedNames: [String]
    /// Aligned copies of tensors whose data in the file is not aligned to their element size,
    /// and INT4 weights regrouped into blocks (`int4Matrix`), by tensor name.
    private var alignedCopies: [String: UnsafeMutableRawPointer] = [:]
    private let lock = NSLock()

    /// Opens the checkpoint at `url`: reads config.json and maps and validates the weights.
    public init(url: URL) throws {
        self.url = url
        config = try ConfigJSON(contentsOf: url.appendingPathComponent("config.json"))
        quantization = try CompressedTensorsConfig(config)

        let single = url.appendingPathComponent("model.safetensors")
        let index = url.appendingPathComponent("model.safetensors.index.json")
        let fm = FileManager.default
        // transformers prefers model.safetensors when both exist; so do we.
        if fm.fileExists(atPath: single.path) {
            let file = try SafetensorsFile(url: single)
            files = [file]
            tensorsByName = file.tensors
            indexURL = nil
        } else if fm.fileExists(atPath: index.path) {
            (files, tensorsByName) = try CheckpointDirectory.openShards(index: index, directory: url)
            indexURL = index
        } else {
            throw CheckpointError.noWeights(directory: url)
        }
        sortedNames = tensorsByName.keys.sorted()
    }

    deinit {
        for p in alignedCopies.values { p.deallocate() }
    }

    private static func openShards(index: URL, directory: URL) throws -> ([SafetensorsFile], [String: TensorInfo]) {
        let data: Data
        do { data = try Data(contentsOf: index) } catch {
            throw CheckpointError.unreadableFile(index, reason: error.localizedDescription)
        }
        let byFile = try shardMap(indexData: data, index: index)
        var files: [SafetensorsFile] = []
        var tensors: [String: TensorInfo] = [:]
        tensors.reserveCapacity(byFile.values.reduce(0) { $0 + $1.count })
        for file in byFile.keys.sorted() {
            let names = byFile[file]!.sorted()
            let shardURL = directory.appendingPathComponent(file)
            let shard: SafetensorsFile
            switch Result(catching: { () throws(CheckpointError) -> SafetensorsFile in try SafetensorsFile(url: shardURL) }) {
            case .success(let f): shard = f
            case .failure(.fileNotFound): throw CheckpointError.missingShard(shardURL, index: index, tensor: names[0])
            case .failure(let e): throw e
            }
            for name in names {
                guard let t = shard.tensors[name] else {
                    throw CheckpointError.tensorNotInShard(name, shard: shardURL, index: index)
                }
                tensors[name] = t
            }
            files.append(shard)
        }
        return (files, tensors)
    }

    /// For `openShards`, before any shard is opened: each tensor's file named by the index
    /// (`model.safetensors.index.json`, read from `index`), as shard file name -> tensor names.
    static func shardMap(indexData data: Data, index: URL) throws -> [String: [String]] {
        let json: Any
        do { json = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) } catch {
            throw CheckpointError.invalidIndex(index, reason: "not valid JSON (\(jsonFailureReason(error)))")
        }
        guard let root = json as? [String: Any] else {
            throw CheckpointError.invalidIndex(index, reason: "expected a JSON object, found \(JSONValue(json).kindName)")
        }
        guard case .object(let map) = JSONValue(root["weight_map"]) else {
            let found = JSONValue(root["weight_map"])
            if case .null = found {
                throw CheckpointError.invalidIndex(index, reason: "no \"weight_map\" object")
            }
            throw CheckpointError.invalidIndex(index, reason: "\"weight_map\" must be an object mapping tensor names "
                + "to shard file names, found \(found.kindName)")
        }
        var byFile: [String: [String]] = [:]
        for (name, value) in map {
            guard case .string(let file) = JSONValue(value) else {
                throw CheckpointError.invalidIndex(index, reason: "\"weight_map\" entry for tensor '\(name)' must be a "
                    + "file name, found \(JSONValue(value).brief)")
            }
            let parts = file.split(separator: "/", omittingEmptySubsequences: false)
            guard !file.isEmpty, !file.hasPrefix("/"), !parts.contains(".."), !parts.contains("") else {
                throw CheckpointError.invalidIndex(index, reason: "\"weight_map\" maps tensor '\(name)' to \"\(file)\", "
                    + "which is not a file name inside the checkpoint directory")
            }
            byFile[file, default: []].append(name)
        }
        return byFile
    }

    // MARK: lookup

    /// Names of every tensor in the checkpoint, sorted.
    public var tensorNames: [String] { sortedNames }

    /// True when the checkpoint has a tensor called `name`.
    public func contains(_ name: String) -> Bool { tensorsByName[name] != nil }

    /// The tensor called `name`; `CheckpointError.missingTensor` when absent.
    public func tensor(_ name: String) throws -> TensorInfo {
        guard let t = tensorsByName[name] else { throw CheckpointError.missingTensor(name, url) }
        return t
    }

    /// A 2-D weight `[rows, cols]` to compute on in place. Throws `shapeMismatch` if its shape is
    /// not `[rows, cols]` (the checkpoint disagrees with config.json) and `unsupportedDType` if it
    /// is not F32, F16 or BF16. Data that the file stores misaligned for its element size is
    /// copied once to aligned memory owned by this object. A weight stored as compressed-tensors
    /// INT4 (`name` + `_packed`, `_scale`, `_shape`) comes back as `DType.int4`, regrouped once
    /// (`int4Matrix`; `QuantizationError` when its tensors disagree with `[rows, cols]`).
    public func matrix(_ name: String, rows: Int, cols: Int) throws -> Matrix {
        if isPackedInt4(name) { return try int4Matrix(name, rows: rows, cols: cols) }
        let (t, dtype) = try checked(name, shape: [rows, cols])
        return Matrix(data: aligned(t), dtype: dtype, rows: rows, cols: cols)
    }

    /// A 1-D tensor of `count` elements widened to fp32 (copied: norms, biases). Same checks as `matrix`.
    public func vector(_ name: String, count: Int) throws -> [Float] {
        let (t, dtype) = try checked(name, shape: [count])
        return CheckpointDirectory.widen(t, dtype)
    }

    /// Any-shaped F32/F16/BF16 tensor widened to fp32 (row-major copy), after checking its shape is `shape`.
    public func floats(_ name: String, shape: [Int]) throws -> [Float] {
        let (t, dtype) = try checked(name, shape: shape)
        return CheckpointDirectory.widen(t, dtype)
    }

    private func checked(_ name: String, shape: [Int]) throws -> (TensorInfo, DType) {
        let t = try tensor(name)
        guard t.shape == shape else {
            throw CheckpointError.shapeMismatch(name, file: t.file, expected: shape, found: t.shape)
        }
        guard let dtype = t.dtype.computeType else {
            throw CheckpointError.unsupportedDType(t.dtype.rawValue, tensor: name, file: t.file,
                                                   allowed: DType.allCases.map(\.rawValue))
        }
        return (t, dtype)
    }

    private func aligned(_ t: TensorInfo) -> UnsafeRawPointer {
        if Int(bitPattern: t.data) % t.dtype.byteSize == 0 { return t.data }
        return ownedCopy(key: t.name, byteCount: t.byteCount) { $0.copyMemory(from: t.data, byteCount: t.byteCount) }
    }

    /// The memory this object keeps under `key`: made once (64-byte aligned, filled by `fill`)
    /// and freed with this object.
    func ownedCopy(key: String, byteCount: Int, fill: (UnsafeMutableRawPointer) -> Void) -> UnsafeRawPointer {
        lock.lock()
        defer { lock.unlock() }
        if let p = alignedCopies[key] { return UnsafeRawPointer(p) }
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(byteCount, 1), alignment: 64)
        fill(p)
        alignedCopies[key] = p
        return UnsafeRawPointer(p)
    }

    /// `t`'s elements as fp32, read without assuming alignment.
    static func widen(_ t: TensorInfo, _ dtype: DType) -> [Float] {
        let n = t.elementCount
        let p = t.data
        switch dtype {
        case .f32:
            return [Float](unsafeUninitializedCapacity: n) { buf, count in
                for i in 0 ..< n {
                    buf[i] = Float(bitPattern: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
                }
                count = n
            }
        case .f16:
            return [Float](unsafeUninitializedCapacity: n) { buf, count in
                for i in 0 ..< n {
                    let bits = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                    buf[i] = Float(Float16(bitPattern: bits))
                }
                count = n
            }
        case .bf16:
            return [Float](unsafeUninitializedCapacity: n) { buf, count in
                for i in 0 ..< n {
                    let bits = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                    buf[i] = Float(bitPattern: UInt32(bits) << 16)
                }
                count = n
            }
        case .q8_0, .q4_0, .q4_1, .q4_K, .q5_K, .q6_K, .int4:
            // safetensors tensors never carry ggml block types (`computeType` maps none to them).
            return []
        }
    }
}
