import Foundation

/// Everything the data pipeline (gzip, IDX files, datasets, batching) refuses.
///
/// Every message names the file (when there is one), the value that was expected, the value that was found,
/// and a hint on what to do about it. Nothing in the data pipeline traps on a malformed file: it throws one
/// of these instead.
public enum DataError: Error, Equatable, CustomStringConvertible, LocalizedError {
    /// The file could not be opened or read (missing, no permission, I/O error), or is not a regular file (a
    /// directory, a named pipe, a device: the reason says which).
    case readFailed(path: String, reason: String)
    /// The file holds `size` bytes, more than `limit`, this machine's memory (`MemoryLimit.bytes`): refused
    /// before anything was allocated for it (a damaged or sparse file, or not the file meant).
    case fileTooLarge(path: String, size: Int, limit: Int)
    /// zlib refused the compressed stream (bad header, bad block, CRC or length check failed).
    case corruptGzip(path: String, reason: String)
    /// The compressed stream ended before its end marker: the file was cut short.
    case truncatedGzip(path: String, compressedBytes: Int, decompressedBytes: Int)
    /// Bytes follow the end of the last gzip member that are not another gzip member.
    case trailingGzipData(path: String, offset: Int, count: Int)
    /// The gzip data inflates to more than `limit` bytes: for an IDX file (`dimensions` given), more than its
    /// header declares (header and data). A damaged file, or a decompression bomb; refused before more than
    /// `limit + 1` bytes are inflated.
    case decompressedTooLarge(path: String, limit: Int, dimensions: [Int]?)
    /// A gzip-compressed IDX file whose header declares `size` bytes (header and data for `dimensions`), more than
    /// `limit`, this machine's memory (`MemoryLimit.bytes`): refused before anything is inflated.
    case idxDeclaredSizeTooLarge(path: String, dimensions: [Int], size: Int, limit: Int)
    /// The file is shorter than its IDX header.
    case idxHeaderTooShort(path: String, expected: Int, found: Int)
    /// The first four bytes are not the expected IDX magic number.
    case idxBadMagic(path: String, expected: UInt32, found: UInt32)
    /// The IDX element type is not unsigned bytes (`0x08`), the only one NormKit reads.
    case idxUnsupportedElementType(path: String, found: UInt8)
    /// The dimensions multiply to more elements than this machine can address.
    case idxDimensionsOverflow(path: String, dimensions: [Int])
    /// The file's length does not match its header: `expected` bytes (header plus data), `found` bytes.
    case idxLengthMismatch(path: String, dimensions: [Int], expected: Int, found: Int)
    /// The IDX dimensions are not the ones the dataset needs (for example 28×28 images).
    case unexpectedShape(path: String, expected: String, found: [Int])
    /// The images file and the labels file hold different numbers of samples.
    case countMismatch(imagesPath: String, images: Int, labelsPath: String, labels: Int)
    /// A label is not in `0..<classCount`.
    case labelOutOfRange(path: String, index: Int, label: Int, classCount: Int)
    /// The dataset's files are not in `directory`; `missing` lists the files that were looked for.
    case datasetNotFound(directory: String, missing: [String])
    /// An argument out of range: its name, the value given and what is allowed.
    case invalidArgument(name: String, value: String, expected: String)

    /// The message: file, expected and found values, and a hint.
    public var description: String {
        switch self {
        case .readFailed(let path, let reason):
            return
                "\(path): cannot read the file (\(reason)). Hint: check that the path exists, is a regular file and is readable."
        case .fileTooLarge(let path, let size, let limit):
            return
                "\(path): the file is \(size) bytes, more than this machine's memory (\(limit) bytes) can hold; nothing was read. Hint: the file is damaged (a sparse or wrongly extended file) or is not the file meant; pass the right file."
        case .corruptGzip(let path, let reason):
            return
                "\(path): corrupt gzip data (zlib: \(reason)). Hint: the download is damaged; reinstall or re-download the file, or pass the uncompressed file instead."
        case .truncatedGzip(let path, let compressed, let decompressed):
            return
                "\(path): truncated gzip stream: expected more compressed data after \(compressed) bytes (found end of file after decompressing \(decompressed) bytes). Hint: the file was cut short; re-download it."
        case .trailingGzipData(let path, let offset, let count):
            return
                "\(path): \(count) unexpected bytes after the end of the gzip stream at offset \(offset) (expected end of file or another gzip member). Hint: the file is damaged or two files were concatenated."
        case .decompressedTooLarge(let path, let limit, let dimensions):
            guard let dimensions else {
                return
                    "\(path): the gzip data decompresses to more than \(limit) bytes, the most expected of it. Hint: the file is damaged or is not the file expected (a small file that inflates to far more is a decompression bomb)."
            }
            return
                "\(path): decompresses to more than the \(limit) bytes its IDX header declares (header and data for dimensions \(dimensions)); stopped there. Hint: the file is damaged or is a decompression bomb; re-download it."
        case .idxDeclaredSizeTooLarge(let path, let dimensions, let size, let limit):
            return
                "\(path): the IDX header declares dimensions \(dimensions), \(size) bytes (header and data), more than this machine's memory (\(limit) bytes) can hold; nothing was decompressed. Hint: the header is corrupt or the file is a decompression bomb; re-download it."
        case .idxHeaderTooShort(let path, let expected, let found):
            return
                "\(path): not an IDX file: expected a header of at least \(expected) bytes, found \(found) bytes. Hint: the file is empty or truncated."
        case .idxBadMagic(let path, let expected, let found):
            return
                "\(path): wrong IDX magic number: expected 0x\(hex(expected)), found 0x\(hex(found)). Hint: 0x00000803 is an images file (ubyte, 3 dimensions), 0x00000801 a labels file (ubyte, 1 dimension); check that images and labels are not swapped and that the file is an uncompressed or gzip-compressed IDX file."
        case .idxUnsupportedElementType(let path, let found):
            return
                "\(path): unsupported IDX element type 0x\(String(found, radix: 16)): expected 0x08 (unsigned bytes). Hint: only ubyte IDX files (MNIST, Fashion-MNIST) are supported."
        case .idxDimensionsOverflow(let path, let dimensions):
            return
                "\(path): IDX dimensions \(dimensions) describe more elements than can be addressed. Hint: the header is corrupt."
        case .idxLengthMismatch(let path, let dimensions, let expected, let found):
            let what = found < expected ? "the file is truncated" : "the file has \(found - expected) trailing bytes"
            return
                "\(path): IDX dimensions \(dimensions) need \(expected) bytes (header and data), found \(found) bytes: \(what). Hint: re-download the file; a count in the header that does not match the data means the file is damaged."
        case .unexpectedShape(let path, let expected, let found):
            return
                "\(path): unexpected IDX dimensions: expected \(expected), found \(found). Hint: pass the files of the dataset the model was built for."
        case .countMismatch(let imagesPath, let images, let labelsPath, let labels):
            return
                "image/label count mismatch: \(imagesPath) holds \(images) images but \(labelsPath) holds \(labels) labels. Hint: the two files must come from the same split (train or t10k) of the same dataset."
        case .labelOutOfRange(let path, let index, let label, let classCount):
            return
                "\(path): label \(label) of sample \(index) is out of range: expected 0..<\(classCount). Hint: the labels file is damaged or belongs to another dataset."
        case .datasetNotFound(let directory, let missing):
            return
                "Fashion-MNIST not found in \(directory): missing \(missing.joined(separator: ", ")). Hint: install the Debian package dataset-fashion-mnist (`apt-get install dataset-fashion-mnist`, which puts the files in /usr/share/datasets/fashion-mnist), or pass `--data DIR` with a directory holding the IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, gzip-compressed or not)."
        case .invalidArgument(let name, let value, let expected):
            return "invalid \(name): expected \(expected), found \(value)."
        }
    }

    /// The same text as ``description``, so `localizedDescription` is useful too.
    public var errorDescription: String? { description }
}

/// Eight hexadecimal digits.
private func hex(_ value: UInt32) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: max(0, 8 - digits.count)) + digits
}
