@_exported import NormKit
