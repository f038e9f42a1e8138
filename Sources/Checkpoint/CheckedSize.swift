/// The one place where numbers from outside (file headers, config.json, command-line flags)
/// become sizes, counts and offsets. The hot-loop targets are built with `-Ounchecked`, where an
/// overflowing `*` or `+` wraps silently and a failed `Int(Double)` conversion is undefined: such
/// arithmetic goes through these helpers, which throw a `SizeError` naming the quantity instead.
public enum CheckedSize {
    /// The product of `factors`, or `SizeError.overflow` naming `quantity` when it does not fit `Int`
    /// (or `negative` when a factor is below zero).
    public static func product(_ factors: [Int], _ quantity: @autoclosure () -> String) throws -> Int {
        var p = 1
        for f in factors {
            guard f >= 0 else { throw SizeError.negative(quantity: quantity(), value: f) }
            let (m, o) = p.multipliedReportingOverflow(by: f)
            guard !o else { throw SizeError.overflow(quantity: quantity()) }
            p = m
        }
        return p
    }

    /// The sum of `terms`, or `SizeError.overflow` naming `quantity` when it does not fit `Int`.
    public static func sum(_ terms: [Int], _ quantity: @autoclosure () -> String) throws -> Int {
        var s = 0
        for t in terms {
            guard t >= 0 else { throw SizeError.negative(quantity: quantity(), value: t) }
            let (a, o) = s.addingReportingOverflow(t)
            guard !o else { throw SizeError.overflow(quantity: quantity()) }
            s = a
        }
        return s
    }

    /// `a + b` for counts that may be huge (e.g. a prompt plus `--max-tokens`): saturates at
    /// `Int.max` instead of wrapping, for callers that cap the result anyway.
    public static func saturatingSum(_ a: Int, _ b: Int) -> Int {
        let (s, o) = a.addingReportingOverflow(b)
        return o ? Int.max : s
    }

    /// `value` rounded down to an `Int`, rejecting NaN, infinities, negatives and values that do
    /// not fit (a plain `Int(value)` traps, or in `-Ounchecked` code yields garbage).
    public static func int(_ value: Double, _ quantity: @autoclosure () -> String) throws -> Int {
        guard value.isFinite else { throw SizeError.notFinite(quantity: quantity(), value: value) }
        guard value >= 0 else { throw SizeError.negative(quantity: quantity(), value: value) }
        // 2^63 is the first double that does not fit; every smaller one converts exactly.
        guard value < 9_223_372_036_854_775_808.0 else { throw SizeError.overflow(quantity: quantity()) }
        return Int(value)
    }

    /// `value` itself when it lies in `range`, else `SizeError.outOfRange` naming `quantity`.
    @discardableResult
    public static func count(_ value: Int, in range: ClosedRange<Int>, _ quantity: @autoclosure () -> String) throws -> Int {
        guard range.contains(value) else { throw SizeError.outOfRange(quantity: quantity(), value: value, range: range) }
        return value
    }
}

/// A size or count from outside input that cannot be used. Each case names the quantity.
public enum SizeError: Error, CustomStringConvertible, Equatable {
    /// The quantity (a product or sum of outside numbers) does not fit a 64-bit integer.
    case overflow(quantity: String)
    /// A count or size that must not be negative is.
    case negative(quantity: String, value: Double)
    /// NaN or an infinity where a size was expected.
    case notFinite(quantity: String, value: Double)
    /// A count outside what Farside can hold or what is plausible.
    case outOfRange(quantity: String, value: Int, range: ClosedRange<Int>)

    public var description: String {
        switch self {
        case .overflow(let q): return "\(q) is too large (it does not fit a 64-bit integer)"
        case .negative(let q, let v): return "\(q) must not be negative, found \(v.formatted)"
        case .notFinite(let q, let v): return "\(q) must be a finite number, found \(v)"
        case .outOfRange(let q, let v, let r): return "\(q) must be in \(r.lowerBound)...\(r.upperBound), found \(v)"
        }
    }
}

extension SizeError {
    static func negative(quantity: String, value: Int) -> SizeError { .negative(quantity: quantity, value: Double(value)) }
}

private extension Double {
    /// Integral values without a trailing ".0".
    var formatted: String { self == rounded() && abs(self) < 1e18 ? String(Int64(self)) : "\(self)" }
}
