import Foundation
import NormKitDistributed
import XCTest

/// A build without Open MPI says what fixes it: the packages to install when they are missing, `setup.sh
/// --reconfigure` when they were installed after the build was configured (SwiftPM keeps its first reading of
/// Package.swift, so a rebuild alone keeps the stubs).
final class MPIAvailabilityTests: XCTestCase {
    func testABuildWithoutOpenMPISaysWhatFixesIt() {
        let missing = DistributedError.mpiMissingReason(headerInstalled: false)
        XCTAssertTrue(missing.contains("apt-get install openmpi-bin libopenmpi-dev"), missing)
        XCTAssertTrue(missing.contains("bash scripts/setup.sh"), missing)
        XCTAssertFalse(missing.contains("--reconfigure"), missing)
        let stale = DistributedError.mpiMissingReason(headerInstalled: true)
        XCTAssertTrue(stale.contains("bash scripts/setup.sh --reconfigure"), stale)
        XCTAssertTrue(stale.contains("NORMKIT_WITHOUT_MPI"), stale)
        XCTAssertEqual(
            DistributedError.mpiUnavailable.description,
            "MPI is unavailable: " + (MPICommunicator.headerInstalled ? stale : missing))
    }
}
