import Foundation
import NormKitTraining
import XCTest

/// Reading the dtypes PyTorch users save besides F32 and I64: F16 (`model.half()`), BF16 (`model.bfloat16()`),
/// F64 (`model.double()`) into float32, I32 into int64, as PyTorch's `.float()` / `.long()` convert them.
///
/// The fixtures were written by `scripts/make_dtype_fixtures.py` with PyTorch: special values of every dtype with
/// what `.float()` gives, and a ResNet-8 (BN) state dict in F16, BF16 and F64 next to its `.float()` copy and the
/// float32 model's logits.
final class SafeTensorsDtypeTests: XCTestCase {
    private func fixture(_ name: String, _ ext: String) throws -> URL {
        try XCTUnwrap(
            Bundle.module.url(forResource: name, withExtension: ext, subdirectory: "Fixtures"),
            "fixture \(name).\(ext) missing: run scripts/make_dtype_fixtures.py")
    }

    private func file(header: String, data: [UInt8]) -> [UInt8] {
        SafeTensorsTests.fileBytes(header: header, data: data)
    }

    private func littleEndianBytes<T: FixedWidthInteger>(_ values: [T]) -> [UInt8] {
        values.flatMap { value in withUnsafeBytes(of: value.littleEndian) { Array($0) } }
    }

    private struct NotFloat32: Error { let tensor: StateTensor? }

    private func floats(_ tensor: StateTensor?) throws -> [Float] {
        guard case .float32(_, let values)? = tensor else { throw NotFloat32(tensor: tensor) }
        return values
    }

    /// Decodes `bytes`, expecting a refusal, and returns it.
    private func refusal(_ bytes: [UInt8]) -> SafeTensorsError? {
        do {
            _ = try SafeTensors.decode(bytes, source: "test.safetensors")
            XCTFail("decode accepted the file")
            return nil
        } catch let error as SafeTensorsError {
            return error
        } catch {
            XCTFail("expected a SafeTensorsError, got \(error)")
            return nil
        }
    }

    func testEveryDtypeReadsAsPyTorchConvertsIt() throws {
        let (tensors, metadata) = try SafeTensors.read(from: fixture("safetensors_dtypes", "safetensors"))
        let expected = try JSONDecoder().decode(
            SafeTensorsTests.Expected.self, from: Data(contentsOf: fixture("safetensors_dtypes", "json")))
        XCTAssertEqual(metadata, expected.metadata)
        XCTAssertEqual(Set(tensors.keys), Set(expected.tensors.keys))
        XCTAssertEqual(Set(expected.tensors.values.map(\.dtype)), ["F16", "BF16", "F64", "I32", "F32", "I64"])
        for (name, want) in expected.tensors {
            let got = try XCTUnwrap(tensors[name])
            XCTAssertEqual(got.shape, want.shape, name)
            switch got {
            case .float32(_, let values):
                XCTAssertTrue(["F32", "F16", "BF16", "F64"].contains(want.dtype), name)
                XCTAssertEqual(
                    values.map(\.bitPattern), want.f32_bits,
                    "\(name) (\(want.dtype)): PyTorch's .float() bit for bit (NaN payloads, ±0, subnormals)")
            case .int64(_, let values):
                XCTAssertTrue(["I64", "I32"].contains(want.dtype), name)
                XCTAssertEqual(values, want.i64, name)
            }
        }

        // The cases spelled out (the JSON holds them as bit patterns).
        let half = try floats(tensors["f16.special"])
        XCTAssertEqual(half[0].bitPattern, 0, "+0")
        XCTAssertEqual(half[1].bitPattern, 0x8000_0000, "-0 keeps its sign")
        XCTAssertEqual(half[2], .infinity)
        XCTAssertEqual(half[3], -.infinity)
        XCTAssertTrue(half[4].isNaN && half[5].isNaN && half[5].sign == .minus && half[6].isNaN)
        XCTAssertEqual(half[7], 0x1p-24, "the smallest F16 subnormal is exact in float32")
        XCTAssertEqual(half[8], -(0x1p-14 - 0x1p-24), "the largest F16 subnormal, negative")
        XCTAssertEqual(half[9], 0x1p-14, "the smallest F16 normal")
        XCTAssertEqual(half[10], 65504, "the largest F16")
        XCTAssertEqual(try floats(tensors["f16.scalar"]).count, 1)
        XCTAssertEqual(tensors["f16.scalar"]?.shape, [])
        XCTAssertEqual(tensors["bf16.empty"], .float32(shape: [0, 3], values: []))
        let brain = try floats(tensors["bf16.special"])
        XCTAssertEqual(brain[7], 0x1p-133, "the smallest BF16 subnormal")
        XCTAssertEqual(brain[10], Float(bitPattern: 0x7F7F_0000), "the largest BF16")
        let double = try floats(tensors["f64.values"])
        XCTAssertEqual(double[1].bitPattern, 0x8000_0000, "-0.0 keeps its sign")
        XCTAssertTrue(double[2] == .infinity && double[3] == -.infinity && double[4].isNaN && double[5].isNaN)
        XCTAssertEqual(double[6], 0.1 as Float, "0.1 rounds to the nearest float32")
        XCTAssertEqual(double[8], 1, "1 + 2^-30 rounds to 1")
        XCTAssertEqual(double[9], 1 + 0x1p-22, "1 + 3·2^-24, a tie, rounds to even")
        XCTAssertEqual(double[12], .greatestFiniteMagnitude, "just above float32's largest rounds down to it")
        XCTAssertEqual(double[13].bitPattern, 0, "1e-50 underflows to +0")
        XCTAssertEqual(double[14].bitPattern, 0x8000_0000, "-1e-50 underflows to -0")
        XCTAssertEqual(double[15], .leastNonzeroMagnitude, "1e-45 rounds to the smallest float32 subnormal")
        XCTAssertEqual(tensors["i32.values"], .int64(shape: [5], values: [-2_147_483_648, 2_147_483_647, -1, 0, 7]))
        XCTAssertEqual(tensors["i64.counter"], .int64(shape: [], values: [1 << 40 + 3]))
    }

    /// Every one of the 65,536 F16 and BF16 bit patterns converts exactly: to the value of Swift's `Float16` (NaNs:
    /// a NaN of the same sign) and to the BF16 bits shifted into a float32's upper half.
    func testEveryHalfAndBFloat16BitPatternConvertsExactly() throws {
        let patterns = (0...UInt16.max).map { $0 }
        let bytes = littleEndianBytes(patterns)
        let header =
            #"{"bf16":{"dtype":"BF16","shape":[65536],"data_offsets":[0,131072]},"#
            + #""f16":{"dtype":"F16","shape":[256,256],"data_offsets":[131072,262144]}}"#
        let (tensors, _) = try SafeTensors.decode(file(header: header, data: bytes + bytes))
        let half = try floats(tensors["f16"])
        let brain = try floats(tensors["bf16"])
        XCTAssertEqual(tensors["f16"]?.shape, [256, 256])
        var mismatches: [String] = []
        for (bits, (h, b)) in zip(patterns, zip(half, brain)) {
            #if arch(x86_64) || arch(arm64)
                let reference = Float(Float16(bitPattern: bits))
                let same =
                    reference.isNaN
                    ? h.isNaN && h.sign == reference.sign
                    : h.bitPattern == reference.bitPattern
                if !same { mismatches.append("F16 0x\(String(bits, radix: 16)): \(h) vs \(reference)") }
            #endif
            if b.bitPattern != UInt32(bits) << 16 { mismatches.append("BF16 0x\(String(bits, radix: 16))") }
        }
        XCTAssertEqual(mismatches.count, 0, mismatches.prefix(5).joined(separator: "; "))
    }

    func testAnF64ValueBeyondFloat32IsRefusedNamingTheTensor() throws {
        // 2^128 − 2^103 is the midpoint between float32's largest value and 2^128: it and beyond round to infinity.
        let threshold = 0x1p128 - 0x1p103
        for (value, refused) in [
            (1e39, true), (-1e300, true), (Double.greatestFiniteMagnitude, true), (threshold, true),
            (-threshold, true), (threshold.nextDown, false), (Double(Float.greatestFiniteMagnitude), false),
            (Double.infinity, false), (-Double.infinity, false), (Double.nan, false),
        ] {
            let values = [1.5, value, 2]
            let bytes = file(
                header: #"{"w":{"dtype":"F64","shape":[3],"data_offsets":[0,24]}}"#,
                data: littleEndianBytes(values.map(\.bitPattern)))
            if refused {
                guard let error = refusal(bytes) else { continue }
                XCTAssertEqual(
                    error, .valueOutOfFloat32Range(path: "test.safetensors", tensor: "w", index: 1, value: value))
                XCTAssertTrue(error.description.contains("\"w\"") && error.description.contains("Hint"), "\(error)")
            } else {
                let read = try floats(try SafeTensors.decode(bytes).tensors["w"])
                XCTAssertEqual(read[0], 1.5)
                XCTAssertEqual(read[1].isNaN, value.isNaN, "\(value)")
                if !value.isNaN {
                    XCTAssertEqual(Double(read[1]), value.isInfinite ? value : Double(Float.greatestFiniteMagnitude))
                }
            }
        }
    }

    func testTruncatedFilesAndDtypeSizeMismatchesAreRefused() throws {
        // A byte range that does not fit the dtype's element size.
        for (dtype, shape, bytes, expected) in [
            ("F16", [3], 4, 6), ("BF16", [2, 2], 16, 8), ("F64", [1], 4, 8), ("I32", [2], 16, 8), ("F64", [], 16, 8),
        ] {
            let header = #"{"a":{"dtype":"\#(dtype)","shape":\#(shape),"data_offsets":[0,\#(bytes)]}}"#
            XCTAssertEqual(
                refusal(file(header: header, data: [UInt8](repeating: 0, count: bytes))),
                .sizeMismatch(
                    path: "test.safetensors", tensor: "a", shape: shape, dtype: dtype, expectedBytes: expected,
                    foundBytes: bytes), dtype)
        }
        // A shape whose byte size overflows for the dtype.
        guard
            case .invalidShape(_, "a", _)? = refusal(
                file(
                    header: #"{"a":{"dtype":"F16","shape":[4611686018427387904,2],"data_offsets":[0,2]}}"#,
                    data: [0, 0]))
        else { return XCTFail("expected invalidShape") }

        // The dtype fixture cut short: inside the data, inside the header, inside the length.
        let whole = try Array(Data(contentsOf: fixture("safetensors_dtypes", "safetensors")))
        XCTAssertNoThrow(try SafeTensors.decode(whole))
        guard case .offsetsOutOfRange(_, _, _, _, let length)? = refusal(Array(whole.dropLast(3))) else {
            return XCTFail("expected offsetsOutOfRange for a truncated data section")
        }
        let headerLength = Int(whole[0]) | Int(whole[1]) << 8
        XCTAssertEqual(length, whole.count - 3 - 8 - headerLength, "the data section's length after the cut")
        guard case .headerLengthBeyondFile? = refusal(Array(whole.prefix(100))) else {
            return XCTFail("expected headerLengthBeyondFile")
        }
        XCTAssertEqual(refusal(Array(whole.prefix(5))), .fileTooShort(path: "test.safetensors", found: 5))

        // Dtypes NormKit does not read are still refused, with the list it does read.
        for dtype in ["U8", "I8", "I16", "BOOL", "F8_E5M2", "f16", "C64"] {
            let error = refusal(
                file(header: #"{"a":{"dtype":"\#(dtype)","shape":[1],"data_offsets":[0,2]}}"#, data: [0, 0]))
            XCTAssertEqual(error, .unsupportedDtype(path: "test.safetensors", tensor: "a", dtype: dtype))
            XCTAssertTrue(error?.description.contains(#""BF16""#) ?? false, "\(String(describing: error))")
        }
    }

    /// A ResNet-8 (BN) saved by PyTorch after `model.half()`, `model.bfloat16()` or `model.double()` loads strictly
    /// into NormKit's ResNet, holds exactly the float32 values of the rounded weights (the `.float()` copy), and
    /// gives the same logits bit for bit as the load of that copy, and PyTorch's logits to float rounding.
    func testAResNetSavedInHalfBFloat16OrDoublePrecisionLoadsStrictly() throws {
        for dtype in ["f16", "bf16", "f64"] {
            let name = "torch_resnet8_bn_\(dtype)"
            let (stored, metadata) = try SafeTensors.read(from: fixture(name, "safetensors"))
            let (asFloat32, _) = try SafeTensors.read(from: fixture(name + "_as_f32", "safetensors"))
            let (expected, _) = try SafeTensors.read(from: fixture(name + "_expected", "safetensors"))
            XCTAssertEqual(metadata["dtype"], dtype.uppercased())
            let header = String(
                decoding: try Data(contentsOf: fixture(name, "safetensors")).prefix(4096), as: UTF8.self)
            XCTAssertTrue(header.contains(#""dtype":"\#(dtype.uppercased())""#), "\(dtype): the file holds \(dtype)")
            XCTAssertTrue(header.contains(#""dtype":"I64""#), "\(dtype): the counters stay int64")

            let model = try TorchModelParityTests.fixtureModel(.bn)
            try model.loadStateDict(stored)  // strict
            XCTAssertEqual(model.stateDict(), asFloat32, "\(dtype): the load holds the .float() values exactly")
            let reference = try TorchModelParityTests.fixtureModel(.bn)
            try reference.loadStateDict(asFloat32)

            let x = try Tensor(shape: expected["input"]!.shape, values: try floats(expected["input"]))
            let logits = try model.forward(x, training: false).values
            XCTAssertEqual(
                logits.map(\.bitPattern), try reference.forward(x, training: false).values.map(\.bitPattern),
                "\(dtype): the same logits as the float32 load")
            let d = TorchModelParityTests.relativeDifference(logits, try floats(expected["logits_eval"]))
            XCTAssertLessThan(d, 1e-4, "\(dtype): PyTorch's logits of the rounded weights")
        }
    }
}
