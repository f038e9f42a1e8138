import XCTest
@testable import ChatTemplate

final class ChatTemplatePlaceholderTests: XCTestCase {
    func testModuleBuilds() { XCTAssertTrue(true) }
}
