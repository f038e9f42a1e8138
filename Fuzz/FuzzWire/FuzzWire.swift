// libFuzzer target: a data-plane message as an expert node receives a request (first byte even)
// or a coordinator a reply (odd): frame 1 the protobuf header, frame 2 the raw tensor payload.
// Input: mode byte, header length (u16 little-endian), header, payload (the rest).
import Foundation
import Protocol

/// The expert node's own bounds (ExpertNodeServer.Options defaults and a model's top-k).
let maxRows = 4096, maxHidden = 1 << 16, topK = 8

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 3 else { return 0 }
    let mode = data[0]
    let headerLength = min(Int(data[1]) | Int(data[2]) << 8, size - 3)
    let header = Data(bytes: data + 3, count: headerLength)
    let payload = Data(bytes: data + 3 + headerLength, count: size - 3 - headerLength)
    guard let env = try? WireCodec.decodeEnvelope(header, maxBytes: 1 << 20) else { return 0 }
    precondition(env.protocolVersion == WireCodec.protocolVersion && env.body != nil)
    // Whatever decodes must encode again (the node echoes fields into replies and logs).
    _ = try? WireCodec.encode(env)
    if mode & 1 == 0 {
        guard case .expertRequest(let req) = env.body else { return 0 }
        guard (try? WireCodec.validateRequest(req, payloadByteCount: payload.count, maxRows: maxRows,
                                              maxHidden: maxHidden, maxRoutesPerRow: topK)) != nil else { return 0 }
        // Validated: rows * hidden fits the bounds and matches the payload, every row index is in range.
        let n = Int(req.rows) * Int(req.hidden)
        var input = [Float](repeating: 0, count: n)
        payload.withUnsafeBytes { raw in
            input.withUnsafeMutableBufferPointer { out in
                do { try WireCodec.decodePayload(raw, dtype: req.dtype, into: out) } catch {
                    preconditionFailure("a validated request's payload did not decode: \(error)")
                }
            }
        }
        for g in WireCodec.groups(of: req) {
            precondition(g.rows.count == g.weights.count)
            for r in g.rows { precondition(Int(r) < Int(req.rows)) }
        }
    } else {
        guard case .expertReply(let rep) = env.body else { return 0 }
        let rows = Int(rep.rows), hidden = Int(rep.hidden)
        guard (try? WireCodec.validateReply(rep, payloadByteCount: payload.count, expectedRows: rows, hidden: hidden)) != nil else { return 0 }
        do {
            let values = try WireCodec.decodePayloadF64(payload, dtype: rep.dtype, count: rows * hidden)
            precondition(values.count == rows * hidden)
        } catch {
            preconditionFailure("a validated reply's payload did not decode: \(error)")
        }
    }
    return 0
}

/// With FARSIDE_FUZZ_WRITE_SEEDS=DIR, writes seed inputs made by the real encoder (requests of
/// each dtype, replies, control messages) into DIR and exits; scripts/fuzz.sh --seed runs it.
@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    guard let dir = ProcessInfo.processInfo.environment["FARSIDE_FUZZ_WRITE_SEEDS"] else { return 0 }
    func frame(_ mode: UInt8, _ header: Data, _ payloadBytes: Int) -> Data {
        var d = Data([mode, UInt8(header.count & 0xFF), UInt8(header.count >> 8)])
        d.append(header)
        d.append(Data((0..<payloadBytes).map { UInt8(truncatingIfNeeded: $0 &* 37) }))
        return d
    }
    var seeds: [(String, Data)] = []
    for (i, dtype) in [Farside_V1_DType.f32, .f16, .bf16].enumerated() {
        let groups = [ExpertGroup(expert: 1, rows: [0, 2], weights: [0.5, 0.25]), ExpertGroup(expert: 3, rows: [1], weights: [1])]
        let (h, n) = try! WireCodec.encodeRequest(id: UInt64(i + 1), layer: 2, rows: 3, hidden: 4, dtype: dtype, groups: groups)
        seeds.append(("request-\(dtype)", frame(0, h, n)))
    }
    for dtype in [Farside_V1_DType.f64, .f32] {
        let (h, n) = try! WireCodec.encodeReply(id: 7, rows: 2, hidden: 4, dtype: dtype, computeSeconds: 0.001)
        seeds.append(("reply-\(dtype)", frame(1, h, n)))
    }
    let register = WireCodec.register(nodeID: "node-1", endpoint: "tcp://127.0.0.1:5555", memoryBudgetBytes: 1 << 30,
                                      modelFingerprint: "abc")
    seeds.append(("register", frame(0, try! WireCodec.encode(register), 0)))
    seeds.append(("error", frame(1, try! WireCodec.encode(WireCodec.errorReply(requestID: 9, code: .malformed, message: "bad")), 0)))
    for (name, data) in seeds { try! data.write(to: URL(fileURLWithPath: dir).appendingPathComponent("seed-\(name)")) }
    _exit(0)  // not exit(): LeakSanitizer would report the seeds still alive at exit
}
