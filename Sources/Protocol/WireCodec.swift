import Foundation
import SwiftProtobuf

// The codec for `farside.proto` (farside.v1): envelope encode/decode with the version check,
// builders for every envelope body, and the validation both ends of the data plane run before
// touching a tensor frame.
//
// Message layout (see farside.proto): frame 0 is a protobuf `Envelope`; data-plane messages
// (`ExpertRequest`, `ExpertReply`) carry exactly one more frame, the raw little-endian tensor
// `[rows, hidden]` of the header's `dtype`. The codec never copies a tensor into or out of the
// header: `encodeRequest` / `encodeReply` return the header and the byte count the payload
// frame must have, and the caller hands its own buffer to the transport (zero-copy).
//
// Element types:
//   F32   4 bytes  what the coordinator sends; also accepted in replies.
//   F16   2 bytes  IEEE binary16; accepted on decode, widened exactly to fp32/fp64.
//   BF16  2 bytes  bfloat16; accepted on decode, widened exactly to fp32/fp64.
//   F64   8 bytes  replies only (partial sums stay fp64 until the coordinator adds them);
//                  `validateRequest` refuses it for input rows.

/// A problem with a message on the wire. `code` is what an `ErrorReply` carries for it.
public enum WireError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The envelope's `protocol_version` is not `WireCodec.protocolVersion`.
    case versionMismatch(got: UInt32, expected: UInt32)
    /// Undecodable or inconsistent message; the reason names the offending field.
    case malformed(String)
    /// A size over a limit (or one whose byte count overflows); the reason names the field.
    case tooLarge(String)

    public var code: Farside_V1_ErrorCode {
        switch self {
        case .versionMismatch: return .versionMismatch
        case .malformed: return .malformed
        case .tooLarge: return .tooLarge
        }
    }

    public var description: String {
        switch self {
        case .versionMismatch(let got, let expected):
            return "wire: protocol_version \(got) is not supported (this build speaks \(expected))"
        case .malformed(let reason):
            return "wire: malformed message: \(reason)"
        case .tooLarge(let reason):
            return "wire: too large: \(reason)"
        }
    }
}

/// Tokens routed to one expert in one request: indices into the request's input rows and the
/// matching routing weights (`ExpertRows` on the wire).
public struct ExpertGroup: Sendable, Equatable {
    public var expert: UInt32
    public var rows: [UInt32]
    public var weights: [Float]

    public init(expert: UInt32, rows: [UInt32], weights: [Float]) {
        self.expert = expert
        self.rows = rows
        self.weights = weights
    }
}

public enum WireCodec {
    /// The `protocol_version` this build sends and the only one it accepts.
    public static let protocolVersion: UInt32 = 1

    /// Default upper bound on an envelope (frame 0) that `decodeEnvelope` will parse.
    public static let defaultMaxHeaderBytes = 64 << 20

    // MARK: - Envelopes

    /// An envelope of this build's protocol version around `body`.
    public static func envelope(_ body: Farside_V1_Envelope.OneOf_Body) -> Farside_V1_Envelope {
        var env = Farside_V1_Envelope()
        env.protocolVersion = protocolVersion
        env.body = body
        return env
    }

    /// Frame 0 bytes for `body`.
    public static func encode(_ body: Farside_V1_Envelope.OneOf_Body) throws -> Data {
        try encode(envelope(body))
    }

    /// Frame 0 bytes for an envelope built by hand (its `protocolVersion` is sent as set).
    public static func encode(_ envelope: Farside_V1_Envelope) throws -> Data {
        do {
            return try envelope.serializedData()
        } catch {
            throw WireError.malformed("envelope: cannot be encoded (\(error))")
        }
    }

    /// Parses frame 0. Throws `.tooLarge` over `maxBytes`, `.malformed` for bytes that are not an
    /// envelope or an envelope without a (known) body, and `.versionMismatch` for any
    /// `protocol_version` other than `protocolVersion` (including a missing one, which reads as 0).
    /// Never traps, whatever the bytes.
    public static func decodeEnvelope(_ frame: Data, maxBytes: Int = defaultMaxHeaderBytes) throws -> Farside_V1_Envelope {
        guard frame.count <= maxBytes else {
            throw WireError.tooLarge("envelope: \(frame.count) bytes, limit \(maxBytes)")
        }
        let env: Farside_V1_Envelope
        do {
            env = try Farside_V1_Envelope(serializedBytes: frame)
        } catch {
            throw WireError.malformed("envelope: not a farside.v1.Envelope (\(error))")
        }
        guard env.protocolVersion == protocolVersion else {
            throw WireError.versionMismatch(got: env.protocolVersion, expected: protocolVersion)
        }
        guard env.body != nil else {
            throw WireError.malformed("envelope.body: missing (no message, or one this build does not know)")
        }
        return env
    }

    // MARK: - Control plane

    /// Node -> coordinator on start-up (and after losing contact).
    public static func register(nodeID: String, endpoint: String, memoryBudgetBytes: UInt64,
                                power: (device: String, idleWatts: Double, activeWatts: Double)? = nil,
                                modelFingerprint: String) -> Farside_V1_Envelope {
        var r = Farside_V1_Register()
        r.nodeID = nodeID
        r.endpoint = endpoint
        r.memoryBudgetBytes = memoryBudgetBytes
        if let power {
            var p = Farside_V1_PowerProfile()
            p.device = power.device
            p.idleWatts = power.idleWatts
            p.activeWatts = power.activeWatts
            r.power = p
        }
        r.modelFingerprint = modelFingerprint
        return envelope(.register(r))
    }

    public static func registerReply(accepted: Bool, reason: String = "") -> Farside_V1_Envelope {
        var r = Farside_V1_RegisterReply()
        r.accepted = accepted
        r.reason = reason
        return envelope(.registerReply(r))
    }

    /// Coordinator -> node: the complete set of (layer, expert) pairs the node should hold.
    public static func assignment(epoch: UInt64, experts: [(layer: UInt32, expert: UInt32)]) -> Farside_V1_Envelope {
        var a = Farside_V1_Assignment()
        a.epoch = epoch
        a.experts = experts.map { key in
            var k = Farside_V1_ExpertKey()
            k.layer = key.layer
            k.expert = key.expert
            return k
        }
        return envelope(.assignment(a))
    }

    /// `error` non-empty when the node could not load its assignment.
    public static func assignmentAck(epoch: UInt64, loadedBytes: UInt64, error: String = "") -> Farside_V1_Envelope {
        var a = Farside_V1_AssignmentAck()
        a.epoch = epoch
        a.loadedBytes = loadedBytes
        a.error = error
        return envelope(.assignmentAck(a))
    }

    /// Node -> coordinator, periodically; `loads` are routed tokens per expert since the last one.
    public static func heartbeat(nodeID: String, epoch: UInt64, busySeconds: Double, requests: UInt64,
                                 loads: [(layer: UInt32, expert: UInt32, tokens: UInt64)] = []) -> Farside_V1_Envelope {
        var h = Farside_V1_Heartbeat()
        h.nodeID = nodeID
        h.epoch = epoch
        h.busySeconds = busySeconds
        h.requests = requests
        h.loads = loads.map { l in
            var e = Farside_V1_ExpertLoad()
            var k = Farside_V1_ExpertKey()
            k.layer = l.layer
            k.expert = l.expert
            e.key = k
            e.tokens = l.tokens
            return e
        }
        return envelope(.heartbeat(h))
    }

    public static func drain() -> Farside_V1_Envelope { envelope(.drain(Farside_V1_Drain())) }

    public static func shutdown() -> Farside_V1_Envelope { envelope(.shutdown(Farside_V1_Shutdown())) }

    public static func errorReply(requestID: UInt64, code: Farside_V1_ErrorCode, message: String) -> Farside_V1_Envelope {
        var e = Farside_V1_ErrorReply()
        e.requestID = requestID
        e.code = code
        e.message = message
        return envelope(.error(e))
    }

    /// An error reply for any error: `WireError` and `ExpertBackendError` keep their meaning
    /// (see `errorCode(for:)`), the message is the error's description.
    public static func errorReply(requestID: UInt64, error: any Error) -> Farside_V1_Envelope {
        errorReply(requestID: requestID, code: errorCode(for: error), message: String(describing: error))
    }

    /// `WireError.code`; `ExpertBackendError` -> UNKNOWN_LAYER / UNKNOWN_EXPERT / MALFORMED
    /// (shape mismatch); anything else -> INTERNAL.
    public static func errorCode(for error: any Error) -> Farside_V1_ErrorCode {
        if let e = error as? WireError { return e.code }
        if let e = error as? ExpertBackendError {
            switch e {
            case .unknownLayer: return .unknownLayer
            case .unknownExpert: return .unknownExpert
            case .shapeMismatch: return .malformed
            }
        }
        return .internal
    }

    // MARK: - Data plane: sizes

    /// Bytes per element, or nil for UNSPECIFIED / unrecognised values.
    public static func elementSize(_ dtype: Farside_V1_DType) -> Int? {
        switch dtype {
        case .f32: return 4
        case .f16, .bf16: return 2
        case .f64: return 8
        case .unspecified, .UNRECOGNIZED: return nil
        }
    }

    /// `rows * hidden * elementSize(dtype)`, overflow-checked: `.tooLarge` if it does not fit an
    /// `Int`, `.malformed` for a negative dimension or an unknown dtype.
    public static func payloadByteCount(rows: Int, hidden: Int, dtype: Farside_V1_DType) throws -> Int {
        guard let size = elementSize(dtype) else { throw WireError.malformed("dtype: \(dtype) is not a tensor element type") }
        guard rows >= 0 else { throw WireError.malformed("rows: \(rows) is negative") }
        guard hidden >= 0 else { throw WireError.malformed("hidden: \(hidden) is negative") }
        let (elements, o1) = rows.multipliedReportingOverflow(by: hidden)
        let (bytes, o2) = elements.multipliedReportingOverflow(by: size)
        guard !o1, !o2 else {
            throw WireError.tooLarge("rows * hidden * \(size): \(rows) * \(hidden) * \(size) bytes overflows")
        }
        return bytes
    }

    // MARK: - Data plane: headers

    /// Frame 0 of an expert request. The caller sends frame 1 itself: the input rows
    /// `[rows, hidden]` as raw little-endian bytes of `dtype` (for F32 on a little-endian host,
    /// the `Float` buffer as is — see `payloadBytes(_:)`), exactly `payloadByteCount` bytes.
    /// The header is checked with `validateRequest` (no size limits) so sender bugs surface here.
    public static func encodeRequest(id: UInt64, layer: UInt32, rows: Int, hidden: Int,
                                     dtype: Farside_V1_DType = .f32,
                                     groups: [ExpertGroup]) throws -> (header: Data, payloadByteCount: Int) {
        guard let r = UInt32(exactly: rows) else { throw WireError.tooLarge("rows: \(rows) does not fit uint32") }
        guard let h = UInt32(exactly: hidden) else { throw WireError.tooLarge("hidden: \(hidden) does not fit uint32") }
        var req = Farside_V1_ExpertRequest()
        req.requestID = id
        req.layer = layer
        req.rows = r
        req.hidden = h
        req.dtype = dtype
        req.groups = groups.map { g in
            var e = Farside_V1_ExpertRows()
            e.expert = g.expert
            e.rows = g.rows
            e.weights = g.weights
            return e
        }
        let bytes = try payloadByteCount(rows: rows, hidden: hidden, dtype: dtype)
        try validateRequest(req, payloadByteCount: bytes, maxRows: .max, maxHidden: .max)
        return (try encode(.expertRequest(req)), bytes)
    }

    /// Frame 0 of an expert reply; frame 1 is the output rows `[rows, hidden]` of `dtype`
    /// (F64 for partial sums), exactly `payloadByteCount` bytes.
    public static func encodeReply(id: UInt64, rows: Int, hidden: Int, dtype: Farside_V1_DType = .f64,
                                   computeSeconds: Double) throws -> (header: Data, payloadByteCount: Int) {
        guard let r = UInt32(exactly: rows) else { throw WireError.tooLarge("rows: \(rows) does not fit uint32") }
        guard let h = UInt32(exactly: hidden) else { throw WireError.tooLarge("hidden: \(hidden) does not fit uint32") }
        var rep = Farside_V1_ExpertReply()
        rep.requestID = id
        rep.rows = r
        rep.hidden = h
        rep.dtype = dtype
        rep.computeSeconds = computeSeconds
        let bytes = try payloadByteCount(rows: rows, hidden: hidden, dtype: dtype)
        try validateReply(rep, payloadByteCount: bytes, expectedRows: rows, hidden: hidden)
        return (try encode(.expertReply(rep)), bytes)
    }

    /// The groups of a request in codec form.
    public static func groups(of req: Farside_V1_ExpertRequest) -> [ExpertGroup] {
        req.groups.map { ExpertGroup(expert: $0.expert, rows: $0.rows, weights: $0.weights) }
    }

    // MARK: - Data plane: validation

    /// Checks an expert request against its payload frame before anything reads the tensor:
    /// - `dtype` is F32, F16 or BF16 (`.malformed`; F64 is for replies);
    /// - `rows` and `hidden` are at least 1 (`.malformed`) and at most `maxRows` / `maxHidden`
    ///   (`.tooLarge`);
    /// - `rows * hidden * elementSize` does not overflow (`.tooLarge`) and equals
    ///   `payloadByteCount` (`.malformed`);
    /// - per group: `rows.count == weights.count`, row indices strictly increasing (so distinct:
    ///   an expert computes a row once) and `< rows`, every weight finite, and no expert appears
    ///   in two groups (all `.malformed`);
    /// - at most `maxRoutesPerRow` routes per row on average: the groups' rows together are at
    ///   most `rows * maxRoutesPerRow` (`.tooLarge`; a node passes its model's top-k, which bounds
    ///   the work and the scratch memory one request can ask for).
    /// Runs in time linear in the header and allocates only a set of the group count.
    /// Does not check that `hidden` is the model's or that the layer/experts are held here.
    public static func validateRequest(_ req: Farside_V1_ExpertRequest, payloadByteCount: Int,
                                       maxRows: Int, maxHidden: Int, maxRoutesPerRow: Int = .max) throws {
        switch req.dtype {
        case .f32, .f16, .bf16: break
        case .f64: throw WireError.malformed("dtype: F64 input rows are not accepted (F32, F16 or BF16)")
        case .unspecified, .UNRECOGNIZED: throw WireError.malformed("dtype: \(req.dtype) is not a tensor element type")
        }
        let rows = Int(req.rows), hidden = Int(req.hidden)
        guard rows >= 1 else { throw WireError.malformed("rows: must be at least 1") }
        guard hidden >= 1 else { throw WireError.malformed("hidden: must be at least 1") }
        guard rows <= maxRows else { throw WireError.tooLarge("rows: \(rows) exceeds the limit of \(maxRows)") }
        guard hidden <= maxHidden else { throw WireError.tooLarge("hidden: \(hidden) exceeds the limit of \(maxHidden)") }
        let expected = try self.payloadByteCount(rows: rows, hidden: hidden, dtype: req.dtype)
        guard payloadByteCount == expected else {
            throw WireError.malformed("payload: \(payloadByteCount) bytes, but rows * hidden = \(rows) * \(hidden) of \(req.dtype) needs \(expected)")
        }
        var seen = Set<UInt32>()
        seen.reserveCapacity(req.groups.count)
        for (i, g) in req.groups.enumerated() {
            guard seen.insert(g.expert).inserted else {
                throw WireError.malformed("groups[\(i)].expert: expert \(g.expert) appears in more than one group")
            }
            guard g.rows.count == g.weights.count else {
                throw WireError.malformed("groups[\(i)]: \(g.rows.count) rows but \(g.weights.count) weights (expert \(g.expert))")
            }
            var previous: UInt32? = nil
            for (j, r) in g.rows.enumerated() {
                guard r < req.rows else {
                    throw WireError.malformed("groups[\(i)].rows[\(j)]: row \(r) out of range (request has \(rows) rows)")
                }
                if let previous, r <= previous {
                    throw WireError.malformed("groups[\(i)].rows[\(j)]: row \(r) after row \(previous) (rows must be strictly increasing: each row once per expert)")
                }
                previous = r
            }
            for (j, w) in g.weights.enumerated() where !w.isFinite {
                throw WireError.malformed("groups[\(i)].weights[\(j)]: \(w) is not finite (expert \(g.expert))")
            }
        }
        // Each group's rows are distinct and fewer than 2^32, and the header is in memory: the
        // sum cannot overflow.
        let routes = req.groups.reduce(0) { $0 + $1.rows.count }
        let (routeLimit, overflow) = rows.multipliedReportingOverflow(by: max(0, maxRoutesPerRow))
        if !overflow && routes > routeLimit {
            throw WireError.tooLarge("groups: \(routes) routes for \(rows) rows, over the limit of \(maxRoutesPerRow) experts per row")
        }
    }

    /// Checks an expert reply against the request it answers and its payload frame:
    /// `dtype` known (any of F32/F16/BF16/F64, or exactly `dtype` when given), `rows == expectedRows`,
    /// `hidden` as requested, payload size `rows * hidden * elementSize` (overflow-safe),
    /// `compute_seconds` finite and non-negative, and `request_id` when `requestID` is given.
    public static func validateReply(_ rep: Farside_V1_ExpertReply, payloadByteCount: Int, expectedRows: Int, hidden: Int,
                                     requestID: UInt64? = nil, dtype: Farside_V1_DType? = nil) throws {
        if let requestID, rep.requestID != requestID {
            throw WireError.malformed("request_id: reply is for \(rep.requestID), expected \(requestID)")
        }
        guard elementSize(rep.dtype) != nil else { throw WireError.malformed("dtype: \(rep.dtype) is not a tensor element type") }
        if let dtype, rep.dtype != dtype {
            throw WireError.malformed("dtype: reply is \(rep.dtype), expected \(dtype)")
        }
        guard Int(rep.rows) == expectedRows else {
            throw WireError.malformed("rows: reply has \(rep.rows), the request had \(expectedRows)")
        }
        guard Int(rep.hidden) == hidden else {
            throw WireError.malformed("hidden: reply has \(rep.hidden), expected \(hidden)")
        }
        let expected = try self.payloadByteCount(rows: Int(rep.rows), hidden: Int(rep.hidden), dtype: rep.dtype)
        guard payloadByteCount == expected else {
            throw WireError.malformed("payload: \(payloadByteCount) bytes, but rows * hidden = \(rep.rows) * \(rep.hidden) of \(rep.dtype) needs \(expected)")
        }
        guard rep.computeSeconds.isFinite, rep.computeSeconds >= 0 else {
            throw WireError.malformed("compute_seconds: \(rep.computeSeconds) is not a finite non-negative duration")
        }
    }

    // MARK: - Data plane: tensor frames

    #if _endian(little)
    /// The payload frame for fp32 rows, without copying: on a little-endian host the buffer's
    /// bytes are the wire format. Valid only while `values` is.
    public static func payloadBytes(_ values: UnsafeBufferPointer<Float>) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(values)
    }

    /// The payload frame for fp64 rows (replies), without copying.
    public static func payloadBytes(_ values: UnsafeBufferPointer<Double>) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(values)
    }
    #endif

    /// Widens a payload frame of `dtype` into fp32: F32 is copied, F16 and BF16 are widened
    /// exactly, F64 is rounded to nearest. `raw` may be unaligned; `out.count` elements are
    /// written and `raw.count` must be exactly `out.count * elementSize(dtype)` (`.malformed`).
    public static func decodePayload(_ raw: UnsafeRawBufferPointer, dtype: Farside_V1_DType,
                                     into out: UnsafeMutableBufferPointer<Float>) throws {
        let n = out.count
        try checkPayload(raw, dtype: dtype, count: n)
        guard n > 0, let o = out.baseAddress else { return }
        switch dtype {
        case .f32:
            #if _endian(little)
            UnsafeMutableRawPointer(o).copyMemory(from: raw.baseAddress!, byteCount: n * 4)
            #else
            for i in 0..<n { o[i] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
            #endif
        case .bf16:
            for i in 0..<n { o[i] = bf16ToFloat(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
        case .f16:
            for i in 0..<n { o[i] = f16ToFloat(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
        case .f64:
            for i in 0..<n { o[i] = Float(Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self)))) }
        case .unspecified, .UNRECOGNIZED:
            break  // refused by checkPayload
        }
    }

    /// Widens a payload frame of any dtype into fp64 (exact for all four); same rules as above.
    public static func decodePayload(_ raw: UnsafeRawBufferPointer, dtype: Farside_V1_DType,
                                     into out: UnsafeMutableBufferPointer<Double>) throws {
        let n = out.count
        try checkPayload(raw, dtype: dtype, count: n)
        guard n > 0, let o = out.baseAddress else { return }
        switch dtype {
        case .f64:
            #if _endian(little)
            UnsafeMutableRawPointer(o).copyMemory(from: raw.baseAddress!, byteCount: n * 8)
            #else
            for i in 0..<n { o[i] = Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self))) }
            #endif
        case .f32:
            for i in 0..<n { o[i] = Double(Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))) }
        case .bf16:
            for i in 0..<n { o[i] = Double(bf16ToFloat(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))) }
        case .f16:
            for i in 0..<n { o[i] = Double(f16ToFloat(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))) }
        case .unspecified, .UNRECOGNIZED:
            break
        }
    }

    /// `decodePayload` into a new fp32 array of `count` elements.
    public static func decodePayload(_ data: Data, dtype: Farside_V1_DType, count: Int) throws -> [Float] {
        guard count >= 0 else { throw WireError.malformed("payload: negative element count \(count)") }
        try data.withUnsafeBytes { try checkPayload($0, dtype: dtype, count: count) }  // before allocating
        var out = [Float](repeating: 0, count: count)
        try data.withUnsafeBytes { raw in
            try out.withUnsafeMutableBufferPointer { try decodePayload(raw, dtype: dtype, into: $0) }
        }
        return out
    }

    /// `decodePayload` into a new fp64 array of `count` elements.
    public static func decodePayloadF64(_ data: Data, dtype: Farside_V1_DType, count: Int) throws -> [Double] {
        guard count >= 0 else { throw WireError.malformed("payload: negative element count \(count)") }
        try data.withUnsafeBytes { try checkPayload($0, dtype: dtype, count: count) }  // before allocating
        var out = [Double](repeating: 0, count: count)
        try data.withUnsafeBytes { raw in
            try out.withUnsafeMutableBufferPointer { try decodePayload(raw, dtype: dtype, into: $0) }
        }
        return out
    }

    private static func checkPayload(_ raw: UnsafeRawBufferPointer, dtype: Farside_V1_DType, count: Int) throws {
        guard let size = elementSize(dtype) else { throw WireError.malformed("dtype: \(dtype) is not a tensor element type") }
        let (bytes, overflow) = count.multipliedReportingOverflow(by: size)
        guard !overflow else { throw WireError.tooLarge("payload: \(count) elements of \(dtype) overflow") }
        guard raw.count == bytes else {
            throw WireError.malformed("payload: \(raw.count) bytes, expected \(count) elements of \(dtype) = \(bytes)")
        }
    }

    /// bfloat16 bits -> Float (exact).
    @inline(__always)
    public static func bf16ToFloat(_ bits: UInt16) -> Float {
        Float(bitPattern: UInt32(bits) << 16)
    }

    /// IEEE binary16 bits -> Float (exact, including subnormals, infinities and NaN payloads).
    /// Written out rather than via `Float16`, which is unavailable on some platforms.
    @inline(__always)
    public static func f16ToFloat(_ bits: UInt16) -> Float {
        let sign = UInt32(bits & 0x8000) << 16
        let exponent = UInt32(bits >> 10) & 0x1f
        let mantissa = UInt32(bits & 0x3ff)
        if exponent == 0 {
            // Zero or subnormal: mantissa * 2^-24, exact in fp32.
            let magnitude = Float(mantissa) * 0x1p-24
            return Float(bitPattern: sign | magnitude.bitPattern)
        }
        if exponent == 0x1f {
            return Float(bitPattern: sign | 0x7f80_0000 | (mantissa << 13))
        }
        return Float(bitPattern: sign | ((exponent + 112) << 23) | (mantissa << 13))
    }
}
