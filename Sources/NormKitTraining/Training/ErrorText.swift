import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Error texts for the user: decoding and file-system errors in words, never Foundation's domain codes.
public enum ErrorText {
    /// A decoding error in words ("field momentum: expected Double"), a file-system error as "path: reason"
    /// ("/runs/a/sub: Not a directory", see ``fileError(_:)``), and any other error's own description.
    public static func describe(_ error: Error) -> String { NormKitTraining.describe(error) }

    /// ``describe(_:)`` for a message that names `path` itself ("cannot write PATH: …"): a file-system error
    /// about `path` is only its reason ("Is a directory"); about another file, "that file: reason".
    public static func describe(_ error: Error, about path: String) -> String {
        guard let file = FileErrorText(error) else { return describe(error) }
        guard let errorPath = file.path,
            URL(fileURLWithPath: errorPath).standardizedFileURL.path
                != URL(fileURLWithPath: path).standardizedFileURL.path
        else { return file.reason }
        return file.text
    }

    /// A file-system error (Foundation's `CocoaError`, an `NSError` of the Cocoa or POSIX domain, a `POSIXError`)
    /// as "path: reason", the reason in the C library's words (`strerror`: "Not a directory", "Is a directory",
    /// "Permission denied"); nil for any other error.
    public static func fileError(_ error: Error) -> String? { FileErrorText(error)?.text }

    /// Why `data` did not decode as `T` with `decoder` (which threw `error`): ``describe(_:)`` of the error, except
    /// where Foundation reports valid JSON as "The given data was not valid JSON" because a number does not fit its
    /// field (a fraction or a number out of range for an integer field, a negative number for an unsigned one):
    /// then the field and the problem ("field seed: -1 is not a valid UInt64 (a whole number in
    /// 0...18446744073709551615)"). JSON that is really malformed gets the parser's own reason.
    public static func describeDecoding<T: Decodable>(
        _ error: Error, of type: T.Type, from data: Data, decoder: JSONDecoder = JSONDecoder()
    ) -> String {
        guard case DecodingError.dataCorrupted(let context) = error, context.codingPath.isEmpty,
            context.underlyingError == nil
        else { return describe(error) }
        do {
            _ = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
        } catch {
            return "not valid JSON: \(describe(error))"
        }
        return JSONNumberDiagnosis.problem(T.self, in: data, decoder: decoder) ?? describe(error)
    }
}

/// The words of ``ErrorText/describe(_:)``.
func describe(_ error: Error) -> String {
    switch error {
    case DecodingError.typeMismatch(let type, let context):
        return "\(codingPathText(context.codingPath)): expected \(type)"
    case DecodingError.valueNotFound(let type, let context):
        return "\(codingPathText(context.codingPath)): a \(type) is missing"
    case DecodingError.keyNotFound(let key, let context):
        return "\(codingPathText(context.codingPath)): field '\(key.stringValue)' is missing"
    case DecodingError.dataCorrupted(let context):
        let reason = context.underlyingError.map(describe) ?? context.debugDescription
        return "\(codingPathText(context.codingPath)): \(reason)"
    default:
        break
    }
    if let file = FileErrorText(error) { return file.text }
    switch error {
    case let error as CustomStringConvertible where !(error is NSError) && !(error is CocoaError):
        return error.description
    default:
        break
    }
    // A plain Swift error (an enum of the caller's, say) has no message of its own: Foundation's would be "The
    // operation could not be completed"; its case says more.
    if !(error is LocalizedError), !(type(of: error) is NSError.Type), !(error is CocoaError), !(error is POSIXError),
        !(error is URLError)
    {
        return String(describing: error)
    }
    let ns = error as NSError
    if let debug = ns.userInfo[NSDebugDescriptionErrorKey] as? String, !debug.isEmpty { return debug }
    return error.localizedDescription
}

/// "the top level" or "field a.b.[0]".
func codingPathText(_ codingPath: [CodingKey]) -> String {
    codingPath.isEmpty
        ? "the top level"
        : "field " + codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
}

/// A file-system error taken apart: the file it names and the reason in `strerror`'s words.
struct FileErrorText {
    /// The file the error names (nil when it names none).
    var path: String?
    /// "Not a directory", "Permission denied", …
    var reason: String

    /// "path: reason", or the reason alone without a path.
    var text: String { path.map { "\($0): \(reason)" } ?? reason }

    /// Nil for an error that is not about a file.
    init?(_ error: Error) {
        func strerrorText(_ code: Int32) -> String { String(cString: strerror(code)) }
        /// The POSIX code of an underlying error.
        func posixCode(_ any: Any?) -> Int32? {
            if let e = any as? POSIXError { return e.code.rawValue }
            if let e = any as? NSError, e.domain == NSPOSIXErrorDomain { return Int32(truncatingIfNeeded: e.code) }
            return nil
        }
        if let e = error as? POSIXError {
            self.init(path: nil, code: e.code.rawValue)
            return
        }
        if error is DecodingError || error is EncodingError { return nil }
        let ns = error as NSError
        let userInfo = ns.userInfo
        let path =
            (userInfo[NSFilePathErrorKey] as? String) ?? (userInfo[NSURLErrorKey] as? URL)?.path
            ?? (error as? CocoaError)?.filePath
        switch ns.domain {
        case NSPOSIXErrorDomain:
            self.init(path: path, code: Int32(truncatingIfNeeded: ns.code))
        case NSCocoaErrorDomain:
            if let code = posixCode(userInfo[NSUnderlyingErrorKey]) {
                self.init(path: path, code: code)
                return
            }
            let reason: String
            switch CocoaError.Code(rawValue: ns.code) {
            case .fileNoSuchFile, .fileReadNoSuchFile: reason = strerrorText(ENOENT)
            case .fileReadNoPermission, .fileWriteNoPermission: reason = strerrorText(EACCES)
            case .fileWriteOutOfSpace: reason = strerrorText(ENOSPC)
            case .fileWriteVolumeReadOnly: reason = strerrorText(EROFS)
            case .fileWriteFileExists: reason = strerrorText(EEXIST)
            case .fileReadTooLarge: reason = "the file is too large to read"
            case .fileReadCorruptFile: reason = "the file is not in the expected format"
            case .fileReadInapplicableStringEncoding, .fileWriteInapplicableStringEncoding:
                reason = "the text is not in the expected encoding"
            case .fileReadInvalidFileName, .fileWriteInvalidFileName: reason = "not a valid file name"
            case .fileLocking: reason = "the file is locked"
            case .fileReadUnsupportedScheme, .fileWriteUnsupportedScheme: reason = "not a local file"
            case .fileReadUnknown: reason = "the file could not be read"
            case .fileWriteUnknown: reason = "the file could not be written"
            default:
                // Not a file error (a property-list or coder error of the same domain): its own debug text.
                guard let debug = userInfo[NSDebugDescriptionErrorKey] as? String, !debug.isEmpty else {
                    guard path != nil else { return nil }
                    reason = "the file operation failed"
                    break
                }
                reason = debug
            }
            self.init(path: path, reason: reason)
        default:
            return nil
        }
    }

    init(path: String?, reason: String) {
        self.path = path; self.reason = reason
    }

    /// `strerror(code)`; for `ENOTDIR`, also which part of `path` is a file.
    init(path: String?, code: Int32) {
        var reason = String(cString: strerror(code))
        if code == ENOTDIR, let path, let file = Self.firstNonDirectory(in: path) {
            reason += " (\(file) is a file)"
        }
        self.init(path: path, reason: reason)
    }

    /// The first ancestor of `path` (or `path` itself) that exists and is not a directory.
    static func firstNonDirectory(in path: String) -> String? {
        var url = URL(fileURLWithPath: path).standardizedFileURL
        var chain: [URL] = []
        while url.path != "/" && !url.path.isEmpty && chain.count < 4096 {
            chain.append(url)
            url = url.deletingLastPathComponent()
        }
        for candidate in chain.reversed() {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: candidate.path, isDirectory: &isDirectory) else { return nil }
            if !isDirectory.boolValue { return candidate.path }
        }
        return nil
    }
}

/// Finds the numbers that make Foundation's `JSONDecoder` reject valid JSON with a bare "The given data was not
/// valid JSON" (no coding path): a fraction or an out-of-range number for an integer field, a negative number for
/// an unsigned one.
///
/// The suspects are the numbers that are not exact non-negative `Int`s. When the data decodes (or fails some other
/// way) with every suspect replaced by 0, each suspect that makes it fail again on its own is a culprit; a trial
/// decode with `UInt64.max`, `-1` or `Int.max` in its place tells which integer type its field holds.
enum JSONNumberDiagnosis {
    /// Largest input examined (a checkpoint's configuration is a few hundred bytes).
    static let maxBytes = 1 << 16
    /// Most suspect numbers examined.
    static let maxSuspects = 256

    private enum Step {
        case key(String)
        case index(Int)

        var text: String {
            switch self {
            case .key(let key): return key
            case .index(let index): return "[\(index)]"
            }
        }
    }

    /// "field seed: -1 is not a valid UInt64 (…)" (every culprit, separated by "; "), or nil when no number
    /// explains the failure.
    static func problem<T: Decodable>(_ type: T.Type, in data: Data, decoder: JSONDecoder) -> String? {
        guard data.count <= maxBytes,
            let root = try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
        else { return nil }
        /// Whether `tree` fails the way the original did (a top-level dataCorrupted).
        func fails(_ tree: Any) -> Bool {
            guard let bytes = try? JSONSerialization.data(withJSONObject: tree, options: [.fragmentsAllowed]) else {
                return true
            }
            do {
                _ = try decoder.decode(T.self, from: bytes)
                return false
            } catch DecodingError.dataCorrupted(let context) where context.codingPath.isEmpty {
                return true
            } catch {
                return false
            }
        }
        func replacing(_ tree: Any, at path: ArraySlice<Step>, with value: Any) -> Any {
            guard let first = path.first else { return value }
            switch first {
            case .key(let key):
                guard var object = tree as? [String: Any], let child = object[key] else { return tree }
                object[key] = replacing(child, at: path.dropFirst(), with: value)
                return object
            case .index(let index):
                guard var array = tree as? [Any], array.indices.contains(index) else { return tree }
                array[index] = replacing(array[index], at: path.dropFirst(), with: value)
                return array
            }
        }
        var suspects: [(path: [Step], number: NSNumber)] = []
        func collect(_ node: Any, _ path: [Step]) {
            guard suspects.count < maxSuspects else { return }
            if let object = node as? [String: Any] {
                for key in object.keys.sorted() { collect(object[key]!, path + [.key(key)]) }
            } else if let array = node as? [Any] {
                for (index, element) in array.enumerated() { collect(element, path + [.index(index)]) }
            } else if let number = node as? NSNumber, ((number as? Int) ?? -1) < 0 {
                suspects.append((path, number))
            }
        }
        collect(root, [])
        guard !suspects.isEmpty, suspects.count < maxSuspects, fails(root) else { return nil }
        let zeroed = suspects.reduce(root) { replacing($0, at: $1.path[...], with: 0) }
        guard !fails(zeroed) else { return nil }
        var problems: [String] = []
        for suspect in suspects where fails(replacing(zeroed, at: suspect.path[...], with: suspect.number)) {
            func decodes(_ value: Any) -> Bool { !fails(replacing(zeroed, at: suspect.path[...], with: value)) }
            let field = "field " + suspect.path.map(\.text).joined(separator: ".")
            let text = suspect.number.stringValue, value = suspect.number.doubleValue
            if value.isFinite, value != value.rounded(.towardZero) {
                problems.append("\(field): \(text) is not an integer")
            } else if decodes(UInt64.max), !decodes(-1) {
                problems.append("\(field): \(text) is not a valid UInt64 (a whole number in 0...\(UInt64.max))")
            } else if decodes(Int.max) {
                problems.append("\(field): \(text) is not a valid Int (a whole number in \(Int.min)...\(Int.max))")
            } else {
                problems.append("\(field): \(text) is out of range for this field")
            }
        }
        return problems.isEmpty ? nil : problems.joined(separator: "; ")
    }
}
