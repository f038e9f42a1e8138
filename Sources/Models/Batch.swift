/// One forward step's tokens, as llama.cpp's `llama_ubatch` describes them: each token carries
/// its sequence, its position in that sequence, and whether its logits are wanted.
///
/// A continuous-batching step mixes sequences: the next token of every decoding sequence plus a
/// chunk of a prompt being prefilled. The whole step reads every weight once (one GEMM per
/// projection, one routed batch per MoE layer, one LM head product for the wanted rows) while
/// attention runs per sequence over that sequence's own KV cache.
///
/// Contract (checked by `DecoderModel.forward(_:caches:)`): a sequence's tokens are contiguous
/// in the batch and sit at consecutive positions starting at its cache's current length, so a
/// step appends to every cache it touches. Rows are computed independently of each other except
/// through attention to earlier positions of the same sequence: a row's result does not depend
/// on which other sequences share the step.
public struct Batch: Sendable {
    /// Token ids, one per row.
    public private(set) var tokens: [Int] = []
    /// Each row's position in its sequence.
    public private(set) var positions: [Int] = []
    /// Each row's sequence: an index into the caches passed with the batch.
    public private(set) var sequences: [Int] = []
    /// Whether the row's logits are returned.
    public private(set) var wantsLogits: [Bool] = []

    public init() {}

    /// Rows in the batch.
    public var count: Int { tokens.count }
    public var isEmpty: Bool { tokens.isEmpty }
    /// Rows whose logits are returned.
    public var logitRows: Int { wantsLogits.reduce(0) { $0 + ($1 ? 1 : 0) } }

    /// Appends one row.
    public mutating func append(token: Int, position: Int, sequence: Int, wantsLogits: Bool) {
        tokens.append(token)
        positions.append(position)
        sequences.append(sequence)
        self.wantsLogits.append(wantsLogits)
    }

    /// Appends `tokens` of `sequence` at positions `start...`, wanting only the last row's
    /// logits when `logitsForLast`.
    public mutating func append<C: Collection>(_ tokens: C, sequence: Int, start: Int, logitsForLast: Bool) where C.Element == Int {
        for (i, t) in tokens.enumerated() {
            append(token: t, position: start + i, sequence: sequence, wantsLogits: logitsForLast && i == tokens.count - 1)
        }
    }

    /// A batch of one sequence: `tokens` at `start...`, logits per `selection`.
    public static func single(_ tokens: [Int], start: Int, logits selection: LogitSelection) -> Batch {
        var b = Batch()
        for (i, t) in tokens.enumerated() {
            let want: Bool
            switch selection {
            case .none: want = false
            case .last: want = i == tokens.count - 1
            case .all: want = true
            }
            b.append(token: t, position: start + i, sequence: 0, wantsLogits: want)
        }
        return b
    }
}

/// A run of rows of one sequence inside a batch: rows `rows` of the batch are positions
/// `start ..< start + rows.count` of the sequence whose cache is `cache`.
public struct SequenceSpan {
    public let rows: Range<Int>
    public let cache: any KVStore
    public let start: Int

    /// The span's rows that fall in `part`, rebased to `part`'s first row (nil when none do).
    func clipped(to part: Range<Int>) -> SequenceSpan? {
        let lo = max(rows.lowerBound, part.lowerBound), hi = min(rows.upperBound, part.upperBound)
        guard lo < hi else { return nil }
        return SequenceSpan(rows: lo - part.lowerBound ..< hi - part.lowerBound, cache: cache,
                            start: start + (lo - rows.lowerBound))
    }
}

extension Array where Element == SequenceSpan {
    /// The span holding row `t` (spans are sorted and cover every row); `hint` is where to start
    /// looking and is updated, so a loop over increasing rows scans each span once.
    @inline(__always)
    func span(containing t: Int, hint: inout Int) -> SequenceSpan {
        if hint >= count || self[hint].rows.lowerBound > t { hint = 0 }
        while self[hint].rows.upperBound <= t { hint += 1 }
        return self[hint]
    }
}
