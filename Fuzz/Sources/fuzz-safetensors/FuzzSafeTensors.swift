import FuzzSupport
import NormKit
import NormKitTraining

/// Fuzzes `SafeTensors.decode` (the safetensors checkpoint reader): the 8-byte header length, the strict JSON
/// header parser (strings, escapes, surrogates, numbers, nesting, duplicate keys), `__metadata__`, dtypes,
/// shapes (overflow), `data_offsets` (range, overlap, gaps, trailing bytes) and the little-endian data.
///
/// Properties of an accepted input: every tensor has as many values as its shape says, and writing the decoded
/// tensors and metadata with `SafeTensors.encode` and decoding that again gives the same names, shapes, value
/// bits and metadata.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSafeTensors(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = Fuzz.bytes(data, size)
    let decoded: (tensors: [String: StateTensor], metadata: [String: String])
    do {
        decoded = try SafeTensors.decode(input, source: "fuzz.safetensors")
    } catch {
        Fuzz.check(error is SafeTensorsError, "decode threw a non-SafeTensorsError: \(error)")
        Fuzz.log("rejected: \(error)")
        return 0
    }
    Fuzz.log("accepted: \(decoded.tensors.count) tensors, \(decoded.metadata.count) metadata entries")
    for (name, tensor) in decoded.tensors {
        Fuzz.check(name != "__metadata__", "a tensor is named __metadata__")
        Fuzz.check(valueCount(tensor) == tensor.shape.reduce(1, *), "tensor \(name): count does not match shape")
    }
    do {
        let encoded = try SafeTensors.encode(decoded.tensors, metadata: decoded.metadata)
        let again = try SafeTensors.decode(encoded)
        Fuzz.check(again.metadata == decoded.metadata, "metadata changed in the round trip")
        Fuzz.check(Set(again.tensors.keys) == Set(decoded.tensors.keys), "tensor names changed in the round trip")
        for (name, tensor) in decoded.tensors {
            Fuzz.check(sameBits(tensor, again.tensors[name]!), "tensor \(name) changed in the round trip")
        }
    } catch {
        Fuzz.check(false, "round trip of an accepted file failed: \(error)")
    }
    return 0
}

private func valueCount(_ tensor: StateTensor) -> Int {
    switch tensor {
    case .float32(_, let values): return values.count
    case .int64(_, let values): return values.count
    }
}

/// Equal shapes and bit-identical values (NaN payloads included, which `==` on `Float` would not compare).
private func sameBits(_ a: StateTensor, _ b: StateTensor) -> Bool {
    switch (a, b) {
    case (.float32(let sa, let va), .float32(let sb, let vb)):
        return sa == sb && va.map(\.bitPattern) == vb.map(\.bitPattern)
    case (.int64(let sa, let va), .int64(let sb, let vb)):
        return sa == sb && va == vb
    default:
        return false
    }
}
