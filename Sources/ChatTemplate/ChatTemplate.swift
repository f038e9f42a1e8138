import Foundation

/// One tool call made by an assistant message, in the OpenAI shape chat templates read:
/// `{"id": ..., "type": "function", "function": {"name": ..., "arguments": ...}}`.
public struct ToolCall: Sendable, Equatable {
    public var id: String?
    public var type: String
    public var name: String
    /// A JSON object (most templates `tojson` it) or a string of JSON text (DeepSeek concatenates it).
    public var arguments: TemplateValue

    public init(id: String? = nil, type: String = "function", name: String, arguments: TemplateValue) {
        self.id = id
        self.type = type
        self.name = name
        self.arguments = arguments
    }

    var templateValue: TemplateValue {
        var o = TemplateObject()
        if let id { o["id"] = .string(id) }
        o["type"] = .string(type)
        o["function"] = .object(["name": .string(name), "arguments": arguments])
        return .object(o)
    }
}

/// A chat message as the template sees it: an ordered dict with at least a `role`.
///
/// The typed initializer lays fields out as `role, content, reasoning_content, tool_calls,
/// tool_call_id, name`; `init(fields:)` passes any JSON-shaped message through unchanged (for
/// multimodal content lists or model-specific keys).
public struct ChatMessage: Sendable, Equatable {
    /// The fields in the order the template will see them.
    public private(set) var fields: TemplateObject

    /// - Parameters:
    ///   - content: the text; nil gives `content: null` (assistant messages that only call tools).
    ///   - reasoningContent: the model's reasoning, which thinking templates (Qwen3) render in `<think>`.
    public init(role: String, content: String?, reasoningContent: String? = nil, toolCalls: [ToolCall] = [],
        toolCallID: String? = nil, name: String? = nil)
    {
        var o = TemplateObject()
        o["role"] = .string(role)
        o["content"] = content.map { .string($0) } ?? .null
        if let reasoningContent { o["reasoning_content"] = .string(reasoningContent) }
        if !toolCalls.isEmpty { o["tool_calls"] = .array(toolCalls.map(\.templateValue)) }
        if let toolCallID { o["tool_call_id"] = .string(toolCallID) }
        if let name { o["name"] = .string(name) }
        fields = o
    }

    /// A message from arbitrary fields; `role` must be present and a string.
    public init(fields: TemplateObject) throws {
        guard case .string? = fields["role"] else {
            throw ChatTemplateError.invalidInput("a chat message needs a string 'role' field")
        }
        self.fields = fields
    }

    public var role: String {
        if case .string(let r)? = fields["role"] { return r }
        return ""
    }

    /// The `content` field: usually `.string`, `.array` of parts for multimodal messages, or `.null`.
    public var content: TemplateValue? { fields["content"] }
}

/// A compiled chat template (the Jinja text of `tokenizer.chat_template` / `chat_template.jinja`),
/// rendered the way Hugging Face transformers' `apply_chat_template` renders it with jinja2:
/// `trim_blocks` and `lstrip_blocks` on, the `loopcontrols` extension, the globals
/// `raise_exception`, `strftime_now`, `namespace`, `dict`, `range`, a `tojson` that does not escape
/// HTML and keeps non-ASCII text, and an immutable sandbox (`list.append` fails).
///
/// Rendering is pure and deterministic apart from `strftime_now`, which reads `now`.
public struct ChatTemplate: Sendable {
    private let nodes: [Node]
    /// The template source as given.
    public let source: String
    /// The clock behind `strftime_now` (formatted in the current time zone, as Python's
    /// `datetime.now()` is).
    public var now: @Sendable () -> Date = { Date() }
    /// Resource bounds for rendering (tests lower them).
    var limits = RenderLimits()

    /// Compiles the template; throws `ChatTemplateError.syntax` (or `.unsupported`) with the location
    /// of the first problem.
    public init(source: String) throws {
        var lexer = Lexer(source)
        let tokens = try lexer.tokenize()
        var parser = Parser(tokens: tokens)
        nodes = try parser.parseTemplate()
        self.source = source
    }

    /// Variables transformers always passes, which `extra` cannot replace.
    private static let reserved: Set<String> = ["messages", "add_generation_prompt"]

    /// Renders a conversation.
    ///
    /// - Parameters:
    ///   - addGenerationPrompt: append the header that starts the assistant's reply.
    ///   - extra: further template variables: `bos_token`, `eos_token`, `tools` (a list of JSON tool
    ///     schemas), `documents`, `enable_thinking`, ... `tools` and `documents` are `none` unless given,
    ///     as in transformers.
    /// - Throws: `ChatTemplateError`; `.raised` carries the template's own `raise_exception` message.
    public func render(messages: [ChatMessage], addGenerationPrompt: Bool, extra: [String: TemplateValue] = [:])
        throws -> String
    {
        if let bad = extra.keys.first(where: { Self.reserved.contains($0) }) {
            throw ChatTemplateError.invalidInput("'\(bad)' is set by render(), not through extra variables")
        }
        let globals = Scope(parent: nil)
        let root = Scope(parent: globals)
        root.vars["messages"] = .list(messages.map { Self.aliasReasoningFields($0.fields) })
        root.vars["tools"] = .none
        root.vars["documents"] = .none
        root.vars["add_generation_prompt"] = .bool(addGenerationPrompt)
        // Sorted so that evaluation never depends on dictionary order.
        for key in extra.keys.sorted() { root.vars[key] = Value(extra[key]!) }
        let interpreter = Interpreter(limits: limits, now: now)
        var out = ""
        _ = try interpreter.execute(nodes, scope: root, into: &out)
        return out
    }

    /// Renders with exactly the given variables (no `messages`/`tools` defaults); for tests of single
    /// Jinja features.
    func render(variables: [String: TemplateValue]) throws -> String {
        let root = Scope(parent: nil)
        for key in variables.keys.sorted() { root.vars[key] = Value(variables[key]!) }
        var out = ""
        _ = try Interpreter(limits: limits, now: now).execute(nodes, scope: root, into: &out)
        return out
    }

    /// transformers copies a message's reasoning (first non-null of `reasoning_content`, `thinking`,
    /// `reasoning`) to both `thinking` (placed first) and `reasoning_content` (kept in place, or last),
    /// because templates read one name or the other.
    static func aliasReasoningFields(_ fields: TemplateObject) -> Value {
        var reasoning: TemplateValue? = nil
        for key in ["reasoning_content", "thinking", "reasoning"] {
            if let v = fields[key], v != .null {
                reasoning = v
                break
            }
        }
        guard let reasoning else { return Value(.object(fields)) }
        var o = TemplateObject()
        o["thinking"] = reasoning
        for (k, v) in fields.pairs { o[k] = v }
        o["reasoning_content"] = reasoning
        return Value(.object(o))
    }
}
