import Foundation
import XCTest

/// `max|a − b| ≤ tolerance · max|b|` (scale at least 1e-6); returns the relative error.
@discardableResult
public func assertNear(
    _ actual: [Float], _ expected: [Double], _ tolerance: Double, _ message: String,
    file: StaticString = #filePath, line: UInt = #line
) -> Double {
    XCTAssertEqual(actual.count, expected.count, message, file: file, line: line)
    guard actual.count == expected.count, !actual.isEmpty else { return 0 }
    let scale = max(expected.map(abs).max() ?? 0, 1e-6)
    var worst = 0.0, at = 0
    for i in actual.indices {
        let d = abs(Double(actual[i]) - expected[i])
        if d > worst || d.isNaN { worst = d.isNaN ? .infinity : d; at = i }
    }
    XCTAssertLessThanOrEqual(
        worst / scale, tolerance,
        "\(message): worst at \(at): \(actual[at]) vs \(expected[at]) (scale \(scale))",
        file: file, line: line)
    return worst / scale
}

@discardableResult
public func assertNear(
    _ actual: [Float], _ expected: [Float], _ tolerance: Double, _ message: String,
    file: StaticString = #filePath, line: UInt = #line
) -> Double {
    assertNear(actual, expected.map(Double.init), tolerance, message, file: file, line: line)
}
