import Foundation

/// Where a dataset came from: its directory and a fingerprint of its files, so that a checkpoint can say what it
/// was trained on and a resumed or evaluated run can tell when it is given other data.
public struct DataSource: Codable, Equatable, Sendable {
    /// The directory the files were read from (absolute, standardised).
    public var directory: String
    /// 16 hex digits: FNV-1a over each file's name, byte size and bytes, in a fixed order. Equal fingerprints
    /// mean the same files (compressed or not, as stored).
    public var fingerprint: String

    /// A source given explicitly.
    public init(directory: String, fingerprint: String) {
        self.directory = directory; self.fingerprint = fingerprint
    }

    /// The source of `files` in `directory` (reads every file once).
    ///
    /// - Throws: ``DataError/readFailed(path:reason:)`` for a file that cannot be read or is not a regular file.
    public init(directory: URL, files: [URL]) throws {
        var hash = FNV1a.offsetBasis
        for file in files {
            let bytes = try readFileBytes(path: file.path)
            hash = FNV1a.hash(Array("\(file.lastPathComponent):\(bytes.count):".utf8), state: hash)
            hash = bytes.withUnsafeBytes { FNV1a.hash($0, state: hash) }
        }
        self.init(directory: directory.standardizedFileURL.path, fingerprint: String(format: "%016llx", hash))
    }
}

/// What a run was trained on, recorded in its checkpoint's metadata and in `summary.json`: the data's source
/// and the pixel statistics its images were standardised with (which `eval` reuses).
public struct DataRecord: Codable, Equatable, Sendable {
    /// The files' directory and fingerprint (nil for a dataset built in memory).
    public var source: DataSource?
    /// The training pixels' mean and std on the [0, 1] scale.
    public var statistics: PixelStatistics
    /// Training and test images used.
    public var trainCount: Int
    public var testCount: Int

    /// The record of training on `train` and testing on `test`.
    public init(train: Dataset, test: Dataset) {
        source = train.source; statistics = train.statistics; trainCount = train.count; testCount = test.count
    }
}
