import CZlib
import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Reading (and, for tests and tools, writing) gzip data through zlib.
///
/// ``readFile(at:maximumOutput:)`` returns a file's bytes, inflating them first when the file is gzip-compressed, so callers
/// such as the IDX reader accept `train-images-idx3-ubyte.gz` and `train-images-idx3-ubyte` alike.
public enum Gzip {
    /// Whether `bytes` start with the gzip magic number `1f 8b`.
    public static func isGzip(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 2 && bytes[0] == 0x1F && bytes[1] == 0x8B
    }

    /// The whole file at `url`, decompressed when it is gzip data (it starts with `1f 8b` or its name ends in
    /// `.gz`), as is otherwise.
    ///
    /// - Parameters:
    ///   - url: the file (read with NormKit's regular-file reader: a pipe, device or directory is refused).
    ///   - maximumOutput: the most bytes the gzip data may inflate to; nil: this machine's physical memory (see
    ///     ``decompress(_:source:maximumOutput:)``).
    /// - Throws: ``DataError/readFailed(path:reason:)`` when the file cannot be read or is not a regular file;
    ///   ``DataError/corruptGzip(path:reason:)``, ``DataError/truncatedGzip(path:compressedBytes:decompressedBytes:)``
    ///   or ``DataError/trailingGzipData(path:offset:count:)`` when its compressed data is damaged;
    ///   ``DataError/decompressedTooLarge(path:limit:dimensions:)`` past `maximumOutput` (or memory).
    public static func readFile(at url: URL, maximumOutput: Int? = nil) throws -> [UInt8] {
        try readFile(at: url, maximumOutput: maximumOutput, memory: MemoryLimit.bytes)
    }

    /// ``readFile(at:maximumOutput:)`` with `memory` as the limit when `maximumOutput` is nil (tests give a small one).
    package static func readFile(at url: URL, maximumOutput: Int?, memory: Int) throws -> [UInt8] {
        let bytes = try readFileBytes(path: url.path)
        if isGzip(bytes) || url.pathExtension.lowercased() == "gz" {
            return try decompress(bytes, source: url.path, maximumOutput: maximumOutput, memory: memory)
        }
        return bytes
    }

    /// Inflates a gzip (or zlib) stream: zlib detects the wrapper itself (`inflateInit2` with window bits
    /// 15 + 32) and checks the CRC-32 and length trailer. Concatenated gzip members are inflated one after
    /// the other, as `gunzip` does.
    ///
    /// A few kilobytes of gzip data can inflate to gigabytes (a "decompression bomb"); a caller that knows how
    /// much output to expect passes it as `maximumOutput`, and the stream is refused as soon as it inflates to
    /// more, with the output buffer never larger than `maximumOutput + 1` bytes. Without `maximumOutput` the limit
    /// is this machine's physical memory: a stream that inflates to more than it can hold is refused, not
    /// inflated until the allocation fails.
    ///
    /// - Parameters:
    ///   - compressed: the compressed bytes.
    ///   - source: the file name to put in error messages.
    ///   - maximumOutput: the most bytes (0 or more) the stream may inflate to; nil: this machine's physical
    ///     memory.
    /// - Throws: ``DataError/corruptGzip(path:reason:)`` for data zlib refuses,
    ///   ``DataError/truncatedGzip(path:compressedBytes:decompressedBytes:)`` when the stream stops early,
    ///   ``DataError/trailingGzipData(path:offset:count:)`` for bytes after the last member,
    ///   ``DataError/decompressedTooLarge(path:limit:dimensions:)`` (with no dimensions) past `maximumOutput` (or
    ///   memory).
    public static func decompress(
        _ compressed: [UInt8], source: String = "<memory>", maximumOutput: Int? = nil
    ) throws -> [UInt8] {
        try decompress(compressed, source: source, maximumOutput: maximumOutput, memory: MemoryLimit.bytes)
    }

    /// ``decompress(_:source:maximumOutput:)`` with `memory` as the limit when `maximumOutput` is nil (tests give a
    /// small one).
    package static func decompress(
        _ compressed: [UInt8], source: String, maximumOutput: Int?, memory: Int
    ) throws -> [UInt8] {
        if let maximumOutput, maximumOutput < 0 {
            throw DataError.invalidArgument(
                name: "maximum gzip output", value: "\(maximumOutput)", expected: "0 or more bytes")
        }
        return try inflate(compressed, source: source, limit: .refuseBeyond(maximumOutput ?? memory))
    }

    /// The first `count` bytes a gzip (or zlib) stream inflates to, or all of them when it inflates to fewer,
    /// without inflating the rest: a header read before deciding how much output to allow.
    ///
    /// - Throws: ``DataError/corruptGzip(path:reason:)`` for data zlib refuses before `count` bytes,
    ///   ``DataError/truncatedGzip(path:compressedBytes:decompressedBytes:)`` when the stream stops before
    ///   them, ``DataError/trailingGzipData(path:offset:count:)`` when it is shorter and followed by junk.
    public static func decompressPrefix(
        _ compressed: [UInt8], count: Int, source: String = "<memory>"
    ) throws
        -> [UInt8]
    {
        guard count > 0 else {
            throw DataError.invalidArgument(name: "gzip prefix length", value: "\(count)", expected: "at least 1 byte")
        }
        return try inflate(compressed, source: source, limit: .stopAt(count))
    }

    /// How much output ``inflate(_:source:limit:)`` allows.
    private enum OutputLimit {
        /// Throw ``DataError/decompressedTooLarge(path:limit:dimensions:)`` as soon as the output exceeds this.
        case refuseBeyond(Int)
        /// Return the first this many bytes.
        case stopAt(Int)
    }

    private static func inflate(_ compressed: [UInt8], source: String, limit: OutputLimit) throws -> [UInt8] {
        guard !compressed.isEmpty else {
            throw DataError.truncatedGzip(path: source, compressedBytes: 0, decompressedBytes: 0)
        }
        // The largest buffer: one byte past a refusal limit (to see that the stream goes beyond it), the prefix.
        let bufferLimit: Int
        switch limit {
        case .refuseBeyond(let maximum): bufferLimit = maximum == .max ? .max : maximum + 1
        case .stopAt(let count): bufferLimit = count
        }
        // The gzip trailer's ISIZE (length mod 2^32) is a good first guess for the output size.
        var capacity = max(compressed.count * 2, 1 << 16)
        if isGzip(compressed), compressed.count >= 18 {
            let n = compressed.count
            let isize =
                Int(compressed[n - 4]) | Int(compressed[n - 3]) << 8 | Int(compressed[n - 2]) << 16
                | Int(compressed[n - 1]) << 24
            if isize > 0, isize <= compressed.count &* 1100 { capacity = isize + 1 }
        }
        var output = [UInt8](repeating: 0, count: min(capacity, bufferLimit))
        var produced = 0

        var stream = z_stream()
        var status = inflateInit2_(&stream, 15 + 32, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size))
        guard status == Z_OK else {
            throw DataError.corruptGzip(path: source, reason: "inflateInit2 failed with status \(status)")
        }
        defer { inflateEnd(&stream) }

        var consumed = 0
        try compressed.withUnsafeBufferPointer { input in
            let base = UnsafeMutablePointer(mutating: input.baseAddress!)
            while true {
                if produced == output.count {
                    // Only a prefix's buffer fills up to its limit (past a refusal limit the loop has thrown).
                    if produced == bufferLimit { return }
                    // Double the buffer, never past the limit (reserved exactly, so nothing more is allocated).
                    let grown = min(output.count * 2, bufferLimit)
                    output.reserveCapacity(grown)
                    output.append(contentsOf: repeatElement(0, count: grown - output.count))
                }
                let chunkIn = min(input.count - consumed, 1 << 30)
                let chunkOut = min(output.count - produced, 1 << 30)
                stream.next_in = base + consumed
                stream.avail_in = uInt(chunkIn)
                status = output.withUnsafeMutableBufferPointer { out -> Int32 in
                    stream.next_out = out.baseAddress! + produced
                    stream.avail_out = uInt(chunkOut)
                    return zlibInflate(&stream, Z_NO_FLUSH)
                }
                consumed += chunkIn - Int(stream.avail_in)
                produced += chunkOut - Int(stream.avail_out)
                if case .refuseBeyond(let maximum) = limit, produced > maximum {
                    throw DataError.decompressedTooLarge(path: source, limit: maximum, dimensions: nil)
                }
                switch status {
                case Z_OK:
                    continue
                case Z_STREAM_END:
                    let remaining = input.count - consumed
                    if remaining == 0 { return }
                    if remaining >= 2, input[consumed] == 0x1F, input[consumed + 1] == 0x8B {
                        inflateReset(&stream)  // another gzip member follows
                        continue
                    }
                    throw DataError.trailingGzipData(path: source, offset: consumed, count: remaining)
                case Z_BUF_ERROR:
                    if consumed == input.count {
                        throw DataError.truncatedGzip(
                            path: source, compressedBytes: input.count, decompressedBytes: produced)
                    }
                    continue  // the output buffer was full; it grows at the top of the loop
                case Z_NEED_DICT:
                    throw DataError.corruptGzip(path: source, reason: "the stream needs a preset dictionary")
                case Z_MEM_ERROR:
                    throw DataError.corruptGzip(path: source, reason: "out of memory")
                default:
                    let message = stream.msg.map { String(cString: $0) } ?? "status \(status)"
                    throw DataError.corruptGzip(path: source, reason: "\(message) at compressed offset \(consumed)")
                }
            }
        }
        output.removeSubrange(produced...)
        return output
    }

    /// `bytes` compressed as one gzip member (used by tests and tools to write `.gz` files).
    ///
    /// - Parameters:
    ///   - bytes: the data to compress.
    ///   - level: zlib compression level, 0 (store) to 9 (best).
    /// - Throws: ``DataError/invalidArgument(name:value:expected:)`` for a bad level.
    public static func compress(_ bytes: [UInt8], level: Int = 6) throws -> [UInt8] {
        guard (0...9).contains(level) else {
            throw DataError.invalidArgument(name: "gzip level", value: "\(level)", expected: "0...9")
        }
        var stream = z_stream()
        var status = deflateInit2_(
            &stream, Int32(level), Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY,
            ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size))
        guard status == Z_OK else {
            throw DataError.invalidArgument(name: "gzip level", value: "\(level)", expected: "a level zlib accepts")
        }
        defer { deflateEnd(&stream) }
        var output = [UInt8](repeating: 0, count: Int(deflateBound(&stream, uLong(bytes.count))) + 64)
        var consumed = 0, produced = 0
        bytes.withUnsafeBufferPointer { input in
            let base = UnsafeMutablePointer(mutating: input.baseAddress ?? UnsafePointer(bitPattern: 1)!)
            repeat {
                if produced == output.count { output.append(contentsOf: repeatElement(0, count: output.count)) }
                let chunkIn = min(input.count - consumed, 1 << 30)
                let chunkOut = min(output.count - produced, 1 << 30)
                stream.next_in = base + consumed
                stream.avail_in = uInt(chunkIn)
                let flush = consumed + chunkIn == input.count ? Z_FINISH : Z_NO_FLUSH
                status = output.withUnsafeMutableBufferPointer { out -> Int32 in
                    stream.next_out = out.baseAddress! + produced
                    stream.avail_out = uInt(chunkOut)
                    return deflate(&stream, flush)
                }
                consumed += chunkIn - Int(stream.avail_in)
                produced += chunkOut - Int(stream.avail_out)
            } while status == Z_OK || status == Z_BUF_ERROR
        }
        guard status == Z_STREAM_END else {
            throw DataError.invalidArgument(
                name: "gzip stream", value: "deflate status \(status)", expected: "Z_STREAM_END")
        }
        output.removeSubrange(produced...)
        return output
    }
}

/// zlib's `inflate`, under a name ``Gzip``'s own `inflate` does not shadow.
private func zlibInflate(_ stream: UnsafeMutablePointer<z_stream>, _ flush: Int32) -> Int32 {
    inflate(stream, flush)
}
