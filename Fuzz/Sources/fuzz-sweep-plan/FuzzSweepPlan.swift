import Foundation
import FuzzSupport
import NormKitExperiments
import NormKitTraining

/// Fuzzes a sweep directory's `plan.json` (`SweepPlanRecord`): `normkit report` reads it with
/// `SweepReport.build(from:)` (the results table, its Markdown and the groups tables), and the plan's own
/// `validate()`, `cells()` and `estimatedSeconds` must hold up on any decoded plan.
///
/// Properties: a plan that validates expands to cells with distinct run names whose configurations have a
/// normalization batch dividing their SGD batch, and the record survives `write(to:)` / `read(from:)`.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSweepPlan(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = Fuzz.bytes(data, size)
    let directory = Fuzz.scratchDirectory
    let planURL = directory.appendingPathComponent(SweepPlanRecord.fileName)
    Fuzz.writeFile(input, to: planURL)
    let report: SweepReport
    do {
        report = try SweepReport.build(from: directory)
    } catch {
        Fuzz.log("rejected: \(error)")
        return 0
    }
    _ = report.markdown()
    _ = report.table.groupsMarkdown()
    guard let record = report.plan else {
        Fuzz.check(false, "build(from:) succeeded without a plan although plan.json exists")
        return 0
    }
    do {
        try record.plan.validate()
    } catch {
        Fuzz.log("plan invalid: \(error)")
        return 0
    }
    let p = record.plan
    let (grid, overflow) = [p.norms.count, p.normBatches.count, p.seeds.count, max(1, p.groupAxis.count)]
        .reduce((1, false)) { acc, n in
            let (product, o) = acc.0.multipliedReportingOverflow(by: n)
            return (product, acc.1 || o)
        }
    guard !overflow, grid <= 4096 else { return 0 }  // keeps each input fast; not a property of the plan
    do {
        let cells = try p.cells()
        Fuzz.check(Set(cells.map(\.runName)).count == cells.count, "two cells share a run name")
        for cell in cells {
            let c = cell.configuration
            Fuzz.check(
                c.batch >= 1 && c.effectiveNormBatch >= 1 && c.batch % c.effectiveNormBatch == 0,
                "cell \(cell.runName): normalization batch \(c.effectiveNormBatch) vs SGD batch \(c.batch)")
        }
        _ = p.estimatedSeconds(imagesPerSecond: 1000)
    } catch {
        Fuzz.check(false, "cells() failed on a plan that validated: \(error)")
    }
    do {
        let copy = directory.appendingPathComponent("copy", isDirectory: true)
        try FileManager.default.createDirectory(at: copy, withIntermediateDirectories: true)
        try record.write(to: copy)
        Fuzz.check(try SweepPlanRecord.read(from: copy) == record, "plan.json changed in a write/read round trip")
    } catch {
        Fuzz.check(false, "write/read round trip failed: \(error)")
    }
    return 0
}
