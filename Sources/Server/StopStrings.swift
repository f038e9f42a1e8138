/// Cuts generated text at the first stop string (OpenAI's `stop`), holding back any tail that
/// could still become one, so that streamed text never shows part of a stop string.
struct StopStrings {
    let stops: [String]
    /// Text received but not yet released: a possible start of a stop string.
    private(set) var held = ""

    init(_ stops: [String]) { self.stops = stops }

    /// Adds `piece`; returns the text that is safe to release, and whether a stop string matched
    /// (the text before it is released; the stop string and anything after are dropped).
    mutating func push(_ piece: String) -> (text: String, matched: Bool) {
        guard !stops.isEmpty else { return (piece, false) }
        held += piece
        var first: String.Index?
        for s in stops {
            if let r = held.range(of: s), first.map({ r.lowerBound < $0 }) ?? true { first = r.lowerBound }
        }
        if let first {
            let out = String(held[..<first])
            held = ""
            return (out, true)
        }
        // The longest suffix of `held` that is a proper prefix of some stop string waits.
        var keep = 0
        for s in stops {
            var k = min(s.count - 1, held.count)
            while k > keep {
                if held.hasSuffix(s.prefix(k)) { keep = k; break }
                k -= 1
            }
        }
        let out = String(held.dropLast(keep))
        held = String(held.suffix(keep))
        return (out, false)
    }

    /// The held text, released at the end of generation (no stop string can match any more).
    mutating func flush() -> String {
        defer { held = "" }
        return held
    }
}
