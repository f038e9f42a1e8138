/// Recursive-descent parser with jinja2 3.1's grammar and operator precedence:
/// conditional < or < and < not < comparison (chained, `in`, `not in`) < `+ -` < `~` < `* / // %`
/// < `**` (left-associative, as in jinja2) < unary `- +` < postfix (`.x`, `[i]`, `(args)`) with
/// filters `|f` and tests `is t` applied after postfix.
struct Parser {
    private var tokens: [Token]
    private var index = 0
    private var depth = 0
    /// Expression and block nesting bound; real templates nest a handful of levels, and the bound keeps
    /// recursion far from the stack limit on any thread.
    static let maxDepth = 48

    init(tokens: [Token]) { self.tokens = tokens }

    // MARK: token stream

    private var current: Token { tokens[index] }
    private func peek(_ n: Int = 1) -> Token { tokens[min(index + n, tokens.count - 1)] }
    private mutating func advance() -> Token {
        let t = tokens[index]
        if index < tokens.count - 1 { index += 1 }
        return t
    }

    private func fail(_ message: String, _ t: Token? = nil) -> ChatTemplateError {
        let loc = (t ?? current).loc
        return .syntax(message, line: loc.line, column: loc.column)
    }

    private func describe(_ k: TokenKind) -> String {
        switch k {
        case .data: return "template data"
        case .variableBegin: return "'{{'"
        case .variableEnd: return "end of print statement"
        case .blockBegin: return "'{%'"
        case .blockEnd: return "end of statement block"
        case .name(let n): return "'\(n)'"
        case .string: return "string literal"
        case .integer, .float: return "number"
        case .op(let o): return "'\(o)'"
        case .eof: return "end of template"
        }
    }

    private func isOp(_ op: String) -> Bool {
        if case .op(let o) = current.kind { return o == op }
        return false
    }

    private func isName(_ name: String) -> Bool {
        if case .name(let n) = current.kind { return n == name }
        return false
    }

    private mutating func skipOp(_ op: String) -> Bool {
        if isOp(op) { _ = advance(); return true }
        return false
    }

    private mutating func skipName(_ name: String) -> Bool {
        if isName(name) { _ = advance(); return true }
        return false
    }

    private mutating func expectOp(_ op: String) throws {
        guard skipOp(op) else { throw fail("expected '\(op)', got \(describe(current.kind))") }
    }

    private mutating func expectName() throws -> String {
        guard case .name(let n) = current.kind else { throw fail("expected a name, got \(describe(current.kind))") }
        _ = advance()
        return n
    }

    private mutating func expectBlockEnd() throws {
        guard case .blockEnd = current.kind else {
            throw fail("expected end of statement block, got \(describe(current.kind))")
        }
        _ = advance()
    }

    private mutating func nest() throws {
        depth += 1
        if depth > Self.maxDepth {
            let loc = current.loc
            throw ChatTemplateError.limitExceeded(
                "template nesting deeper than \(Self.maxDepth) levels", line: loc.line, column: loc.column)
        }
    }

    // MARK: statements

    mutating func parseTemplate() throws -> [Node] {
        let (body, end) = try parseBody(until: [])
        if let end { throw fail("unexpected '\(end)'") }
        return body
    }

    /// Parses nodes until `{% name` with name in `endTags` (returned, with the stream after the name)
    /// or end of template (nil; an error if `endTags` is not empty).
    private mutating func parseBody(until endTags: Set<String>) throws -> ([Node], String?) {
        var nodes: [Node] = []
        while true {
            let t = current
            switch t.kind {
            case .eof:
                if !endTags.isEmpty {
                    throw fail("unexpected end of template; expected one of: \(endTags.sorted().joined(separator: ", "))")
                }
                return (nodes, nil)
            case .data(let s):
                _ = advance()
                nodes.append(.text(s))
            case .variableBegin:
                _ = advance()
                let e = try parseTuple(withCondexpr: true)
                guard case .variableEnd = current.kind else {
                    throw fail("expected end of print statement, got \(describe(current.kind))")
                }
                _ = advance()
                nodes.append(.output(e))
            case .blockBegin:
                _ = advance()
                guard case .name(let tag) = current.kind else { throw fail("tag name expected") }
                if endTags.contains(tag) {
                    _ = advance()
                    return (nodes, tag)
                }
                nodes.append(try parseStatement())
            default:
                throw fail("unexpected \(describe(t.kind))")
            }
        }
    }

    private mutating func parseStatement() throws -> Node {
        try nest()
        defer { depth -= 1 }
        let tagToken = advance()
        guard case .name(let tag) = tagToken.kind else { throw fail("tag name expected", tagToken) }
        switch tag {
        case "if": return try parseIf()
        case "for": return try parseFor(tagToken.loc)
        case "set": return try parseSet(tagToken.loc)
        case "macro": return try parseMacro(tagToken.loc)
        case "filter": return try parseFilterBlock()
        case "break", "continue":
            try expectBlockEnd()
            return tag == "break" ? .breakLoop(tagToken.loc) : .continueLoop(tagToken.loc)
        case "generation":
            try expectBlockEnd()
            let (body, _) = try parseBody(until: ["endgeneration"])
            try expectBlockEnd()
            return .generation(body)
        case "call", "include", "import", "from", "extends", "block", "with", "autoescape", "trans", "pluralize",
            "debug":
            throw ChatTemplateError.unsupported(
                "the '\(tag)' tag", line: tagToken.loc.line, column: tagToken.loc.column)
        case "elif", "else", "endif", "endfor", "endset", "endmacro", "endfilter", "endgeneration", "endraw",
            "endcall", "endblock", "endwith":
            throw fail("unexpected '\(tag)'", tagToken)
        default:
            throw fail("encountered unknown tag '\(tag)'", tagToken)
        }
    }

    private mutating func parseIf() throws -> Node {
        var branches: [(Expression, [Node])] = []
        var test = try parseTuple(withCondexpr: true)
        while true {
            try expectBlockEnd()
            let (body, end) = try parseBody(until: ["elif", "else", "endif"])
            branches.append((test, body))
            switch end {
            case "elif":
                test = try parseTuple(withCondexpr: true)
            case "else":
                try expectBlockEnd()
                let (otherwise, _) = try parseBody(until: ["endif"])
                try expectBlockEnd()
                return .ifBlock(branches, otherwise: otherwise)
            default:
                try expectBlockEnd()
                return .ifBlock(branches, otherwise: nil)
            }
        }
    }

    private mutating func parseFor(_ loc: SourceLocation) throws -> Node {
        let target = try parseAssignTarget(allowNamespace: false)
        guard skipName("in") else { throw fail("expected 'in', got \(describe(current.kind))") }
        let iterable = try parseTuple(withCondexpr: false, extraEndNames: ["recursive"])
        var filter: Expression? = nil
        if skipName("if") { filter = try parseExpression() }
        if isName("recursive") {
            throw ChatTemplateError.unsupported("recursive for loops", line: current.loc.line, column: current.loc.column)
        }
        try expectBlockEnd()
        let (body, end) = try parseBody(until: ["endfor", "else"])
        var otherwise: [Node]? = nil
        if end == "else" {
            try expectBlockEnd()
            (otherwise, _) = try parseBody(until: ["endfor"])
        }
        try expectBlockEnd()
        return .forLoop(target: target, iterable: iterable, filter: filter, body: body, otherwise: otherwise, loc: loc)
    }

    private mutating func parseSet(_ loc: SourceLocation) throws -> Node {
        let target = try parseAssignTarget(allowNamespace: true)
        if skipOp("=") {
            let value = try parseTuple(withCondexpr: true)
            try expectBlockEnd()
            return .set(target, value, loc: loc)
        }
        var filters: [Expression] = []
        while isOp("|") {
            filters.append(try parseFilterChain(nil))
        }
        try expectBlockEnd()
        let (body, _) = try parseBody(until: ["endset"])
        try expectBlockEnd()
        return .setBlock(target, body: body, filters: filters, loc: loc)
    }

    private mutating func parseMacro(_ loc: SourceLocation) throws -> Node {
        let name = try expectName()
        try expectOp("(")
        var params: [(String, Expression?)] = []
        while !isOp(")") {
            if !params.isEmpty { try expectOp(",") }
            if isOp(")") { break }
            let p = try expectName()
            var defaultValue: Expression? = nil
            if skipOp("=") {
                defaultValue = try parseExpression()
            } else if params.contains(where: { $0.1 != nil }) {
                throw fail("non-default argument follows default argument")
            }
            params.append((p, defaultValue))
        }
        try expectOp(")")
        try expectBlockEnd()
        let (body, _) = try parseBody(until: ["endmacro"])
        if case .name = current.kind { _ = advance() }  // `{% endmacro name %}`
        try expectBlockEnd()
        return .macro(MacroDefinition(name: name, parameters: params, body: body), loc: loc)
    }

    private mutating func parseFilterBlock() throws -> Node {
        var filters: [Expression] = []
        filters.append(try parseFilterName(nil))
        while isOp("|") {
            filters.append(try parseFilterChain(nil))
        }
        try expectBlockEnd()
        let (body, _) = try parseBody(until: ["endfilter"])
        try expectBlockEnd()
        return .filterBlock(filters: filters, body: body)
    }

    private mutating func parseAssignTarget(allowNamespace: Bool) throws -> AssignTarget {
        func single(_ p: inout Parser) throws -> AssignTarget {
            if p.skipOp("(") {
                let t = try p.parseAssignTarget(allowNamespace: false)
                try p.expectOp(")")
                return t
            }
            let n = try p.expectName()
            if ["true", "false", "none", "True", "False", "None"].contains(n) {
                throw p.fail("cannot assign to '\(n)'")
            }
            if allowNamespace, p.isOp("."), case .name(let attr) = p.peek().kind {
                _ = p.advance()
                _ = p.advance()
                return .attribute(n, attr)
            }
            return .name(n)
        }
        let first = try single(&self)
        guard isOp(",") else { return first }
        var items = [first]
        while skipOp(",") {
            if case .name = current.kind {} else if isOp("(") {} else { break }
            items.append(try single(&self))
        }
        return .tuple(items)
    }

    // MARK: expressions

    mutating func parseExpression(withCondexpr: Bool = true) throws -> Expression {
        withCondexpr ? try parseCondexpr() : try parseOr()
    }

    /// A comma-separated expression list; more than one item (or a trailing comma) makes a tuple.
    private mutating func parseTuple(withCondexpr: Bool, extraEndNames: Set<String> = []) throws -> Expression {
        let loc = current.loc
        var items: [Expression] = []
        var sawComma = false
        while true {
            if !items.isEmpty {
                guard skipOp(",") else { break }
                sawComma = true
            }
            if isTupleEnd(extraEndNames) { break }
            items.append(try parseExpression(withCondexpr: withCondexpr))
            if !isOp(",") { break }
        }
        if !sawComma {
            guard let only = items.first else { throw fail("expected an expression, got \(describe(current.kind))") }
            return only
        }
        return Expression(kind: .tuple(items), loc: loc)
    }

    private func isTupleEnd(_ extra: Set<String>) -> Bool {
        switch current.kind {
        case .variableEnd, .blockEnd, .eof: return true
        case .op(let o): return o == ")" || o == "]" || o == "}"
        case .name(let n): return extra.contains(n)
        default: return false
        }
    }

    private mutating func parseCondexpr() throws -> Expression {
        try nest()
        defer { depth -= 1 }
        var expr = try parseOr()
        while isName("if") {
            let loc = advance().loc
            let test = try parseOr()
            var otherwise: Expression? = nil
            if skipName("else") { otherwise = try parseCondexpr() }
            expr = Expression(kind: .conditional(test: test, then: expr, otherwise: otherwise), loc: loc)
        }
        return expr
    }

    private mutating func parseOr() throws -> Expression {
        var left = try parseAnd()
        while isName("or") {
            let loc = advance().loc
            left = Expression(kind: .or(left, try parseAnd()), loc: loc)
        }
        return left
    }

    private mutating func parseAnd() throws -> Expression {
        var left = try parseNot()
        while isName("and") {
            let loc = advance().loc
            left = Expression(kind: .and(left, try parseNot()), loc: loc)
        }
        return left
    }

    private mutating func parseNot() throws -> Expression {
        if isName("not") {
            let loc = advance().loc
            try nest()
            defer { depth -= 1 }
            return Expression(kind: .not(try parseNot()), loc: loc)
        }
        return try parseCompare()
    }

    private mutating func parseCompare() throws -> Expression {
        let left = try parseMath1()
        var ops: [(CompareOp, Expression)] = []
        while true {
            if case .op(let o) = current.kind, let op = CompareOp(rawValue: o), op != .isIn, op != .notIn {
                _ = advance()
                ops.append((op, try parseMath1()))
            } else if isName("in") {
                _ = advance()
                ops.append((.isIn, try parseMath1()))
            } else if isName("not"), case .name("in") = peek().kind {
                _ = advance()
                _ = advance()
                ops.append((.notIn, try parseMath1()))
            } else {
                break
            }
        }
        if ops.isEmpty { return left }
        return Expression(kind: .compare(left, ops), loc: left.loc)
    }

    private mutating func parseMath1() throws -> Expression {
        var left = try parseConcat()
        while case .op(let o) = current.kind, o == "+" || o == "-" {
            let loc = advance().loc
            let right = try parseConcat()
            left = Expression(kind: .binary(o == "+" ? .add : .sub, left, right), loc: loc)
        }
        return left
    }

    private mutating func parseConcat() throws -> Expression {
        let first = try parseMath2()
        var items = [first]
        while isOp("~") {
            _ = advance()
            items.append(try parseMath2())
        }
        return items.count == 1 ? first : Expression(kind: .concat(items), loc: first.loc)
    }

    private mutating func parseMath2() throws -> Expression {
        var left = try parsePow()
        while case .op(let o) = current.kind, let op = BinaryOp(rawValue: o), [.mul, .div, .floorDiv, .mod].contains(op) {
            let loc = advance().loc
            left = Expression(kind: .binary(op, left, try parsePow()), loc: loc)
        }
        return left
    }

    private mutating func parsePow() throws -> Expression {
        var left = try parseUnary(withFilter: true)
        while isOp("**") {
            let loc = advance().loc
            left = Expression(kind: .binary(.pow, left, try parseUnary(withFilter: true)), loc: loc)
        }
        return left
    }

    private mutating func parseUnary(withFilter: Bool) throws -> Expression {
        try nest()
        defer { depth -= 1 }
        var node: Expression
        if isOp("-") {
            let loc = advance().loc
            node = Expression(kind: .negate(try parseUnary(withFilter: false)), loc: loc)
        } else if isOp("+") {
            let loc = advance().loc
            node = Expression(kind: .plus(try parseUnary(withFilter: false)), loc: loc)
        } else {
            node = try parsePrimary()
        }
        node = try parsePostfix(node)
        if withFilter { node = try parseFilterExpr(node) }
        return node
    }

    private mutating func parsePrimary() throws -> Expression {
        let t = current
        switch t.kind {
        case .name(let n):
            _ = advance()
            switch n {
            case "true", "True": return Expression(kind: .literal(.bool(true)), loc: t.loc)
            case "false", "False": return Expression(kind: .literal(.bool(false)), loc: t.loc)
            case "none", "None": return Expression(kind: .literal(.none), loc: t.loc)
            default: return Expression(kind: .name(n), loc: t.loc)
            }
        case .string(var s):
            _ = advance()
            while case .string(let more) = current.kind {
                s += more
                _ = advance()
            }
            return Expression(kind: .literal(.string(s)), loc: t.loc)
        case .integer(let i):
            _ = advance()
            return Expression(kind: .literal(.int(i)), loc: t.loc)
        case .float(let d):
            _ = advance()
            return Expression(kind: .literal(.double(d)), loc: t.loc)
        case .op("("):
            _ = advance()
            if skipOp(")") { return Expression(kind: .tuple([]), loc: t.loc) }
            let e = try parseTuple(withCondexpr: true)
            try expectOp(")")
            if case .tuple = e.kind { return e }
            return e
        case .op("["):
            _ = advance()
            var items: [Expression] = []
            while !isOp("]") {
                if !items.isEmpty { try expectOp(",") }
                if isOp("]") { break }
                items.append(try parseExpression())
            }
            try expectOp("]")
            return Expression(kind: .list(items), loc: t.loc)
        case .op("{"):
            _ = advance()
            var pairs: [(Expression, Expression)] = []
            while !isOp("}") {
                if !pairs.isEmpty { try expectOp(",") }
                if isOp("}") { break }
                let k = try parseExpression()
                try expectOp(":")
                pairs.append((k, try parseExpression()))
            }
            try expectOp("}")
            return Expression(kind: .dict(pairs), loc: t.loc)
        default:
            throw fail("unexpected \(describe(t.kind))")
        }
    }

    private mutating func parsePostfix(_ start: Expression) throws -> Expression {
        var node = start
        while true {
            if isOp(".") {
                let loc = advance().loc
                switch current.kind {
                case .name(let n):
                    _ = advance()
                    node = Expression(kind: .getattr(node, n), loc: loc)
                case .integer(let i):
                    _ = advance()
                    node = Expression(kind: .getitem(node, Expression(kind: .literal(.int(i)), loc: loc)), loc: loc)
                default:
                    throw fail("expected name or number")
                }
            } else if isOp("[") {
                let loc = advance().loc
                var args: [Expression] = []
                while !isOp("]") {
                    if !args.isEmpty { try expectOp(",") }
                    if isOp("]") { break }
                    args.append(try parseSubscribed(node))
                }
                try expectOp("]")
                guard !args.isEmpty else { throw fail("expected subscript expression") }
                if args.count == 1 {
                    if case .slice = args[0].kind { node = args[0] } else {
                        node = Expression(kind: .getitem(node, args[0]), loc: loc)
                    }
                } else {
                    node = Expression(kind: .getitem(node, Expression(kind: .tuple(args), loc: loc)), loc: loc)
                }
            } else if isOp("(") {
                node = try parseCall(node)
            } else {
                return node
            }
        }
    }

    /// One subscript: an expression, or a slice `a:b:c` with any part missing.
    private mutating func parseSubscribed(_ target: Expression) throws -> Expression {
        let loc = current.loc
        var start: Expression? = nil
        if !isOp(":") {
            let e = try parseExpression()
            guard isOp(":") else { return e }
            start = e
        }
        _ = advance()
        var stop: Expression? = nil
        var step: Expression? = nil
        if !isOp(":") && !isOp("]") && !isOp(",") { stop = try parseExpression() }
        if skipOp(":") {
            if !isOp("]") && !isOp(",") { step = try parseExpression() }
        }
        return Expression(kind: .slice(target, start, stop, step), loc: loc)
    }

    private mutating func parseCallArguments() throws -> CallArguments {
        try expectOp("(")
        var args = CallArguments()
        var first = true
        while !isOp(")") {
            if !first { try expectOp(",") }
            first = false
            if isOp(")") { break }
            if isOp("*") || isOp("**") {
                throw ChatTemplateError.unsupported(
                    "*args/**kwargs in calls", line: current.loc.line, column: current.loc.column)
            }
            if case .name(let n) = current.kind, case .op("=") = peek().kind {
                _ = advance()
                _ = advance()
                args.keyword.append((n, try parseExpression()))
            } else {
                if !args.keyword.isEmpty { throw fail("invalid syntax for function call expression") }
                args.positional.append(try parseExpression())
            }
        }
        try expectOp(")")
        return args
    }

    private mutating func parseCall(_ callee: Expression) throws -> Expression {
        let loc = current.loc
        try nest()
        defer { depth -= 1 }
        return Expression(kind: .call(callee, try parseCallArguments()), loc: loc)
    }

    private mutating func parseFilterExpr(_ start: Expression) throws -> Expression {
        var node = start
        while true {
            if isOp("|") {
                node = try parseFilterChain(node)
            } else if isName("is") {
                node = try parseTest(node)
            } else if isOp("(") {
                node = try parseCall(node)
            } else {
                return node
            }
        }
    }

    /// `| name(args)` applied to `input`.
    private mutating func parseFilterChain(_ input: Expression?) throws -> Expression {
        try expectOp("|")
        return try parseFilterName(input)
    }

    private mutating func parseFilterName(_ input: Expression?) throws -> Expression {
        let nameToken = current
        var name = try expectName()
        while isOp("."), case .name(let more) = peek().kind {
            _ = advance()
            _ = advance()
            name += "." + more
        }
        try checkFilter(name, nameToken)
        var args = CallArguments()
        if isOp("(") {
            try nest()
            defer { depth -= 1 }
            args = try parseCallArguments()
        }
        return Expression(kind: .filter(input, name, args), loc: nameToken.loc)
    }

    private mutating func parseTest(_ input: Expression) throws -> Expression {
        let isToken = advance()
        let negated = skipName("not")
        let nameToken = current
        var name = try expectName()
        while isOp("."), case .name(let more) = peek().kind {
            _ = advance()
            _ = advance()
            name += "." + more
        }
        try checkTest(name, nameToken)
        var args = CallArguments()
        if isOp("(") {
            try nest()
            defer { depth -= 1 }
            args = try parseCallArguments()
        } else {
            var startsArgument = false
            switch current.kind {
            case .name(let n): startsArgument = !["else", "or", "and"].contains(n)
            case .string, .integer, .float: startsArgument = true
            case .op(let o): startsArgument = o == "(" || o == "[" || o == "{"
            default: break
            }
            if startsArgument {
                if isName("is") { throw fail("You cannot chain multiple tests with is") }
                try nest()
                defer { depth -= 1 }
                var arg = try parsePrimary()
                arg = try parsePostfix(arg)
                args.positional = [arg]
            }
        }
        var node = Expression(kind: .test(input, name, args), loc: isToken.loc)
        if negated { node = Expression(kind: .not(node), loc: isToken.loc) }
        return node
    }

    private func checkFilter(_ name: String, _ t: Token) throws {
        if Filters.implemented.contains(name) { return }
        if Filters.jinjaBuiltins.contains(name) {
            throw ChatTemplateError.unsupported("the '\(name)' filter", line: t.loc.line, column: t.loc.column)
        }
        throw fail("no filter named '\(name)'", t)
    }

    private func checkTest(_ name: String, _ t: Token) throws {
        if Tests.implemented.contains(name) { return }
        if Tests.jinjaBuiltins.contains(name) {
            throw ChatTemplateError.unsupported("the '\(name)' test", line: t.loc.line, column: t.loc.column)
        }
        throw fail("no test named '\(name)'", t)
    }
}
