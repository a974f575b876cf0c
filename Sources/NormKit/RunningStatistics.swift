/// The one running-statistics fold of BatchNorm and BatchRenorm: per channel, the average over the ghost batches
/// of a set statistic pair (the mean and a spread: BN's unbiased variance, BRN's `sqrt(var + ε)`) moves the running
/// pair by `α·(average − running)`, computed in Double and stored as Float.
///
/// **One finiteness rule.** The new values are built in pending arrays and swapped in only if every set statistic
/// and every stored Float is finite: a non-finite batch poisons its sums, and statistics finite in Double can still
/// overflow Float (`|x| ~ 1e38`), so checking both covers every case. Otherwise nothing changes and
/// ``fold(mean:spread:batchMean:batchSpread:sampleBlocks:momentum:)`` returns false (the layer counts a skipped
/// update). No allocation per step once the channel count is known.
struct RunningStatisticsFold {
    private var pendingMean: [Float] = []
    private var pendingSpread: [Float] = []

    /// Folds set statistics indexed `block·C + c` (`sampleBlocks` ghost batches of `C = mean.count` channels) into
    /// `mean` and `spread`; `batchSpread(s)` is the spread of set `s`. Returns false, changing nothing, when a value
    /// is not finite.
    @inline(__always)
    mutating func fold(
        mean: inout [Float], spread: inout [Float], batchMean: [Double],
        batchSpread: (Int) -> Double, sampleBlocks blocks: Int, momentum: Float
    ) -> Bool {
        let channels = mean.count, alpha = Double(momentum), perBlock = 1 / Double(blocks)
        if pendingMean.count != channels {
            pendingMean = [Float](repeating: 0, count: channels)
            pendingSpread = pendingMean
        }
        // 0·v is ±0 for a finite v and NaN for ±inf or NaN: `poison` stays ±0 exactly when every value is finite,
        // without a branch per channel.
        var poison = 0.0
        mean.withUnsafeBufferPointer { mean in
            spread.withUnsafeBufferPointer { spread in
                batchMean.withUnsafeBufferPointer { batchMean in
                    pendingMean.withUnsafeMutableBufferPointer { pendingMean in
                        pendingSpread.withUnsafeMutableBufferPointer { pendingSpread in
                            for c in 0..<channels {
                                var mu = 0.0, sigma = 0.0
                                for b in 0..<blocks {
                                    mu += batchMean[b &* channels &+ c]
                                    sigma += batchSpread(b &* channels &+ c)
                                }
                                let rm = Double(mean[c]), rs = Double(spread[c])
                                let newMean = Float(rm + alpha * (mu * perBlock - rm))
                                let newSpread = Float(rs + alpha * (sigma * perBlock - rs))
                                (pendingMean[c], pendingSpread[c]) = (newMean, newSpread)
                                poison += 0 * mu + 0 * sigma + Double(0 * newMean) + Double(0 * newSpread)
                            }
                        }
                    }
                }
            }
        }
        let finite = poison == 0
        guard finite else { return false }
        swap(&mean, &pendingMean)
        swap(&spread, &pendingSpread)
        return true
    }
}
