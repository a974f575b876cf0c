import Foundation

/// An IDX file of unsigned bytes (the MNIST / Fashion-MNIST format): its dimensions and its data.
///
/// The format: two zero bytes, the element type (`0x08`, unsigned byte), the number of dimensions `r`, then
/// `r` big-endian 32-bit dimensions, then exactly `∏ dimensions` bytes of data in row-major order. So the
/// magic number of a labels file (one dimension) is `0x00000801` and that of an images file (three) is
/// `0x00000803`. The reader insists on the exact length: a truncated file and one with trailing bytes are
/// both errors.
public struct IDXFile: Equatable, Sendable {
    /// Magic number of a ubyte IDX file with one dimension (labels).
    public static let labelsMagic: UInt32 = 0x0000_0801
    /// Magic number of a ubyte IDX file with three dimensions (images: count, rows, columns).
    public static let imagesMagic: UInt32 = 0x0000_0803
    /// The IDX element type code of unsigned bytes, the only one supported.
    public static let unsignedByteType: UInt8 = 0x08

    /// The dimensions, outermost first (for images: count, rows, columns).
    public let dimensions: [Int]
    /// The data, row-major, `dimensions.reduce(1, *)` bytes.
    public let bytes: [UInt8]

    /// A file holding `bytes` with `dimensions`.
    ///
    /// - Throws: ``DataError/invalidArgument(name:value:expected:)`` when the dimensions are negative, more
    ///   than 255, too large for the format or of a product beyond `Int.max`, or the byte count does not match
    ///   them.
    public init(dimensions: [Int], bytes: [UInt8]) throws {
        guard dimensions.count <= 255, dimensions.allSatisfy({ (0...Int(UInt32.max)).contains($0) }) else {
            throw DataError.invalidArgument(
                name: "IDX dimensions", value: "\(dimensions)",
                expected: "at most 255 dimensions, each in 0...\(UInt32.max)")
        }
        guard let count = dimensions.checkedProduct else {
            throw DataError.invalidArgument(
                name: "IDX dimensions", value: "\(dimensions)", expected: "a product of at most \(Int.max) bytes")
        }
        guard bytes.count == count else {
            throw DataError.invalidArgument(
                name: "IDX data length", value: "\(bytes.count) bytes",
                expected: "\(count) bytes for dimensions \(dimensions)")
        }
        self.dimensions = dimensions
        self.bytes = bytes
    }

    private init(validatedDimensions: [Int], bytes: [UInt8]) {
        self.dimensions = validatedDimensions
        self.bytes = bytes
    }

    /// The magic number this file is written with: `0x0000_08rr` for `rr` dimensions.
    public var magic: UInt32 { UInt32(Self.unsignedByteType) << 8 | UInt32(dimensions.count) }

    /// Reads the IDX file at `url`, gzip-compressed or not.
    ///
    /// A compressed file is inflated in two steps: its header first (at most 1,024 bytes), then the whole stream
    /// with the size the header declares as the limit, so a small file that inflates to gigabytes (a
    /// decompression bomb) is refused once it passes that size, never allocated. A header that declares more than
    /// this machine's memory (`MemoryLimit.bytes`) is refused before anything more is inflated.
    ///
    /// - Parameters:
    ///   - url: the file; a name ending in `.gz` or a gzip magic number means gzip-compressed.
    ///   - expectedMagic: when given (``labelsMagic``, ``imagesMagic``), the file's magic number must be this
    ///     one.
    /// - Throws: ``DataError`` naming the file: unreadable or not a regular file, corrupt gzip, a declared size
    ///   beyond memory, data that inflates past the size its header declares, short header, wrong magic,
    ///   unsupported element type, or a length that does not match the header.
    public static func read(from url: URL, expectedMagic: UInt32? = nil) throws -> IDXFile {
        let path = url.path
        let bytes = try readFileBytes(path: path)
        guard Gzip.isGzip(bytes) || url.pathExtension.lowercased() == "gz" else {
            return try parse(bytes, source: path, expectedMagic: expectedMagic)
        }
        let prefix = try Gzip.decompressPrefix(bytes, count: maximumHeaderSize, source: path)
        let header = try Header(prefix, source: path, expectedMagic: expectedMagic)
        guard header.fileSize <= MemoryLimit.bytes else {
            throw DataError.idxDeclaredSizeTooLarge(
                path: path, dimensions: header.dimensions, size: header.fileSize, limit: MemoryLimit.bytes)
        }
        let data: [UInt8]
        do {
            data = try Gzip.decompress(bytes, source: path, maximumOutput: header.fileSize)
        } catch DataError.decompressedTooLarge(_, let limit, nil) {
            throw DataError.decompressedTooLarge(path: path, limit: limit, dimensions: header.dimensions)
        }
        return try parse(data, header: header, source: path)
    }

    /// Parses the (uncompressed) content of an IDX file.
    ///
    /// - Parameters:
    ///   - data: the file's bytes.
    ///   - source: the file name used in error messages.
    ///   - expectedMagic: when given, the magic number the file must have.
    /// - Throws: see ``read(from:expectedMagic:)``.
    public static func parse(
        _ data: [UInt8], source: String = "<memory>", expectedMagic: UInt32? = nil
    ) throws
        -> IDXFile
    {
        try parse(data, header: Header(data, source: source, expectedMagic: expectedMagic), source: source)
    }

    /// The largest IDX header: magic and 255 dimensions.
    static let maximumHeaderSize = 4 + 4 * 255

    /// An IDX header, validated: its dimensions and the file size they declare.
    struct Header {
        var dimensions: [Int]
        /// Bytes of the header.
        var size: Int
        /// Bytes of the whole file the header describes: header and data.
        var fileSize: Int

        /// The header at the start of `data` (which may hold only the header, or more).
        ///
        /// - Throws: ``DataError/idxHeaderTooShort(path:expected:found:)``, ``DataError/idxBadMagic(path:expected:found:)``,
        ///   ``DataError/idxUnsupportedElementType(path:found:)``, ``DataError/idxDimensionsOverflow(path:dimensions:)``.
        init(_ data: [UInt8], source: String, expectedMagic: UInt32?) throws {
            guard data.count >= 4 else {
                throw DataError.idxHeaderTooShort(path: source, expected: 4, found: data.count)
            }
            let magic = bigEndianUInt32(data, at: 0)
            if let expectedMagic, magic != expectedMagic {
                throw DataError.idxBadMagic(path: source, expected: expectedMagic, found: magic)
            }
            guard data[0] == 0, data[1] == 0 else {
                throw DataError.idxBadMagic(
                    path: source, expected: UInt32(unsignedByteType) << 8 | UInt32(data[3]), found: magic)
            }
            guard data[2] == unsignedByteType else {
                throw DataError.idxUnsupportedElementType(path: source, found: data[2])
            }
            let rank = Int(data[3])
            size = 4 + 4 * rank
            guard data.count >= size else {
                throw DataError.idxHeaderTooShort(path: source, expected: size, found: data.count)
            }
            let dimensions = (0..<rank).map { Int(bigEndianUInt32(data, at: 4 + 4 * $0)) }
            self.dimensions = dimensions
            guard let count = dimensions.checkedProduct else {
                throw DataError.idxDimensionsOverflow(path: source, dimensions: dimensions)
            }
            let (sum, overflow) = size.addingReportingOverflow(count)
            guard !overflow else { throw DataError.idxDimensionsOverflow(path: source, dimensions: dimensions) }
            fileSize = sum
        }
    }

    /// The file `data`, whose `header` has been read.
    private static func parse(_ data: [UInt8], header: Header, source: String) throws -> IDXFile {
        guard data.count == header.fileSize else {
            throw DataError.idxLengthMismatch(
                path: source, dimensions: header.dimensions, expected: header.fileSize, found: data.count)
        }
        return IDXFile(validatedDimensions: header.dimensions, bytes: Array(data[header.size...]))
    }

    /// The file's content in IDX format (header and data, uncompressed).
    public func encoded() -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(4 + 4 * dimensions.count + bytes.count)
        out += [0, 0, Self.unsignedByteType, UInt8(dimensions.count)]
        for d in dimensions {
            let v = UInt32(d)
            out += [
                UInt8(v >> 24), UInt8(truncatingIfNeeded: v >> 16), UInt8(truncatingIfNeeded: v >> 8),
                UInt8(truncatingIfNeeded: v),
            ]
        }
        out += bytes
        return out
    }

    /// Writes the file to `url` (atomically), gzip-compressed when `compressed` is true.
    ///
    /// - Throws: ``AtomicFileError`` when the file cannot be written.
    public func write(to url: URL, compressed: Bool = false) throws {
        let content = compressed ? try Gzip.compress(encoded()) : encoded()
        try AtomicFile.write(content, to: url)
    }
}

/// The big-endian `UInt32` at `offset` (the caller checked the bounds).
private func bigEndianUInt32(_ data: [UInt8], at offset: Int) -> UInt32 {
    UInt32(data[offset]) << 24 | UInt32(data[offset + 1]) << 16 | UInt32(data[offset + 2]) << 8
        | UInt32(data[offset + 3])
}
