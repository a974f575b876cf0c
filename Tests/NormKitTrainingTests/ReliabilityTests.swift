import Foundation
import NormKitTraining
import XCTest
import _NormKitTestSupport

/// Issue 8 at the library level: configurations are validated (with caps) before anything is built, a run
/// directory is never overwritten by accident and has one writer, a diverging run stops without saving bad
/// values, and the data a model was trained on travels with it. (The CLI's side: NormKitCLITests.)
final class ReliabilityTests: XCTestCase {
    // MARK: - Validation at the door

    func testEveryOutOfRangeSettingNamesItsFlagValueAndRange() throws {
        let cases: [(String, (inout TrainingConfiguration) -> Void)] = [
            ("--batch", { $0.batch = 0 }),
            ("--batch", { $0.batch = 1 << 40 }),
            ("--norm-batch", { $0.normBatch = 0 }),
            (
                "--norm-batch",
                {
                    $0.batch = 32; $0.normBatch = 5
                }
            ),
            (
                "--mabn-buffer",
                {
                    $0.norm = .mabn; $0.mabnBuffer = 1 << 40
                }
            ),
            ("--epochs", { $0.epochs = 0 }),
            ("--lr", { $0.learningRate = .infinity }),
            ("--lr", { $0.learningRate = .nan }),
            ("--lr", { $0.learningRate = -0.1 }),
            ("--momentum", { $0.momentum = 1 }),
            ("--momentum", { $0.momentum = -0.1 }),
            ("--weight-decay", { $0.weightDecay = -1e-4 }),
            ("--weight-decay", { $0.weightDecay = .nan }),
            ("--warmup", { $0.warmupFraction = 1 }),
            ("--schedule", { $0.schedule = "linear" }),
            ("--model", { $0.model = "resnet60000002" }),
            ("--model", { $0.model = "resnet9" }),
            ("--model", { $0.model = "alexnet" }),
            ("--groups", { $0.groups = 0 }),
            ("--group-size", { $0.groupSize = -2 }),
            (
                "--groups",
                {
                    $0.groups = 4; $0.groupSize = 2
                }
            ),
            ("--threads", { $0.threads = 0 }),
            ("--train-limit", { $0.trainLimit = 0 }),
        ]
        for (flag, mutate) in cases {
            var c = TrainingConfiguration()
            mutate(&c)
            XCTAssertThrowsError(try c.validate(), "\(flag): \(c)") { error in
                guard let error = error as? ConfigurationError else { return XCTFail("\(flag): \(error)") }
                XCTAssertEqual(error.flag, flag)
                XCTAssertTrue(error.description.hasPrefix("\(flag) "), error.description)
                XCTAssertEqual(error.localizedDescription, error.description)
            }
        }
        XCTAssertNoThrow(try TrainingConfiguration().validate())
        var deep = TrainingConfiguration()
        deep.model = "resnet1202"
        XCTAssertNoThrow(try deep.validate())
    }

    func testSettingsThatDoNothingForTheNormalizationAreRefused() throws {
        for norm in [NormKind.gn, .ln, .in, .frozenBN, .none] {
            var c = TrainingConfiguration()
            c.norm = norm
            c.normBatch = 4
            XCTAssertThrowsError(try c.validateApplicability()) {
                XCTAssertEqual(($0 as? ConfigurationError)?.flag, "--norm-batch")
            }
        }
        for norm in [NormKind.bn, .ln, .in, .brn, .mabn] {
            var c = TrainingConfiguration()
            c.norm = norm
            c.groups = 4
            XCTAssertThrowsError(try c.validateApplicability()) {
                XCTAssertEqual(($0 as? ConfigurationError)?.flag, "--groups")
            }
            c.groups = nil
            c.groupSize = 2
            XCTAssertThrowsError(try c.validateApplicability()) {
                XCTAssertEqual(($0 as? ConfigurationError)?.flag, "--group-size")
            }
        }
        var bn = TrainingConfiguration()
        bn.norm = .bn
        bn.normBatch = 4
        XCTAssertNoThrow(try bn.validateApplicability())
    }

    /// A checkpoint's configuration goes through the same checks, before any model is built: a hostile file
    /// is refused at once instead of dividing by zero, allocating 70 TB or building for minutes.
    func testHostileCheckpointConfigurationsAreRefusedBeforeBuilding() throws {
        let directory = try finishedRun("hostile")
        let file = directory.appendingPathComponent(TrainingCheckpoint.modelFileName)
        let (tensors, metadata) = try SafeTensors.read(from: file)
        func rewritten(_ edit: (inout [String: Any]) -> Void) throws -> URL {
            var object = try JSONSerialization.jsonObject(with: Data(metadata["configuration"]!.utf8)) as! [String: Any]
            edit(&object)
            var changed = metadata
            changed["configuration"] = String(
                decoding: try JSONSerialization.data(withJSONObject: object), as: UTF8.self)
            let url = directory.appendingPathComponent("hostile.safetensors")
            try SafeTensors.write(tensors, metadata: changed, to: url)
            return url
        }
        let cases: [(String, (inout [String: Any]) -> Void)] = [
            ("--batch", { $0["batch"] = 0 }),
            ("--norm-batch", { $0["normBatch"] = 0 }),
            (
                "--batch",
                {
                    $0["norm"] = "mabn"; $0["batch"] = 1 << 40; $0["normBatch"] = 1
                }
            ),
            (
                "--mabn-buffer",
                {
                    $0["norm"] = "mabn"; $0["mabnBuffer"] = 1 << 40
                }
            ),
            ("--model", { $0["model"] = "resnet60000002" }),
            ("--epochs", { $0["epochs"] = -3 }),
        ]
        for (flag, edit) in cases {
            let url = try rewritten(edit)
            let start = Date()
            XCTAssertThrowsError(try TrainingCheckpoint.read(at: url), flag) { error in
                XCTAssertEqual((error as? ConfigurationError)?.flag, flag, "\(error)")
                XCTAssertTrue("\(error)".contains(url.path), "\(error)")
            }
            XCTAssertLessThan(Date().timeIntervalSince(start), 2, "\(flag): refused only after building")
        }
        // A valid configuration of another depth: the tensor names disagree, refused before building.
        let url = try rewritten { $0["model"] = "resnet14" }
        XCTAssertThrowsError(try TrainingCheckpoint.read(at: url)) { error in
            guard case .tensorsDoNotMatch? = error as? CheckpointError else { return XCTFail("\(error)") }
        }
        let broken = try rewritten { $0["momentum"] = "fast" }
        XCTAssertThrowsError(try TrainingCheckpoint.read(at: broken)) { error in
            guard case .unreadableMetadata(_, "configuration", let reason)? = error as? CheckpointError else {
                return XCTFail("\(error)")
            }
            XCTAssertTrue(reason.contains("momentum"), reason)
            XCTAssertFalse("\(error)".contains("NSCocoaErrorDomain"))
        }
    }

    // MARK: - A run directory is never overwritten by accident

    func testANewRunRefusesADirectoryThatHoldsARunAndReplacesItOnlyWhenAsked() throws {
        let directory = try finishedRun("exists")
        let before = try Self.snapshot(directory)
        var other = Self.configuration()
        other.learningRate = 0.05
        let trainer = try Self.trainer(other, output: directory)
        XCTAssertThrowsError(try trainer.run()) { error in
            guard case .runExists(_, let state)? = error as? TrainingError else { return XCTFail("\(error)") }
            XCTAssertEqual(state, "a finished run")
            XCTAssertTrue("\(error)".contains("--resume"), "\(error)")
        }
        XCTAssertEqual(try Self.snapshot(directory), before, "a refused run changed files")
        let replacing = try Self.trainer(other, output: directory)
        replacing.replacesExistingRun = true
        let summary = try replacing.run()
        XCTAssertEqual(summary.configuration.learningRate, 0.05)
        XCTAssertFalse(
            FileManager.default.fileExists(
                atPath: directory.appendingPathComponent(RunDirectory.replacedRunFolderName).path),
            "the replaced run is deleted once the new one has a checkpoint")
    }

    /// A replacing run that stops before its first checkpoint (here it diverges at once) puts the run it was to
    /// replace back, byte for byte; one that gets past its first checkpoint replaces it.
    func testAReplacingRunThatDivergesBeforeItsFirstCheckpointLeavesTheOldRun() throws {
        let directory = try finishedRun("replace-diverges")
        let before = try Self.snapshot(directory)
        var diverging = Self.configuration()
        diverging.learningRate = 1e6
        diverging.warmupFraction = 0
        let trainer = try Self.trainer(diverging, output: directory)
        trainer.replacesExistingRun = true
        XCTAssertThrowsError(try trainer.run()) { error in
            guard case .diverged(_, _, nil, _)? = error as? TrainingError else { return XCTFail("\(error)") }
        }
        XCTAssertEqual(try Self.snapshot(directory), before, "the old run must be back as it was")
        XCTAssertEqual(RunDirectory.contents(of: directory), .finished)

        // A replacing process killed before its first checkpoint leaves the old run set aside: the next trainer
        // on the directory puts it back (and, not replacing, then refuses to overwrite it).
        try RunDirectory.setRunAside(in: directory)
        XCTAssertEqual(RunDirectory.contents(of: directory), .empty)
        XCTAssertThrowsError(try Self.trainer(Self.configuration(), output: directory).run()) { error in
            guard case .runExists? = error as? TrainingError else { return XCTFail("\(error)") }
        }
        XCTAssertEqual(try Self.snapshot(directory), before, "the set-aside run is back as it was")
    }

    /// A key twice in a checkpoint's configuration, data record or training state (NormKit's decoder would keep the
    /// first, Python's `json` the last) is refused, naming the field and the key.
    func testMetadataWithAKeyTwiceIsRefused() throws {
        let directory = try interruptedRun("duplicate-key", atStep: 1)
        let modelURL = directory.appendingPathComponent(TrainingCheckpoint.modelFileName)
        let (tensors, metadata) = try SafeTensors.read(from: modelURL)
        for field in ["configuration", "data"] {
            var edited = metadata
            let text = try XCTUnwrap(metadata[field], field)
            let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], field)
            let key = try XCTUnwrap(object.keys.sorted().first, field)
            let value = try JSONSerialization.data(withJSONObject: object[key]!, options: .fragmentsAllowed)
            XCTAssertTrue(text.hasSuffix("}"), field)
            edited[field] = text.dropLast() + ",\"\(key)\":" + String(decoding: value, as: UTF8.self) + "}"
            try SafeTensors.write(tensors, metadata: edited, to: modelURL)
            XCTAssertThrowsError(try TrainingCheckpoint.read(at: modelURL), field) { error in
                guard case .unreadableMetadata(_, let named, let reason)? = error as? CheckpointError else {
                    return XCTFail("\(field): \(error)")
                }
                XCTAssertEqual(named, field)
                XCTAssertTrue(reason.contains("duplicate key \"\(key)\""), reason)
            }
        }
        try SafeTensors.write(tensors, metadata: metadata, to: modelURL)
        XCTAssertNoThrow(try TrainingCheckpoint.read(at: modelURL))
    }

    /// A training state that no run of its configuration can have written (a hostile or edited file: a step that
    /// is not its position's, counts beyond an epoch's images) is refused on resume, naming the file, instead of
    /// resuming into counters that overflow.
    func testAResumeRefusesATrainingStateItsRunCannotHaveWritten() throws {
        let directory = try interruptedRun("hostile-state", atStep: 2)
        let modelURL = directory.appendingPathComponent(TrainingCheckpoint.modelFileName)
        let stateURL = directory.appendingPathComponent("training-state-2.safetensors")
        let (modelTensors, modelMetadata) = try SafeTensors.read(from: modelURL)
        let (stateTensors, stateMetadata) = try SafeTensors.read(from: stateURL)
        let original = try JSONDecoder().decode(
            TrainingCheckpoint.TrainingState.self, from: Data(stateMetadata["state"]!.utf8))
        let big = Int.max
        let edits: [(String, (inout TrainingCheckpoint.TrainingState) -> Void)] = [
            ("step", { $0.step = big }),
            ("step", { $0.step = 3 }),
            ("step", { $0.position = .init(epoch: big / 2, batchIndex: 0) }),
            ("images", { $0.epochImages = big }),
            ("images", { $0.epochCorrect = $0.epochImages + 1 }),
            ("images", { $0.epochImages = -1 }),
            ("skipped", { $0.epochSkippedUpdates = -1 }),
        ]
        for (what, edit) in edits {
            var state = original
            edit(&state)
            var model = modelMetadata, saved = stateMetadata
            model["step"] = "\(state.step)"
            saved["step"] = "\(state.step)"
            saved["state"] = String(decoding: try JSONEncoder().encode(state), as: UTF8.self)
            let editedState = directory.appendingPathComponent("training-state-\(state.step).safetensors")
            try SafeTensors.write(modelTensors, metadata: model, to: modelURL)
            try SafeTensors.write(stateTensors, metadata: saved, to: editedState)
            let resuming = try Self.trainer(Self.configuration(), output: directory)
            XCTAssertThrowsError(try resuming.resume(from: directory), what) { error in
                guard case .unreadableMetadata(let path, "state", _)? = error as? CheckpointError else {
                    return XCTFail("\(what): \(error)")
                }
                XCTAssertEqual(path, editedState.path, what)
                XCTAssertTrue("\(error)".contains(what), "\(error)")
            }
            if editedState != stateURL { try FileManager.default.removeItem(at: editedState) }
        }
        try SafeTensors.write(modelTensors, metadata: modelMetadata, to: modelURL)
        try SafeTensors.write(stateTensors, metadata: stateMetadata, to: stateURL)
        XCTAssertNoThrow(try Self.trainer(Self.configuration(), output: directory).resume(from: directory))
    }

    func testAnotherProcessHoldingTheLockStopsTheRun() throws {
        let directory = try makeTemporaryDirectory("locked")
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/flock")
        holder.arguments = [directory.appendingPathComponent(RunDirectory.lockFileName).path, "sleep", "3"]
        try holder.run()
        defer { holder.waitUntilExit() }
        var locked = false
        for _ in 0..<100 where !locked {  // wait until flock(1) holds it
            do { try RunDirectoryLock.acquire(directory).release() } catch { locked = true }
            if !locked { usleep(20_000) }
        }
        XCTAssertTrue(locked, "flock(1) never took the lock")
        let trainer = try Self.trainer(Self.configuration(), output: directory)
        XCTAssertThrowsError(try trainer.run()) { error in
            guard case .runDirectoryLocked? = error as? TrainingError else { return XCTFail("\(error)") }
            XCTAssertTrue("\(error)".contains("in use by another normkit process"))
        }
        holder.waitUntilExit()  // the holder exits: the kernel drops its lock
        XCTAssertNoThrow(try Self.trainer(Self.configuration(), output: directory).run())
    }

    /// A lock file (`.normkit.lock`) that is a named pipe, a device (a link to `/dev/null`) or a directory is refused
    /// at once, naming the path and what it is, and left as it was: the lock used to open whatever was there for
    /// writing (a pipe or a device was taken as the lock and the run went ahead; a directory was "Is a directory").
    func testALockFileThatIsNotARegularFileIsRefusedByName() throws {
        let directory = try makeTemporaryDirectory("lock-file-kinds")
        let lock = directory.standardizedFileURL.appendingPathComponent(RunDirectory.lockFileName)
        let kinds: [(kind: String, type: String, make: () throws -> Void)] = [
            ("a named pipe (FIFO)", "fifo", { try makeNamedPipe(at: lock) }),
            (
                "a device (character special file)", "link",
                { try FileManager.default.createSymbolicLink(atPath: lock.path, withDestinationPath: "/dev/null") }
            ),
            (
                "a directory", "directory",
                { try FileManager.default.createDirectory(at: lock, withIntermediateDirectories: false) }
            ),
        ]
        for (kind, type, make) in kinds {
            try make()
            guard
                let result = resultWithin(seconds: 10, unblocking: [lock], { try RunDirectoryLock.acquire(directory) })
            else {
                XCTFail("locking a directory whose lock file is \(kind) blocked")
                continue
            }
            XCTAssertThrowsError(try result.get(), kind) { error in
                XCTAssertEqual(
                    error as? TrainingError,
                    .cannotWrite(
                        path: lock.path,
                        reason: "it is \(kind), not a regular file; remove it, and normkit creates its lock file anew"))
            }
            XCTAssertThrowsError(try Self.trainer(Self.configuration(), output: directory).run(), kind) { error in
                XCTAssertTrue("\(error)".contains("cannot write \(lock.path): it is \(kind)"), "\(error)")
            }
            XCTAssertEqual(fileType(at: lock), type, "the \(kind) is left as it was")
            try FileManager.default.removeItem(at: lock)
        }
        try RunDirectoryLock.acquire(directory).release()
        XCTAssertEqual(fileType(at: lock), "file")
    }

    func testStaleTemporaryFilesOfDeadWritersAreRemovedAndLaterStatesKept() throws {
        let directory = try makeTemporaryDirectory("stale")
        let dead = Process()
        dead.executableURL = URL(fileURLWithPath: "/bin/true")
        try dead.run()
        dead.waitUntilExit()
        let stale = ".model.safetensors.\(dead.processIdentifier).1f2e.tmp"
        let live = ".model.safetensors.1.abcd.tmp"  // PID 1 is alive: not ours to remove
        for name in [stale, live] {
            XCTAssertTrue(
                FileManager.default.createFile(atPath: directory.appendingPathComponent(name).path, contents: Data([1]))
            )
        }
        let trainer = try Self.trainer(Self.configuration(), output: directory)
        trainer.stopAfterStep = 3
        XCTAssertThrowsError(try trainer.run())
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.path)
        XCTAssertFalse(files.contains(stale))
        XCTAssertTrue(files.contains(live))
        // A save deletes only older training states: plant a later one and save again.
        let later = "training-state-999999.safetensors"
        XCTAssertTrue(
            FileManager.default.createFile(atPath: directory.appendingPathComponent(later).path, contents: Data([1])))
        let resumed = try Self.trainer(Self.configuration(), output: directory)
        try resumed.resume(from: directory)
        resumed.stopAfterStep = 5
        XCTAssertThrowsError(try resumed.run())
        let after = try FileManager.default.contentsOfDirectory(atPath: directory.path)
        XCTAssertTrue(after.contains(later), "a save deleted a later training state")
        XCTAssertTrue(after.contains("training-state-5.safetensors"))
        XCTAssertFalse(after.contains("training-state-3.safetensors"))
    }

    // MARK: - Divergence stops the run

    func testADivergingRunStopsAndNeverSavesNonFiniteOrExplodedWeights() throws {
        for (rate, every) in [(1000.0, nil as Int?), (1e6, 1)] {
            let directory = try makeTemporaryDirectory().appendingPathComponent("diverge-\(Int(rate))")
            var c = Self.configuration()
            c.learningRate = rate
            c.warmupFraction = 0
            let trainer = try Self.trainer(c, output: directory)
            trainer.checkpointEverySteps = every
            XCTAssertThrowsError(try trainer.run(), "lr \(rate)") { error in
                guard case .diverged(let step, _, let last, _)? = error as? TrainingError else {
                    return XCTFail("\(error)")
                }
                XCTAssertGreaterThan(step, 0)
                XCTAssertTrue("\(error)".hasPrefix("training diverged at step \(step) ("), "\(error)")
                XCTAssertEqual(last, trainer.lastCheckpointStep)
            }
            let files = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
            XCTAssertFalse(files.contains("summary.json"))
            if files.contains(TrainingCheckpoint.modelFileName) {
                let model = try TrainingCheckpoint.read(
                    at: directory.appendingPathComponent(TrainingCheckpoint.modelFileName))
                for (name, tensor) in model.tensors {
                    guard case .float32(_, let values) = tensor else { continue }
                    XCTAssertTrue(values.allSatisfy { $0.isFinite && abs($0) <= trainer.divergenceWeightBound }, name)
                }
            }
        }
    }

    /// BN, BRN and MABN count the running-statistic updates they skip (a batch whose statistics are not finite) in
    /// `skippedUpdates`, but the trainer never reported them: a run whose first BN saw, once per epoch, a batch with
    /// a variance past float's range (one training image scaled by 10²¹) trained on with no sign of it. Each epoch's
    /// count is now in its `metrics.jsonl` record, with a warning line after the epoch's line, and `summary.json`
    /// holds the run's total; a run without such batches records 0 and prints no warning.
    func testSkippedRunningStatisticUpdatesAreReported() throws {
        let (train, test) = try TrainingTests.synthetic()
        let hostile = try Self.withFirstImageBeyondFloat(train)
        var c = Self.configuration()
        c.epochs = 2
        for (name, data, expected) in [("skipping", hostile, 1), ("clean", train, 0)] {
            let directory = try makeTemporaryDirectory().appendingPathComponent("skipped-updates-\(name)")
            let trainer = try Trainer(
                configuration: c, train: data, test: test, output: directory,
                progress: ProgressReporter(style: .lines(every: 1_000)))
            var summary: RunSummary?
            let printed = try capturingStandardOutput { summary = try trainer.run() }
            XCTAssertEqual(trainer.history.map(\.skippedUpdates), [expected, expected], name)
            XCTAssertEqual(summary?.skippedUpdates, 2 * expected, name)
            let onDisk = try JSONDecoder().decode(
                RunSummary.self, from: Data(contentsOf: directory.appendingPathComponent("summary.json")))
            XCTAssertEqual(onDisk.skippedUpdates, 2 * expected, name)
            let records = try String(contentsOf: directory.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
                .split(separator: "\n").map { try JSONDecoder().decode(EpochMetrics.self, from: Data($0.utf8)) }
            XCTAssertEqual(records.map(\.skippedUpdates), [expected, expected], name)
            let warnings = printed.split(separator: "\n").filter { $0.hasPrefix("warning:") }
            XCTAssertEqual(
                warnings,
                expected == 0
                    ? []
                    : (1...2).map {
                        "warning: epoch \($0)/2: 1 running-statistic update(s) skipped (batch statistics not finite); "
                            + "the running statistics keep their last finite values"
                    }, "\(name)\n\(printed)")
        }
        // Records written before NormKit counted skipped updates still read (the field is absent: nil).
        let old =
            #"{"epoch":0,"step":8,"trainLoss":1,"trainError":0.5,"testLoss":1,"testError":0.5,"#
            + #""learningRate":0.1,"seconds":1,"imagesPerSecond":100}"#
        XCTAssertNil(try JSONDecoder().decode(EpochMetrics.self, from: Data(old.utf8)).skippedUpdates)
    }

    /// What `body` writes to standard output (file descriptor 1) while it runs.
    private func capturingStandardOutput(_ body: () throws -> Void) throws -> String {
        let url = try makeTemporaryDirectory().appendingPathComponent("stdout.txt")
        XCTAssertTrue(FileManager.default.createFile(atPath: url.path, contents: nil))
        StandardOutput.flush()
        let saved = dup(STDOUT_FILENO), file = open(url.path, O_WRONLY)
        XCTAssertTrue(saved >= 0 && file >= 0)
        dup2(file, STDOUT_FILENO)
        close(file)
        do {
            defer {
                StandardOutput.flush()
                dup2(saved, STDOUT_FILENO)
                close(saved)
            }
            try body()
        }
        return try String(contentsOf: url, encoding: .utf8)
    }

    // MARK: - The data a model was trained on travels with it

    func testAConstantImageSetIsRefused() throws {
        let stats = PixelStatistics(pixels: [UInt8](repeating: 77, count: 60_000 * 784))
        XCTAssertEqual(stats.std, 0, "rounding left a std of \(stats.std)")
        XCTAssertThrowsError(
            try Dataset(
                pixels: [UInt8](repeating: 77, count: 4 * 4), labels: [0], height: 4,
                width: 4, classCount: 10, statistics: stats)
        ) { error in
            XCTAssertTrue("\(error)".contains("all one value") || "\(error)".contains("every pixel is 77"), "\(error)")
        }
        // Finite statistics (a hostile data record) that standardise pixels past Float's range are refused too.
        for (mean, std) in [(1e300, 1e-300), (0.5, 1e-40), (1e39, 1.0)] {
            XCTAssertThrowsError(
                try Dataset(
                    pixels: [0, 255, 3, 4], labels: [0], height: 2, width: 2, classCount: 10,
                    statistics: PixelStatistics(mean: mean, std: std)), "mean \(mean), std \(std)"
            ) { error in
                XCTAssertTrue("\(error)".contains("to finite floats"), "\(error)")
            }
        }
    }

    func testCheckpointAndSummaryRecordTheDataAndResumeRefusesOtherData() throws {
        var (train, test) = try TrainingTests.synthetic()
        train.source = DataSource(directory: "/data/a", fingerprint: "00000000000000aa")
        test.source = train.source
        let directory = try makeTemporaryDirectory().appendingPathComponent("provenance")
        let first = try Trainer(
            configuration: Self.configuration(), train: train, test: test, output: directory,
            progress: ProgressReporter(style: .silent))
        first.stopAfterStep = 2
        XCTAssertThrowsError(try first.run())
        let file = try TrainingCheckpoint.read(at: directory.appendingPathComponent(TrainingCheckpoint.modelFileName))
        XCTAssertEqual(file.data?.source, train.source)
        XCTAssertEqual(file.data?.statistics, train.statistics)
        XCTAssertEqual(file.data?.trainCount, train.count)

        var other = train
        other.source = DataSource(directory: "/data/b", fingerprint: "00000000000000bb")
        let second = try Trainer(
            configuration: Self.configuration(), train: other, test: test, output: directory,
            progress: ProgressReporter(style: .silent))
        XCTAssertThrowsError(try second.resume(from: directory)) { error in
            guard case .dataMismatch? = error as? TrainingError else { return XCTFail("\(error)") }
            XCTAssertTrue("\(error)".contains("/data/a") && "\(error)".contains("/data/b"), "\(error)")
        }
        let third = try Trainer(
            configuration: Self.configuration(), train: train, test: test, output: directory,
            progress: ProgressReporter(style: .silent))
        try third.resume(from: directory)
        let summary = try third.run()
        XCTAssertEqual(summary.data, DataRecord(train: train, test: test))
        let onDisk = try JSONDecoder().decode(
            RunSummary.self, from: Data(contentsOf: directory.appendingPathComponent("summary.json")))
        XCTAssertEqual(onDisk.data?.source?.fingerprint, "00000000000000aa")
    }

    func testTheFingerprintFollowsTheFilesContent() throws {
        let directory = try makeTemporaryDirectory().appendingPathComponent("fingerprint")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let url = directory.appendingPathComponent("file")
        try Data([1, 2, 3]).write(to: url)
        let a = try DataSource(directory: directory, files: [url])
        XCTAssertEqual(try DataSource(directory: directory, files: [url]), a)
        try Data([1, 2, 4]).write(to: url)
        XCTAssertNotEqual(try DataSource(directory: directory, files: [url]).fingerprint, a.fingerprint)
        XCTAssertEqual(a.fingerprint.count, 16)
    }

    func testDefaultIdentityHashSeparatesRunsThatDifferInAnything() throws {
        let base = TrainingConfiguration()
        var seen: Set<String> = [base.identityHash()]
        let changes: [(inout TrainingConfiguration) -> Void] = [
            { $0.learningRate = 0.05 }, { $0.augment = false }, { $0.epochs = 3 }, { $0.trainLimit = 512 },
            { $0.testLimit = 100 }, { $0.weightDecay = 0 },
        ]
        for change in changes {
            var c = base
            change(&c)
            XCTAssertTrue(seen.insert(c.identityHash()).inserted, "\(c)")
        }
        XCTAssertTrue(seen.insert(base.identityHash(data: "another dataset")).inserted)
        var threads = base
        threads.threads = 7
        XCTAssertEqual(threads.identityHash(), base.identityHash(), "the thread count changes nothing")
    }

    // MARK: - Helpers

    /// `data` with its first image scaled by 10²¹: a batch that holds it has a variance past float's range, so a
    /// BN, BRN or MABN layer skips its running-statistic update on it.
    static func withFirstImageBeyondFloat(_ data: Dataset) throws -> Dataset {
        var images = data.images
        for i in 0..<data.sampleSize { images[i] *= 1e21 }
        return try Dataset(
            images: images, labels: data.labels, channels: data.channels, height: data.height, width: data.width,
            classCount: data.classCount, statistics: data.statistics)
    }

    static func configuration() -> TrainingConfiguration {
        var c = TrainingTests.smallConfiguration(.bn)
        c.epochs = 1
        c.threads = 1
        return c
    }

    static func trainer(_ c: TrainingConfiguration, output: URL) throws -> Trainer {
        let data = try TrainingTests.synthetic()
        return try Trainer(
            configuration: c, train: data.train, test: data.test, output: output,
            progress: ProgressReporter(style: .silent))
    }

    /// A run of ``configuration()`` stopped (with its checkpoint) at `step`.
    func interruptedRun(_ name: String, atStep step: Int) throws -> URL {
        let directory = try makeTemporaryDirectory().appendingPathComponent(name)
        let trainer = try Self.trainer(Self.configuration(), output: directory)
        trainer.stopAfterStep = step
        XCTAssertThrowsError(try trainer.run())
        return directory
    }

    func finishedRun(_ name: String) throws -> URL {
        let directory = try makeTemporaryDirectory().appendingPathComponent(name)
        try Self.trainer(Self.configuration(), output: directory).run()
        return directory
    }

    /// Every file's bytes, by name.
    static func snapshot(_ directory: URL) throws -> [String: Data] {
        var files: [String: Data] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: directory.path)
        where name != RunDirectory.lockFileName {
            files[name] = try Data(contentsOf: directory.appendingPathComponent(name))
        }
        return files
    }
}

/// Every error of the training stack reads the same through `localizedDescription` as through `description`
/// (never "The operation could not be completed") and names its directory or file.
final class TrainingErrorTextTests: XCTestCase {
    func testEveryCaseHasItsMessageAsLocalizedDescription() {
        let errors: [Error & CustomStringConvertible] = [
            TrainingError.invalidConfiguration("x"), TrainingError.interrupted(step: 3, directory: "/r"),
            TrainingError.nothingToResume("/r"),
            TrainingError.diverged(step: 4, what: "loss nan", lastCheckpointStep: 2, directory: "/r"),
            TrainingError.runExists(path: "/r", state: "a finished run"),
            TrainingError.unreadableRun(path: "/r", reason: "/r/model.safetensors: truncated"),
            TrainingError.runDirectoryLocked(path: "/r", pid: 7),
            TrainingError.cannotWrite(path: "/r", reason: "EACCES"),
            TrainingError.dataMismatch(directory: "/r", recorded: "/a", given: "/b"),
            CheckpointError.notACheckpoint(path: "/m"),
            CheckpointError.unreadableMetadata(path: "/m", field: "f", reason: "r"),
            CheckpointError.tensorsDoNotMatch(path: "/m", reason: "r"),
            CheckpointError.missingTrainingState(path: "/m", step: 1),
            ConfigurationError(flag: "--lr", value: "inf", expected: "finite", source: "/m"),
        ]
        for error in errors {
            XCTAssertEqual(error.localizedDescription, error.description)
            XCTAssertTrue(
                error.description.contains("/r") || error.description.contains("/m")
                    || error.description.contains("configuration"), error.description)
        }
    }
}
