import Foundation

/// Shows training progress: a redrawn one-line bar on a terminal, plain lines otherwise (logs, CI, pipes).
public final class ProgressReporter {
    /// How progress is shown.
    public enum Style: Sendable {
        /// A bar redrawn in place (`\r`), for terminals.
        case bar
        /// One line every `every` steps and at each epoch's end.
        case lines(every: Int)
        /// Nothing.
        case silent
    }

    /// The style in use.
    public let style: Style
    private var lastDraw = 0.0

    /// A reporter; `nil` picks `.bar` when standard output is a terminal and plain lines otherwise.
    public init(style: Style? = nil) {
        self.style = style ?? (isatty(STDOUT_FILENO) == 1 ? .bar : .lines(every: 200))
    }

    /// Reports one finished step.
    public func step(
        epoch: Int, epochs: Int, batch: Int, batches: Int, loss: Double, imagesPerSecond: Double,
        secondsLeft: Double
    ) {
        switch style {
        case .silent: return
        case .lines(let every):
            guard batch % max(every, 1) == 0 || batch == batches else { return }
            print(
                String(
                    format: "epoch %d/%d step %d/%d loss %.4f %.0f img/s ETA %@",
                    epoch + 1, epochs, batch, batches, loss, imagesPerSecond, Self.clock(secondsLeft)))
            StandardOutput.flush()
        case .bar:
            let now = Date().timeIntervalSince1970
            guard now - lastDraw > 0.1 || batch == batches else { return }
            lastDraw = now
            let width = 24, filled = Int(Double(width) * Double(batch) / Double(max(batches, 1)))
            let bar = String(repeating: "█", count: filled) + String(repeating: "·", count: width - filled)
            let line = String(
                format: "\repoch %d/%d %@ %d/%d loss %.4f %.0f img/s ETA %@\u{1B}[K",
                epoch + 1, epochs, bar, batch, batches, loss, imagesPerSecond, Self.clock(secondsLeft))
            FileHandle.standardOutput.write(line.data(using: .utf8)!)
        }
    }

    /// Reports an epoch's metrics.
    public func epoch(_ m: EpochMetrics, epochs: Int) {
        if case .silent = style { return }
        if case .bar = style { FileHandle.standardOutput.write("\r\u{1B}[K".data(using: .utf8)!) }
        print(
            String(
                format:
                    "epoch %d/%d  train loss %.4f  train error %.2f%%  test loss %.4f  test error %.2f%%  lr %.4f  %.0f img/s  %@",
                m.epoch + 1, epochs, m.trainLoss, 100 * m.trainError, m.testLoss, 100 * m.testError,
                m.learningRate, m.imagesPerSecond, Self.clock(m.seconds)))
        StandardOutput.flush()
    }

    /// A message line.
    public func message(_ text: String) {
        if case .silent = style { return }
        print(text)
        StandardOutput.flush()
    }

    /// `h:mm:ss` or `m:ss`.
    public static func clock(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0 else { return "--:--" }
        let s = Int(seconds.rounded())
        return s >= 3600
            ? String(format: "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60)
            : String(format: "%d:%02d", s / 60, s % 60)
    }
}
