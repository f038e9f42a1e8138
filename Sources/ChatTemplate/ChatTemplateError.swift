/// Why a chat template could not be compiled or rendered.
///
/// Template errors carry the 1-based line and column (in Unicode scalars) of the construct at fault.
/// The kinds follow the exceptions Python's jinja2 raises for the same template, so a caller can tell
/// a broken template (`syntax`) from a conversation the template refuses (`raised`, the message
/// given to `raise_exception`) from a conversation shape the template cannot handle (`undefined`,
/// `runtime`).
public enum ChatTemplateError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The template text is not valid Jinja (jinja2 `TemplateSyntaxError`/`TemplateAssertionError`).
    case syntax(String, line: Int, column: Int)
    /// An undefined value was used in a way that needs a value: called, indexed, added...
    /// (jinja2 `UndefinedError`).
    case undefined(String, line: Int, column: Int)
    /// A wrong operand type or value: `'a' + 1`, iterating `none`, division by zero...
    /// (Python `TypeError`/`ValueError`/`ZeroDivisionError`, jinja2 `TemplateRuntimeError`).
    case runtime(String, line: Int, column: Int)
    /// An operation the sandbox forbids, such as `list.append` (jinja2 `SecurityError`).
    case unsafe(String, line: Int, column: Int)
    /// The template called `raise_exception(message)`.
    case raised(String, line: Int, column: Int)
    /// Valid Jinja that this renderer does not implement (e.g. `{% include %}`, `|wordwrap`).
    case unsupported(String, line: Int, column: Int)
    /// Rendering exceeded a resource bound (output size, steps, nesting) meant to stop runaway templates.
    case limitExceeded(String, line: Int, column: Int)
    /// The caller's input (messages, extra variables, JSON text) is not acceptable.
    case invalidInput(String)

    /// The message without location.
    public var message: String {
        switch self {
        case .syntax(let m, _, _), .undefined(let m, _, _), .runtime(let m, _, _), .unsafe(let m, _, _),
            .raised(let m, _, _), .unsupported(let m, _, _), .limitExceeded(let m, _, _):
            return m
        case .invalidInput(let m): return m
        }
    }

    /// The 1-based (line, column) in the template, if the error comes from the template.
    public var location: (line: Int, column: Int)? {
        switch self {
        case .syntax(_, let l, let c), .undefined(_, let l, let c), .runtime(_, let l, let c),
            .unsafe(_, let l, let c), .raised(_, let l, let c), .unsupported(_, let l, let c),
            .limitExceeded(_, let l, let c):
            return (l, c)
        case .invalidInput: return nil
        }
    }

    /// A short name of the kind: "syntax", "undefined", "runtime", "unsafe", "raised", "unsupported",
    /// "limit", "input".
    public var kind: String {
        switch self {
        case .syntax: return "syntax"
        case .undefined: return "undefined"
        case .runtime: return "runtime"
        case .unsafe: return "unsafe"
        case .raised: return "raised"
        case .unsupported: return "unsupported"
        case .limitExceeded: return "limit"
        case .invalidInput: return "input"
        }
    }

    public var description: String {
        let what: String
        switch self {
        case .syntax: what = "chat template syntax error"
        case .undefined: what = "chat template used an undefined value"
        case .runtime: what = "chat template runtime error"
        case .unsafe: what = "chat template attempted an unsafe operation"
        case .raised: what = "chat template rejected the conversation"
        case .unsupported: what = "chat template uses an unsupported feature"
        case .limitExceeded: what = "chat template exceeded a limit"
        case .invalidInput: return "invalid chat template input: \(message)"
        }
        if let (l, c) = location { return "\(what) at line \(l), column \(c): \(message)" }
        return "\(what): \(message)"
    }
}

/// A position in the template source, 1-based, columns counted in Unicode scalars.
struct SourceLocation: Sendable, Equatable {
    var line: Int
    var column: Int
}

/// Errors raised while evaluating, before a location is attached.
enum EvalFailure: Error {
    case undefined(String)
    case runtime(String)
    case unsafe(String)
    case raised(String)
    case unsupported(String)
    case limit(String)

    func at(_ loc: SourceLocation) -> ChatTemplateError {
        switch self {
        case .undefined(let m): return .undefined(m, line: loc.line, column: loc.column)
        case .runtime(let m): return .runtime(m, line: loc.line, column: loc.column)
        case .unsafe(let m): return .unsafe(m, line: loc.line, column: loc.column)
        case .raised(let m): return .raised(m, line: loc.line, column: loc.column)
        case .unsupported(let m): return .unsupported(m, line: loc.line, column: loc.column)
        case .limit(let m): return .limitExceeded(m, line: loc.line, column: loc.column)
        }
    }
}
