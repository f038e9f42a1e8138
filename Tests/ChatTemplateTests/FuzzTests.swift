import Foundation
import XCTest

@testable import ChatTemplate

/// SplitMix64: a small deterministic generator so failures reproduce from the seed.
struct SplitMix64 {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(max(n, 1))) }
}

/// Random and mutated templates must compile and render to text or a `ChatTemplateError`, never
/// trap, hang or exhaust the stack.
final class FuzzTests: XCTestCase {
    static let pieces: [String] = [
        "{{", "}}", "{%", "%}", "{#", "#}", "{{-", "-}}", "{%-", "-%}", "{%+", "+%}", " ", "  ", "\n", "\r\n", "\t",
        "if", "elif", "else", "endif", "for", "in", "endfor", "set", "endset", "macro", "endmacro", "raw", "endraw",
        "filter", "endfilter", "break", "continue", "generation", "not", "and", "or", "is", "defined", "none", "true",
        "loop", "loop.index", "messages", "message", "x", "y", "ns", "ns.a", "namespace(a=1)", "range(3)",
        "range(99999999)", "(", ")", "[", "]", "{", "}", ",", ":", ".", "|", "=", "==", "!=", "<", ">=", "+", "-",
        "*", "**", "/", "//", "%", "~", "'", "\"", "'a'", "\"b\\n\"", "0", "1", "-1", "2.5", "1e308", "9999999999999999999",
        "0x", "1_", "length", "tojson", "trim", "join", "items", "selectattr", "map", "default", "upper", "[::-1]",
        "[1:]", "strip()", "split(',')", "\\", "é", "🇫🇷", "e\u{301}", "raise_exception('no')", "strftime_now('%Y')",
        "x * 99999999", "'ab' * 999999999", "{{ x }}", "{% if x %}", "{% endif %}", "{% for x in y %}", "{% endfor %}",
        "{% macro m(a) %}{{ m(a) }}{% endmacro %}{{ m(1) }}", "((((((((((", "))))))))))", "[[[[[[[[", "]]]]]]]]",
        "{{ -- -- -- 1 }}", "not not not not", "{% set x = x ~ x ~ x ~ x %}", "\u{0}", "\u{FFFF}",
    ]

    func messages() -> [ChatMessage] {
        [ChatMessage(role: "system", content: "sys"), ChatMessage(role: "user", content: "hi é"),
         ChatMessage(role: "assistant", content: nil, toolCalls: [ToolCall(id: "1", name: "f", arguments: .object(["a": 1]))]),
         ChatMessage(role: "tool", content: "ok", toolCallID: "1")]
    }

    func check(_ source: String, _ label: String) {
        do {
            var t = try ChatTemplate(source: source)
            t.limits.maxSteps = 100_000
            t.limits.maxOutputBytes = 1 << 20
            t.limits.maxStringBytes = 1 << 18
            t.limits.maxListCount = 1 << 14
            _ = try t.render(messages: messages(), addGenerationPrompt: true,
                extra: ["x": "v", "y": [1, "two", .null], "tools": [["type": "function"]], "bos_token": "<s>"])
        } catch is ChatTemplateError {
        } catch {
            XCTFail("\(label): non-ChatTemplateError \(error) for \(source.debugDescription)")
        }
    }

    func testRandomTemplates() {
        var rng = SplitMix64(state: 0x5EED_0001)
        for i in 0..<4000 {
            var s = ""
            for _ in 0..<(1 + rng.below(24)) { s += Self.pieces[rng.below(Self.pieces.count)] }
            check(s, "random #\(i)")
        }
    }

    /// Well-formed templates with a random piece inserted somewhere reach the evaluator more often.
    func testStructuredRandomTemplates() {
        var rng = SplitMix64(state: 0x5EED_0002)
        let expressions = ["x", "y", "messages", "messages[0]", "messages[-1].content", "y[1:]", "x ~ 1", "y | length",
            "1 + 2", "x + 1", "none.a", "y.z", "x.upper()", "y | tojson", "namespace(a=1).a", "range(5) | list",
            "x if y else 1", "'%s'", "x[::-1]", "loop.index", "1 / 0", "m(3)", "y | map('upper') | list"]
        for i in 0..<3000 {
            var s = "{% macro m(n) %}{% if n > 0 %}{{ m(n - 1) }}{% endif %}{% endmacro %}"
            for _ in 0..<(1 + rng.below(6)) {
                let e = expressions[rng.below(expressions.count)]
                switch rng.below(5) {
                case 0: s += "{{ \(e) }}"
                case 1: s += "{% for a in \(e) %}{{ a }}{{ loop.index }}{% endfor %}"
                case 2: s += "{% if \(e) %}t{% else %}f{% endif %}"
                case 3: s += "{% set z = \(e) %}{{ z }}"
                default: s += Self.pieces[rng.below(Self.pieces.count)]
                }
            }
            check(s, "structured #\(i)")
        }
    }

    func testMutatedPublishedTemplates() throws {
        var rng = SplitMix64(state: 0x5EED_0003)
        for name in ChatFixtures.templates {
            let original = Array(try ChatFixtures.text(name + ".jinja").unicodeScalars)
            for i in 0..<400 {
                var s = original
                for _ in 0..<(1 + rng.below(3)) {
                    guard !s.isEmpty else { break }
                    let a = rng.below(s.count)
                    let b = min(s.count, a + 1 + rng.below(12))
                    switch rng.below(4) {
                    case 0: s.removeSubrange(a..<b)
                    case 1: s.insert(contentsOf: s[a..<b], at: rng.below(s.count))
                    case 2: s.insert(contentsOf: Self.pieces[rng.below(Self.pieces.count)].unicodeScalars, at: a)
                    default: s.swapAt(a, rng.below(s.count))
                    }
                }
                var text = String.UnicodeScalarView()
                text.append(contentsOf: s)
                check(String(text), "\(name) mutation #\(i)")
            }
        }
    }

    /// Deep nesting in the source is refused with a limit error rather than recursing until the stack
    /// overflows.
    func testDeepNestingIsBounded() {
        for source in [
            String(repeating: "(", count: 5000) + "1" + String(repeating: ")", count: 5000),
            "{{ " + String(repeating: "[", count: 5000) + String(repeating: "]", count: 5000) + " }}",
            "{{ " + String(repeating: "not ", count: 5000) + "1 }}",
            "{{ " + String(repeating: "-", count: 5000) + "1 }}",
            "{{ x" + String(repeating: ".a", count: 5000) + " }}",
            "{{ x" + String(repeating: " | length", count: 5000) + " }}",
            String(repeating: "{% if 1 %}", count: 5000) + String(repeating: "{% endif %}", count: 5000),
            "{{ " + Array(repeating: "1", count: 5000).joined(separator: " + ") + " }}",
        ] {
            let wrapped = source.hasPrefix("(") ? "{{ " + source + " }}" : source
            do {
                _ = try ChatTemplate(source: wrapped).render(messages: [], addGenerationPrompt: false)
            } catch let e as ChatTemplateError {
                XCTAssertTrue(["limit", "syntax"].contains(e.kind), "\(e)")
            } catch {
                XCTFail("unexpected \(error)")
            }
        }
    }

    func testRuntimeRecursionIsBounded() throws {
        let t = try ChatTemplate(source: "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")
        XCTAssertThrowsError(try t.render(messages: [], addGenerationPrompt: false)) { e in
            XCTAssertEqual((e as? ChatTemplateError)?.kind, "limit")
        }
        var loops = try ChatTemplate(source: "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}"
            + "{% endfor %}{% endfor %}{% endfor %}")
        // The default step bound (20M) is minutes in a debug build; the mechanism is the same.
        loops.limits.maxSteps = 500_000
        XCTAssertThrowsError(try loops.render(messages: [], addGenerationPrompt: false)) { e in
            XCTAssertEqual((e as? ChatTemplateError)?.kind, "limit")
        }
        let big = try ChatTemplate(source: "{{ 'x' * 999999999999 }}")
        XCTAssertThrowsError(try big.render(messages: [], addGenerationPrompt: false)) { e in
            XCTAssertEqual((e as? ChatTemplateError)?.kind, "limit")
        }
        let range = try ChatTemplate(source: "{{ range(10 ** 12) | length }}")
        XCTAssertThrowsError(try range.render(messages: [], addGenerationPrompt: false)) { e in
            XCTAssertEqual((e as? ChatTemplateError)?.kind, "limit")
        }
        let overflow = try ChatTemplate(source: "{{ 9223372036854775807 + 1 }}")
        XCTAssertThrowsError(try overflow.render(messages: [], addGenerationPrompt: false)) { e in
            XCTAssertEqual((e as? ChatTemplateError)?.kind, "runtime")
        }
    }
}
