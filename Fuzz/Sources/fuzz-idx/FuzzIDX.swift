import FuzzSupport
import NormKitTraining

/// Fuzzes `IDXFile.parse` (the MNIST/Fashion-MNIST IDX reader): header, magic, rank, dimensions, length.
///
/// Properties of an accepted input: the data length is the product of the dimensions, re-encoding gives the
/// input back byte for byte, and the public initializer accepts the same dimensions and bytes. The parse with
/// an expected magic (labels, images) must agree with the plain parse.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzIDX(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = Fuzz.bytes(data, size)
    let file: IDXFile
    do {
        file = try IDXFile.parse(input, source: "fuzz.idx")
    } catch {
        Fuzz.log("rejected: \(error)")
        for magic in [IDXFile.labelsMagic, IDXFile.imagesMagic] {
            Fuzz.check(
                (try? IDXFile.parse(input, expectedMagic: magic)) == nil,
                "accepted with expected magic \(magic) but rejected without")
        }
        return 0
    }
    Fuzz.log("accepted: dimensions \(file.dimensions)")
    Fuzz.check(
        file.dimensions.reduce(1, *) == file.bytes.count,
        "dimensions \(file.dimensions) but \(file.bytes.count) data bytes")
    Fuzz.check(file.encoded() == input, "re-encoding changed the bytes")
    Fuzz.check(
        (try? IDXFile(dimensions: file.dimensions, bytes: file.bytes)) == file,
        "the public initializer refuses what the parser accepted")
    for magic in [IDXFile.labelsMagic, IDXFile.imagesMagic] {
        let parsed = try? IDXFile.parse(input, expectedMagic: magic)
        Fuzz.check((parsed != nil) == (file.magic == magic), "expected magic \(magic) disagrees with \(file.magic)")
    }
    return 0
}
