import FuzzSupport
import NormKitTraining

/// Fuzzes `Gzip.decompress` (zlib inflate behind the IDX reader): gzip and zlib wrappers, concatenated
/// members, truncation, trailing bytes, and the output buffer sizing from the gzip trailer's ISIZE.
///
/// Properties of an accepted input: compressing the output and decompressing it again gives the output back.
/// Every accepted output is also handed to the IDX parser, as `IDXFile.read` does with a `.gz` file.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzGzip(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = Fuzz.bytes(data, size)
    let output: [UInt8]
    do {
        output = try Gzip.decompress(input, source: "fuzz.gz")
    } catch {
        Fuzz.log("rejected: \(error)")
        return 0
    }
    Fuzz.log("accepted: \(output.count) bytes")
    do {
        let again = try Gzip.decompress(try Gzip.compress(output, level: Int(input.count % 10)))
        Fuzz.check(again == output, "compress/decompress round trip changed \(output.count) bytes")
    } catch {
        Fuzz.check(false, "round trip of accepted output failed: \(error)")
    }
    _ = try? IDXFile.parse(output, source: "fuzz.gz")
    return 0
}
