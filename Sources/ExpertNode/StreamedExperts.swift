import Foundation
import Kernels
import Models
import Protocol
import Transport

/// Why a weight-streaming node refused weights or an assignment.
public enum StreamedExpertError: Error, CustomStringConvertible {
    /// Weights arrived before the coordinator described the model (its RegisterReply).
    case noLayout
    /// The key names a layer without routed experts, or an expert past the layer's count.
    case unknownExpert(layer: Int, expert: Int)
    /// An expert is three tensors (gate, up, down), each with one payload frame.
    case tensorCount(shapes: Int, frames: Int)
    /// A storage format this build cannot compute on.
    case unknownFormat(String)
    /// Shapes that do not make a gated FFN of the model's hidden size.
    case badShape(String)
    /// A payload frame whose size is not what its shape and format take.
    case payloadSize(tensor: String, bytes: Int, expected: Int)
    /// Holding the weights would exceed the node's memory budget.
    case overBudget(needed: Int, budget: Int)
    /// An assignment names an expert whose weights never arrived.
    case notStreamed(layer: Int, expert: Int)

    public var description: String {
        switch self {
        case .noLayout:
            return "expert weights arrived before the coordinator described the model; they were dropped"
        case .unknownExpert(let l, let e):
            return "layer \(l) has no routed expert \(e) in the coordinator's model"
        case .tensorCount(let shapes, let frames):
            return "an expert is 3 tensors (gate, up, down) with one payload frame each; got \(shapes) shapes and \(frames) frames"
        case .unknownFormat(let f):
            return "unknown weight format '\(f)' (known: \(DType.allCases.map(\.rawValue).joined(separator: ", ")))"
        case .badShape(let why):
            return "the expert's tensors are not a gated FFN of this model: \(why)"
        case .payloadSize(let t, let bytes, let expected):
            return "\(t): \(bytes) payload bytes, its shape and format take \(expected)"
        case .overBudget(let needed, let budget):
            return "holding the streamed experts takes \(needed) bytes, over this node's memory budget of \(budget) (--memory-budget)"
        case .notStreamed(let l, let e):
            return "the assignment names expert \(e) of layer \(l), whose weights were not received"
        }
    }
}

/// The model a weight-streaming node serves, as its coordinator described it at registration.
public struct StreamedLayout: Equatable {
    public var fingerprint: String
    public var hidden: Int
    /// Routed layer -> expert count and top-k.
    public var layers: [Int: RoutedLayerShape]

    public struct RoutedLayerShape: Equatable {
        public var experts: Int
        public var topK: Int
    }

    /// The layout in a RegisterReply, checked: a node must not size anything from values it
    /// cannot use.
    public init(_ m: Farside_V1_ModelLayout) throws {
        guard (1...(1 << 16)).contains(Int(m.hidden)) else { throw StreamedExpertError.badShape("hidden size \(m.hidden) is not in 1...65536") }
        fingerprint = m.modelFingerprint
        hidden = Int(m.hidden)
        layers = [:]
        for l in m.layers {
            guard l.experts >= 1, l.experts <= 1 << 16, l.topK >= 1, l.topK <= l.experts, layers[Int(l.layer)] == nil, l.layer < 1 << 16 else {
                throw StreamedExpertError.badShape("routed layer \(l.layer): \(l.experts) experts, top-\(l.topK)")
            }
            layers[Int(l.layer)] = RoutedLayerShape(experts: Int(l.experts), topK: Int(l.topK))
        }
    }

    /// The layout of `model`'s routed layers, to send to a weight-streaming node.
    public static func message(of model: DecoderModel, fingerprint: String) -> Farside_V1_ModelLayout {
        var m = Farside_V1_ModelLayout()
        m.modelFingerprint = fingerprint
        m.hidden = UInt32(model.hidden)
        m.layers = model.sparseLayers.map { s in
            var l = Farside_V1_RoutedLayer()
            l.layer = UInt32(s.layer)
            l.experts = UInt32(s.experts)
            l.topK = UInt32(s.router.topK)
            return l
        }
        return m
    }
}

/// Expert weights a node without a model file received from its coordinator (`ExpertWeights`
/// messages): owned copies, kept until an assignment no longer names them.
///
/// Everything about a message is checked before memory is taken for it: the key against the
/// layout, the shapes against the hidden size and each other, the payload sizes against shape
/// and format, and the total against the memory budget. A message that fails leaves the store
/// as it was.
public final class StreamedExperts {
    public let layout: StreamedLayout
    /// Bytes of weights held.
    public private(set) var bytes = 0
    private var held: [Int: Entry] = [:]

    struct Entry {
        let ffn: SwiGLU
        let storage: WeightStorage
    }

    /// The largest intermediate size accepted (Kimi K2's experts have 2,048; dense slices of a
    /// 70B model 28,672).
    static let maxIntermediate = 1 << 18

    public init(layout: StreamedLayout) {
        self.layout = layout
    }

    /// Number of experts held.
    public var count: Int { held.count }

    /// Whether the weights of `expert` of `layer` are held.
    public func holds(layer: Int, expert: Int) -> Bool { held[layer << 20 | expert] != nil }

    /// Takes one expert's weights (replacing any held for the same key). `budget` ≤ 0: no limit.
    public func receive(_ w: Farside_V1_ExpertWeights, payload: ArraySlice<Frame>, budget: Int) throws {
        let layer = Int(w.key.layer), expert = Int(w.key.expert)
        guard let shape = layout.layers[layer], expert < shape.experts else {
            throw StreamedExpertError.unknownExpert(layer: layer, expert: expert)
        }
        guard w.tensors.count == 3, payload.count == 3 else {
            throw StreamedExpertError.tensorCount(shapes: w.tensors.count, frames: payload.count)
        }
        var formats: [DType] = []
        for t in w.tensors {
            guard let f = DType(rawValue: t.format) else { throw StreamedExpertError.unknownFormat(t.format) }
            formats.append(f)
        }
        let (g, u, d) = (w.tensors[0], w.tensors[1], w.tensors[2])
        let h = layout.hidden, inter = Int(g.rows)
        guard (1...Self.maxIntermediate).contains(inter) else {
            throw StreamedExpertError.badShape("gate has \(g.rows) rows, not in 1...\(Self.maxIntermediate)")
        }
        guard Int(g.cols) == h, Int(u.cols) == h, Int(u.rows) == inter, Int(d.rows) == h, Int(d.cols) == inter else {
            throw StreamedExpertError.badShape("gate [\(g.rows), \(g.cols)], up [\(u.rows), \(u.cols)], down [\(d.rows), \(d.cols)]; "
                + "expected gate and up [I, \(h)], down [\(h), I]")
        }
        var sizes: [Int] = []
        for (i, (t, f)) in zip(w.tensors, formats).enumerated() {
            let name = ["gate", "up", "down"][i]
            guard Int(t.cols) % f.blockElements == 0 else {
                throw StreamedExpertError.badShape("\(name) has \(t.cols) columns, not a whole number of \(f.rawValue) blocks of \(f.blockElements)")
            }
            let expected = Int(t.rows) * f.rowBytes(cols: Int(t.cols))
            let got = payload[payload.startIndex + i].count
            guard got == expected else { throw StreamedExpertError.payloadSize(tensor: name, bytes: got, expected: expected) }
            sizes.append(expected)
        }
        let total = sizes.reduce(0, +)
        let replaced = held[layer << 20 | expert]?.storage.byteCount ?? 0
        if budget > 0 && bytes - replaced + total > budget {
            throw StreamedExpertError.overBudget(needed: bytes - replaced + total, budget: budget)
        }
        // One copy into memory of our own: libzmq's buffers are released after this call and
        // carry no alignment guarantee.
        let storage = WeightStorage(byteCount: total)
        var offset = 0
        var matrices: [Matrix] = []
        for (i, t) in w.tensors.enumerated() {
            let dst = storage.pointer + offset
            payload[payload.startIndex + i].withUnsafeBytes { src in
                dst.copyMemory(from: src.baseAddress!, byteCount: sizes[i])
            }
            matrices.append(Matrix(data: UnsafeRawPointer(dst), dtype: formats[i], rows: Int(t.rows), cols: Int(t.cols)))
            // Each tensor starts 64-byte aligned, as a mapped checkpoint's would be at least 32.
            offset += (sizes[i] + 63) / 64 * 64
        }
        held[layer << 20 | expert] = Entry(ffn: SwiGLU(gate: matrices[0], up: matrices[1], down: matrices[2]), storage: storage)
        bytes += total - replaced
    }

    /// The experts `keys` names, for `LocalExperts(hidden:experts:owners:)`; throws naming the
    /// first one not received.
    public func experts(for keys: [(layer: Int, expert: Int)]) throws -> (experts: [Int: [SwiGLU?]], owners: [AnyObject]) {
        var out: [Int: [SwiGLU?]] = [:]
        var owners: [AnyObject] = []
        for (layer, shape) in layout.layers { out[layer] = [SwiGLU?](repeating: nil, count: shape.experts) }
        for k in keys {
            guard let e = held[k.layer << 20 | k.expert] else { throw StreamedExpertError.notStreamed(layer: k.layer, expert: k.expert) }
            out[k.layer]![k.expert] = e.ffn
            owners.append(e.storage)
        }
        return (out, owners)
    }

    /// Releases every expert not in `keys` (`layer << 20 | expert`).
    public func keepOnly(_ keys: Set<Int>) {
        for k in held.keys where !keys.contains(k) {
            bytes -= held[k]!.storage.byteCount
            held[k] = nil
        }
    }
}

/// Memory holding one streamed expert's tensors; freed when no `LocalExperts` and no store
/// refers to it any more.
final class WeightStorage {
    let pointer: UnsafeMutableRawPointer
    /// Bytes of weights (without the alignment padding between tensors).
    let byteCount: Int

    init(byteCount: Int) {
        self.byteCount = byteCount
        // Room for the padding that aligns each of the three tensors to 64 bytes.
        pointer = .allocate(byteCount: max(byteCount + 3 * 64, 1), alignment: 64)
    }

    deinit { pointer.deallocate() }
}
