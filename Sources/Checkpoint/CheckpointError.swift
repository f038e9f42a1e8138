import Foundation

/// Everything that can go wrong reading or writing a checkpoint. Each case carries what a user
/// needs to fix the problem, and `description` says it in one sentence: which file, which tensor
/// or config key, what was expected and what was found.
public enum CheckpointError: Error, CustomStringConvertible, LocalizedError, Sendable {
    /// A file that should exist does not. `role` says what it was for (e.g. "safetensors file").
    case fileNotFound(URL, role: String)
    /// A file exists but cannot be opened, inspected or memory-mapped (`reason` is the OS's word).
    case unreadableFile(URL, reason: String)
    /// A safetensors file shorter than its 8-byte header-length prefix (e.g. empty).
    case fileTooSmall(URL, size: Int)
    /// The 8-byte header length is absurd (over 100 MB) or runs past the end of the file.
    case invalidHeaderLength(URL, headerLength: UInt64, fileSize: Int)
    /// The JSON header is not valid JSON, not an object, or its `__metadata__` is malformed.
    case invalidHeader(URL, reason: String)
    /// One tensor's header entry lacks `dtype`/`shape`/`data_offsets` or has wrong types or values.
    case invalidTensorEntry(URL, tensor: String, reason: String)
    /// A dtype the header names but this library does not know, or (when `allowed` is non-empty)
    /// a known dtype that cannot be used where it was asked for.
    case unsupportedDType(String, tensor: String, file: URL, allowed: [String])
    /// A tensor's `data_offsets` end beyond the data the file holds (a truncated file).
    case tensorOutOfBounds(URL, tensor: String, end: Int, dataSize: Int)
    /// A tensor's `data_offsets` span a different number of bytes than its dtype and shape need.
    case byteCountMismatch(URL, tensor: String, dtype: TensorDType, shape: [Int], expected: Int, found: Int)
    /// Two tensors claim overlapping byte ranges of the data section.
    case overlappingTensors(URL, first: String, firstRange: Range<Int>, second: String, secondRange: Range<Int>)
    /// A checkpoint directory with neither `model.safetensors` nor `model.safetensors.index.json`.
    case noWeights(directory: URL)
    /// `model.safetensors.index.json` is not JSON, not an object, or its `weight_map` is malformed.
    case invalidIndex(URL, reason: String)
    /// A shard named in the index does not exist. `tensor` is one tensor the index maps to it.
    case missingShard(URL, index: URL, tensor: String)
    /// The index maps a tensor to a shard that does not contain it.
    case tensorNotInShard(String, shard: URL, index: URL)
    /// A tensor the model needs is not in the checkpoint (`URL` is the checkpoint directory).
    case missingTensor(String, URL)
    /// A tensor's shape differs from the shape config.json implies.
    case shapeMismatch(String, file: URL, expected: [Int], found: [Int])
    /// A checkpoint directory without `config.json` (`URL` is the config.json path).
    case missingConfig(URL)
    /// config.json (or another config source) is unreadable, not JSON, or not a JSON object.
    case invalidConfig(source: String, reason: String)
    /// A required config key is missing or null.
    case missingConfigKey(String, source: String)
    /// A config key holds a value of the wrong type or out of range.
    case invalidConfigValue(String, source: String, expected: String, found: String)
    /// `SafetensorsWriter` was given a tensor it cannot write (bad shape, wrong byte count, duplicate name).
    case invalidTensorForWriting(String, reason: String)
    /// Writing a file failed.
    case writeFailed(URL, reason: String)

    /// A message a user can act on.
    public var description: String {
        switch self {
        case let .fileNotFound(url, role):
            return "\(url.path): no such file (expected the \(role))"
        case let .unreadableFile(url, reason):
            return "\(url.path): cannot read: \(reason)"
        case let .fileTooSmall(url, size):
            return "\(url.path) is \(size) byte\(size == 1 ? "" : "s") long; a safetensors file starts with an "
                + "8-byte header length, so this file is empty or truncated"
        case let .invalidHeaderLength(url, n, size):
            if n > UInt64(SafetensorsFile.maxHeaderBytes) {
                return "\(url.path): the header length prefix says \(n) bytes, over the "
                    + "\(SafetensorsFile.maxHeaderBytes / 1_000_000) MB limit; this is not a safetensors file or it is corrupt"
            }
            return "\(url.path): the header length prefix says \(n) bytes but only \(max(size - 8, 0)) bytes follow it; "
                + "the file is truncated or not a safetensors file"
        case let .invalidHeader(url, reason):
            return "\(url.path): invalid safetensors header: \(reason)"
        case let .invalidTensorEntry(url, tensor, reason):
            return "\(url.path): invalid header entry for tensor '\(tensor)': \(reason)"
        case let .unsupportedDType(dtype, tensor, file, allowed):
            if allowed.isEmpty {
                return "\(file.path): tensor '\(tensor)' has dtype '\(dtype)', which is not supported "
                    + "(supported: \(TensorDType.allCases.map(\.rawValue).joined(separator: ", ")))"
            }
            return "tensor '\(tensor)' in \(file.path) has dtype \(dtype), but it must be one of "
                + "\(allowed.joined(separator: ", ")) to be used here"
        case let .tensorOutOfBounds(url, tensor, end, dataSize):
            return "\(url.path): tensor '\(tensor)' ends at byte \(end) of the data section, but the file holds only "
                + "\(dataSize) bytes of tensor data; the file is truncated"
        case let .byteCountMismatch(url, tensor, dtype, shape, expected, found):
            return "\(url.path): tensor '\(tensor)' is \(dtype.rawValue) with shape \(shape), which needs \(expected) bytes, "
                + "but its data_offsets span \(found) bytes; the header is inconsistent"
        case let .overlappingTensors(url, a, ar, b, br):
            return "\(url.path): tensors '\(a)' (bytes \(ar.lowerBound)..<\(ar.upperBound)) and '\(b)' "
                + "(bytes \(br.lowerBound)..<\(br.upperBound)) overlap in the data section; "
                + "safetensors requires non-overlapping tensors"
        case let .noWeights(dir):
            return "\(dir.path): found neither model.safetensors nor model.safetensors.index.json; "
                + "is this a Hugging Face checkpoint directory with safetensors weights?"
        case let .invalidIndex(url, reason):
            return "\(url.path): invalid safetensors index: \(reason)"
        case let .missingShard(shard, index, tensor):
            return "\(shard.path): no such file, but \(index.lastPathComponent) maps tensor '\(tensor)' to it "
                + "(incomplete download?)"
        case let .tensorNotInShard(name, shard, index):
            return "\(index.path) maps tensor '\(name)' to \(shard.lastPathComponent), but that file has no such tensor"
        case let .missingTensor(name, url):
            return "tensor '\(name)' not found in checkpoint \(url.path)"
        case let .shapeMismatch(name, file, expected, found):
            return "tensor '\(name)' in \(file.path) has shape \(found) but config.json implies \(expected): "
                + "the checkpoint disagrees with config.json"
        case let .missingConfig(url):
            return "\(url.path): no such file; a checkpoint directory needs config.json"
        case let .invalidConfig(source, reason):
            return "\(source): \(reason)"
        case let .missingConfigKey(key, source):
            return "\(source): required key \"\(key)\" is missing"
        case let .invalidConfigValue(key, source, expected, found):
            return "\(source): key \"\(key)\" should be \(expected), but it is \(found)"
        case let .invalidTensorForWriting(name, reason):
            return "cannot write tensor '\(name)': \(reason)"
        case let .writeFailed(url, reason):
            return "\(url.path): write failed: \(reason)"
        }
    }

    /// Same as `description`, so `localizedDescription` carries the message too.
    public var errorDescription: String? { description }
}
