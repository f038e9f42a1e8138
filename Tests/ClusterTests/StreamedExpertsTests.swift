import Coordinator
import ExpertNode
import Foundation
import Kernels
import Models
import Protocol
import Transport
import XCTest

/// Nodes without a model file (`farside expert --stream-weights`): the coordinator streams them
/// their experts, and what they compute equals the in-process engine bit for bit; weights that do
/// not fit the described model are refused and change nothing.
final class StreamedExpertsTests: XCTestCase {
    /// Every MoE fixture (bf16, fp32, INT4 experts) through two weight-streaming node processes:
    /// logits at every position equal the in-process engine's.
    func testWeightStreamingNodesAreBitIdenticalToInProcess() throws {
        for name in Harness.moeFixtures {
            let dir = Harness.fixtures.appendingPathComponent(name)
            let (model, _) = try ModelRegistry.load(directory: dir)
            let tokens = try Harness.reference(name).cases[2].tokens
            model.experts = try LocalExperts(model: model)
            let expected = try model.forward(tokens, cache: model.makeCache(), logits: .all)
            let cluster = try ExpertCluster(model: model, fingerprint: try ModelRegistry.fingerprint(directory: dir))
            let nodes: [Process] = try (0..<2).map { i in
                let p = Process()
                p.executableURL = try Harness.binary
                p.arguments = ["expert", "--insecure-links", "--listen", "tcp://127.0.0.1:*", "--coordinator", cluster.controlEndpoint,
                               "--stream-weights", "--node-id", "bare-\(i + 1)", "--quiet"]
                try p.run()
                return p
            }
            defer { Harness.stop(nodes) }
            try cluster.start(expecting: 2, timeout: 60)
            XCTAssertGreaterThan(cluster.streamedBytes, 0, name)
            model.experts = cluster
            let got = try model.forward(tokens, cache: model.makeCache(), logits: .all)
            XCTAssertEqual(got, expected, "\(name): logits through weight-streaming nodes differ from in process")
        }
    }

    // MARK: the node's checks, without sockets

    let hidden = 32
    let inter = 64

    func layout() throws -> StreamedLayout {
        var m = Farside_V1_ModelLayout()
        m.modelFingerprint = "test"
        m.hidden = UInt32(hidden)
        var l = Farside_V1_RoutedLayer()
        l.layer = 1
        l.experts = 4
        l.topK = 2
        m.layers = [l]
        return try StreamedLayout(m)
    }

    /// An f32 expert of layer 1 with deterministic values, as the coordinator would send it.
    func message(expert: UInt32 = 2, shapes: [(String, Int, Int)]? = nil, byteCounts: [Int]? = nil) -> (Farside_V1_ExpertWeights, [Frame]) {
        var w = Farside_V1_ExpertWeights()
        w.key.layer = 1
        w.key.expert = expert
        let s = shapes ?? [("F32", inter, hidden), ("F32", inter, hidden), ("F32", hidden, inter)]
        var frames: [Frame] = []
        for (i, (format, rows, cols)) in s.enumerated() {
            var t = Farside_V1_TensorShape()
            t.format = format
            t.rows = UInt32(rows)
            t.cols = UInt32(cols)
            w.tensors.append(t)
            let n = byteCounts?[i] ?? rows * cols * 4
            let values = (0..<(n / 4)).map { Float(($0 * 7 + i * 3) % 17) / 17 - 0.5 }
            frames.append(.bytes(values.withUnsafeBytes { Array($0) } + [UInt8](repeating: 0, count: n % 4)))
        }
        return (w, frames)
    }

    func testStreamedExpertComputesWhatItsWeightsSay() throws {
        let store = StreamedExperts(layout: try layout())
        let (w, frames) = message()
        try store.receive(w, payload: frames[...], budget: 0)
        XCTAssertEqual(store.bytes, 3 * inter * hidden * 4)
        XCTAssertTrue(store.holds(layer: 1, expert: 2))
        let (list, owners) = try store.experts(for: [(1, 2)])
        let ffn = try XCTUnwrap(list[1]?[2] ?? nil)
        XCTAssertEqual(ffn.intermediate, inter)
        // The same FFN over matrices viewing the message's own bytes.
        let raw = frames.map { $0.bytes }
        let x = (0..<hidden).map { Float($0 % 5) / 5 - 0.3 }
        var expected = [Float](repeating: 0, count: hidden), got = expected
        var scratch = [Float](repeating: 0, count: 2 * inter)
        raw[0].withUnsafeBytes { g in raw[1].withUnsafeBytes { u in raw[2].withUnsafeBytes { d in
            let ref = SwiGLU(gate: Matrix(data: g.baseAddress!, dtype: .f32, rows: inter, cols: hidden),
                             up: Matrix(data: u.baseAddress!, dtype: .f32, rows: inter, cols: hidden),
                             down: Matrix(data: d.baseAddress!, dtype: .f32, rows: hidden, cols: inter))
            ref.forward(x, count: 1, output: &expected, scratch: &scratch)
        } } }
        withExtendedLifetime(owners) { ffn.forward(x, count: 1, output: &got, scratch: &scratch) }
        XCTAssertEqual(got, expected)
        XCTAssertNotEqual(got, [Float](repeating: 0, count: hidden))
        store.keepOnly([])
        XCTAssertEqual(store.bytes, 0)
        XCTAssertThrowsError(try store.experts(for: [(1, 2)])) { XCTAssertTrue("\($0)".contains("were not received"), "\($0)") }
    }

    func testWeightsThatDoNotFitTheModelAreRefusedAndChangeNothing() throws {
        let store = StreamedExperts(layout: try layout())
        let good = message(expert: 0)
        try store.receive(good.0, payload: good.1[...], budget: 0)
        let held = store.bytes
        let bad: [(String, Farside_V1_ExpertWeights, [Frame], Int, String)] = [
            { let m = message(expert: 4); return ("expert past the layer", m.0, m.1, 0, "no routed expert 4") }(),
            { var m = message(); m.0.key.layer = 0; return ("layer without experts", m.0, m.1, 0, "layer 0 has no routed expert") }(),
            { let m = message(); return ("two frames", m.0, Array(m.1.prefix(2)), 0, "3 tensors") }(),
            { let m = message(shapes: [("F32", inter, hidden), ("F8", inter, hidden), ("F32", hidden, inter)]); return ("format", m.0, m.1, 0, "unknown weight format 'F8'") }(),
            { let m = message(shapes: [("F32", inter, hidden + 1), ("F32", inter, hidden), ("F32", hidden, inter)]); return ("hidden", m.0, m.1, 0, "not a gated FFN") }(),
            { let m = message(shapes: [("F32", inter, hidden), ("F32", inter - 1, hidden), ("F32", hidden, inter)]); return ("up rows", m.0, m.1, 0, "not a gated FFN") }(),
            { let m = message(shapes: [("F32", 0, hidden), ("F32", 0, hidden), ("F32", hidden, 0)]); return ("empty", m.0, m.1, 0, "not in 1...") }(),
            { let m = message(shapes: [("Q4_K", inter, hidden), ("F32", inter, hidden), ("F32", hidden, inter)]); return ("blocks", m.0, m.1, 0, "Q4_K blocks of 256") }(),
            { let m = message(byteCounts: [inter * hidden * 4 - 1, inter * hidden * 4, hidden * inter * 4]); return ("short payload", m.0, m.1, 0, "gate: \(inter * hidden * 4 - 1) payload bytes") }(),
            { let m = message(); return ("budget", m.0, m.1, held + 100, "over this node's memory budget") }(),
        ]
        for (what, w, frames, budget, says) in bad {
            XCTAssertThrowsError(try store.receive(w, payload: frames[...], budget: budget), what) { error in
                XCTAssertTrue("\(error)".contains(says), "\(what): \(error)")
            }
            XCTAssertEqual(store.bytes, held, what)
            XCTAssertEqual(store.count, 1, what)
        }
        // A layout that cannot be served is refused before anything is sized from it.
        var m = Farside_V1_ModelLayout()
        m.hidden = 0
        XCTAssertThrowsError(try StreamedLayout(m)) { XCTAssertTrue("\($0)".contains("hidden size 0"), "\($0)") }
        m.hidden = 8
        var l = Farside_V1_RoutedLayer()
        l.experts = 2
        l.topK = 3
        m.layers = [l]
        XCTAssertThrowsError(try StreamedLayout(m)) { XCTAssertTrue("\($0)".contains("top-3"), "\($0)") }
    }
}
