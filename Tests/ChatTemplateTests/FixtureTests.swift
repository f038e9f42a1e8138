import Foundation
import XCTest

@testable import ChatTemplate

/// Renders the published chat templates and the single-feature templates and compares byte for byte
/// with what transformers + jinja2 produced (Tests/Fixtures/chat_templates, made by
/// scripts/make-chat-template-fixtures.py).
enum ChatFixtures {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/chat_templates")

    static let templates = [
        "smollm2_instruct", "qwen2_5_instruct", "qwen3", "mixtral_8x7b_instruct", "deepseek_v3", "kimi_k2_instruct",
        "kimi_k2_instruct_tool_calls",
    ]

    static func json(_ name: String) throws -> TemplateObject {
        let text = try String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8)
        guard case .object(let o) = try TemplateValue(json: text) else {
            throw ChatTemplateError.invalidInput("\(name) is not a JSON object")
        }
        return o
    }

    static func text(_ name: String) throws -> String {
        try String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8)
    }

    /// The wall-clock time the generator fixed for `strftime_now`, in this machine's time zone
    /// (Python's `datetime.now()` is local time too).
    static var fixedNow: Date {
        var c = DateComponents()
        (c.year, c.month, c.day, c.hour, c.minute, c.second, c.nanosecond) = (2024, 7, 26, 14, 5, 9, 123_456_000)
        var cal = Calendar(identifier: .gregorian)
        cal.timeZone = .current
        return cal.date(from: c)!
    }
}

extension TemplateObject {
    func string(_ key: String) -> String? {
        if case .string(let s)? = self[key] { return s }
        return nil
    }

    func object(_ key: String) -> TemplateObject? {
        if case .object(let o)? = self[key] { return o }
        return nil
    }

    func array(_ key: String) -> [TemplateValue]? {
        if case .array(let a)? = self[key] { return a }
        return nil
    }
}

/// Compares a render outcome with a fixture case's `expected` text or `error` (kind; message for
/// `raise_exception`; line for syntax errors).
func checkOutcome(_ outcome: Result<String, Error>, _ fixtureCase: TemplateObject, _ label: String,
    file: StaticString = #filePath, line: UInt = #line)
{
    switch outcome {
    case .success(let text):
        guard let expected = fixtureCase.string("expected") else {
            XCTFail("\(label): rendered \(text.debugDescription) but jinja2 raised \(fixtureCase["error"]!)",
                file: file, line: line)
            return
        }
        if text != expected {
            XCTFail("\(label): output differs\n--- expected\n\(expected.debugDescription)\n--- got\n\(text.debugDescription)",
                file: file, line: line)
        }
    case .failure(let error):
        guard let expectedError = fixtureCase.object("error") else {
            XCTFail("\(label): threw \(error) but jinja2 rendered \(fixtureCase["expected"]!)", file: file, line: line)
            return
        }
        guard let e = error as? ChatTemplateError else {
            XCTFail("\(label): threw a non-ChatTemplateError \(error)", file: file, line: line)
            return
        }
        let kind = expectedError.string("kind")!
        XCTAssertEqual(e.kind, kind, "\(label): \(e)", file: file, line: line)
        if kind == "raised" {
            XCTAssertEqual(e.message, expectedError.string("message"), label, file: file, line: line)
        }
        if kind == "syntax", case .int(let l)? = expectedError["line"] {
            XCTAssertEqual(e.location?.line, l, "\(label): \(e)", file: file, line: line)
        }
    }
}

final class PublishedTemplateTests: XCTestCase {
    func runTemplate(_ name: String) throws {
        let fixture = try ChatFixtures.json(name + ".json")
        let source = try ChatFixtures.text(fixture.string("template")!)
        let template = try ChatTemplate(source: source)
        let cases = fixture.array("cases")!
        XCTAssertGreaterThanOrEqual(cases.count, 7)
        for case .object(let c) in cases {
            let label = "\(name)/\(c.string("name")!)"
            let messages = try c.array("messages")!.map { m -> ChatMessage in
                guard case .object(let fields) = m else { throw ChatTemplateError.invalidInput("message") }
                return try ChatMessage(fields: fields)
            }
            var extra: [String: TemplateValue] = [:]
            for (k, v) in c.object("extra")!.pairs { extra[k] = v }
            guard case .bool(let agp)? = c["add_generation_prompt"] else { throw ChatTemplateError.invalidInput("agp") }
            let outcome = Result { try template.render(messages: messages, addGenerationPrompt: agp, extra: extra) }
            checkOutcome(outcome, c, label)
        }
    }

    func testSmolLM2() throws { try runTemplate("smollm2_instruct") }
    func testQwen2_5() throws { try runTemplate("qwen2_5_instruct") }
    func testQwen3() throws { try runTemplate("qwen3") }
    func testMixtral() throws { try runTemplate("mixtral_8x7b_instruct") }
    func testDeepSeekV3() throws { try runTemplate("deepseek_v3") }
    func testKimiK2() throws { try runTemplate("kimi_k2_instruct") }
    func testKimiK2ToolCalls() throws { try runTemplate("kimi_k2_instruct_tool_calls") }

    /// Every template file on disk has a fixture, so a new template cannot be added untested.
    func testEveryTemplateHasFixture() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: ChatFixtures.directory.path)
        let jinja = files.filter { $0.hasSuffix(".jinja") }.map { String($0.dropLast(6)) }.sorted()
        XCTAssertEqual(jinja, ChatFixtures.templates.sorted())
    }

    /// The typed message initializer lays fields out as the fixtures' Python dicts do, so the two
    /// ways of building a message render the same.
    func testTypedMessagesMatchFixtureMessages() throws {
        let template = try ChatTemplate(source: try ChatFixtures.text("qwen3.jinja"))
        let typed = [
            ChatMessage(role: "system", content: "You can look things up."),
            ChatMessage(role: "user", content: "Weather and time in Paris?"),
            ChatMessage(role: "assistant", content: "", toolCalls: [
                ToolCall(id: "call_1", name: "get_weather", arguments: .object(["city": "Paris", "unit": "celsius"])),
                ToolCall(id: "call_2", name: "get_time", arguments: .object(["tz": "Europe/Paris"])),
            ]),
            ChatMessage(role: "tool", content: "{\"temperature\": 21.5, \"sky\": \"clear\"}", toolCallID: "call_1"),
            ChatMessage(role: "tool", content: "14:05", toolCallID: "call_2"),
            ChatMessage(role: "assistant", content: "It is 21.5 °C and clear; the time is 14:05."),
        ]
        let fixture = try ChatFixtures.json("qwen3.json")
        let toolsCase = fixture.array("cases")!.compactMap { v -> TemplateObject? in
            if case .object(let o) = v, o.string("name") == "tools" { return o }
            return nil
        }.first!
        let extra: [String: TemplateValue] = [
            "tools": toolsCase.object("extra")!["tools"]!, "eos_token": "<|im_end|>",
        ]
        let out = try template.render(messages: typed, addGenerationPrompt: false, extra: extra)
        XCTAssertEqual(out, toolsCase.string("expected"))
    }
}

final class FeatureTests: XCTestCase {
    func testFeatures() throws {
        let fixture = try ChatFixtures.json("features.json")
        let cases = fixture.array("cases")!
        XCTAssertGreaterThan(cases.count, 100)
        for case .object(let c) in cases {
            let label = "features/\(c.string("name")!)"
            var variables: [String: TemplateValue] = [:]
            for (k, v) in c.object("variables")!.pairs { variables[k] = v }
            let outcome = Result { () throws -> String in
                var t = try ChatTemplate(source: c.string("template")!)
                t.now = { ChatFixtures.fixedNow }
                return try t.render(variables: variables)
            }
            checkOutcome(outcome, c, label)
        }
    }
}
