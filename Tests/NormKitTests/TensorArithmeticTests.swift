import NormKit
import XCTest

/// `Tensor.reshaped(to:)`, `add(_:)`/`adding(_:)`/`+`/`+=` and `scale(by:)`/`scaled(by:)`: against a float64
/// reference over the logical elements, in both layouts, and the specific errors for operands that do not match.
final class TensorArithmeticTests: XCTestCase {
    private func random(_ shape: [Int], _ layout: TensorLayout = .channelsFirst, seed: UInt64) -> Tensor {
        var generator = SeededGenerator(seed: seed)
        return Tensor.randomNormal(shape: shape, layout: layout, using: &generator)
    }

    /// The logical elements in `(N, C, *spatial)` row-major order, as float64.
    private func logical(_ t: Tensor) -> [Double] {
        var out: [Double] = []
        for n in 0..<t.batch {
            for c in 0..<t.channels {
                for p in 0..<t.spatialCount { out.append(Double(t[n, c, p])) }
            }
        }
        return out
    }

    private func storageAddress(_ t: Tensor) -> UnsafePointer<Float>? { t.withUnsafeBufferPointer { $0.baseAddress } }

    // MARK: reshaped(to:)

    func testReshapeOfChannelsFirstSharesMemoryAndKeepsTheLogicalOrder() throws {
        let x = random([2, 3, 4, 5], seed: 1)
        let flat = try x.reshaped(to: [2, 60])
        XCTAssertEqual(flat.shape, [2, 60])
        XCTAssertEqual(flat.layout, .channelsFirst)
        XCTAssertEqual(logical(flat), logical(x))
        XCTAssertEqual(storageAddress(flat), storageAddress(x), "a channels-first reshape copies nothing")
        let back = try flat.reshaped(to: [2, 3, 4, 5])
        XCTAssertEqual(back.values, x.values)
        XCTAssertEqual(try x.reshaped(to: [6, 1, 20]).values, x.values)
    }

    func testReshapeIsCopyOnWrite() throws {
        let x = random([1, 2, 2, 2], seed: 2)
        var y = try x.reshaped(to: [1, 8])
        y[0, 3, 0] = 100
        XCTAssertNotEqual(x[0, 1, 1], 100, "writing the reshaped tensor changed the original")
        XCTAssertEqual(y[0, 3, 0], 100)
    }

    func testChannelsLastFlattenTakesTheLogicalOrderAsPyTorch() throws {
        // torch: x.contiguous(memory_format=torch.channels_last).reshape(N, -1) == x.reshape(N, -1).
        let first = random([2, 3, 4, 5], seed: 3)
        let last = first.converted(to: .channelsLast)
        let flatFirst = try first.reshaped(to: [2, 60])
        let flatLast = try last.reshaped(to: [2, 60])
        XCTAssertEqual(flatLast.layout, .channelsFirst)
        XCTAssertEqual(flatLast.values, flatFirst.values)
        XCTAssertEqual(logical(flatLast), logical(first))
        XCTAssertEqual(last.layout, .channelsLast, "the source is unchanged")
        // To a 4-D shape with other N and C: the same logical elements, channels-first.
        let regrouped = try last.reshaped(to: [6, 2, 2, 5])
        XCTAssertEqual(regrouped.layout, .channelsFirst)
        XCTAssertEqual(logical(regrouped), logical(first))
    }

    func testChannelsLastSpatialRegroupKeepsTheLayoutAndMemory() throws {
        let last = random([2, 3, 4, 5], seed: 4).converted(to: .channelsLast)
        let positions = try last.reshaped(to: [2, 3, 20])
        XCTAssertEqual(positions.layout, .channelsLast)
        XCTAssertEqual(storageAddress(positions), storageAddress(last))
        XCTAssertEqual(logical(positions), logical(last))
        let volume = try last.reshaped(to: [2, 3, 2, 2, 5])
        XCTAssertEqual(volume.layout, .channelsLast)
        XCTAssertEqual(logical(volume), logical(last))
    }

    func testChannelsLastWithOneChannelOrOnePositionNeedsNoCopy() throws {
        let oneChannel = random([2, 1, 3, 3], .channelsLast, seed: 5)
        let flat = try oneChannel.reshaped(to: [2, 9])
        XCTAssertEqual(storageAddress(flat), storageAddress(oneChannel))
        XCTAssertEqual(logical(flat), logical(oneChannel))
        let onePosition = random([2, 6, 1, 1], .channelsLast, seed: 6)
        let pairs = try onePosition.reshaped(to: [4, 3])
        XCTAssertEqual(storageAddress(pairs), storageAddress(onePosition))
        XCTAssertEqual(logical(pairs), logical(onePosition))
    }

    func testReshapeRefusesAnotherCountOrAnInvalidShape() {
        let x = random([2, 3, 4], seed: 7)
        XCTAssertThrowsError(try x.reshaped(to: [2, 13])) { error in
            XCTAssertEqual(
                error as? NormalizationError,
                .elementCountMismatch(layer: "Tensor.reshaped(to:)", expected: 26, got: 24))
        }
        XCTAssertThrowsError(try x.reshaped(to: [24])) { error in
            XCTAssertEqual(error as? NormalizationError, .invalidShape(layer: "Tensor.reshaped(to:)", shape: [24]))
        }
        XCTAssertThrowsError(try x.reshaped(to: [-2, -12])) { error in
            XCTAssertEqual(
                error as? NormalizationError, .invalidShape(layer: "Tensor.reshaped(to:)", shape: [-2, -12]))
        }
        XCTAssertEqual(try Tensor(zeros: [0, 4]).reshaped(to: [2, 0, 3]).shape, [2, 0, 3])
    }

    /// One `-1` is inferred from the element count, as PyTorch's `reshape` (`x.reshape(2, -1)` of a `(2, 3, 4, 5)`
    /// tensor is `(2, 60)`): in either layout the result is the reshape to the shape written out (shape, layout and
    /// elements), wherever the `-1` stands and whatever the rank from 2 to 5.
    func testOneMinusOneIsInferredFromTheElementCount() throws {
        let first = random([2, 3, 4, 5], seed: 30)
        let cases: [(shape: [Int], expected: [Int])] = [
            ([2, -1], [2, 60]), ([-1, 60], [2, 60]), ([2, 3, -1], [2, 3, 20]), ([6, 2, -1, 5], [6, 2, 2, 5]),
            ([2, 3, 2, 2, -1], [2, 3, 2, 2, 5]), ([-1, 1, 1, 1, 1], [120, 1, 1, 1, 1]),
        ]
        for x in [first, first.converted(to: .channelsLast)] {
            for (shape, expected) in cases {
                let inferred = try x.reshaped(to: shape), written = try x.reshaped(to: expected)
                XCTAssertEqual(inferred.shape, expected, "\(shape) \(x.layout)")
                XCTAssertEqual(inferred.layout, written.layout, "\(shape) \(x.layout)")
                XCTAssertEqual(inferred.values, written.values, "\(shape) \(x.layout)")
                XCTAssertEqual(logical(inferred), logical(x), "\(shape) \(x.layout)")
            }
        }
        // No elements: the -1 is 0 when the other dimensions are not (PyTorch: torch.zeros(0, 4).reshape(2, -1)).
        XCTAssertEqual(try Tensor(zeros: [0, 4]).reshaped(to: [2, -1]).shape, [2, 0])
    }

    /// A `-1` that cannot be inferred is refused with ``NormalizationError/invalidArgument(layer:name:value:expected:)``
    /// naming the shape and why: two of them, other dimensions whose product does not divide the element count (or
    /// overflows, or is 0, where any size would do); a negative dimension other than one `-1`, or a rank a `Tensor`
    /// does not have, stays an invalid shape (named as given).
    func testReshapeRefusesAMinusOneItCannotInfer() {
        let x = random([2, 3, 4], seed: 31)
        let refusals: [(Tensor, [Int], String)] = [
            (x, [-1, -1], "at most one -1 (the one dimension inferred from the element count), got 2"),
            (x, [-1, 2, -1, 3], "at most one -1"),
            (x, [5, -1], "whose product divides the tensor's 24 elements, got 5"),
            (x, [2, -1, 5], "whose product divides the tensor's 24 elements, got 10"),
            (x, [Int.max, 2, -1], "got a product beyond Int"),
            (x, [0, -1], "no 0 beside a -1"),
            (Tensor(zeros: [0, 4]), [0, -1], "no 0 beside a -1"),
        ]
        for (tensor, shape, fragment) in refusals {
            XCTAssertThrowsError(try tensor.reshaped(to: shape), "\(shape)") { error in
                guard
                    case .invalidArgument(let layer, let name, let value, let expected)? = error as? NormalizationError
                else { return XCTFail("\(shape): \(error)") }
                XCTAssertEqual([layer, name, value], ["Tensor.reshaped(to:)", "newShape", "\(shape)"])
                XCTAssertTrue(expected.contains(fragment), "\(shape): \(expected)")
            }
        }
        for shape in [[-1, -2], [-2, 3, -1], [-1], [1, 1, 1, 1, 1, -1]] {
            XCTAssertThrowsError(try x.reshaped(to: shape), "\(shape)") { error in
                XCTAssertEqual(error as? NormalizationError, .invalidShape(layer: "Tensor.reshaped(to:)", shape: shape))
            }
        }
    }

    // MARK: add / adding / + / +=

    func testAddMatchesAFloat64ReferenceInBothLayouts() throws {
        for layout in TensorLayout.allCases {
            let a = random([3, 4, 5, 6], layout, seed: 8), b = random([3, 4, 5, 6], layout, seed: 9)
            let expected = zip(a.values, b.values).map { Float(Double($0) + Double($1)) }
            XCTAssertEqual(try a.adding(b).values, expected, "\(layout)")
            XCTAssertEqual(try (a + b).values, expected, "\(layout)")
            var c = a
            try c += b
            XCTAssertEqual(c.values, expected, "\(layout)")
            XCTAssertEqual(c.layout, layout)
            var d = a
            try d.add(b)
            XCTAssertEqual(d.values, expected, "\(layout)")
        }
        // Large enough to be split over the pool: the same sums.
        let a = random([4, 64, 32, 32], seed: 10), b = random([4, 64, 32, 32], seed: 11)
        XCTAssertEqual(try a.adding(b).values, zip(a.values, b.values).map { Float(Double($0) + Double($1)) })
    }

    func testSubtractMatchesAFloat64ReferenceAndRefusesAMismatch() throws {
        for layout in TensorLayout.allCases {
            let a = random([3, 4, 5, 6], layout, seed: 18), b = random([3, 4, 5, 6], layout, seed: 19)
            let expected = zip(a.values, b.values).map { Float(Double($0) - Double($1)) }
            XCTAssertEqual(try a.subtracting(b).values, expected, "\(layout)")
            XCTAssertEqual(try (a - b).values, expected, "\(layout)")
            var c = a
            try c -= b
            XCTAssertEqual(c.values, expected, "\(layout)")
            XCTAssertEqual(try (a - a).values, Array(repeating: 0, count: a.count))
        }
        let a = random([4, 64, 32, 32], seed: 20), b = random([4, 64, 32, 32], seed: 21)
        XCTAssertEqual(try a.subtracting(b).values, zip(a.values, b.values).map { Float(Double($0) - Double($1)) })
        var d = random([2, 3, 4, 4], seed: 22)
        let original = d.values
        XCTAssertThrowsError(try d.subtract(random([2, 3, 4, 4], .channelsLast, seed: 23))) { error in
            XCTAssertEqual(
                error as? NormalizationError,
                .operandMismatch(
                    layer: "Tensor", operation: "subtract", left: [2, 3, 4, 4], leftLayout: .channelsFirst,
                    right: [2, 3, 4, 4], rightLayout: .channelsLast))
        }
        XCTAssertEqual(d.values, original)
    }

    func testInPlaceAddWritesTheTensorsOwnMemoryAndLeavesCopiesAlone() throws {
        var a = random([2, 8, 4, 4], seed: 12)
        let b = random([2, 8, 4, 4], seed: 13)
        let before = storageAddress(a)
        try a.add(b)
        XCTAssertEqual(storageAddress(a), before, "add(_:) of an unshared tensor reuses its memory")
        let snapshot = a
        try a.add(b)
        XCTAssertNotEqual(storageAddress(a), storageAddress(snapshot), "a shared tensor is copied before writing")
        XCTAssertEqual(a.values, zip(snapshot.values, b.values).map { $0 + $1 })
        var twice = b
        try twice.add(twice)
        XCTAssertEqual(twice.values, b.values.map { $0 * 2 })
    }

    func testAddRefusesAnotherShapeOrLayoutAndChangesNothing() {
        var a = random([2, 3, 4, 4], seed: 14)
        let original = a.values
        XCTAssertThrowsError(try a.add(random([2, 3, 4, 5], seed: 15))) { error in
            XCTAssertEqual(
                error as? NormalizationError,
                .operandMismatch(
                    layer: "Tensor", operation: "add", left: [2, 3, 4, 4], leftLayout: .channelsFirst,
                    right: [2, 3, 4, 5], rightLayout: .channelsFirst))
            XCTAssertEqual(
                "\(error)",
                "Tensor: add needs two tensors of one shape and layout, got [2, 3, 4, 4] channelsFirst and "
                    + "[2, 3, 4, 5] channelsFirst (there is no broadcasting)")
        }
        let last = a.converted(to: .channelsLast)
        XCTAssertThrowsError(try a + last) { error in
            XCTAssertEqual(
                error as? NormalizationError,
                .operandMismatch(
                    layer: "Tensor", operation: "add", left: [2, 3, 4, 4], leftLayout: .channelsFirst,
                    right: [2, 3, 4, 4], rightLayout: .channelsLast))
            XCTAssertTrue("\(error)".hasSuffix("(convert one with converted(to:))"), "\(error)")
            XCTAssertEqual((error as? NormalizationError)?.layer, "Tensor")
        }
        XCTAssertThrowsError(try a += random([2, 48], seed: 16))
        XCTAssertThrowsError(try a.adding(random([1, 3, 4, 4], seed: 17)))
        XCTAssertEqual(a.values, original)
    }

    // MARK: scale / scaled

    func testScaleMatchesAFloat64Reference() {
        let a = random([2, 5, 3, 3], .channelsLast, seed: 18)
        let expected = a.values.map { Float(Double($0) * Double(Float(-0.37))) }
        let scaled = a.scaled(by: -0.37)
        XCTAssertEqual(scaled.values, expected)
        XCTAssertEqual(scaled.layout, .channelsLast)
        var b = a
        b.scale(by: -0.37)
        XCTAssertEqual(b.values, expected)
        XCTAssertNotEqual(a.values, expected, "scaled(by:) left its source alone")
    }

    /// The two operations a residual connection around a normalization needs, written as a user would.
    func testResidualAroundAGroupNorm() throws {
        let x = random([2, 8, 5, 5], seed: 19)
        let gn = try GroupNorm(channels: 8, groups: 4)
        var y = Tensor(zeros: [0, 0])
        try gn.forward(x, into: &y, training: true)
        try y += x  // y = gn(x) + x
        let normalized = try gn.forward(x, training: false)
        for ((yi, ni), xi) in zip(zip(y.values, normalized.values), x.values) {
            XCTAssertEqual(Double(yi), Double(ni) + Double(xi), accuracy: 1e-6)
        }
        XCTAssertEqual(try y.reshaped(to: [2, 200]).shape, [2, 200])
    }
}
