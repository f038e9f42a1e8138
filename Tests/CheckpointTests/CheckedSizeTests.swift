import Checkpoint
import XCTest

final class CheckedSizeTests: XCTestCase {
    func testProductsAndSumsThatOverflowThrowNamingTheQuantity() throws {
        XCTAssertEqual(try CheckedSize.product([3, 5, 7], "x"), 105)
        XCTAssertEqual(try CheckedSize.sum([Int.max - 1, 1], "x"), Int.max)
        XCTAssertThrowsError(try CheckedSize.product([1 << 32, 1 << 31], "the KV cache")) {
            XCTAssertEqual($0 as? SizeError, .overflow(quantity: "the KV cache"))
            XCTAssertTrue("\($0)".contains("the KV cache"))
        }
        XCTAssertThrowsError(try CheckedSize.sum([Int.max, 1], "tokens"))
        XCTAssertThrowsError(try CheckedSize.product([4, -1], "rows"))
        XCTAssertEqual(CheckedSize.saturatingSum(Int.max, 5), Int.max)
        XCTAssertEqual(CheckedSize.saturatingSum(3, 5), 8)
    }

    func testDoubleConversionRefusesWhatIsNotASize() throws {
        XCTAssertEqual(try CheckedSize.int(1.5 * 1_073_741_824, "budget"), 1_610_612_736)
        XCTAssertEqual(try CheckedSize.int(9_223_372_036_854_774_784.0, "budget"), 9_223_372_036_854_774_784)
        for bad in [Double.nan, .infinity, -.infinity, -1, 1e30 * 1_073_741_824, 9_223_372_036_854_775_808.0] {
            XCTAssertThrowsError(try CheckedSize.int(bad, "budget"), "\(bad)") { XCTAssertTrue("\($0)".contains("budget")) }
        }
    }

    func testCountRange() throws {
        XCTAssertEqual(try CheckedSize.count(5, in: 1...8, "layers"), 5)
        XCTAssertThrowsError(try CheckedSize.count(1_000_000_000, in: 1...4096, "num_hidden_layers")) {
            XCTAssertTrue("\($0)".contains("num_hidden_layers must be in 1...4096, found 1000000000"))
        }
    }
}
