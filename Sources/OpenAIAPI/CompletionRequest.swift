import ChatTemplate
import Checkpoint
import Foundation

/// A completion request's body, validated: every field OpenAI defines that Farside honours is
/// read with its type checked and its range enforced, and an error names the field at fault.
/// Unknown fields are ignored, as OpenAI's own server does for forward compatibility.
public struct CompletionRequest {
    /// What to complete: chat messages, text, or token ids.
    public enum Input {
        case messages([ChatMessage])
        case text(String)
        case tokens([Int])
    }

    public var model: String?
    public var input: Input
    public var maxTokens: Int?
    /// The field `maxTokens` came from (`max_completion_tokens` or `max_tokens`), for errors.
    public var maxTokensField = "max_tokens"
    public var temperature: Float = 1
    public var topP: Float = 1
    public var topK = 0
    public var seed: UInt64?
    public var stop: [String] = []
    public var stream = false
    public var includeUsage = false
    /// nil: no logprobs; else how many alternatives per token (0...20).
    public var topLogprobs: Int?
    public var ignoreEOS = false
    /// Farside's extension (as vLLM's `return_token_ids`): each choice also carries the
    /// generated token ids.
    public var returnTokenIDs = false

    /// Parses a chat (`chat == true`, field `messages`) or text completion (field `prompt`) body.
    public init(body: [UInt8], chat: Bool) throws {
        guard !body.isEmpty else { throw APIError.invalid("the request body is empty; send a JSON object") }
        let any: Any
        do { any = try JSONSerialization.jsonObject(with: Data(body)) } catch {
            throw APIError.invalid("the request body is not valid JSON: \(jsonFailureReason(error))")
        }
        guard let o = any as? [String: Any] else {
            throw APIError.invalid("the request body must be a JSON object, found \(JSONValue(any).kindName)")
        }
        let f = Fields(o)
        model = try f.string("model")
        if chat {
            guard let raw = o["messages"] else { throw APIError.invalid("'messages' is required", param: "messages") }
            guard case .array(let items) = JSONValue(raw) else {
                throw APIError.invalid("'messages' must be an array, found \(JSONValue(raw).kindName)", param: "messages")
            }
            guard !items.isEmpty else { throw APIError.invalid("'messages' must hold at least one message", param: "messages") }
            input = .messages(try items.enumerated().map { try Self.message($1, index: $0) })
        } else {
            guard let raw = o["prompt"] else { throw APIError.invalid("'prompt' is required", param: "prompt") }
            switch JSONValue(raw) {
            case .string(let s):
                guard !s.isEmpty else { throw APIError.invalid("'prompt' is empty", param: "prompt") }
                input = .text(s)
            case .array(let a):
                guard !a.isEmpty else { throw APIError.invalid("'prompt' is an empty array", param: "prompt") }
                if a.count == 1, case .string(let s) = JSONValue(a[0]) {
                    guard !s.isEmpty else { throw APIError.invalid("'prompt' is empty", param: "prompt") }
                    input = .text(s)
                } else {
                    input = .tokens(try a.map {
                        guard let i = JSONValue($0).exactInt else {
                            throw APIError.invalid("'prompt' must be a string or an array of token ids (integers); found \(JSONValue($0).brief)", param: "prompt")
                        }
                        return i
                    })
                }
            default:
                throw APIError.invalid("'prompt' must be a string or an array of token ids, found \(JSONValue(raw).kindName)", param: "prompt")
            }
        }
        // max_completion_tokens is the newer name (chat); max_tokens the older one.
        if f.value("max_completion_tokens") != nil { maxTokensField = "max_completion_tokens" }
        if let n = try f.int(maxTokensField) {
            guard n >= 1 else { throw APIError.invalid("'\(maxTokensField)' must be at least 1, got \(n)", param: maxTokensField) }
            maxTokens = n
        }
        if let t = try f.number("temperature") {
            guard t >= 0 && t <= 2 else { throw APIError.invalid("'temperature' must be in [0, 2], got \(t)", param: "temperature") }
            temperature = Float(t)
        }
        if let p = try f.number("top_p") {
            guard p > 0 && p <= 1 else { throw APIError.invalid("'top_p' must be in (0, 1], got \(p)", param: "top_p") }
            topP = Float(p)
        }
        if let k = try f.int("top_k") {
            guard k >= -1 else { throw APIError.invalid("'top_k' must be -1 (off), 0 (off) or positive, got \(k)", param: "top_k") }
            topK = max(0, k)
        }
        if let s = try f.int("seed") { seed = UInt64(bitPattern: Int64(s)) }
        if let n = try f.int("n"), n != 1 {
            throw APIError.invalid("'n' must be 1 (one choice per request), got \(n)", param: "n")
        }
        if let raw = o["stop"] {
            switch JSONValue(raw) {
            case .null: break
            case .string(let s): stop = [s]
            case .array(let a):
                stop = try a.map {
                    guard case .string(let s) = JSONValue($0) else {
                        throw APIError.invalid("'stop' must be a string or an array of strings", param: "stop")
                    }
                    return s
                }
            default: throw APIError.invalid("'stop' must be a string or an array of strings, found \(JSONValue(raw).kindName)", param: "stop")
            }
            guard stop.count <= 4 else { throw APIError.invalid("'stop' holds at most 4 strings, got \(stop.count)", param: "stop") }
            guard !stop.contains("") else { throw APIError.invalid("'stop' strings must not be empty", param: "stop") }
        }
        stream = try f.bool("stream") ?? false
        if let so = o["stream_options"], !(so is NSNull) {
            guard case .object(let opts) = JSONValue(so) else {
                throw APIError.invalid("'stream_options' must be an object", param: "stream_options")
            }
            includeUsage = try Fields(opts, prefix: "stream_options.").bool("include_usage") ?? false
        }
        ignoreEOS = try f.bool("ignore_eos") ?? false
        returnTokenIDs = try f.bool("return_token_ids") ?? false
        if chat {
            let wants = try f.bool("logprobs") ?? false
            let top = try f.int("top_logprobs")
            if let top, !(0...20).contains(top) {
                throw APIError.invalid("'top_logprobs' must be in 0...20, got \(top)", param: "top_logprobs")
            }
            if top != nil && !wants { throw APIError.invalid("'top_logprobs' needs 'logprobs': true", param: "top_logprobs") }
            topLogprobs = wants ? (top ?? 0) : nil
        } else if let n = try f.int("logprobs") {
            guard (0...5).contains(n) else { throw APIError.invalid("'logprobs' must be in 0...5, got \(n)", param: "logprobs") }
            topLogprobs = n
        }
    }

    /// One chat message: a role and string content (or an array of text parts).
    static func message(_ raw: Any, index: Int) throws -> ChatMessage {
        let param = "messages[\(index)]"
        guard case .object(let o) = JSONValue(raw) else {
            throw APIError.invalid("\(param) must be an object, found \(JSONValue(raw).kindName)", param: param)
        }
        let f = Fields(o, prefix: param + ".")
        guard let role = try f.string("role") else { throw APIError.invalid("\(param).role is required", param: param + ".role") }
        let roles = ["system", "developer", "user", "assistant", "tool"]
        guard roles.contains(role) else {
            throw APIError.invalid("\(param).role '\(role)' is not one of \(roles.joined(separator: ", "))", param: param + ".role")
        }
        var content: String?
        if let c = o["content"] {
            switch JSONValue(c) {
            case .null: content = nil
            case .string(let s): content = s
            case .array(let parts):
                content = try parts.enumerated().map { i, p -> String in
                    guard case .object(let po) = JSONValue(p), let type = po["type"] as? String, type == "text",
                          let text = po["text"] as? String else {
                        throw APIError.invalid("\(param).content[\(i)] must be a text part {\"type\": \"text\", \"text\": ...}; this server takes text only",
                                               param: param + ".content")
                    }
                    return text
                }.joined()
            default:
                throw APIError.invalid("\(param).content must be a string or an array of text parts, found \(JSONValue(c).kindName)",
                                       param: param + ".content")
            }
        }
        if content == nil && role != "assistant" {
            throw APIError.invalid("\(param).content is required for role '\(role)'", param: param + ".content")
        }
        // "developer" is OpenAI's newer name for the system role; chat templates know "system".
        return ChatMessage(role: role == "developer" ? "system" : role, content: content)
    }

    /// Typed reads of a JSON object's fields; `null` counts as absent.
    struct Fields {
        let o: [String: Any]
        var prefix = ""
        init(_ o: [String: Any], prefix: String = "") {
            self.o = o
            self.prefix = prefix
        }

        func value(_ k: String) -> JSONValue? {
            guard let v = o[k] else { return nil }
            let j = JSONValue(v)
            if case .null = j { return nil }
            return j
        }

        func wrong(_ k: String, _ want: String, _ got: JSONValue) -> APIError {
            .invalid("'\(prefix)\(k)' must be \(want), found \(got.kindName) \(got.brief)", param: prefix + k)
        }

        func string(_ k: String) throws -> String? {
            guard let v = value(k) else { return nil }
            guard case .string(let s) = v else { throw wrong(k, "a string", v) }
            return s
        }

        func bool(_ k: String) throws -> Bool? {
            guard let v = value(k) else { return nil }
            guard case .bool(let b) = v else { throw wrong(k, "a boolean", v) }
            return b
        }

        func int(_ k: String) throws -> Int? {
            guard let v = value(k) else { return nil }
            guard let i = v.exactInt else { throw wrong(k, "an integer", v) }
            return i
        }

        func number(_ k: String) throws -> Double? {
            guard let v = value(k) else { return nil }
            guard let d = v.double, d.isFinite else { throw wrong(k, "a number", v) }
            return d
        }
    }
}
