import Foundation
import XCTest
import _NormKitTestSupport

/// The guides' command lines against the binary: every flag a guide gives a `normkit` subcommand is one that
/// subcommand has, and what `normkit help train` says of the default run directory is the directory a run makes.
final class DocumentedCommandTests: XCTestCase {
    /// The guides a user follows (the session records in docs/PERFORMANCE.md and docs/RESULTS.md quote the
    /// commands of their day and are left as they were).
    static let guides = [
        "README.md", "docs/ARCHITECTURE.md", "docs/DISTRIBUTED.md", "docs/ERRORS.md", "docs/FUZZING.md",
        "docs/NORMALIZATION.md", "docs/RELIABILITY.md", "Benchmarks/README.md",
    ]
    static let subcommands = ["train", "eval", "sweep", "report", "bench", "export", "stats"]

    static var repository: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
    }

    /// Each `normkit <subcommand> …` in `text` with the flags that follow it on its line (a line ending in `\`
    /// continues), up to a closing backtick or a `#` comment.
    static func documentedFlags(in text: String) -> [(subcommand: String, flag: String, line: String)] {
        let joined = text.replacingOccurrences(of: "\\\n", with: " ")
        var found: [(String, String, String)] = []
        for line in joined.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) {
            var rest = Substring(line)
            while let start = rest.range(of: "normkit ") {
                let after = rest[start.upperBound...]
                guard let subcommand = subcommands.first(where: { after.hasPrefix($0 + " ") || after == $0 })
                else {
                    rest = after
                    continue
                }
                var command = after.dropFirst(subcommand.count)
                if let end = command.firstIndex(where: { $0 == "`" || $0 == "#" }) { command = command[..<end] }
                for word in command.split(separator: " ") where word.hasPrefix("--") {
                    let flag = String(word.prefix { $0 == "-" || $0.isLetter || $0.isNumber })
                    if flag.count > 2 { found.append((subcommand, flag, line)) }
                }
                rest = command
            }
        }
        return found
    }

    func testEveryFlagTheGuidesGiveASubcommandIsOneItHas() throws {
        let fixture = try CLIFixture.shared()
        var help: [String: String] = [:]
        for subcommand in Self.subcommands {
            let result = try CLI.run(["help", subcommand], in: fixture.root)
            assertExit(result, 0, "normkit help \(subcommand)")
            help[subcommand] = result.stdout
        }
        var checked = 0
        for guide in Self.guides {
            let text = try String(contentsOf: Self.repository.appendingPathComponent(guide), encoding: .utf8)
            for (subcommand, flag, line) in Self.documentedFlags(in: text) {
                checked += 1
                let options = help[subcommand]!
                XCTAssertTrue(
                    options.contains(flag + " ") || options.contains(flag + "\n") || options.contains(flag + ","),
                    "\(guide): `normkit \(subcommand)` has no \(flag): \(line)")
            }
        }
        XCTAssertGreaterThan(checked, 40, "the guides' command lines were not found")
    }

    /// The parser itself: flags after the subcommand are found, a comment's and prose's are not.
    func testDocumentedFlagsAreReadFromCommandLinesOnly() {
        let text = """
            normkit bench   --json bench.json      # the rows as JSON too (--overwrite to replace)
            `normkit train --resume DIR` continues; `--out` is prose
            mpirun -np 2 --oversubscribe \\
              normkit train --distributed --threads 1
            """
        let found = Self.documentedFlags(in: text).map { "\($0.subcommand) \($0.flag)" }
        XCTAssertEqual(found, ["bench --json", "train --resume", "train --distributed", "train --threads"])
    }

    /// `eval` and `stats` read the directory their checkpoint records when `--data` is not given
    /// (`WorkNeverLostTests.testDefaultRunDirectoriesDifferForRunsThatDiffer` evaluates so), and their help
    /// says so instead of naming the system's Fashion-MNIST as the default.
    func testCheckpointReadersSayTheirDataDefaultsToTheRecordedDirectory() throws {
        let fixture = try CLIFixture.shared()
        for subcommand in ["eval", "stats"] {
            let help = try CLI.run(["help", subcommand], in: fixture.root)
            assertExit(help, 0, "normkit help \(subcommand)")
            let flat = help.stdout.split(whereSeparator: \.isWhitespace).joined(separator: " ")
            let data = try XCTUnwrap(flat.range(of: "--data <data> Directory").map { String(flat[$0.lowerBound...]) })
            XCTAssertTrue(
                data.hasPrefix(
                    "--data <data> Directory with Fashion-MNIST-style IDX files (.gz or raw). Default: the directory the checkpoint records"
                ), "normkit help \(subcommand): \(data)")
        }
    }

    func testTrainHelpDescribesTheDefaultRunDirectory() throws {
        let fixture = try CLIFixture.shared()
        let help = try CLI.run(["help", "train"], in: fixture.root)
        assertExit(help, 0, "normkit help train")
        // The pattern as the help prints it (ArgumentParser wraps it; placeholders contain no spaces).
        let flat = help.stdout.split(whereSeparator: \.isWhitespace).joined(separator: " ")
        let pattern = try XCTUnwrap(
            flat.range(of: #"runs/<model>-\S*"#, options: .regularExpression).map { String(flat[$0]) },
            "normkit help train names no default run directory")
        let expression =
            "^"
            + pattern.trimmingCharacters(in: CharacterSet(charactersIn: ",.)"))
            .replacingOccurrences(of: #"<[A-Za-z]+>"#, with: "[0-9A-Za-z]+", options: .regularExpression) + "$"

        let cwd = try fixture.scratch("help-default-out")
        assertExit(try CLI.run(fixture.baseArguments, in: cwd), 0, "a run without --out")
        let names = try FileManager.default.contentsOfDirectory(
            atPath: cwd.appendingPathComponent("runs").path)
        XCTAssertEqual(names.count, 1)
        for name in names {
            XCTAssertNotNil(
                ("runs/" + name).range(of: expression, options: .regularExpression),
                "the run directory runs/\(name) is not the help's \(pattern)")
        }
    }
}
