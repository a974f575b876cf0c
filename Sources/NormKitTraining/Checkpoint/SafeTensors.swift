import Foundation

/// Why a safetensors file was refused (on read) or could not be produced (on write).
///
/// Every message names the file and the tensor concerned, the expected and found values, and a hint.
public enum SafeTensorsError: Error, Equatable, CustomStringConvertible, LocalizedError {
    /// The file could not be read.
    case readFailed(path: String, reason: String)
    /// The file is shorter than the 8-byte header length.
    case fileTooShort(path: String, found: Int)
    /// The header length in the first 8 bytes runs past the end of the file.
    case headerLengthBeyondFile(path: String, declared: UInt64, available: Int)
    /// The header length is above the format's limit of 100,000,000 bytes.
    case headerTooLarge(path: String, declared: UInt64, limit: Int)
    /// The header is not valid UTF-8 JSON of the expected structure; `reason` says where and why.
    case invalidHeader(path: String, reason: String)
    /// A tensor's dtype is not one NormKit reads: `F32`, `F16`, `BF16`, `F64` (read as float32) or `I64`, `I32`
    /// (read as int64).
    case unsupportedDtype(path: String, tensor: String, dtype: String)
    /// A finite `F64` value is beyond float32's range (its magnitude rounds past `Float.greatestFiniteMagnitude`);
    /// `index` is its position in the tensor's flattened values. (PyTorch's `.float()` makes it an infinity.)
    case valueOutOfFloat32Range(path: String, tensor: String, index: Int, value: Double)
    /// A tensor's shape is not a list of non-negative integers, or its size overflows.
    case invalidShape(path: String, tensor: String, reason: String)
    /// A tensor's `data_offsets` are not `[begin, end]` with `begin ≤ end ≤` the data length.
    case offsetsOutOfRange(path: String, tensor: String, begin: Int, end: Int, dataLength: Int)
    /// A tensor's byte range does not have the size its shape and dtype need.
    case sizeMismatch(path: String, tensor: String, shape: [Int], dtype: String, expectedBytes: Int, foundBytes: Int)
    /// Two tensors' byte ranges overlap.
    case overlappingTensors(path: String, tensor: String, other: String, offset: Int)
    /// Bytes between two tensors (or before the first) belong to no tensor.
    case gapBetweenTensors(path: String, tensor: String, expectedBegin: Int, foundBegin: Int)
    /// The tensors end before the file does: trailing bytes.
    case trailingData(path: String, dataLength: Int, covered: Int)
    /// A tensor cannot be written: reserved or duplicate name, or values that do not match the shape.
    case invalidTensor(name: String, reason: String)

    /// The message: file, tensor, expected and found values, and a hint.
    public var description: String {
        let damaged =
            "Hint: the file is damaged or was not written by a safetensors writer; restore it from a backup or write it again."
        switch self {
        case .readFailed(let path, let reason):
            return
                "\(path): cannot read the safetensors file (\(reason)). Hint: check that the path exists and is a readable regular file."
        case .fileTooShort(let path, let found):
            return
                "\(path): not a safetensors file: expected at least 8 bytes (the header length), found \(found). \(damaged)"
        case .headerLengthBeyondFile(let path, let declared, let available):
            return
                "\(path): the header length is \(declared) bytes but only \(available) bytes follow it: the file is truncated or not a safetensors file. \(damaged)"
        case .headerTooLarge(let path, let declared, let limit):
            return "\(path): the header length \(declared) is above the format's limit of \(limit) bytes. \(damaged)"
        case .invalidHeader(let path, let reason):
            return "\(path): invalid safetensors header: \(reason). \(damaged)"
        case .unsupportedDtype(let path, let tensor, let dtype):
            return
                "\(path): tensor \"\(tensor)\" has dtype \"\(dtype)\": expected one of \"F32\", \"F16\", \"BF16\", \"F64\", \"I64\", \"I32\". Hint: NormKit stores float32 tensors and int64 counters; convert the checkpoint in PyTorch (`{k: v.float() if v.is_floating_point() else v.long()}`) before saving it."
        case .valueOutOfFloat32Range(let path, let tensor, let index, let value):
            return
                "\(path): tensor \"\(tensor)\" (F64) holds \(value) at flat index \(index), beyond float32's range (±\(Float.greatestFiniteMagnitude)); NormKit reads F64 as float32 and does not turn a finite value into an infinity. Hint: clamp or rescale the tensor in PyTorch (`v.clamp(-3.4e38, 3.4e38).float()`) before saving it."
        case .invalidShape(let path, let tensor, let reason):
            return "\(path): tensor \"\(tensor)\": invalid shape (\(reason)). \(damaged)"
        case .offsetsOutOfRange(let path, let tensor, let begin, let end, let length):
            return
                "\(path): tensor \"\(tensor)\": data_offsets [\(begin), \(end)] are outside the data section of \(length) bytes (expected 0 ≤ begin ≤ end ≤ \(length)). \(damaged)"
        case .sizeMismatch(let path, let tensor, let shape, let dtype, let expected, let found):
            return
                "\(path): tensor \"\(tensor)\" of shape \(shape) and dtype \(dtype) needs \(expected) bytes, its data_offsets span \(found). \(damaged)"
        case .overlappingTensors(let path, let tensor, let other, let offset):
            return
                "\(path): tensor \"\(tensor)\" starts at data offset \(offset), inside tensor \"\(other)\": the byte ranges overlap. \(damaged)"
        case .gapBetweenTensors(let path, let tensor, let expected, let found):
            return
                "\(path): tensor \"\(tensor)\" starts at data offset \(found), expected \(expected): \(found - expected) bytes belong to no tensor. \(damaged)"
        case .trailingData(let path, let length, let covered):
            return
                "\(path): the tensors cover \(covered) bytes of the \(length)-byte data section: \(length - covered) trailing bytes. \(damaged)"
        case .invalidTensor(let name, let reason):
            return "cannot write tensor \"\(name)\": \(reason)."
        }
    }

    /// The same text as ``description``.
    public var errorDescription: String? { description }
}

/// The safetensors checkpoint format (Hugging Face): reads float32, float16, bfloat16, float64, int64 and int32
/// tensors into NormKit's float32 and int64 ``/NormKit/StateTensor`` values; writes float32 and int64.
///
/// A file is: an 8-byte little-endian header length `n`; `n` bytes of UTF-8 JSON mapping each tensor name to
/// `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets into the data section), plus an optional
/// `"__metadata__"` map of strings to strings; then the data section, little-endian, tensors back to back.
///
/// ``write(_:metadata:to:replacing:)`` produces the bytes the Python `safetensors` package (0.4 – 0.8) writes for the
/// same tensors: compact JSON with the metadata first, tensors ordered by dtype (`I64` before `F32`) and then
/// by name, data in that order, and the header padded with spaces to a multiple of 8 bytes. (Python's
/// metadata order is a hash map's; NormKit sorts the metadata keys.) Writes are atomic (``AtomicFile``).
///
/// ``read(from:)`` validates everything: header length against the file size, UTF-8 JSON, duplicate keys,
/// dtypes, shapes, and that the tensors tile the data section exactly — no overlap, no gap, no trailing byte.
///
/// Reading converts as PyTorch's `.float()` and `.long()` do: `F16` and `BF16` become float32 exactly (subnormals,
/// ±0, infinities and NaN included), `F64` rounds to the nearest float32 (NaN and infinities stay; a finite value
/// beyond float32's range is refused with ``SafeTensorsError/valueOutOfFloat32Range(path:tensor:index:value:)``
/// instead of becoming an infinity), and `I32` widens to int64. So a state dict saved from `model.half()`,
/// `model.bfloat16()` or `model.double()` loads into a NormKit model; ``write(_:metadata:to:replacing:)`` writes float32.
public enum SafeTensors {
    /// The largest header accepted, as in the reference implementation.
    public static let maximumHeaderLength = 100_000_000

    /// Writes `tensors` and `metadata` to `url` atomically: a failed or interrupted write leaves any previous
    /// file at `url` intact. With `replacing: false` an existing file is never replaced, not even one created while
    /// the file was being written (``AtomicFile/write(to:replacing:_:)``).
    ///
    /// - Throws: ``SafeTensorsError/invalidTensor(name:reason:)`` for a tensor whose values do not match its
    ///   shape or a tensor named `__metadata__`; ``AtomicFileError`` when the file cannot be written
    ///   (``AtomicFileError/destinationExists(path:)`` for an existing file when not `replacing`).
    public static func write(
        _ tensors: [String: StateTensor], metadata: [String: String] = [:], to url: URL, replacing: Bool = true
    ) throws {
        try AtomicFile.write(encode(tensors, metadata: metadata), to: url, replacing: replacing)
    }

    /// Reads a safetensors file; `F16`, `BF16` and `F64` tensors come back as float32, `I32` as int64 (see
    /// ``SafeTensors``).
    ///
    /// - Throws: ``SafeTensorsError`` naming the file and what is wrong with it (among them
    ///   ``SafeTensorsError/valueOutOfFloat32Range(path:tensor:index:value:)`` for an `F64` value float32 cannot
    ///   hold);
    ///   ``DataError/fileTooLarge(path:size:limit:)`` for a file larger than this machine's memory.
    public static func read(from url: URL) throws -> (tensors: [String: StateTensor], metadata: [String: String]) {
        let bytes: [UInt8]
        do {
            bytes = try readFileBytes(path: url.path)
        } catch let DataError.readFailed(path, reason) {
            throw SafeTensorsError.readFailed(path: path, reason: reason)
        }
        return try decode(bytes, source: url.path)
    }

    /// The file content ``write(_:metadata:to:replacing:)`` writes.
    ///
    /// - Throws: ``SafeTensorsError/invalidTensor(name:reason:)``.
    public static func encode(_ tensors: [String: StateTensor], metadata: [String: String] = [:]) throws -> [UInt8] {
        for (name, tensor) in tensors {
            guard name != "__metadata__" else {
                throw SafeTensorsError.invalidTensor(name: name, reason: "the name is reserved for the metadata map")
            }
            guard tensor.shape.allSatisfy({ $0 >= 0 }) else {
                throw SafeTensorsError.invalidTensor(name: name, reason: "negative dimension in shape \(tensor.shape)")
            }
            let (count, overflow) = elementCount(tensor.shape)
            let found: Int
            switch tensor {
            case .float32(_, let values): found = values.count
            case .int64(_, let values): found = values.count
            }
            guard !overflow, count == found else {
                throw SafeTensorsError.invalidTensor(
                    name: name, reason: "shape \(tensor.shape) needs \(count) values, found \(found)")
            }
        }
        // The reference writer's order: larger dtypes (I64) first, then by name (byte-wise).
        let names = tensors.keys.sorted { a, b in
            let (ra, rb) = (rank(tensors[a]!), rank(tensors[b]!))
            return ra != rb ? ra > rb : a.utf8.lexicographicallyPrecedes(b.utf8)
        }
        var header = "{"
        var first = true
        if !metadata.isEmpty {
            header += "\"__metadata__\":{"
            for (i, key) in metadata.keys.sorted(by: { $0.utf8.lexicographicallyPrecedes($1.utf8) }).enumerated() {
                header += (i > 0 ? "," : "") + jsonString(key) + ":" + jsonString(metadata[key]!)
            }
            header += "}"
            first = false
        }
        var offset = 0
        for name in names {
            let tensor = tensors[name]!
            let bytes = elementCount(tensor.shape).count * elementSize(tensor)
            header +=
                (first ? "" : ",") + jsonString(name) + ":{\"dtype\":\"" + dtypeName(tensor) + "\",\"shape\":["
                + tensor.shape.map(String.init).joined(separator: ",")
                + "],\"data_offsets\":[\(offset),\(offset + bytes)]}"
            offset += bytes
            first = false
        }
        header += "}"
        var headerBytes = Array(header.utf8)
        headerBytes += repeatElement(UInt8(ascii: " "), count: (8 - headerBytes.count % 8) % 8)

        var out = [UInt8](repeating: 0, count: 8 + headerBytes.count + offset)
        out.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: UInt64(headerBytes.count).littleEndian, toByteOffset: 0, as: UInt64.self)
            headerBytes.withUnsafeBytes {
                raw.baseAddress!.advanced(by: 8).copyMemory(from: $0.baseAddress!, byteCount: $0.count)
            }
            var position = 8 + headerBytes.count
            for name in names {
                switch tensors[name]! {
                case .float32(_, let values):
                    for v in values {
                        raw.storeBytes(of: v.bitPattern.littleEndian, toByteOffset: position, as: UInt32.self)
                        position += 4
                    }
                case .int64(_, let values):
                    for v in values {
                        raw.storeBytes(of: v.littleEndian, toByteOffset: position, as: Int64.self)
                        position += 8
                    }
                }
            }
        }
        return out
    }

    /// Parses and validates the content of a safetensors file, converting `F16`, `BF16` and `F64` to float32 and
    /// `I32` to int64 (see ``SafeTensors``).
    ///
    /// - Parameters:
    ///   - bytes: the whole file: the 8-byte header length, the JSON header, then the tensor data.
    ///   - source: the file name used in error messages.
    /// - Throws: ``SafeTensorsError``.
    public static func decode(
        _ bytes: [UInt8], source: String = "<memory>"
    ) throws
        -> (tensors: [String: StateTensor], metadata: [String: String])
    {
        guard bytes.count >= 8 else { throw SafeTensorsError.fileTooShort(path: source, found: bytes.count) }
        let declared = bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard declared <= UInt64(bytes.count - 8) else {
            throw SafeTensorsError.headerLengthBeyondFile(path: source, declared: declared, available: bytes.count - 8)
        }
        guard declared <= UInt64(maximumHeaderLength) else {
            throw SafeTensorsError.headerTooLarge(path: source, declared: declared, limit: maximumHeaderLength)
        }
        let headerLength = Int(declared)
        let dataStart = 8 + headerLength
        let dataLength = bytes.count - dataStart

        let root: HeaderJSON
        do {
            var parser = HeaderJSONParser(bytes: bytes[8..<dataStart])
            root = try parser.parseDocument()
        } catch let error as HeaderJSONParser.Failure {
            throw SafeTensorsError.invalidHeader(path: source, reason: error.message)
        }
        guard case .object(let entries) = root else {
            throw SafeTensorsError.invalidHeader(path: source, reason: "expected a JSON object, found \(root.kind)")
        }

        struct Entry { let name: String; let dtype: StoredDtype; let shape: [Int]; let begin: Int; let end: Int }
        var metadata: [String: String] = [:]
        var list: [Entry] = []
        for (name, value) in entries {
            if name == "__metadata__" {
                switch value {
                case .null: continue
                case .object(let pairs):
                    for (key, item) in pairs {
                        guard case .string(let text) = item else {
                            throw SafeTensorsError.invalidHeader(
                                path: source,
                                reason: "__metadata__ value of \"\(key)\" must be a string, found \(item.kind)")
                        }
                        metadata[key] = text
                    }
                default:
                    throw SafeTensorsError.invalidHeader(
                        path: source, reason: "__metadata__ must be an object of strings, found \(value.kind)")
                }
                continue
            }
            guard case .object(let fields) = value else {
                throw SafeTensorsError.invalidHeader(
                    path: source, reason: "tensor \"\(name)\" must be an object, found \(value.kind)")
            }
            func field(_ key: String) throws -> HeaderJSON {
                guard let found = fields.first(where: { $0.0 == key })?.1 else {
                    throw SafeTensorsError.invalidHeader(path: source, reason: "tensor \"\(name)\" has no \"\(key)\"")
                }
                return found
            }
            guard case .string(let dtype) = try field("dtype") else {
                throw SafeTensorsError.invalidHeader(path: source, reason: "tensor \"\(name)\": dtype must be a string")
            }
            guard let elementSize = StoredDtype(rawValue: dtype)?.elementSize else {
                throw SafeTensorsError.unsupportedDtype(path: source, tensor: name, dtype: dtype)
            }
            guard case .array(let shapeItems) = try field("shape") else {
                throw SafeTensorsError.invalidShape(path: source, tensor: name, reason: "expected a list of integers")
            }
            let shape = try shapeItems.map { item -> Int in
                guard let d = item.nonNegativeInteger else {
                    throw SafeTensorsError.invalidShape(
                        path: source, tensor: name, reason: "expected non-negative integers, found \(item.text)")
                }
                return d
            }
            guard case .array(let offsetItems) = try field("data_offsets"), offsetItems.count == 2,
                let begin = offsetItems[0].nonNegativeInteger, let end = offsetItems[1].nonNegativeInteger
            else {
                throw SafeTensorsError.invalidHeader(
                    path: source,
                    reason: "tensor \"\(name)\": data_offsets must be [begin, end] with non-negative integers")
            }
            guard begin <= end, end <= dataLength else {
                throw SafeTensorsError.offsetsOutOfRange(
                    path: source, tensor: name, begin: begin, end: end, dataLength: dataLength)
            }
            let (count, overflow) = elementCount(shape)
            let (needed, overflow2) = count.multipliedReportingOverflow(by: elementSize)
            guard !overflow, !overflow2 else {
                throw SafeTensorsError.invalidShape(path: source, tensor: name, reason: "\(shape) overflows")
            }
            guard needed == end - begin else {
                throw SafeTensorsError.sizeMismatch(
                    path: source, tensor: name, shape: shape, dtype: dtype, expectedBytes: needed,
                    foundBytes: end - begin)
            }
            list.append(Entry(name: name, dtype: StoredDtype(rawValue: dtype)!, shape: shape, begin: begin, end: end))
        }

        // The tensors must tile the data section: sorted by offsets, each starts where the previous ended.
        list.sort { ($0.begin, $0.end) < ($1.begin, $1.end) }
        var covered = 0
        var previous: String? = nil
        for entry in list {
            if entry.begin < covered {
                throw SafeTensorsError.overlappingTensors(
                    path: source, tensor: entry.name, other: previous ?? "", offset: entry.begin)
            }
            if entry.begin > covered {
                throw SafeTensorsError.gapBetweenTensors(
                    path: source, tensor: entry.name, expectedBegin: covered, foundBegin: entry.begin)
            }
            covered = entry.end
            previous = entry.name
        }
        guard covered == dataLength else {
            throw SafeTensorsError.trailingData(path: source, dataLength: dataLength, covered: covered)
        }

        var tensors: [String: StateTensor] = [:]
        try bytes.withUnsafeBytes { raw in
            for entry in list {
                let base = dataStart + entry.begin
                let count = (entry.end - entry.begin) / entry.dtype.elementSize
                func load<T: FixedWidthInteger>(_: T.Type, _ i: Int) -> T {
                    T(littleEndian: raw.loadUnaligned(fromByteOffset: base + MemoryLayout<T>.size * i, as: T.self))
                }
                switch entry.dtype {
                case .f32:
                    let values = (0..<count).map { Float(bitPattern: load(UInt32.self, $0)) }
                    tensors[entry.name] = .float32(shape: entry.shape, values: values)
                case .f16:
                    let values = (0..<count).map { floatFromHalfBits(load(UInt16.self, $0)) }
                    tensors[entry.name] = .float32(shape: entry.shape, values: values)
                case .bf16:
                    let values = (0..<count).map { Float(bitPattern: UInt32(load(UInt16.self, $0)) << 16) }
                    tensors[entry.name] = .float32(shape: entry.shape, values: values)
                case .f64:
                    var values = [Float](repeating: 0, count: count)
                    for i in 0..<count {
                        let value = Double(bitPattern: load(UInt64.self, i))
                        let rounded = Float(value)
                        guard rounded.isFinite || !value.isFinite else {
                            throw SafeTensorsError.valueOutOfFloat32Range(
                                path: source, tensor: entry.name, index: i, value: value)
                        }
                        values[i] = rounded
                    }
                    tensors[entry.name] = .float32(shape: entry.shape, values: values)
                case .i64:
                    let values = (0..<count).map { load(Int64.self, $0) }
                    tensors[entry.name] = .int64(shape: entry.shape, values: values)
                case .i32:
                    let values = (0..<count).map { Int64(load(Int32.self, $0)) }
                    tensors[entry.name] = .int64(shape: entry.shape, values: values)
                }
            }
        }
        return (tensors, metadata)
    }

    // MARK: Helpers

    /// The dtypes ``decode(_:source:)`` reads, by their header names.
    private enum StoredDtype: String {
        case f32 = "F32", f16 = "F16", bf16 = "BF16", f64 = "F64", i64 = "I64", i32 = "I32"

        var elementSize: Int {
            switch self {
            case .f16, .bf16: return 2
            case .f32, .i32: return 4
            case .f64, .i64: return 8
            }
        }
    }

    /// The float32 equal to the IEEE-754 binary16 value with bit pattern `bits` (exact: every half is a float).
    /// Subnormal halves become normal floats; a NaN keeps its sign and payload and is made quiet, as x86's
    /// `vcvtph2ps` (PyTorch's `.float()`) does.
    static func floatFromHalfBits(_ bits: UInt16) -> Float {
        let sign = UInt32(bits & 0x8000) << 16
        let exponent = UInt32(bits >> 10) & 0x1F
        let mantissa = UInt32(bits & 0x3FF)
        switch exponent {
        case 0x1F:  // infinity, NaN
            return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13) | (mantissa == 0 ? 0 : 0x0040_0000))
        case 0:
            guard mantissa != 0 else { return Float(bitPattern: sign) }  // ±0
            // Subnormal: mantissa · 2^-24, exact in float32.
            let magnitude = Float(mantissa) * 0x1p-24
            return sign == 0 ? magnitude : -magnitude
        default:
            return Float(bitPattern: sign | ((exponent + 112) << 23) | (mantissa << 13))
        }
    }

    private static func elementCount(_ shape: [Int]) -> (count: Int, overflow: Bool) {
        shape.checkedProduct.map { ($0, false) } ?? (0, true)
    }

    private static func rank(_ tensor: StateTensor) -> Int {
        if case .int64 = tensor { return 1 }
        return 0
    }

    private static func dtypeName(_ tensor: StateTensor) -> String {
        if case .int64 = tensor { return "I64" }
        return "F32"
    }

    private static func elementSize(_ tensor: StateTensor) -> Int {
        if case .int64 = tensor { return 8 }
        return 4
    }

    /// A JSON string literal escaped as serde_json escapes it (what the Python package writes): `"` and `\`,
    /// `\b \f \n \r \t`, other control characters as `\u00xx`; everything else verbatim UTF-8.
    private static func jsonString(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
