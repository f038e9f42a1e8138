// libFuzzer target: the chat-template engine. First byte even: the rest is a template, compiled
// and rendered with a fixed conversation. Odd: one of the models' own templates (fixtures) renders
// a conversation whose message texts are the rest, split at NUL bytes.
import Foundation
@testable import ChatTemplate

let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Tests/Fixtures/chat_templates").standardized

let templates: [ChatTemplate] = {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: fixtures.path)) ?? []
    let out = names.filter { $0.hasSuffix(".jinja") }.sorted().compactMap { name -> ChatTemplate? in
        guard let text = try? String(contentsOf: fixtures.appendingPathComponent(name), encoding: .utf8) else { return nil }
        return try? limited(ChatTemplate(source: text))
    }
    precondition(!out.isEmpty, "no chat templates under \(fixtures.path)")
    return out
}()

/// Lower resource bounds than a server's, so that one input renders in milliseconds; the checks
/// that enforce them are the same.
func limited(_ t: ChatTemplate) -> ChatTemplate {
    var t = t
    t.limits.maxOutputBytes = 1 << 20
    t.limits.maxStringBytes = 1 << 18
    t.limits.maxListCount = 1 << 14
    t.limits.maxSteps = 200_000
    t.now = { Date(timeIntervalSince1970: 1_700_000_000) }
    return t
}

let extra: [String: TemplateValue] = ["bos_token": .string("<s>"), "eos_token": .string("</s>")]

func conversation(_ texts: [String]) -> [ChatMessage] {
    let roles = ["system", "user", "assistant", "user", "tool", "assistant"]
    return texts.enumerated().map { i, text in
        let role = roles[i % roles.count]
        if role == "assistant" && i % 4 == 2 {
            return ChatMessage(role: role, content: text, reasoningContent: "thinking " + text,
                               toolCalls: [ToolCall(id: "call_\(i)", name: "f", arguments: ["x": .string(text)])])
        }
        return ChatMessage(role: role, content: text)
    }
}

@_silgen_name("__lsan_disable") func lsanDisable()
@_silgen_name("__lsan_enable") func lsanEnable()

/// Loads the fixtures once, before fuzzing, with leak checking off: they live for the whole run,
/// and LeakSanitizer cannot follow the pointers Swift keeps in enum payloads with tag bits set
/// (it would report the parsed fixtures as leaked). Inputs are still leak-checked.
@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    lsanDisable()
    _ = templates.count
    lsanEnable()
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 2 else { return 0 }
    let rest = UnsafeBufferPointer(start: data + 2, count: size - 2)
    if data[0] & 1 == 0 {
        guard let t = try? ChatTemplate(source: String(decoding: rest, as: UTF8.self)) else { return 0 }
        let messages = conversation(["You are helpful.", "Hi <b>there</b> ünïcode 世界", "Hello!", "What's 2+2?"])
        _ = try? limited(t).render(messages: messages, addGenerationPrompt: data[1] & 1 == 1, extra: extra)
    } else {
        let texts = rest.split(separator: 0, omittingEmptySubsequences: false).prefix(8).map { String(decoding: $0, as: UTF8.self) }
        let t = templates[Int(data[1]) % templates.count]
        _ = try? t.render(messages: conversation(texts), addGenerationPrompt: data[0] & 2 == 2, extra: extra)
    }
    return 0
}
