import Foundation
import NormKit

/// `(f(h) − f(−h)) / 2h`, where `f(δ)` is the function with one coordinate moved by `δ`.
public func centralDifference(h: Double, _ f: (Double) -> Double) -> Double {
    (f(h) - f(-h)) / (2 * h)
}

/// The central difference of `f` in every coordinate of `x`.
public func centralDifferences(at x: [Double], h: Double, _ f: ([Double]) -> Double) -> [Double] {
    x.indices.map { i in
        centralDifference(h: h) { delta in
            var moved = x
            moved[i] += delta
            return f(moved)
        }
    }
}

/// Runs `body` on each item with 2, 3, 2, … threads (uneven splits), then restores the thread count.
public func withTwoOrThreeThreads<Item>(over items: [Item], _ body: (Item) throws -> Void) rethrows {
    let saved = Parallelism.threadCount
    defer { Parallelism.threadCount = saved }
    for (i, item) in items.enumerated() {
        Parallelism.threadCount = 2 + i % 2
        try body(item)
    }
}
