extension MovingAverageBatchNorm {
    /// MABN across the workers of a data-parallel job: every worker's per-chunk statistics gathered into one
    /// sequence of chunks, worker 0's first (the order of ghost chunks in one process). Scratch kept between steps.
    struct WorkerChunks {
        /// This worker's forward statistics, means then variances (`2 × sets`).
        private var local: [Double] = []
        /// Every worker's `local`, worker after worker.
        private var gathered: [Double] = []
        /// Every worker's means and variances per set, worker `w`'s set `s` at `w·sets + s`.
        private(set) var mean: [Double] = []
        private(set) var variance: [Double] = []
        /// The iterations' factors of every worker's sets (same indexing).
        var factors: [ChunkFactors] = []
        /// Every worker's backward statistics, worker after worker.
        private var gatheredBackward: [Double] = []

        /// Gathers every worker's per-set `mean` and `variance` (this worker's `blocks` chunks, `blocks·C` sets);
        /// returns the number of chunks over all workers and their statistics in order.
        mutating func gatherForward(
            mean localMean: [Double], variance localVariance: [Double], blocks: Int,
            over workers: CrossWorkerReduction, layer: String
        ) throws
            -> (blocks: Int, mean: [Double], variance: [Double])
        {
            let sets = localMean.count, all = sets * workers.workerCount
            if local.count != 2 * sets || mean.count != all {
                local = [Double](repeating: 0, count: 2 * sets)
                gathered = [Double](repeating: 0, count: 2 * all)
                mean = [Double](repeating: 0, count: all)
                variance = mean
                factors = [ChunkFactors](repeating: ChunkFactors(divisor: 1, r: 1), count: all)
            }
            for s in 0..<sets {
                local[s] = localMean[s]
                local[sets + s] = localVariance[s]
            }
            try gather(local, into: &gathered, over: workers, layer: layer)
            for w in 0..<workers.workerCount {
                for s in 0..<sets {
                    mean[w * sets + s] = gathered[w * 2 * sets + s]
                    variance[w * sets + s] = gathered[w * 2 * sets + sets + s]
                }
            }
            return (blocks * workers.workerCount, mean, variance)
        }

        /// Copies this worker's sets of ``factors`` into `own`.
        func keepOwn(of workers: CrossWorkerReduction, into own: inout [ChunkFactors]) {
            let first = workers.workerIndex * own.count
            for s in 0..<own.count { own[s] = factors[first + s] }
        }

        /// Every worker's `statistics` (the same count on each), worker after worker.
        mutating func gatherBackward(
            _ statistics: [Double], over workers: CrossWorkerReduction, layer: String
        )
            throws -> [Double]
        {
            let all = statistics.count * workers.workerCount
            if gatheredBackward.count != all { gatheredBackward = [Double](repeating: 0, count: all) }
            try gather(statistics, into: &gatheredBackward, over: workers, layer: layer)
            return gatheredBackward
        }

        private func gather(
            _ local: [Double], into all: inout [Double], over workers: CrossWorkerReduction, layer: String
        ) throws {
            do {
                try local.withUnsafeBufferPointer { local in
                    try all.withUnsafeMutableBufferPointer { try workers.allGather(local, into: $0) }
                }
            } catch {
                throw NormalizationError.crossWorkerReductionFailed(layer: layer, reason: "\(error)")
            }
        }
    }
}
