import XCTest
@testable import ChatTemplate

final class SmokeTests: XCTestCase {
    func testHello() throws {
        let t = try ChatTemplate(source: "{% for m in messages %}{{ m.role }}: {{ m['content'] }}\n{% endfor %}")
        let out = try t.render(messages: [ChatMessage(role: "user", content: "hi")], addGenerationPrompt: false)
        XCTAssertEqual(out, "user: hi\n")
    }
}
