// The JSON header of a safetensors file: a small strict parser (depth-limited, exact integers, no duplicate
// keys) for SafeTensors.decode, which sees only the value tree.

/// A parsed JSON value. Objects keep their members in order; numbers keep their text.
enum HeaderJSON {
    case object([(String, HeaderJSON)])
    case array([HeaderJSON])
    case string(String)
    case number(String)
    case bool(Bool)
    case null

    /// What kind of value this is, for messages.
    var kind: String {
        switch self {
        case .object: return "an object"
        case .array: return "an array"
        case .string: return "a string"
        case .number: return "a number"
        case .bool: return "a boolean"
        case .null: return "null"
        }
    }

    /// The value as written, shortened, for messages.
    var text: String {
        switch self {
        case .number(let t): return t
        case .string(let s): return "\"\(s.prefix(40))\""
        default: return kind
        }
    }

    /// The value when it is a plain non-negative integer (no sign, fraction or exponent) that fits an `Int`.
    var nonNegativeInteger: Int? {
        guard case .number(let text) = self, text.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
        return Int(text)
    }
}

/// A strict JSON parser (RFC 8259) for safetensors headers: rejects duplicate keys, invalid UTF-8, raw
/// control characters in strings, lone surrogates, and nesting deeper than 64 levels.
struct HeaderJSONParser {
    /// Where and why parsing failed.
    struct Failure: Error, CustomStringConvertible {
        let message: String
        var description: String { message }
    }

    private let bytes: ArraySlice<UInt8>
    private var index: Int
    private let start: Int
    /// What a byte offset counts in messages ("header byte 12").
    private let place: String

    init(bytes: ArraySlice<UInt8>, place: String = "header byte") {
        self.bytes = bytes
        self.index = bytes.startIndex
        self.start = bytes.startIndex
        self.place = place
    }

    /// One value surrounded by optional whitespace (the safetensors padding is spaces).
    mutating func parseDocument() throws -> HeaderJSON {
        skipWhitespace()
        let value = try parseValue(depth: 0)
        skipWhitespace()
        guard index == bytes.endIndex else { throw fail("unexpected bytes after the JSON value") }
        return value
    }

    private func fail(_ message: String) -> Failure {
        Failure(message: "\(message) at \(place) \(index - start)")
    }

    private mutating func skipWhitespace() {
        while index < bytes.endIndex {
            switch bytes[index] {
            case 0x20, 0x09, 0x0A, 0x0D: index += 1
            default: return
            }
        }
    }

    private mutating func parseValue(depth: Int) throws -> HeaderJSON {
        guard depth < 64 else { throw fail("JSON nested too deeply") }
        guard index < bytes.endIndex else { throw fail("unexpected end of the header (JSON incomplete)") }
        switch bytes[index] {
        case UInt8(ascii: "{"):
            index += 1
            var members: [(String, HeaderJSON)] = []
            var keys = Set<String>()
            skipWhitespace()
            if index < bytes.endIndex, bytes[index] == UInt8(ascii: "}") {
                index += 1
                return .object(members)
            }
            while true {
                skipWhitespace()
                guard index < bytes.endIndex, bytes[index] == UInt8(ascii: "\"") else {
                    throw fail("expected a string key")
                }
                let key = try parseString()
                guard keys.insert(key).inserted else { throw fail("duplicate key \"\(key)\"") }
                skipWhitespace()
                try expect(":")
                skipWhitespace()
                members.append((key, try parseValue(depth: depth + 1)))
                skipWhitespace()
                guard index < bytes.endIndex else { throw fail("unexpected end of the header in an object") }
                if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                try expect("}")
                return .object(members)
            }
        case UInt8(ascii: "["):
            index += 1
            var items: [HeaderJSON] = []
            skipWhitespace()
            if index < bytes.endIndex, bytes[index] == UInt8(ascii: "]") {
                index += 1
                return .array(items)
            }
            while true {
                skipWhitespace()
                items.append(try parseValue(depth: depth + 1))
                skipWhitespace()
                guard index < bytes.endIndex else { throw fail("unexpected end of the header in an array") }
                if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                try expect("]")
                return .array(items)
            }
        case UInt8(ascii: "\""):
            return .string(try parseString())
        case UInt8(ascii: "t"):
            try literal("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try literal("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try literal("null")
            return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return .number(try parseNumber())
        default:
            throw fail("unexpected character 0x\(String(bytes[index], radix: 16))")
        }
    }

    private mutating func expect(_ character: Unicode.Scalar) throws {
        guard index < bytes.endIndex, bytes[index] == UInt8(ascii: character) else {
            throw fail("expected '\(character)'")
        }
        index += 1
    }

    private mutating func literal(_ word: String) throws {
        for byte in word.utf8 {
            guard index < bytes.endIndex, bytes[index] == byte else { throw fail("invalid literal, expected \(word)") }
            index += 1
        }
    }

    private mutating func parseNumber() throws -> String {
        let begin = index
        func digits() -> Int {
            let from = index
            while index < bytes.endIndex, (48...57).contains(bytes[index]) { index += 1 }
            return index - from
        }
        if bytes[index] == UInt8(ascii: "-") { index += 1 }
        guard index < bytes.endIndex, (48...57).contains(bytes[index]) else { throw fail("invalid number") }
        if bytes[index] == UInt8(ascii: "0") { index += 1 } else { _ = digits() }
        if index < bytes.endIndex, bytes[index] == UInt8(ascii: ".") {
            index += 1
            guard digits() > 0 else { throw fail("invalid number: digits expected after '.'") }
        }
        if index < bytes.endIndex, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            index += 1
            if index < bytes.endIndex, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") {
                index += 1
            }
            guard digits() > 0 else { throw fail("invalid number: digits expected in the exponent") }
        }
        return String(decoding: bytes[begin..<index], as: UTF8.self)
    }

    private mutating func parseString() throws -> String {
        index += 1  // the opening quote
        var utf8: [UInt8] = []
        while true {
            guard index < bytes.endIndex else { throw fail("unterminated string") }
            let byte = bytes[index]
            index += 1
            switch byte {
            case UInt8(ascii: "\""):
                guard let text = String(validating: utf8, as: UTF8.self) else {
                    throw fail("invalid UTF-8 in a string")
                }
                return text
            case UInt8(ascii: "\\"):
                guard index < bytes.endIndex else { throw fail("unterminated escape") }
                let escape = bytes[index]
                index += 1
                switch escape {
                case UInt8(ascii: "\""): utf8.append(0x22)
                case UInt8(ascii: "\\"): utf8.append(0x5C)
                case UInt8(ascii: "/"): utf8.append(0x2F)
                case UInt8(ascii: "b"): utf8.append(0x08)
                case UInt8(ascii: "f"): utf8.append(0x0C)
                case UInt8(ascii: "n"): utf8.append(0x0A)
                case UInt8(ascii: "r"): utf8.append(0x0D)
                case UInt8(ascii: "t"): utf8.append(0x09)
                case UInt8(ascii: "u"):
                    var code = try hex4()
                    if (0xD800..<0xDC00).contains(code) {
                        guard index + 1 < bytes.endIndex, bytes[index] == UInt8(ascii: "\\"),
                            bytes[index + 1] == UInt8(ascii: "u")
                        else { throw fail("lone surrogate in \\u escape") }
                        index += 2
                        let low = try hex4()
                        guard (0xDC00..<0xE000).contains(low) else { throw fail("invalid surrogate pair") }
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00..<0xE000).contains(code) {
                        throw fail("lone surrogate in \\u escape")
                    }
                    utf8.append(contentsOf: Array(String(Unicode.Scalar(code)!).utf8))
                default:
                    throw fail("invalid escape \\\(Unicode.Scalar(escape))")
                }
            case 0..<0x20:
                throw fail("raw control character 0x\(String(byte, radix: 16)) in a string")
            default:
                utf8.append(byte)
            }
        }
    }

    private mutating func hex4() throws -> UInt32 {
        guard index + 4 <= bytes.endIndex else { throw fail("incomplete \\u escape") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let b = bytes[index]
            let digit: UInt32
            switch b {
            case 48...57: digit = UInt32(b - 48)
            case 97...102: digit = UInt32(b - 87)
            case 65...70: digit = UInt32(b - 55)
            default: throw fail("invalid hex digit in \\u escape")
            }
            value = value << 4 | digit
            index += 1
        }
        return value
    }
}
