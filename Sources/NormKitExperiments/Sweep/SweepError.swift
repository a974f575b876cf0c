import Foundation
import NormKitTraining

/// Errors thrown while planning, running or reporting a sweep.
public enum SweepError: Error, CustomStringConvertible, Equatable, LocalizedError {
    /// The plan cannot be expanded (empty axis, a normalization batch that does not divide the SGD batch, …).
    case invalidPlan(String)
    /// No preset has this name.
    case unknownPreset(name: String, available: [String])
    /// A run directory holds a finished run whose configuration differs from the plan's cell for it
    /// (the directory belongs to another sweep, or the plan changed).
    case configurationMismatch(runName: String, differences: [String])
    /// The sweep directory does not exist or is not a directory.
    case missingSweepDirectory(URL)
    /// A record file could not be read or decoded.
    case unreadableRecord(URL, reason: String)
    /// A report file could not be written.
    case cannotWrite(URL, reason: String)

    /// A message naming what went wrong and where.
    public var description: String {
        switch self {
        case .invalidPlan(let reason):
            return "invalid sweep plan: \(reason)"
        case .unknownPreset(let name, let available):
            return "unknown sweep preset '\(name)' (available: \(available.joined(separator: ", ")))"
        case .configurationMismatch(let runName, let differences):
            return "run '\(runName)' already finished with another configuration "
                + "(\(differences.joined(separator: "; "))): use another sweep directory or remove that run"
        case .missingSweepDirectory(let url):
            return "sweep directory \(url.path) does not exist or is not a directory"
        case .unreadableRecord(let url, let reason):
            return "cannot read \(url.path): \(reason)"
        case .cannotWrite(let url, let reason):
            return "cannot write \(url.path): \(reason)"
        }
    }

    /// The same text as ``description``.
    public var errorDescription: String? { description }
}
