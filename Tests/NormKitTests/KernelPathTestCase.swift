import NormKit
import XCTest

/// A test case that runs its checks on each kernel path this CPU has (native AVX-512 or AVX2, AVX2 on an AVX-512
/// CPU, the portable Swift kernels) and puts the process's kernel selection and thread count back after each test.
class KernelPathTestCase: XCTestCase {
    static let defaultNative = KernelDispatch.useNativeKernels
    static let defaultThreads = Parallelism.threadCount

    override func tearDown() {
        KernelDispatch.limitNativeInstructionSet(to: .avx512)
        KernelDispatch.useNativeKernels = Self.defaultNative
        Parallelism.threadCount = Self.defaultThreads
        super.tearDown()
    }

    /// A kernel path: the best native set, the AVX2 bodies, or the portable Swift kernels.
    enum Path: String, CaseIterable {
        case native, avx2, portable
    }

    /// Switches the process to `path`; false when this CPU does not have it.
    @discardableResult
    func select(_ path: Path) -> Bool {
        switch path {
        case .portable:
            KernelDispatch.limitNativeInstructionSet(to: .avx512)
            KernelDispatch.useNativeKernels = false
            return true
        case .native:
            KernelDispatch.limitNativeInstructionSet(to: .avx512)
            KernelDispatch.useNativeKernels = true
            return KernelDispatch.useNativeKernels
        case .avx2:
            KernelDispatch.limitNativeInstructionSet(to: .avx512)
            KernelDispatch.useNativeKernels = true
            guard KernelDispatch.useNativeKernels else { return false }
            return KernelDispatch.limitNativeInstructionSet(to: .avx2) == .avx2
        }
    }
}

/// Runs `body` on the native kernels limited to AVX2, then on this CPU's best instruction set (`limit` names the one
/// in use; on an AVX2-only CPU both runs are AVX2). The caller puts the kernel selection back (``KernelPathTestCase``
/// does in its `tearDown`).
func forEachNativeInstructionSet(_ body: (KernelDispatch.InstructionSet) throws -> Void) rethrows {
    for limit in [KernelDispatch.InstructionSet.avx2, KernelDispatch.instructionSet] {
        KernelDispatch.useNativeKernels = true
        KernelDispatch.limitNativeInstructionSet(to: limit)
        try body(limit)
    }
}
