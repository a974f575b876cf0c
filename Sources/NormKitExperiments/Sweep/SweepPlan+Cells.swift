import NormKitTraining

/// A ``SweepPlan``'s grid expanded into its cells: their configurations, run names and table columns.
extension SweepPlan {
    /// The ranks of a cell (see ``ranks``): nil for one process.
    func cellRanks(norm: NormKind, normBatch: Int?) -> Int? {
        guard let ranks, setting == .normalizationBatch, [.bn, .brn, .mabn].contains(norm),
            let normBatch, normBatch < batch
        else { return nil }
        var (a, b) = (ranks, batch / normBatch)
        while b != 0 { (a, b) = (b, a % b) }
        return a > 1 ? a : nil
    }

    /// Expands the grid into cells, in run order: seed-major (every configuration with seed 0 first, so a partial
    /// sweep already has a full table for one seed), then normalization, groups value or variant, column.
    ///
    /// - Parameter include: the caller's filter (for example, drop `none` on a model that cannot train without
    ///   normalization); cells it rejects are left out of the sweep and of `plan.json`.
    /// - Throws: ``SweepError/invalidPlan(_:)`` from ``validate()``.
    public func cells(including include: (SweepCell) -> Bool = { _ in true }) throws -> [SweepCell] {
        try validate()
        var result: [SweepCell] = []
        for seed in seeds {
            for norm in norms {
                let specs: [GroupSpec?] = (norm == .gn && !groupAxis.isEmpty) ? groupAxis.map { $0 } : [nil]
                let variantAxis: [SweepVariant?] = norm == .mabn && !(variants ?? []).isEmpty ? variants! : [nil]
                for spec in specs {
                    for variant in variantAxis {
                        for (normBatch, columns) in runColumns(for: norm) {
                            let cell = makeCell(
                                norm: norm, spec: spec, variant: variant, normBatch: normBatch,
                                columns: columns, seed: seed)
                            if include(cell) { result.append(cell) }
                        }
                    }
                }
            }
        }
        return result
    }

    /// The runs one normalization needs: (normBatch to configure, columns the run fills).
    private func runColumns(for norm: NormKind) -> [(Int?, [Int])] {
        let cols = columns
        if setting == .normalizationBatch && reuseBatchIndependentRuns && !Self.dependsOnNormalizationBatch(norm) {
            return [(nil, cols)]
        }
        return cols.map { ($0, [$0]) }
    }

    private func makeCell(
        norm: NormKind, spec: GroupSpec?, variant: SweepVariant?, normBatch: Int?, columns: [Int],
        seed: UInt64
    ) -> SweepCell {
        var config = base
        config.norm = norm
        config.seed = seed
        if norm != .gn {
            config.groups = nil
            config.groupSize = nil
        }
        spec?.apply(to: &config)
        variant?.apply(to: &config)
        switch setting {
        case .normalizationBatch:
            config.batch = batch
            config.normBatch = normBatch
        case .perGPU:
            let nb = normBatch ?? columns[0]
            config.batch = gpus * nb
            config.normBatch = nb
            config.learningRate = nil
        }
        var parts = [norm.rawValue]
        if norm == .gn, let groupTag = spec?.tag ?? GroupSpec(configuration: config)?.tag { parts.append(groupTag) }
        if let variant { parts.append(variant.name) }
        parts.append("nb\(config.effectiveNormBatch)")
        let ranks = cellRanks(norm: norm, normBatch: config.normBatch)
        if let ranks { parts.append("r\(ranks)") }
        parts.append("s\(seed)")
        return SweepCell(
            runName: parts.joined(separator: "-"), configuration: config, columns: columns, groupSpec: spec,
            variant: variant?.name, ranks: ranks)
    }
}
