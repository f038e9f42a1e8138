import Foundation
import XCTest
@testable import Protocol

/// SplitMix64: a tiny deterministic generator so the fuzz cases are the same on every run.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

final class WireCodecTests: XCTestCase {
    // MARK: helpers

    func request(rows: UInt32 = 4, hidden: UInt32 = 8, dtype: Farside_V1_DType = .f32,
                 groups: [ExpertGroup] = [ExpertGroup(expert: 3, rows: [0, 2], weights: [0.5, 0.25]),
                                          ExpertGroup(expert: 7, rows: [1, 2, 3], weights: [1, 0.75, 0.125])]) -> Farside_V1_ExpertRequest {
        var req = Farside_V1_ExpertRequest()
        req.requestID = 42
        req.layer = 5
        req.rows = rows
        req.hidden = hidden
        req.dtype = dtype
        req.groups = groups.map { g in
            var e = Farside_V1_ExpertRows()
            e.expert = g.expert
            e.rows = g.rows
            e.weights = g.weights
            return e
        }
        return req
    }

    func expectWireError(_ expected: Farside_V1_ErrorCode, mentioning fragment: String? = nil,
                         file: StaticString = #filePath, line: UInt = #line, _ body: () throws -> Void) {
        do {
            try body()
            XCTFail("expected a WireError with code \(expected), nothing was thrown", file: file, line: line)
        } catch let e as WireError {
            XCTAssertEqual(e.code, expected, "\(e)", file: file, line: line)
            if let fragment {
                XCTAssertTrue(e.description.contains(fragment), "'\(e)' does not mention '\(fragment)'", file: file, line: line)
            }
        } catch {
            XCTFail("expected a WireError, got \(type(of: error)): \(error)", file: file, line: line)
        }
    }

    func roundTrip(_ env: Farside_V1_Envelope, file: StaticString = #filePath, line: UInt = #line) throws -> Farside_V1_Envelope {
        let bytes = try WireCodec.encode(env)
        let back = try WireCodec.decodeEnvelope(bytes)
        XCTAssertEqual(back, env, file: file, line: line)
        XCTAssertEqual(back.protocolVersion, WireCodec.protocolVersion, file: file, line: line)
        return back
    }

    // MARK: round trips

    func testRoundTripOfEveryEnvelopeBody() throws {
        var seen = Set<String>()

        let reg = try roundTrip(WireCodec.register(nodeID: "node-a", endpoint: "tcp://10.0.0.2:5555", memoryBudgetBytes: 24 << 30,
                                                   power: (device: "rtx-4090", idleWatts: 21.5, activeWatts: 450),
                                                   modelFingerprint: "sha256:abc"))
        guard case .register(let r)? = reg.body else { return XCTFail("register") }
        XCTAssertEqual(r.nodeID, "node-a")
        XCTAssertEqual(r.endpoint, "tcp://10.0.0.2:5555")
        XCTAssertEqual(r.memoryBudgetBytes, 24 << 30)
        XCTAssertTrue(r.hasPower)
        XCTAssertEqual(r.power.device, "rtx-4090")
        XCTAssertEqual(r.power.idleWatts, 21.5)
        XCTAssertEqual(r.power.activeWatts, 450)
        XCTAssertEqual(r.modelFingerprint, "sha256:abc")
        seen.insert("register")
        let noPower = try roundTrip(WireCodec.register(nodeID: "b", endpoint: "e", memoryBudgetBytes: 1, modelFingerprint: "f"))
        XCTAssertFalse(noPower.register.hasPower)

        let rr = try roundTrip(WireCodec.registerReply(accepted: false, reason: "different model"))
        guard case .registerReply(let rrb)? = rr.body else { return XCTFail("registerReply") }
        XCTAssertFalse(rrb.accepted)
        XCTAssertEqual(rrb.reason, "different model")
        XCTAssertTrue(try roundTrip(WireCodec.registerReply(accepted: true)).registerReply.accepted)
        seen.insert("registerReply")

        let a = try roundTrip(WireCodec.assignment(epoch: 9, experts: [(layer: 1, expert: 0), (layer: 1, expert: 63), (layer: 60, expert: 255)]))
        guard case .assignment(let ab)? = a.body else { return XCTFail("assignment") }
        XCTAssertEqual(ab.epoch, 9)
        XCTAssertEqual(ab.experts.map { [$0.layer, $0.expert] }, [[1, 0], [1, 63], [60, 255]])
        seen.insert("assignment")

        let ack = try roundTrip(WireCodec.assignmentAck(epoch: 9, loadedBytes: 123_456_789, error: "out of memory"))
        guard case .assignmentAck(let ackb)? = ack.body else { return XCTFail("assignmentAck") }
        XCTAssertEqual(ackb.epoch, 9)
        XCTAssertEqual(ackb.loadedBytes, 123_456_789)
        XCTAssertEqual(ackb.error, "out of memory")
        seen.insert("assignmentAck")

        let hb = try roundTrip(WireCodec.heartbeat(nodeID: "node-a", epoch: 9, busySeconds: 1.25, requests: 77,
                                                  loads: [(layer: 1, expert: 2, tokens: 300), (layer: 3, expert: 4, tokens: 5)]))
        guard case .heartbeat(let hbb)? = hb.body else { return XCTFail("heartbeat") }
        XCTAssertEqual(hbb.nodeID, "node-a")
        XCTAssertEqual(hbb.epoch, 9)
        XCTAssertEqual(hbb.busySeconds, 1.25)
        XCTAssertEqual(hbb.requests, 77)
        XCTAssertEqual(hbb.loads.map { [UInt64($0.key.layer), UInt64($0.key.expert), $0.tokens] }, [[1, 2, 300], [3, 4, 5]])
        seen.insert("heartbeat")

        guard case .drain? = try roundTrip(WireCodec.drain()).body else { return XCTFail("drain") }
        seen.insert("drain")
        guard case .shutdown? = try roundTrip(WireCodec.shutdown()).body else { return XCTFail("shutdown") }
        seen.insert("shutdown")

        let groups = [ExpertGroup(expert: 3, rows: [0, 2], weights: [0.5, 0.25]),
                      ExpertGroup(expert: 7, rows: [1, 2, 3], weights: [1, 0.75, 0.125]),
                      ExpertGroup(expert: 9, rows: [], weights: [])]
        let (reqHeader, reqBytes) = try WireCodec.encodeRequest(id: 42, layer: 5, rows: 4, hidden: 8, groups: groups)
        XCTAssertEqual(reqBytes, 4 * 8 * 4)
        let reqEnv = try WireCodec.decodeEnvelope(reqHeader)
        guard case .expertRequest(let req)? = reqEnv.body else { return XCTFail("expertRequest") }
        XCTAssertEqual(req.requestID, 42)
        XCTAssertEqual(req.layer, 5)
        XCTAssertEqual(req.rows, 4)
        XCTAssertEqual(req.hidden, 8)
        XCTAssertEqual(req.dtype, .f32)
        XCTAssertEqual(WireCodec.groups(of: req), groups)
        XCTAssertNoThrow(try WireCodec.validateRequest(req, payloadByteCount: reqBytes, maxRows: 4, maxHidden: 8))
        XCTAssertEqual(try WireCodec.encode(reqEnv), reqHeader)
        seen.insert("expertRequest")

        let (repHeader, repBytes) = try WireCodec.encodeReply(id: 42, rows: 4, hidden: 8, computeSeconds: 0.003)
        XCTAssertEqual(repBytes, 4 * 8 * 8)
        guard case .expertReply(let rep)? = try WireCodec.decodeEnvelope(repHeader).body else { return XCTFail("expertReply") }
        XCTAssertEqual(rep.requestID, 42)
        XCTAssertEqual(rep.rows, 4)
        XCTAssertEqual(rep.hidden, 8)
        XCTAssertEqual(rep.dtype, .f64)
        XCTAssertEqual(rep.computeSeconds, 0.003)
        XCTAssertNoThrow(try WireCodec.validateReply(rep, payloadByteCount: repBytes, expectedRows: 4, hidden: 8, requestID: 42, dtype: .f64))
        seen.insert("expertReply")

        let err = try roundTrip(WireCodec.errorReply(requestID: 42, code: .unknownExpert, message: "expert 7 of layer 5 is not held here"))
        guard case .error(let eb)? = err.body else { return XCTFail("error") }
        XCTAssertEqual(eb.requestID, 42)
        XCTAssertEqual(eb.code, .unknownExpert)
        XCTAssertEqual(eb.message, "expert 7 of layer 5 is not held here")
        seen.insert("error")

        // Every case of the oneof was exercised.
        XCTAssertEqual(seen.count, 10)
    }

    func testEncodeIsDeterministic() throws {
        let a = try WireCodec.encodeRequest(id: 1, layer: 2, rows: 3, hidden: 4, groups: [ExpertGroup(expert: 1, rows: [0, 1, 2], weights: [1, 2, 3])])
        let b = try WireCodec.encodeRequest(id: 1, layer: 2, rows: 3, hidden: 4, groups: [ExpertGroup(expert: 1, rows: [0, 1, 2], weights: [1, 2, 3])])
        XCTAssertEqual(a.header, b.header)
        XCTAssertEqual(a.payloadByteCount, b.payloadByteCount)
    }

    func testPayloadFramesRoundTripWithoutTheHeader() throws {
        let rows = 3, hidden = 5
        let input: [Float] = (0..<(rows * hidden)).map { Float($0) * 0.5 - 3 }
        let (header, bytes) = try WireCodec.encodeRequest(id: 1, layer: 0, rows: rows, hidden: hidden,
                                                           groups: [ExpertGroup(expert: 0, rows: [0, 1, 2], weights: [1, 1, 1])])
        // The header is small and independent of the tensor's size: the tensor is not in it.
        XCTAssertLessThan(header.count, 40)
        let frame = input.withUnsafeBufferPointer { Data(WireCodec.payloadBytes($0)) }
        XCTAssertEqual(frame.count, bytes)
        let req = try WireCodec.decodeEnvelope(header).expertRequest
        try WireCodec.validateRequest(req, payloadByteCount: frame.count, maxRows: 16, maxHidden: 16)
        XCTAssertEqual(try WireCodec.decodePayload(frame, dtype: req.dtype, count: rows * hidden), input)
        XCTAssertEqual(try WireCodec.decodePayloadF64(frame, dtype: req.dtype, count: rows * hidden), input.map(Double.init))

        // fp64 reply rows.
        let out: [Double] = (0..<(rows * hidden)).map { Double($0) / 3 }
        let outFrame = out.withUnsafeBufferPointer { Data(WireCodec.payloadBytes($0)) }
        XCTAssertEqual(try WireCodec.decodePayloadF64(outFrame, dtype: .f64, count: rows * hidden), out)
        XCTAssertEqual(try WireCodec.decodePayload(outFrame, dtype: .f64, count: rows * hidden), out.map { Float($0) })
    }

    func testHalfPrecisionPayloadsAreWidened() throws {
        // bf16: 1.0 = 0x3F80, -2.5 = 0xC020, +inf = 0x7F80
        let bf: [UInt16] = [0x3F80, 0xC020, 0x7F80, 0x0000, 0x8000]
        let bfData = bf.withUnsafeBufferPointer { Data(buffer: $0) }
        XCTAssertEqual(try WireCodec.decodePayload(bfData, dtype: .bf16, count: 5), [1, -2.5, .infinity, 0, -0])
        // f16: 1.0 = 0x3C00, -2.0 = 0xC000, 65504 = 0x7BFF, smallest subnormal = 0x0001, -inf = 0xFC00
        let h: [UInt16] = [0x3C00, 0xC000, 0x7BFF, 0x0001, 0xFC00]
        let hData = h.withUnsafeBufferPointer { Data(buffer: $0) }
        XCTAssertEqual(try WireCodec.decodePayload(hData, dtype: .f16, count: 5), [1, -2, 65504, 0x1p-24, -.infinity])
        XCTAssertTrue(WireCodec.f16ToFloat(0x7E00).isNaN)
        let req = request(rows: 1, hidden: 5, dtype: .f16, groups: [])
        XCTAssertNoThrow(try WireCodec.validateRequest(req, payloadByteCount: 10, maxRows: 1, maxHidden: 5))
        expectWireError(.malformed, mentioning: "payload") {
            try WireCodec.validateRequest(req, payloadByteCount: 20, maxRows: 1, maxHidden: 5)
        }
    }

    #if !(os(macOS) && arch(x86_64))
    func testF16WideningMatchesFloat16ForEveryBitPattern() {
        for bits in 0...UInt16.max {
            let mine = WireCodec.f16ToFloat(bits)
            let reference = Float(Float16(bitPattern: bits))
            if reference.isNaN {
                XCTAssertTrue(mine.isNaN, "0x\(String(bits, radix: 16))")
            } else {
                XCTAssertEqual(mine.bitPattern, reference.bitPattern, "0x\(String(bits, radix: 16))")
            }
        }
    }
    #endif

    func testPayloadDecodeFromUnalignedBytesAndWrongSizes() throws {
        let values: [Float] = [1.5, -2.25, 3.125]
        var bytes = [UInt8](repeating: 0, count: 1)
        values.withUnsafeBytes { bytes.append(contentsOf: $0) }
        let out = try bytes.withUnsafeBytes { raw -> [Float] in
            var out = [Float](repeating: 0, count: 3)
            try out.withUnsafeMutableBufferPointer {
                try WireCodec.decodePayload(UnsafeRawBufferPointer(rebasing: raw[1...]), dtype: .f32, into: $0)
            }
            return out
        }
        XCTAssertEqual(out, values)
        let frame = values.withUnsafeBufferPointer { Data(buffer: $0) }
        expectWireError(.malformed, mentioning: "payload") { _ = try WireCodec.decodePayload(frame, dtype: .f32, count: 4) }
        expectWireError(.malformed, mentioning: "payload") { _ = try WireCodec.decodePayload(frame.dropLast(), dtype: .f32, count: 3) }
        expectWireError(.malformed, mentioning: "dtype") { _ = try WireCodec.decodePayload(frame, dtype: .unspecified, count: 3) }
        expectWireError(.malformed, mentioning: "dtype") { _ = try WireCodec.decodePayload(frame, dtype: .UNRECOGNIZED(9), count: 3) }
        expectWireError(.tooLarge) { _ = try WireCodec.decodePayload(Data(), dtype: .f64, count: Int.max / 4) }
        XCTAssertEqual(try WireCodec.decodePayload(Data(), dtype: .f32, count: 0), [])
    }

    // MARK: version and envelope errors

    func testVersionMismatchIsRefused() throws {
        for version: UInt32 in [0, 2, 1000, .max] {
            var env = WireCodec.drain()
            env.protocolVersion = version
            let bytes = try WireCodec.encode(env)
            do {
                _ = try WireCodec.decodeEnvelope(bytes)
                XCTFail("version \(version) accepted")
            } catch let e as WireError {
                XCTAssertEqual(e, .versionMismatch(got: version, expected: WireCodec.protocolVersion))
                XCTAssertEqual(e.code, .versionMismatch)
                XCTAssertTrue(e.description.contains("protocol_version \(version)"), e.description)
            }
        }
        // An empty frame is an envelope with every field at its default: version 0.
        expectWireError(.versionMismatch) { _ = try WireCodec.decodeEnvelope(Data()) }
    }

    func testEnvelopeWithoutBodyOrWithUnknownBodyIsMalformed() throws {
        var env = Farside_V1_Envelope()
        env.protocolVersion = WireCodec.protocolVersion
        expectWireError(.malformed, mentioning: "body") { _ = try WireCodec.decodeEnvelope(try WireCodec.encode(env)) }
        // protocol_version = 1, then field 40 (not in this schema) as an empty message.
        let future = Data([0x08, 0x01, 0xC2, 0x02, 0x00])
        expectWireError(.malformed, mentioning: "body") { _ = try WireCodec.decodeEnvelope(future) }
    }

    func testGarbageAndTruncatedHeadersThrowMalformed() throws {
        expectWireError(.malformed, mentioning: "envelope") { _ = try WireCodec.decodeEnvelope(Data([0xFF])) }
        expectWireError(.malformed, mentioning: "envelope") { _ = try WireCodec.decodeEnvelope(Data([0x08])) }  // tag without value
        expectWireError(.malformed, mentioning: "envelope") { _ = try WireCodec.decodeEnvelope(Data("hello, farside".utf8)) }
        let (header, _) = try WireCodec.encodeRequest(id: 7, layer: 1, rows: 4, hidden: 8, groups: [
            ExpertGroup(expert: 2, rows: [0, 1, 2, 3], weights: [0.1, 0.2, 0.3, 0.4]),
        ])
        // Every strict prefix either fails to parse or (if it ends on a field boundary) is an
        // incomplete message; none may trap, and the full header decodes.
        for n in 0..<header.count {
            do {
                let env = try WireCodec.decodeEnvelope(header.prefix(n))
                if case .expertRequest(let req)? = env.body {
                    _ = try? WireCodec.validateRequest(req, payloadByteCount: 128, maxRows: 4, maxHidden: 8)
                }
            } catch {
                XCTAssertTrue(error is WireError, "prefix \(n): \(error)")
            }
        }
        XCTAssertNoThrow(try WireCodec.decodeEnvelope(header))
        expectWireError(.tooLarge, mentioning: "envelope") { _ = try WireCodec.decodeEnvelope(header, maxBytes: header.count - 1) }
    }

    /// Decodes (and, for requests and replies, validates) one fuzz input: it must either succeed
    /// or throw a `WireError` — a trap would end the test process.
    func fuzzOne(_ bytes: Data, decoded: inout Int, refused: inout Int) {
        do {
            let env = try WireCodec.decodeEnvelope(bytes)
            decoded += 1
            switch env.body {
            case .expertRequest(let req):
                for payload in [0, 128, Int(req.rows) &* Int(req.hidden) &* 4] {
                    do { try WireCodec.validateRequest(req, payloadByteCount: payload, maxRows: .max, maxHidden: .max) }
                    catch { XCTAssertTrue(error is WireError, "\(error)") }
                    do { try WireCodec.validateRequest(req, payloadByteCount: payload, maxRows: 4096, maxHidden: 8192) }
                    catch { XCTAssertTrue(error is WireError, "\(error)") }
                }
            case .expertReply(let rep):
                do { try WireCodec.validateReply(rep, payloadByteCount: 256, expectedRows: 4, hidden: 8) }
                catch { XCTAssertTrue(error is WireError, "\(error)") }
            default:
                break
            }
            // Whatever decoded re-encodes.
            XCTAssertNoThrow(try WireCodec.encode(env))
        } catch {
            refused += 1
            XCTAssertTrue(error is WireError, "\(type(of: error)): \(error)")
        }
    }

    func testTenThousandSeededRandomByteStringsDecodeOrThrow() {
        var rng = SeededGenerator(seed: 0xFA25_1DE0)
        var decoded = 0, refused = 0
        for i in 0..<10_000 {
            let count = Int.random(in: 0...(i % 10 == 0 ? 512 : 64), using: &rng)
            var bytes = [UInt8](repeating: 0, count: count)
            for j in 0..<count { bytes[j] = UInt8.random(in: 0...255, using: &rng) }
            switch i % 4 {
            case 0:
                // A valid version field first, so the body parser gets exercised.
                bytes = [0x08, 0x01] + bytes
            case 1:
                // A valid version and a body field (10...21, length-delimited) around short
                // random content, so nested messages are parsed from random bytes.
                let inner = Array(bytes.prefix(Int.random(in: 0...12, using: &rng)))
                let tag = UInt8.random(in: 10...21, using: &rng) << 3 | 2  // 80...170, as a varint:
                let tagBytes: [UInt8] = tag < 0x80 ? [tag] : [tag | 0x80, 0x01]
                bytes = [0x08, 0x01] + tagBytes + [UInt8(inner.count)] + inner
            default:
                break
            }
            fuzzOne(Data(bytes), decoded: &decoded, refused: &refused)
        }
        print("random bytes: \(decoded) decoded, \(refused) refused")
        XCTAssertEqual(decoded + refused, 10_000)
        XCTAssertGreaterThan(decoded, 0)
        XCTAssertGreaterThan(refused, 0)
    }

    func testTenThousandSeededMutationsOfAValidHeaderDecodeOrThrow() throws {
        let (reqHeader, _) = try WireCodec.encodeRequest(id: 0xDEAD_BEEF, layer: 3, rows: 4, hidden: 8, groups: [
            ExpertGroup(expert: 1, rows: [0, 1, 3], weights: [0.5, 0.25, 0.125]),
            ExpertGroup(expert: 6, rows: [2, 3], weights: [1, 2]),
        ])
        let (repHeader, _) = try WireCodec.encodeReply(id: 9, rows: 4, hidden: 8, computeSeconds: 0.5)
        let hbHeader = try WireCodec.encode(WireCodec.heartbeat(nodeID: "n", epoch: 3, busySeconds: 1, requests: 2,
                                                                loads: [(layer: 1, expert: 2, tokens: 3)]))
        let seeds = [[UInt8](reqHeader), [UInt8](repHeader), [UInt8](hbHeader)]
        var rng = SeededGenerator(seed: 20_261_123)
        var decoded = 0, refused = 0
        for i in 0..<10_000 {
            var h = seeds[i % seeds.count]
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                switch Int.random(in: 0..<6, using: &rng) {
                case 0 where !h.isEmpty:  // overwrite a byte
                    h[Int.random(in: 0..<h.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                case 1 where !h.isEmpty:  // flip a bit
                    h[Int.random(in: 0..<h.count, using: &rng)] ^= 1 << UInt8.random(in: 0..<8, using: &rng)
                case 2 where !h.isEmpty:  // truncate
                    h.removeLast(Int.random(in: 1...h.count, using: &rng))
                case 3:  // insert a byte
                    h.insert(UInt8.random(in: 0...255, using: &rng), at: Int.random(in: 0...h.count, using: &rng))
                case 4 where !h.isEmpty:  // delete a byte
                    h.remove(at: Int.random(in: 0..<h.count, using: &rng))
                case 5 where !h.isEmpty:  // duplicate a slice (repeated fields, overlong lengths)
                    let a = Int.random(in: 0..<h.count, using: &rng), b = Int.random(in: a...h.count, using: &rng)
                    h.insert(contentsOf: h[a..<b], at: Int.random(in: 0...h.count, using: &rng))
                default:
                    h.append(0xFF)
                }
            }
            fuzzOne(Data(h), decoded: &decoded, refused: &refused)
        }
        print("mutated headers: \(decoded) decoded, \(refused) refused")
        XCTAssertEqual(decoded + refused, 10_000)
        XCTAssertGreaterThan(decoded, 0)
        XCTAssertGreaterThan(refused, 0)
    }

    // MARK: request validation

    func testValidRequestPasses() {
        XCTAssertNoThrow(try WireCodec.validateRequest(request(), payloadByteCount: 4 * 8 * 4, maxRows: 4, maxHidden: 8))
        XCTAssertNoThrow(try WireCodec.validateRequest(request(dtype: .bf16), payloadByteCount: 4 * 8 * 2, maxRows: 64, maxHidden: 64))
    }

    func testPayloadSizeMismatch() {
        for bytes in [0, 4 * 8 * 4 - 1, 4 * 8 * 4 + 1, 4 * 8 * 2, 4 * 8 * 8] {
            expectWireError(.malformed, mentioning: "payload") {
                try WireCodec.validateRequest(self.request(), payloadByteCount: bytes, maxRows: 64, maxHidden: 64)
            }
        }
    }

    /// An expert computes a row once: repeated or descending rows in a group are refused, and
    /// so are more routes than rows × the receiver's top-k.
    func testDuplicateRowsAndRoutesOverTopK() {
        for rows: [UInt32] in [[1, 1], [2, 1], [0, 3, 3]] {
            let req = request(groups: [ExpertGroup(expert: 3, rows: rows, weights: rows.map { _ in 0.5 })])
            expectWireError(.malformed, mentioning: "strictly increasing") {
                try WireCodec.validateRequest(req, payloadByteCount: 4 * 8 * 4, maxRows: 64, maxHidden: 64)
            }
        }
        let many = request(rows: 4, groups: [ExpertGroup(expert: 3, rows: [0, 1, 2, 3], weights: [1, 1, 1, 1]),
                                             ExpertGroup(expert: 7, rows: [0, 1, 2, 3], weights: [1, 1, 1, 1]),
                                             ExpertGroup(expert: 9, rows: [0], weights: [1])])
        expectWireError(.tooLarge, mentioning: "9 routes for 4 rows") {
            try WireCodec.validateRequest(many, payloadByteCount: 4 * 8 * 4, maxRows: 64, maxHidden: 64, maxRoutesPerRow: 2)
        }
        XCTAssertNoThrow(try WireCodec.validateRequest(many, payloadByteCount: 4 * 8 * 4, maxRows: 64, maxHidden: 64, maxRoutesPerRow: 3))
    }

    func testRowIndexOutOfRange() {
        let req = request(groups: [ExpertGroup(expert: 3, rows: [0, 4], weights: [0.5, 0.5])])
        expectWireError(.malformed, mentioning: "groups[0].rows[1]") {
            try WireCodec.validateRequest(req, payloadByteCount: 4 * 8 * 4, maxRows: 64, maxHidden: 64)
        }
        let far = request(groups: [ExpertGroup(expert: 1, rows: [0], weights: [1]),
                                   ExpertGroup(expert: 3, rows: [.max], weights: [1])])
        expectWireError(.malformed, mentioning: "groups[1].rows[0]") {
            try WireCodec.validateRequest(far, payloadByteCount: 4 * 8 * 4, maxRows: 64, maxHidden: 64)
        }
        // The sender-side encoder catches it too.
        expectWireError(.malformed, mentioning: "rows[0]") {
            _ = try WireCodec.encodeRequest(id: 1, layer: 0, rows: 2, hidden: 2, groups: [ExpertGroup(expert: 0, rows: [2], weights: [1])])
        }
    }

    func testWeightsAndRowsLengthMismatch() {
        for (rows, weights): ([UInt32], [Float]) in [([0, 1], [1]), ([0], [1, 1]), ([], [1]), ([3], [])] {
            let req = request(groups: [ExpertGroup(expert: 3, rows: rows, weights: weights)])
            expectWireError(.malformed, mentioning: "groups[0]") {
                try WireCodec.validateRequest(req, payloadByteCount: 4 * 8 * 4, maxRows: 64, maxHidden: 64)
            }
        }
    }

    func testDuplicateExpert() {
        let req = request(groups: [ExpertGroup(expert: 3, rows: [0], weights: [1]),
                                   ExpertGroup(expert: 4, rows: [1], weights: [1]),
                                   ExpertGroup(expert: 3, rows: [2], weights: [1])])
        expectWireError(.malformed, mentioning: "groups[2].expert") {
            try WireCodec.validateRequest(req, payloadByteCount: 4 * 8 * 4, maxRows: 64, maxHidden: 64)
        }
    }

    func testNonFiniteWeight() {
        for bad: Float in [.nan, .infinity, -.infinity, .signalingNaN] {
            let req = request(groups: [ExpertGroup(expert: 3, rows: [0, 1], weights: [0.5, bad])])
            expectWireError(.malformed, mentioning: "groups[0].weights[1]") {
                try WireCodec.validateRequest(req, payloadByteCount: 4 * 8 * 4, maxRows: 64, maxHidden: 64)
            }
        }
    }

    func testOverflowInRowsTimesHidden() {
        // No limits: 2^32-1 squared times 4 does not fit a 64-bit Int.
        let huge = request(rows: .max, hidden: .max, groups: [])
        expectWireError(.tooLarge, mentioning: "overflows") {
            try WireCodec.validateRequest(huge, payloadByteCount: 0, maxRows: .max, maxHidden: .max)
        }
        expectWireError(.tooLarge, mentioning: "overflows") {
            try WireCodec.validateReply({ var r = Farside_V1_ExpertReply(); r.rows = .max; r.hidden = .max; r.dtype = .f64; return r }(),
                                        payloadByteCount: 0, expectedRows: Int(UInt32.max), hidden: Int(UInt32.max))
        }
        expectWireError(.tooLarge) { _ = try WireCodec.payloadByteCount(rows: Int.max, hidden: 2, dtype: .f32) }
        expectWireError(.tooLarge) { _ = try WireCodec.payloadByteCount(rows: Int.max / 2, hidden: 1, dtype: .f32) }
        expectWireError(.malformed, mentioning: "rows") { _ = try WireCodec.payloadByteCount(rows: -1, hidden: 2, dtype: .f32) }
        XCTAssertEqual(try WireCodec.payloadByteCount(rows: 3, hidden: 5, dtype: .bf16), 30)
        // With limits, the limit is hit first.
        expectWireError(.tooLarge, mentioning: "rows") {
            try WireCodec.validateRequest(huge, payloadByteCount: 0, maxRows: 1 << 16, maxHidden: 1 << 16)
        }
        expectWireError(.tooLarge, mentioning: "hidden") {
            try WireCodec.validateRequest(self.request(rows: 4, hidden: 1 << 17), payloadByteCount: 4 << 19, maxRows: 1 << 16, maxHidden: 1 << 16)
        }
        expectWireError(.tooLarge, mentioning: "rows") {
            _ = try WireCodec.encodeRequest(id: 0, layer: 0, rows: Int(UInt32.max) + 1, hidden: 1, groups: [])
        }
    }

    func testUnknownOrWrongDTypeAndEmptyShapes() {
        expectWireError(.malformed, mentioning: "dtype") {
            try WireCodec.validateRequest(self.request(dtype: .unspecified), payloadByteCount: 128, maxRows: 64, maxHidden: 64)
        }
        expectWireError(.malformed, mentioning: "dtype") {
            try WireCodec.validateRequest(self.request(dtype: .UNRECOGNIZED(17)), payloadByteCount: 128, maxRows: 64, maxHidden: 64)
        }
        expectWireError(.malformed, mentioning: "F64") {
            try WireCodec.validateRequest(self.request(dtype: .f64), payloadByteCount: 256, maxRows: 64, maxHidden: 64)
        }
        expectWireError(.malformed, mentioning: "rows") {
            try WireCodec.validateRequest(self.request(rows: 0, groups: []), payloadByteCount: 0, maxRows: 64, maxHidden: 64)
        }
        expectWireError(.malformed, mentioning: "hidden") {
            try WireCodec.validateRequest(self.request(hidden: 0), payloadByteCount: 0, maxRows: 64, maxHidden: 64)
        }
    }

    // MARK: reply validation

    func testReplyValidation() {
        var rep = Farside_V1_ExpertReply()
        rep.requestID = 5
        rep.rows = 3
        rep.hidden = 4
        rep.dtype = .f64
        rep.computeSeconds = 0.01
        XCTAssertNoThrow(try WireCodec.validateReply(rep, payloadByteCount: 96, expectedRows: 3, hidden: 4))
        XCTAssertNoThrow(try WireCodec.validateReply(rep, payloadByteCount: 96, expectedRows: 3, hidden: 4, requestID: 5, dtype: .f64))
        expectWireError(.malformed, mentioning: "payload") { try WireCodec.validateReply(rep, payloadByteCount: 48, expectedRows: 3, hidden: 4) }
        expectWireError(.malformed, mentioning: "rows") { try WireCodec.validateReply(rep, payloadByteCount: 96, expectedRows: 2, hidden: 4) }
        expectWireError(.malformed, mentioning: "hidden") { try WireCodec.validateReply(rep, payloadByteCount: 96, expectedRows: 3, hidden: 8) }
        expectWireError(.malformed, mentioning: "request_id") {
            try WireCodec.validateReply(rep, payloadByteCount: 96, expectedRows: 3, hidden: 4, requestID: 6)
        }
        expectWireError(.malformed, mentioning: "dtype") {
            try WireCodec.validateReply(rep, payloadByteCount: 96, expectedRows: 3, hidden: 4, dtype: .f32)
        }
        var f32 = rep
        f32.dtype = .f32
        XCTAssertNoThrow(try WireCodec.validateReply(f32, payloadByteCount: 48, expectedRows: 3, hidden: 4))
        var unknown = rep
        unknown.dtype = .unspecified
        expectWireError(.malformed, mentioning: "dtype") { try WireCodec.validateReply(unknown, payloadByteCount: 96, expectedRows: 3, hidden: 4) }
        for bad in [Double.nan, .infinity, -1] {
            var r = rep
            r.computeSeconds = bad
            expectWireError(.malformed, mentioning: "compute_seconds") {
                try WireCodec.validateReply(r, payloadByteCount: 96, expectedRows: 3, hidden: 4)
            }
        }
    }

    // MARK: errors

    func testErrorCodesAndMessages() throws {
        XCTAssertEqual(WireError.versionMismatch(got: 2, expected: 1).code, .versionMismatch)
        XCTAssertEqual(WireError.malformed("x").code, .malformed)
        XCTAssertEqual(WireError.tooLarge("x").code, .tooLarge)
        XCTAssertEqual(WireCodec.errorCode(for: ExpertBackendError.unknownLayer(3)), .unknownLayer)
        XCTAssertEqual(WireCodec.errorCode(for: ExpertBackendError.unknownExpert(layer: 3, expert: 9)), .unknownExpert)
        XCTAssertEqual(WireCodec.errorCode(for: ExpertBackendError.shapeMismatch("x")), .malformed)
        XCTAssertEqual(WireCodec.errorCode(for: CocoaError(.fileNoSuchFile)), .internal)

        let env = WireCodec.errorReply(requestID: 11, error: ExpertBackendError.unknownExpert(layer: 3, expert: 9))
        let back = try WireCodec.decodeEnvelope(try WireCodec.encode(env))
        XCTAssertEqual(back.error.requestID, 11)
        XCTAssertEqual(back.error.code, .unknownExpert)
        XCTAssertEqual(back.error.message, "expert backend: expert 9 of layer 3 is not held here")

        let wire = WireCodec.errorReply(requestID: 12, error: WireError.tooLarge("rows: 70000 exceeds the limit of 65536"))
        XCTAssertEqual(wire.error.code, .tooLarge)
        XCTAssertEqual(wire.error.message, "wire: too large: rows: 70000 exceeds the limit of 65536")
    }
}
