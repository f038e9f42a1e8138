import Foundation
import Kernels
import Protocol

/// The gate of a sparse MoE layer: scores every routed expert for every token and keeps `topK`.
///
/// Two families, each exactly as transformers computes it (fp32 throughout):
/// - `.softmax` (Mixtral, Qwen-MoE): p = softmax(W x); keep the top-k p; renormalise them to sum
///   to 1 when `normalizeTopK` (always for Mixtral).
/// - `.sigmoid` (DeepSeek-V3, Kimi K2): s = sigmoid(W x); *selection* uses s + b (the
///   `e_score_correction_bias`), limited to the `topkGroup` best of `groupCount` expert groups
///   (a group scores the sum of its two best biased scores); the *weights* are the unbiased s of
///   the chosen experts, renormalised when `normalizeTopK` (sum + 1e-20), times `scalingFactor`.
/// - `.every`: no gate; every token goes to every expert with weight 1. This is a dense FFN cut
///   into neuron slices (`DecoderModel.disaggregated(denseSlices:)`), run on the expert side.
public struct Router {
    public enum Scoring: Sendable { case softmax, sigmoid, every }

    public let weight: Matrix
    public let scoring: Scoring
    public let topK: Int
    public let normalizeTopK: Bool
    public let scalingFactor: Float
    public let correctionBias: [Float]?
    public let groupCount: Int
    public let topKGroups: Int

    public let expertCount: Int

    public init(weight: Matrix, scoring: Scoring, topK: Int, normalizeTopK: Bool,
                scalingFactor: Float = 1, correctionBias: [Float]? = nil,
                groupCount: Int = 1, topKGroups: Int = 1) {
        self.weight = weight
        self.expertCount = weight.rows
        self.scoring = scoring
        self.topK = topK
        self.normalizeTopK = normalizeTopK
        self.scalingFactor = scalingFactor
        self.correctionBias = correctionBias
        self.groupCount = groupCount
        self.topKGroups = topKGroups
    }

    /// A dense FFN's slices: `count` experts, all always chosen with weight 1.
    public init(everyExpert count: Int) {
        weight = Matrix(data: Router.noWeights, dtype: .f32, rows: 0, cols: 0)
        expertCount = count
        scoring = .every
        topK = count
        normalizeTopK = false
        scalingFactor = 1
        correctionBias = nil
        groupCount = 1
        topKGroups = 1
    }

    private static let noWeights = UnsafeRawPointer(UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 16))

    /// Routes `batch.rows` tokens of `x` (`[rows, hidden]`), filling `batch.experts`/`weights`.
    /// `logits` is scratch of at least `rows * expertCount` floats.
    public func route(_ x: UnsafePointer<Float>, batch: inout RoutedBatch, logits: UnsafeMutablePointer<Float>) {
        let n = batch.rows, e = expertCount, k = topK
        batch.topK = k
        batch.experts.removeAll(keepingCapacity: true)
        batch.weights.removeAll(keepingCapacity: true)
        if scoring == .every {
            for _ in 0..<n {
                for i in 0..<e { batch.experts.append(Int32(i)) }
                batch.weights.append(contentsOf: repeatElement(1, count: e))
            }
            return
        }
        Linear.forward(weight, input: x, count: n, output: logits)
        // Per-token scratch is small (experts ≤ a few hundred); stack-allocated.
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * e + 2 * groupCount) { tmp in
            let scores = tmp.baseAddress!
            let choice = scores + e
            let groupScore = choice + e
            let groupKept = groupScore + groupCount
            for t in 0..<n {
                let row = logits + t * e
                switch scoring {
                case .softmax:
                    scores.update(from: row, count: e)
                    Elementwise.softmax(scores, count: e)
                    choice.update(from: scores, count: e)
                case .every:
                    break
                case .sigmoid:
                    for i in 0..<e {
                        let s = 1 / (1 + expf(-row[i]))
                        scores[i] = s
                        choice[i] = s + (correctionBias?[i] ?? 0)
                    }
                    if groupCount > 1 {
                        let per = e / groupCount
                        for g in 0..<groupCount {
                            var best = -Float.infinity, second = -Float.infinity
                            for i in g * per ..< (g + 1) * per {
                                let v = choice[i]
                                if v > best { second = best; best = v } else if v > second { second = v }
                            }
                            groupScore[g] = per >= 2 ? best + second : best
                        }
                        // Keep the topKGroups best groups; others cannot be chosen.
                        for g in 0..<groupCount { groupKept[g] = 0 }
                        for _ in 0..<topKGroups {
                            var bi = -1
                            for g in 0..<groupCount where groupKept[g] == 0 && (bi < 0 || groupScore[g] > groupScore[bi]) { bi = g }
                            if bi >= 0 { groupKept[bi] = 1 }
                        }
                        for g in 0..<groupCount where groupKept[g] == 0 {
                            for i in g * per ..< (g + 1) * per { choice[i] = -.infinity }
                        }
                    }
                }
                // Top-k by selection score; ties go to the lower index as torch.topk does on CPU.
                let first = batch.weights.count
                var sum: Float = 0
                for _ in 0..<k {
                    var bi = -1
                    var bv = -Float.infinity
                    for i in 0..<e where bi < 0 || choice[i] > bv {
                        if batch.experts[first...].contains(Int32(i)) { continue }
                        bi = i
                        bv = choice[i]
                    }
                    batch.experts.append(Int32(bi))
                    batch.weights.append(scores[bi])
                    sum += scores[bi]
                }
                if normalizeTopK {
                    let denom = scoring == .sigmoid ? sum + 1e-20 : sum
                    for j in first..<(first + k) { batch.weights[j] /= denom }
                }
                if scalingFactor != 1 {
                    for j in first..<(first + k) { batch.weights[j] *= scalingFactor }
                }
            }
        }
    }
}
