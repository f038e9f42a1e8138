import Foundation

/// Bounds that stop runaway templates (`range(10**9)`, `'x' * 10**9`, unbounded macro recursion)
/// with an error instead of exhausting memory, time or stack.
struct RenderLimits {
    /// Bytes of text a render may produce in total, counting macro and `{% set %}` buffers.
    var maxOutputBytes = 64 << 20
    /// Largest string a single operation (`*`, `+`, `~`, `join`, `replace`...) may build.
    var maxStringBytes = 16 << 20
    /// Largest list built by `range`, `*` or a filter.
    var maxListCount = 1 << 20
    /// Statement executions plus expression evaluations.
    var maxSteps = 20_000_000
    /// Nested macro calls and for loops.
    var maxCallDepth = 24
    /// Statement and expression evaluations active at once (bounds the interpreter's recursion, and
    /// so its stack use, whatever the macros do).
    var maxNesting = 384
}

enum Flow {
    case normal, breakLoop, continueLoop
}

/// Evaluates a parsed template with jinja2's semantics (see `Value` for the Python value model).
final class Interpreter {
    let limits: RenderLimits
    let now: () -> Date
    private var steps = 0
    private var emitted = 0
    private var callDepth = 0
    private var loopDepth = 0
    private var nesting = 0

    static let globalNames: Set<String> = ["range", "dict", "namespace", "raise_exception", "strftime_now"]

    init(limits: RenderLimits, now: @escaping () -> Date) {
        self.limits = limits
        self.now = now
    }

    private func step(_ loc: SourceLocation) throws {
        steps += 1
        if steps > limits.maxSteps {
            throw ChatTemplateError.limitExceeded(
                "more than \(limits.maxSteps) evaluation steps", line: loc.line, column: loc.column)
        }
    }

    private func emit(_ s: String, into out: inout String, _ loc: SourceLocation) throws {
        emitted += s.utf8.count
        if emitted > limits.maxOutputBytes {
            throw ChatTemplateError.limitExceeded(
                "output larger than \(limits.maxOutputBytes) bytes", line: loc.line, column: loc.column)
        }
        out += s
    }

    func checkString(_ s: String) throws -> String {
        if s.utf8.count > limits.maxStringBytes {
            throw EvalFailure.limit("string longer than \(limits.maxStringBytes) bytes")
        }
        return s
    }

    func checkCount(_ n: Int) throws {
        if n > limits.maxListCount { throw EvalFailure.limit("list longer than \(limits.maxListCount) items") }
    }

    // MARK: statements

    func execute(_ nodes: [Node], scope: Scope, into out: inout String) throws -> Flow {
        for node in nodes {
            let flow = try execute(node, scope: scope, into: &out)
            if case .normal = flow { continue }
            return flow
        }
        return .normal
    }

    private func enter(_ loc: SourceLocation) throws {
        nesting += 1
        if nesting > limits.maxNesting {
            throw ChatTemplateError.limitExceeded(
                "evaluation nested deeper than \(limits.maxNesting) levels", line: loc.line, column: loc.column)
        }
    }

    private func execute(_ node: Node, scope: Scope, into out: inout String) throws -> Flow {
        try enter(SourceLocation(line: 0, column: 0))
        defer { nesting -= 1 }
        switch node {
        case .text(let s):
            emitted += s.utf8.count
            if emitted > limits.maxOutputBytes {
                throw ChatTemplateError.limitExceeded(
                    "output larger than \(limits.maxOutputBytes) bytes", line: 0, column: 0)
            }
            out += s
        case .output(let e):
            let v = try evaluate(e, scope)
            try emit(v.pyStr, into: &out, e.loc)
        case .ifBlock(let branches, let otherwise):
            for (test, body) in branches {
                try step(test.loc)
                if try evaluate(test, scope).truthy {
                    return try execute(body, scope: scope, into: &out)
                }
            }
            if let otherwise { return try execute(otherwise, scope: scope, into: &out) }
        case .forLoop(let target, let iterable, let filter, let body, let otherwise, let loc):
            try executeFor(target, iterable, filter, body, otherwise, loc, scope, &out)
        case .set(let target, let e, let loc):
            let v = try evaluate(e, scope)
            try wrap(loc) { try assign(target, v, scope) }
        case .setBlock(let target, let body, let filters, let loc):
            var buffer = ""
            _ = try execute(body, scope: Scope(parent: scope), into: &buffer)
            var v = Value.string(buffer)
            for f in filters { v = try applyFilterExpression(f, to: v, scope) }
            try wrap(loc) { try assign(target, v, scope) }
        case .macro(let m, _):
            scope.vars[m.name] = .callable(Callable(.macro(m, closure: scope)))
        case .filterBlock(let filters, let body):
            var buffer = ""
            _ = try execute(body, scope: scope, into: &buffer)
            var v = Value.string(buffer)
            for f in filters { v = try applyFilterExpression(f, to: v, scope) }
            try emit(v.pyStr, into: &out, filters.first?.loc ?? SourceLocation(line: 0, column: 0))
        case .breakLoop(let loc):
            guard loopDepth > 0 else { throw ChatTemplateError.syntax("'break' outside of a loop", line: loc.line, column: loc.column) }
            return .breakLoop
        case .continueLoop(let loc):
            guard loopDepth > 0 else {
                throw ChatTemplateError.syntax("'continue' outside of a loop", line: loc.line, column: loc.column)
            }
            return .continueLoop
        case .generation(let body):
            return try execute(body, scope: scope, into: &out)
        }
        return .normal
    }

    private func wrap<T>(_ loc: SourceLocation, _ body: () throws -> T) throws -> T {
        do { return try body() } catch let f as EvalFailure { throw f.at(loc) }
    }

    private func executeFor(
        _ target: AssignTarget, _ iterable: Expression, _ filter: Expression?, _ body: [Node], _ otherwise: [Node]?,
        _ loc: SourceLocation, _ scope: Scope, _ out: inout String
    ) throws {
        let source = try evaluate(iterable, scope)
        var items = try wrap(iterable.loc) { try iterate(source) }
        if let filter {
            var kept: [Value] = []
            for item in items {
                let s = Scope(parent: scope)
                try wrap(loc) { try assign(target, item, s) }
                if try evaluate(filter, s).truthy { kept.append(item) }
            }
            items = kept
        }
        if items.isEmpty {
            if let otherwise { _ = try execute(otherwise, scope: scope, into: &out) }
            return
        }
        callDepth += 1
        loopDepth += 1
        defer {
            callDepth -= 1
            loopDepth -= 1
        }
        if callDepth > limits.maxCallDepth {
            throw ChatTemplateError.limitExceeded(
                "loops and macro calls nested deeper than \(limits.maxCallDepth)", line: loc.line, column: loc.column)
        }
        // `loop.depth` counts recursive-loop levels only, so plain nested loops all have depth 1.
        let state = LoopState(items: items, depth0: 0)
        for (i, item) in items.enumerated() {
            try step(loc)
            state.index0 = i
            let s = Scope(parent: scope)
            try wrap(loc) { try assign(target, item, s) }
            s.vars["loop"] = .loop(state)
            let flow = try execute(body, scope: s, into: &out)
            if case .breakLoop = flow { break }
        }
    }

    private func assign(_ target: AssignTarget, _ value: Value, _ scope: Scope) throws {
        switch target {
        case .name(let n):
            scope.vars[n] = value
        case .tuple(let targets):
            let items = try iterate(value)
            guard items.count == targets.count else {
                throw EvalFailure.runtime(
                    items.count > targets.count ? "too many values to unpack (expected \(targets.count))" :
                        "not enough values to unpack (expected \(targets.count), got \(items.count))")
            }
            for (t, v) in zip(targets, items) { try assign(t, v, scope) }
        case .attribute(let name, let attr):
            guard case .namespace(let ns)? = scope.lookup(name) else {
                throw EvalFailure.runtime("cannot assign attribute on non-namespace object")
            }
            ns.attributes[attr] = value
        }
    }

    // MARK: expressions

    func evaluate(_ e: Expression, _ scope: Scope) throws -> Value {
        try step(e.loc)
        try enter(e.loc)
        defer { nesting -= 1 }
        do {
            return try evaluateKind(e, scope)
        } catch let f as EvalFailure {
            throw f.at(e.loc)
        }
    }

    private func evaluateKind(_ e: Expression, _ scope: Scope) throws -> Value {
        switch e.kind {
        case .literal(let v):
            return v
        case .name(let n):
            if let v = scope.lookup(n) { return v }
            if Self.globalNames.contains(n) { return .callable(Callable(.global(n))) }
            return .undefined(hint: "'\(n)' is undefined")
        case .list(let items):
            return .list(try items.map { try evaluate($0, scope) })
        case .tuple(let items):
            return .tuple(try items.map { try evaluate($0, scope) })
        case .dict(let pairs):
            var d = Dict()
            for (k, v) in pairs {
                let key = try evaluate(k, scope)
                guard case .string(let ks) = key else {
                    throw EvalFailure.unsupported("dict literal keys other than strings")
                }
                d[ks] = try evaluate(v, scope)
            }
            return .dict(d)
        case .getattr(let obj, let name):
            return try getAttribute(try evaluate(obj, scope), name)
        case .getitem(let obj, let key):
            let o = try evaluate(obj, scope)
            return try getItem(o, try evaluate(key, scope))
        case .slice(let obj, let a, let b, let c):
            let o = try evaluate(obj, scope)
            let start = try a.map { try evaluate($0, scope) }
            let stop = try b.map { try evaluate($0, scope) }
            let stepValue = try c.map { try evaluate($0, scope) }
            return try slice(o, start, stop, stepValue)
        case .call(let callee, let args):
            let f = try evaluate(callee, scope)
            let positional = try args.positional.map { try evaluate($0, scope) }
            let keyword = try args.keyword.map { ($0.0, try evaluate($0.1, scope)) }
            return try call(f, positional, keyword)
        case .filter(let input, let name, let args):
            let v = try input.map { try evaluate($0, scope) } ?? .undefined(hint: "filter without input")
            let positional = try args.positional.map { try evaluate($0, scope) }
            let keyword = try args.keyword.map { ($0.0, try evaluate($0.1, scope)) }
            return try Filters.apply(name, v, positional, keyword, self)
        case .test(let input, let name, let args):
            let v = try evaluate(input, scope)
            let positional = try args.positional.map { try evaluate($0, scope) }
            let keyword = try args.keyword.map { ($0.0, try evaluate($0.1, scope)) }
            return .bool(try Tests.apply(name, v, positional, keyword, self))
        case .negate(let x):
            let v = try evaluate(x, scope)
            if let f = v.undefinedFailure() { throw f }
            switch v {
            case .bool(let b): return .int(b ? -1 : 0)
            case .int(let i):
                guard i != Int.min else { throw EvalFailure.runtime("integer overflow") }
                return .int(-i)
            case .double(let d): return .double(-d)
            default: throw EvalFailure.runtime("bad operand type for unary -: '\(v.typeName)'")
            }
        case .plus(let x):
            let v = try evaluate(x, scope)
            if let f = v.undefinedFailure() { throw f }
            switch v {
            case .bool(let b): return .int(b ? 1 : 0)
            case .int, .double: return v
            default: throw EvalFailure.runtime("bad operand type for unary +: '\(v.typeName)'")
            }
        case .not(let x):
            return .bool(!(try evaluate(x, scope).truthy))
        case .and(let a, let b):
            let l = try evaluate(a, scope)
            return l.truthy ? try evaluate(b, scope) : l
        case .or(let a, let b):
            let l = try evaluate(a, scope)
            return l.truthy ? l : try evaluate(b, scope)
        case .concat(let items):
            var s = ""
            for item in items { s += try evaluate(item, scope).pyStr }
            return .string(try checkString(s))
        case .binary(let op, let a, let b):
            let l = try evaluate(a, scope)
            let r = try evaluate(b, scope)
            return try Arithmetic.apply(op, l, r, self)
        case .compare(let first, let rest):
            var left = try evaluate(first, scope)
            for (op, rightExpr) in rest {
                let right = try evaluate(rightExpr, scope)
                guard try compare(op, left, right) else { return .bool(false) }
                left = right
            }
            return .bool(true)
        case .conditional(let test, let then, let otherwise):
            if try evaluate(test, scope).truthy { return try evaluate(then, scope) }
            if let otherwise { return try evaluate(otherwise, scope) }
            return .undefined(hint: "the inline if-expression on line \(e.loc.line) evaluated to false and no else section was defined.")
        }
    }

    func compare(_ op: CompareOp, _ l: Value, _ r: Value) throws -> Bool {
        switch op {
        case .eq: return l.pyEquals(r)
        case .ne: return !l.pyEquals(r)
        case .lt: return try l.pyCompare(r) == -1
        case .le: let c = try l.pyCompare(r); return c == -1 || c == 0
        case .gt: return try l.pyCompare(r) == 1
        case .ge: let c = try l.pyCompare(r); return c == 1 || c == 0
        case .isIn: return try contains(r, l)
        case .notIn: return !(try contains(r, l))
        }
    }

    /// Python `item in container`.
    func contains(_ container: Value, _ item: Value) throws -> Bool {
        switch container {
        case .string(let s):
            if case .undefined = item { throw item.undefinedFailure()! }
            guard case .string(let sub) = item else {
                throw EvalFailure.runtime("'in <string>' requires string as left operand, not \(item.typeName)")
            }
            return StringOps.find(Array(s.unicodeScalars), Array(sub.unicodeScalars), from: 0) != nil
        case .list(let a), .tuple(let a):
            return a.contains { $0.pyEquals(item) }
        case .dict(let d):
            guard case .string(let k) = item else { return false }
            return d.index(of: k) != nil
        case .undefined, .unsafeUndefined:
            return false
        case .namespace(let n):
            guard case .string(let k) = item else { return false }
            return n.attributes.index(of: k) != nil
        default:
            throw EvalFailure.runtime("argument of type '\(container.typeName)' is not iterable")
        }
    }

    /// Python iteration: lists/tuples by item, dicts by key, strings by code point, undefined as empty.
    func iterate(_ v: Value) throws -> [Value] {
        switch v {
        case .list(let a), .tuple(let a): return a
        case .dict(let d): return d.keys.map { .string($0) }
        case .string(let s): return s.unicodeScalars.map { .string(String($0)) }
        case .undefined, .unsafeUndefined: return []
        case .loop(let l): return l.items
        default: throw EvalFailure.runtime("'\(v.typeName)' object is not iterable")
        }
    }

    // MARK: attribute and item access (jinja2 sandbox getattr/getitem)

    static let dictMethods: Set<String> = ["keys", "values", "items", "get", "copy"]
    static let dictMutators: Set<String> = ["clear", "pop", "popitem", "setdefault", "update"]
    static let listMethods: Set<String> = ["index", "count", "copy"]
    static let listMutators: Set<String> = ["append", "clear", "pop", "reverse", "insert", "sort", "extend", "remove"]

    func getAttribute(_ v: Value, _ name: String) throws -> Value {
        if let f = v.undefinedFailure() { throw f }
        if let attr = pythonAttribute(v, name) { return attr }
        switch v {
        case .dict(let d):
            if let x = d[name] { return x }
        default:
            break
        }
        return .undefined(hint: "\(describeForMissing(v)) has no attribute '\(name)'")
    }

    /// A real Python attribute of the value (methods, namespace and loop attributes), with the
    /// sandbox's verdict on mutating methods.
    func pythonAttribute(_ v: Value, _ name: String) -> Value? {
        switch v {
        case .dict:
            if Self.dictMethods.contains(name) { return .callable(Callable(.method(receiver: v, name: name))) }
            if Self.dictMutators.contains(name) {
                return .unsafeUndefined(hint: "access to attribute '\(name)' of 'dict' object is unsafe.")
            }
        case .list, .tuple:
            if Self.listMethods.contains(name) { return .callable(Callable(.method(receiver: v, name: name))) }
            if case .list = v, Self.listMutators.contains(name) {
                return .unsafeUndefined(hint: "access to attribute '\(name)' of 'list' object is unsafe.")
            }
        case .string:
            if StringOps.methods.contains(name) { return .callable(Callable(.method(receiver: v, name: name))) }
        case .namespace(let n):
            return n.attributes[name]
        case .loop(let l):
            return l.attribute(name)
        default:
            break
        }
        return nil
    }

    private func describeForMissing(_ v: Value) -> String {
        switch v {
        case .none: return "'None'"
        default: return "'\(v.typeName) object'"
        }
    }

    func getItem(_ v: Value, _ key: Value) throws -> Value {
        if let f = v.undefinedFailure() { throw f }
        switch (v, key) {
        case (.dict(let d), .string(let k)):
            if let x = d[k] { return x }
        case (.list(let a), _), (.tuple(let a), _):
            if let i = key.numeric, i.isInt {
                let idx = i.int < 0 ? a.count + i.int : i.int
                if idx >= 0 && idx < a.count { return a[idx] }
                return .undefined(hint: "\(v.typeName) object has no element \(i.int)")
            }
        case (.string(let s), _):
            if let i = key.numeric, i.isInt {
                let scalars = Array(s.unicodeScalars)
                let idx = i.int < 0 ? scalars.count + i.int : i.int
                if idx >= 0 && idx < scalars.count { return .string(String(scalars[idx])) }
                return .undefined(hint: "str object has no element \(i.int)")
            }
        default:
            break
        }
        // jinja2 falls back to attribute lookup for string keys.
        if case .string(let name) = key, let attr = pythonAttribute(v, name) { return attr }
        return .undefined(hint: "\(describeForMissing(v)) has no element \(key.pyRepr)")
    }

    private func sliceIndex(_ v: Value?) -> Int?? {
        guard let v else { return .some(nil) }
        switch v {
        case .none: return .some(nil)
        default:
            if let n = v.numeric, n.isInt { return .some(n.int) }
            return nil
        }
    }

    func slice(_ v: Value, _ a: Value?, _ b: Value?, _ c: Value?) throws -> Value {
        if let f = v.undefinedFailure() { throw f }
        // Bad indices raise TypeError in Python, which jinja2's getitem turns into undefined.
        guard let start = sliceIndex(a), let stop = sliceIndex(b), let stepValue = sliceIndex(c) else {
            return .undefined(hint: "slice indices must be integers or None")
        }
        let stepN = stepValue ?? 1
        guard stepN != 0 else { throw EvalFailure.runtime("slice step cannot be zero") }
        func indices(_ count: Int) -> [Int] {
            func clamp(_ x: Int?, _ dflt: Int, _ lo: Int, _ hi: Int) -> Int {
                guard var x else { return dflt }
                if x < 0 { x = x &+ count }
                return min(max(x, lo), hi)
            }
            var out: [Int] = []
            if stepN > 0 {
                let s = clamp(start, 0, 0, count)
                let e = clamp(stop, count, 0, count)
                var i = s
                while i < e {
                    out.append(i)
                    let (n, o) = i.addingReportingOverflow(stepN)
                    if o { break }
                    i = n
                }
            } else {
                let s = clamp(start, count - 1, -1, count - 1)
                let e = clamp(stop, -1, -1, count - 1)
                var i = s
                while i > e {
                    out.append(i)
                    let (n, o) = i.addingReportingOverflow(stepN)
                    if o { break }
                    i = n
                }
            }
            return out
        }
        switch v {
        case .list(let arr): return .list(indices(arr.count).map { arr[$0] })
        case .tuple(let arr): return .tuple(indices(arr.count).map { arr[$0] })
        case .string(let s):
            let sc = Array(s.unicodeScalars)
            var out = String.UnicodeScalarView()
            for i in indices(sc.count) { out.append(sc[i]) }
            return .string(String(out))
        default:
            return .undefined(hint: "'\(v.typeName)' object is not subscriptable")
        }
    }

    // MARK: calls

    func call(_ f: Value, _ args: [Value], _ kwargs: [(String, Value)]) throws -> Value {
        if let failure = f.undefinedFailure() { throw failure }
        guard case .callable(let c) = f else { throw EvalFailure.runtime("'\(f.typeName)' object is not callable") }
        switch c.kind {
        case .macro(let m, let closure):
            return try callMacro(m, closure, args, kwargs)
        case .global(let name):
            return try Globals.call(name, args, kwargs, self)
        case .method(let receiver, let name):
            return try Methods.call(receiver, name, args, kwargs, self)
        case .loopCycle(let state):
            guard kwargs.isEmpty else { throw EvalFailure.runtime("cycle() takes no keyword arguments") }
            guard !args.isEmpty else { throw EvalFailure.runtime("no items for cycling given") }
            return args[state.index0 % args.count]
        }
    }

    private func callMacro(_ m: MacroDefinition, _ closure: Scope, _ args: [Value], _ kwargs: [(String, Value)]) throws
        -> Value
    {
        guard args.count <= m.parameters.count else {
            throw EvalFailure.runtime("macro '\(m.name)' takes not more than \(m.parameters.count) argument(s)")
        }
        callDepth += 1
        defer { callDepth -= 1 }
        if callDepth > limits.maxCallDepth {
            throw EvalFailure.limit("loops and macro calls nested deeper than \(limits.maxCallDepth)")
        }
        let scope = Scope(parent: closure)
        var given = Set<String>()
        for (i, a) in args.enumerated() {
            scope.vars[m.parameters[i].0] = a
            given.insert(m.parameters[i].0)
        }
        for (k, v) in kwargs {
            guard m.parameters.contains(where: { $0.0 == k }) else {
                throw EvalFailure.runtime("macro '\(m.name)' has no argument '\(k)'")
            }
            guard !given.contains(k) else {
                throw EvalFailure.runtime("macro '\(m.name)' got multiple values for argument '\(k)'")
            }
            scope.vars[k] = v
            given.insert(k)
        }
        for (p, d) in m.parameters where !given.contains(p) {
            if let d {
                scope.vars[p] = try evaluate(d, scope)
            } else {
                scope.vars[p] = .undefined(hint: "parameter '\(p)' was not provided")
            }
        }
        let savedLoopDepth = loopDepth
        loopDepth = 0
        defer { loopDepth = savedLoopDepth }
        var buffer = ""
        _ = try execute(m.body, scope: scope, into: &buffer)
        return .string(buffer)
    }

    private func applyFilterExpression(_ f: Expression, to v: Value, _ scope: Scope) throws -> Value {
        guard case .filter(_, let name, let args) = f.kind else { return v }
        do {
            let positional = try args.positional.map { try evaluate($0, scope) }
            let keyword = try args.keyword.map { ($0.0, try evaluate($0.1, scope)) }
            return try Filters.apply(name, v, positional, keyword, self)
        } catch let failure as EvalFailure {
            throw failure.at(f.loc)
        }
    }
}

/// Python arithmetic with jinja2's operand rules.
enum Arithmetic {
    static func apply(_ op: BinaryOp, _ l: Value, _ r: Value, _ interp: Interpreter) throws -> Value {
        if let f = l.undefinedFailure() ?? r.undefinedFailure() { throw f }
        func typeError() -> EvalFailure {
            .runtime("unsupported operand type(s) for \(op.rawValue): '\(l.typeName)' and '\(r.typeName)'")
        }
        switch op {
        case .add:
            switch (l, r) {
            case (.string(let a), .string(let b)): return .string(try interp.checkString(a + b))
            case (.list(let a), .list(let b)):
                try interp.checkCount(a.count + b.count)
                return .list(a + b)
            case (.tuple(let a), .tuple(let b)):
                try interp.checkCount(a.count + b.count)
                return .tuple(a + b)
            case (.string, _), (_, .string):
                if case .string = l {
                    throw EvalFailure.runtime("can only concatenate str (not \"\(r.typeName)\") to str")
                }
                throw typeError()
            default: break
            }
        case .mul:
            switch (l, r) {
            case (.string(let s), _), (_, .string(let s)):
                let other = (l.numeric == nil) ? r : l
                guard let n = other.numeric, n.isInt else { throw EvalFailure.runtime("can't multiply sequence by non-int of type '\(other.typeName)'") }
                let count = max(0, n.int)
                let (bytes, o) = s.utf8.count.multipliedReportingOverflow(by: count)
                if o || bytes > interp.limits.maxStringBytes {
                    throw EvalFailure.limit("string longer than \(interp.limits.maxStringBytes) bytes")
                }
                return .string(String(repeating: s, count: count))
            case (.list(let a), _), (_, .list(let a)):
                let other = (l.numeric == nil) ? r : l
                guard let n = other.numeric, n.isInt else { throw EvalFailure.runtime("can't multiply sequence by non-int of type '\(other.typeName)'") }
                let count = max(0, n.int)
                let (total, o) = a.count.multipliedReportingOverflow(by: count)
                if o { throw EvalFailure.limit("list too long") }
                try interp.checkCount(total)
                return .list(Array([[Value]](repeating: a, count: count).joined()))
            default: break
            }
        default:
            break
        }
        guard let x = l.numeric, let y = r.numeric else { throw typeError() }
        if x.isInt && y.isInt {
            let a = x.int
            let b = y.int
            func checked(_ r: (partialValue: Int, overflow: Bool)) throws -> Value {
                if r.overflow { throw EvalFailure.runtime("integer overflow") }
                return .int(r.partialValue)
            }
            switch op {
            case .add: return try checked(a.addingReportingOverflow(b))
            case .sub: return try checked(a.subtractingReportingOverflow(b))
            case .mul: return try checked(a.multipliedReportingOverflow(by: b))
            case .div:
                guard b != 0 else { throw EvalFailure.runtime("division by zero") }
                return .double(Double(a) / Double(b))
            case .floorDiv:
                guard b != 0 else { throw EvalFailure.runtime("integer division or modulo by zero") }
                if a == Int.min && b == -1 { throw EvalFailure.runtime("integer overflow") }
                var q = a / b
                if (a % b != 0) && ((a < 0) != (b < 0)) { q -= 1 }
                return .int(q)
            case .mod:
                guard b != 0 else { throw EvalFailure.runtime("integer division or modulo by zero") }
                if b == -1 { return .int(0) }
                var m = a % b
                if m != 0 && ((m < 0) != (b < 0)) { m += b }
                return .int(m)
            case .pow:
                if b < 0 { return .double(pow(Double(a), Double(b))) }
                var result = 1
                var base = a
                var e = b
                while e > 0 {
                    if e & 1 == 1 {
                        let (r, o) = result.multipliedReportingOverflow(by: base)
                        if o { throw EvalFailure.runtime("integer overflow") }
                        result = r
                    }
                    e >>= 1
                    if e > 0 {
                        let (sq, o) = base.multipliedReportingOverflow(by: base)
                        if o { throw EvalFailure.runtime("integer overflow") }
                        base = sq
                    }
                }
                return .int(result)
            }
        }
        let a = x.double
        let b = y.double
        switch op {
        case .add: return .double(a + b)
        case .sub: return .double(a - b)
        case .mul: return .double(a * b)
        case .div:
            guard b != 0 else { throw EvalFailure.runtime("float division by zero") }
            return .double(a / b)
        case .floorDiv:
            guard b != 0 else { throw EvalFailure.runtime("float floor division by zero") }
            return .double((a / b).rounded(.down))
        case .mod:
            guard b != 0 else { throw EvalFailure.runtime("float modulo") }
            var m = fmod(a, b)
            if m != 0 && ((m < 0) != (b < 0)) { m += b }
            return .double(m)
        case .pow:
            if a == 0 && b < 0 { throw EvalFailure.runtime("0.0 cannot be raised to a negative power") }
            return .double(pow(a, b))
        }
    }
}
