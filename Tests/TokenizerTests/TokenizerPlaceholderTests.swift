import XCTest
@testable import Tokenizer

final class TokenizerPlaceholderTests: XCTestCase {
    func testModuleBuilds() { XCTAssertTrue(true) }
}
