import Foundation

/// The memory order of a ``Tensor``'s elements.
///
/// The logical shape is always `(N, C, *spatial)`; the layout only says how elements sit in memory.
public enum TensorLayout: String, Sendable, CaseIterable, Codable {
    /// `(N, C, *spatial)`, PyTorch's default ("NCHW"). Each `(n, c)` plane is contiguous.
    case channelsFirst
    /// `(N, *spatial, C)` ("NHWC"). The channels of one position are contiguous.
    case channelsLast
}

/// Owns one 64-byte-aligned block of `Float`s. Shared between copies of a ``Tensor`` until one of them writes.
///
/// `@unchecked Sendable` because it holds a raw pointer; it is sound because its memory is written only through
/// ``Tensor``'s mutating methods, and each first replaces a storage that is not uniquely referenced
/// (`isKnownUniquelyReferenced`, an atomic reference-count check) with a private copy. So memory that another
/// tensor — on any thread — can see is never written: only read, which is safe concurrently. (The same
/// copy-on-write argument as the standard library's `Array`.)
@usableFromInline
final class TensorStorage: @unchecked Sendable {
    @usableFromInline let pointer: UnsafeMutablePointer<Float>
    @usableFromInline let count: Int

    @usableFromInline
    init(count: Int) {
        self.count = count
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * MemoryLayout<Float>.stride, alignment: 64)
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        pointer.initialize(repeating: 0, count: max(count, 1))
    }

    @usableFromInline
    func copy() -> TensorStorage {
        let other = TensorStorage(count: count)
        other.pointer.update(from: pointer, count: count)
        return other
    }

    deinit { UnsafeMutableRawPointer(pointer).deallocate() }
}

/// A float32 tensor of logical shape `(N, C, *spatial)` with spatial rank 0 to 3, stored channels-first or
/// channels-last.
///
/// `Tensor` is a value type with copy-on-write storage: copies are cheap (one retain), and a write through
/// ``withUnsafeMutableBufferPointer(_:)`` copies the elements only when another copy still shares them. To allocate
/// nothing per training step, keep a tensor per activation and pass it as the `into:` argument of a layer's forward and
/// backward: when its shape already matches and nothing else holds its storage, the same memory is reused.
///
/// `Tensor` is `Sendable`: copies may be read and written on different tasks (a write copies shared storage first).
/// Element access through the subscript is bounds-checked in every build (a precondition naming the index and the
/// shape); only the `withUnsafe…` methods are unchecked. See ``NormalizationError`` for the error policy.
public struct Tensor: Sendable {
    /// The logical shape `(N, C, *spatial)`, whatever the ``layout``.
    public private(set) var shape: [Int]
    /// The memory order of the elements.
    public private(set) var layout: TensorLayout
    @usableFromInline var storage: TensorStorage

    /// A tensor of zeros, for a shape written in code.
    ///
    /// - Precondition: `shape` has 2 to 5 non-negative dimensions and a size that fits (``isValid(shape:)``), and its
    ///   floats fit in this machine's physical memory (checked in every build: the message names the shape, or the
    ///   bytes and the limit). For a shape that comes from data, a file or a user, use the throwing
    ///   ``init(shape:layout:)``.
    public init(zeros shape: [Int], layout: TensorLayout = .channelsFirst) {
        let bytes = Tensor.checkedByteCount(of: shape, "Tensor(zeros:)")
        self.shape = shape
        self.layout = layout
        self.storage = TensorStorage(count: bytes / MemoryLayout<Float>.stride)
    }

    /// A tensor of zeros, for a shape that comes from input (data, files, users).
    ///
    /// - Throws: ``NormalizationError/invalidShape(layer:shape:)`` unless `shape` is `(N, C, *spatial)` with
    ///   spatial rank 0 to 3, no negative dimension and a size that fits (``isValid(shape:)``);
    ///   ``NormalizationError/tooLargeForMemory(layer:what:bytes:limit:)`` when its floats need more bytes than this
    ///   machine's physical memory (checked before anything is allocated).
    public init(shape: [Int], layout: TensorLayout = .channelsFirst) throws {
        try Tensor.validate(shape: shape)
        self.init(zeros: shape, layout: layout)
    }

    /// A tensor of `shape` and `layout` over `storage` (shared, copy-on-write; its count is the shape's).
    init(sharing storage: TensorStorage, shape: [Int], layout: TensorLayout) {
        self.storage = storage
        self.shape = shape
        self.layout = layout
    }

    /// A tensor holding `values` in memory order (see ``layout``).
    ///
    /// - Throws: ``NormalizationError/invalidShape(layer:shape:)``,
    ///   ``NormalizationError/tooLargeForMemory(layer:what:bytes:limit:)`` or
    ///   ``NormalizationError/elementCountMismatch(layer:expected:got:)``.
    public init(shape: [Int], layout: TensorLayout = .channelsFirst, values: [Float]) throws {
        try Tensor.validate(shape: shape)
        let count = shape.reduce(1, *)
        guard values.count == count else {
            throw NormalizationError.elementCountMismatch(layer: "Tensor", expected: count, got: values.count)
        }
        self.init(zeros: shape, layout: layout)
        values.withUnsafeBufferPointer { storage.pointer.update(from: $0.baseAddress!, count: count) }
    }

    /// Whether `shape` is `(N, C, *spatial)` with spatial rank 0 to 3, no negative dimension, and fewer than 2^61
    /// elements in the product of its non-zero dimensions: its floats' byte count fits in `Int`, so no count formed
    /// from it (`N·C` of an empty tensor included) overflows.
    ///
    /// Whether the tensor fits in this machine's memory is a separate question, which ``validate(shape:for:)`` and
    /// the initializers also check.
    public static func isValid(shape: [Int]) -> Bool { byteCount(of: shape) != nil }

    /// The bytes of the floats of a tensor of `shape` (0 when a dimension is 0), or nil unless ``isValid(shape:)``.
    static func byteCount(of shape: [Int]) -> Int? {
        guard (2...5).contains(shape.count) else { return nil }
        var bytes = MemoryLayout<Float>.stride, empty = false
        for dimension in shape {
            guard dimension >= 0 else { return nil }
            guard dimension > 0 else {
                empty = true
                continue
            }
            let (product, overflow) = bytes.multipliedReportingOverflow(by: dimension)
            guard !overflow else { return nil }
            bytes = product
        }
        return empty ? 0 : bytes
    }

    /// The bytes of `shape`'s floats for the non-throwing `function`: stops the process (a programmer error) with a
    /// message naming the shape when it is not valid, or its bytes and the limit when they exceed this machine's
    /// memory.
    private static func checkedByteCount(of shape: [Int], _ function: StaticString) -> Int {
        guard let bytes = byteCount(of: shape) else {
            fatalError(
                "\(function): shape must be (N, C, *spatial) with spatial rank 0 to 3, no negative dimension and "
                    + "fewer than 2^61 elements, got \(shape)")
        }
        guard bytes <= MemoryLimit.bytes else {
            fatalError(
                "\(function): shape \(shape) needs \(bytes) bytes, more than this machine's memory "
                    + "(\(MemoryLimit.bytes) bytes) can hold")
        }
        return bytes
    }

    /// Checks that `shape` is `(N, C, *spatial)` with spatial rank 0 to 3, no negative dimension, and a size that
    /// fits (``isValid(shape:)``), and that its floats fit in this machine's physical memory.
    ///
    /// - Parameters:
    ///   - shape: the dimensions to check.
    ///   - source: what the shape is for, named by the error (a layer's name; `"Tensor"` by default).
    /// - Throws: ``NormalizationError/invalidShape(layer:shape:)`` or
    ///   ``NormalizationError/tooLargeForMemory(layer:what:bytes:limit:)``.
    public static func validate(shape: [Int], for source: @autoclosure () -> String = "Tensor") throws {
        guard let bytes = byteCount(of: shape) else {
            throw NormalizationError.invalidShape(layer: source(), shape: shape)
        }
        try MemoryLimit.check(bytes, layer: source(), what: "a tensor of shape \(shape)")
    }

    /// Number of elements.
    @inlinable public var count: Int { storage.count }
    /// `N`, the batch size.
    @inlinable public var batch: Int { shape[0] }
    /// `C`, the number of channels.
    @inlinable public var channels: Int { shape[1] }
    /// The spatial dimensions `S` (empty for rank-0 spatial inputs `(N, C)`).
    @inlinable public var spatialShape: ArraySlice<Int> { shape.dropFirst(2) }
    /// `M = prod(S)`, the number of spatial positions (1 when there are none).
    @inlinable public var spatialCount: Int { shape.dropFirst(2).reduce(1, *) }

    /// The elements in memory order.
    public var values: [Float] {
        withUnsafeBufferPointer { Array($0) }
    }

    /// Calls `body` with the elements in memory order.
    @inlinable
    public func withUnsafeBufferPointer<R>(_ body: (UnsafeBufferPointer<Float>) throws -> R) rethrows -> R {
        try body(UnsafeBufferPointer(start: storage.pointer, count: storage.count))
    }

    /// Calls `body` with writable elements in memory order, copying them first if another tensor shares them.
    @inlinable
    public mutating func withUnsafeMutableBufferPointer<R>(
        _ body: (UnsafeMutableBufferPointer<Float>) throws -> R
    ) rethrows -> R {
        if !isKnownUniquelyReferenced(&storage) { storage = storage.copy() }
        return try body(UnsafeMutableBufferPointer(start: storage.pointer, count: storage.count))
    }

    /// Makes this tensor have `shape` and `layout`, reusing its memory when the element count is unchanged and
    /// no other tensor shares it. The contents are unspecified afterwards (callers overwrite them).
    ///
    /// - Precondition: `newShape` is a valid shape (``isValid(shape:)``) whose floats fit in this machine's physical
    ///   memory, as for ``init(zeros:layout:)``; layers pass their validated input's, or an output shape they checked.
    public mutating func prepare(shape newShape: [Int], layout newLayout: TensorLayout) {
        let count = Tensor.checkedByteCount(of: newShape, "Tensor.prepare(shape:layout:)") / MemoryLayout<Float>.stride
        if count != storage.count || !isKnownUniquelyReferenced(&storage) {
            storage = TensorStorage(count: count)
        }
        shape = newShape
        layout = newLayout
    }

    /// The memory offset of logical element `(n, c, position)` where `position` is the flat spatial index.
    ///
    /// Arithmetic only, unchecked (for code that indexes a `withUnsafe…` buffer); check the index with
    /// ``isValidIndex(n:c:position:)`` first.
    @inlinable
    public func offset(n: Int, c: Int, position: Int) -> Int {
        let channels = shape[1], positions = spatialCount
        switch layout {
        case .channelsFirst: return (n * channels + c) * positions + position
        case .channelsLast: return (n * positions + position) * channels + c
        }
    }

    /// Whether `(n, c, position)` names an element: `0 ≤ n < N`, `0 ≤ c < C`, `0 ≤ position < M` (the flat
    /// spatial index).
    @inlinable
    public func isValidIndex(n: Int, c: Int, position: Int) -> Bool {
        (0..<shape[0]).contains(n) && (0..<shape[1]).contains(c) && (0..<spatialCount).contains(position)
    }

    /// The checked memory offset of `(n, c, position)`.
    private func checkedOffset(_ n: Int, _ c: Int, _ position: Int) -> Int {
        checkPrecondition(
            isValidIndex(n: n, c: c, position: position),
            "Tensor index (n: \(n), c: \(c), position: \(position)) is out of bounds for shape \(shape) "
                + "(n in 0..<\(shape[0]), c in 0..<\(shape[1]), position in 0..<\(spatialCount))")
        return offset(n: n, c: c, position: position)
    }

    /// Reads or writes logical element `(n, c, position)` (flat spatial index). Convenient, not fast.
    ///
    /// - Precondition: ``isValidIndex(n:c:position:)`` (checked in every build; the message names the index and
    ///   the shape).
    public subscript(n: Int, c: Int, position: Int) -> Float {
        get { storage.pointer[checkedOffset(n, c, position)] }
        set {
            let index = checkedOffset(n, c, position)
            withUnsafeMutableBufferPointer { $0[index] = newValue }
        }
    }

    /// The same logical tensor in another memory order.
    public func converted(to newLayout: TensorLayout) -> Tensor {
        if newLayout == layout { return self }
        var result = Tensor(zeros: shape, layout: newLayout)
        let n = batch, c = channels, m = spatialCount
        let source = storage.pointer
        result.withUnsafeMutableBufferPointer { target in
            for i in 0..<n {
                for ch in 0..<c {
                    for p in 0..<m {
                        let first = (i * c + ch) * m + p, last = (i * m + p) * c + ch
                        if layout == .channelsFirst {
                            target[last] = source[first]
                        } else {
                            target[first] = source[last]
                        }
                    }
                }
            }
        }
        return result
    }

    /// A tensor of `shape` filled with normal values (`mean`, `standardDeviation`) from `generator`.
    ///
    /// - Precondition: `shape` is valid, as for ``init(zeros:layout:)``.
    public static func randomNormal<G: RandomNumberGenerator>(
        shape: [Int], layout: TensorLayout = .channelsFirst, mean: Float = 0, standardDeviation: Float = 1,
        using generator: inout G
    ) -> Tensor {
        var t = Tensor(zeros: shape, layout: layout)
        t.withUnsafeMutableBufferPointer { buffer in
            var i = 0
            while i < buffer.count {
                // Box-Muller: two normals from two uniforms.
                let u1 = Float.random(in: Float.ulpOfOne..<1, using: &generator)
                let u2 = Float.random(in: 0..<1, using: &generator)
                let radius = (-2 * Foundation.log(u1)).squareRoot()
                buffer[i] = mean + standardDeviation * radius * Foundation.cos(2 * .pi * u2)
                if i + 1 < buffer.count {
                    buffer[i + 1] = mean + standardDeviation * radius * Foundation.sin(2 * .pi * u2)
                }
                i += 2
            }
        }
        return t
    }
}

extension Tensor: CustomStringConvertible {
    /// Shape, layout and the first few values.
    public var description: String {
        let head = withUnsafeBufferPointer { Array($0.prefix(6)) }
        return "Tensor(shape: \(shape), layout: \(layout), values: \(head)\(count > 6 ? "…" : ""))"
    }
}

/// NormKit's precondition for programmer errors (see ``NormalizationError``): stops the process with `message` when
/// `condition` is false, in every build. Unlike `precondition`, whose message `-O` builds drop, `fatalError` prints
/// it in release builds too, so the crash names the index and the shape.
@inline(__always)
func checkPrecondition(
    _ condition: Bool, _ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line
) {
    if !condition { fatalError(message(), file: file, line: line) }
}
