/// Parsed template: statements and expressions, each with the source location errors will name.

struct Expression {
    var kind: ExprKind
    var loc: SourceLocation
}

enum BinaryOp: String {
    case add = "+", sub = "-", mul = "*", div = "/", floorDiv = "//", mod = "%", pow = "**"
}

enum CompareOp: String {
    case eq = "==", ne = "!=", lt = "<", le = "<=", gt = ">", ge = ">=", isIn = "in", notIn = "not in"
}

struct CallArguments {
    var positional: [Expression] = []
    var keyword: [(String, Expression)] = []
}

indirect enum ExprKind {
    case literal(Value)
    case name(String)
    case list([Expression])
    case tuple([Expression])
    case dict([(Expression, Expression)])
    case getattr(Expression, String)
    case getitem(Expression, Expression)
    case slice(Expression, Expression?, Expression?, Expression?)
    case call(Expression, CallArguments)
    /// A filter applied to `input`; `input` is nil inside `{% filter %}` blocks.
    case filter(Expression?, String, CallArguments)
    case test(Expression, String, CallArguments)
    case negate(Expression)
    case plus(Expression)
    case not(Expression)
    case binary(BinaryOp, Expression, Expression)
    case and(Expression, Expression)
    case or(Expression, Expression)
    case concat([Expression])
    case compare(Expression, [(CompareOp, Expression)])
    case conditional(test: Expression, then: Expression, otherwise: Expression?)
}

indirect enum AssignTarget {
    case name(String)
    case tuple([AssignTarget])
    /// `ns.attr` in `{% set ns.attr = ... %}`.
    case attribute(String, String)
}

struct MacroDefinition {
    var name: String
    var parameters: [(String, Expression?)]
    var body: [Node]
}

indirect enum Node {
    case text(String)
    case output(Expression)
    case ifBlock([(Expression, [Node])], otherwise: [Node]?)
    case forLoop(target: AssignTarget, iterable: Expression, filter: Expression?, body: [Node], otherwise: [Node]?,
        loc: SourceLocation)
    case set(AssignTarget, Expression, loc: SourceLocation)
    case setBlock(AssignTarget, body: [Node], filters: [Expression], loc: SourceLocation)
    case macro(MacroDefinition, loc: SourceLocation)
    case filterBlock(filters: [Expression], body: [Node])
    case breakLoop(SourceLocation)
    case continueLoop(SourceLocation)
    /// transformers' `{% generation %}` extension: renders its body unchanged.
    case generation([Node])
}

// The tree is immutable once parsed and its literals are plain numbers and strings (the class-backed
// `Value` cases only appear at render time), so sharing it across threads is safe.
extension Node: @unchecked Sendable {}
extension Expression: @unchecked Sendable {}
