import CNormKitDNNL
import Foundation
import NormKit

/// ``Conv2d`` on oneDNN: the batch split over NormKit's pool, each thread one single-threaded primitive on its
/// own images (see ``ConvolutionEngine``).
extension Conv2d {
    private func threadCount(for g: ConvolutionGeometry) -> Int { max(1, min(Parallelism.threadCount, g.batch)) }

    private func key(
        _ images: Int, _ g: ConvolutionGeometry, _ layout: TensorLayout, winograd: Bool
    ) -> OneDNNConvolutions.Key {
        OneDNNConvolutions.Key(
            batch: images, height: g.height, width: g.width, channelsLast: layout == .channelsLast, winograd: winograd)
    }

    /// Creates (or finds) every thread's primitive before the parallel section, so creation errors throw here;
    /// returns them in ``OneDNNConvolutions/current`` (memory reused from call to call: a step allocates nothing).
    private func handles(
        _ g: ConvolutionGeometry, layout: TensorLayout, threads: Int, winograd: Bool
    ) throws
        -> UnsafeMutablePointer<OpaquePointer?>
    {
        oneDNN.reserve(threads: threads)
        for t in 0..<threads {
            let images = g.batch * (t + 1) / threads - g.batch * t / threads
            oneDNN.current[t] = try oneDNN.handle(
                thread: t, key(images, g, layout, winograd: winograd), geometry: g,
                hasBias: bias != nil, layer: name)
        }
        oneDNN.failure.reset()
        return oneDNN.current
    }

    /// The oneDNN implementation each of the last oneDNN call's threads ran for `pass` (0: forward, 1:
    /// backward-data, 2: backward-weights), as `ONEDNN_VERBOSE` names it ("jit_wino_4x3:avx512_core", …).
    package func oneDNNImplementations(pass: Int, threads: Int) -> [String] {
        (0..<threads).map { String(cString: nk_dnnl_convolution_implementation(oneDNN.current[$0], Int32(pass))) }
    }

    /// The oneDNN forward (`winograd`: where it pays, see ``ConvolutionEngine/oneDNN``); returns the thread split it
    /// used (the backward uses the same).
    @discardableResult
    func forwardOneDNN(_ x: Tensor, into y: inout Tensor, _ g: ConvolutionGeometry, winograd: Bool) throws -> Int {
        let threads = threadCount(for: g)
        let handles = try handles(g, layout: x.layout, threads: threads, winograd: winograd)
        let w = UnsafePointer(usedWeight.pointer)
        let inImage = g.channels * g.height * g.width, outImage = g.filters * g.positions
        let failure = oneDNN.failure
        let biasValues = bias?.value ?? []
        biasValues.withUnsafeBufferPointer { bp in
            let b = bias == nil ? nil : bp.baseAddress
            x.withUnsafeBufferPointer { xb in
                y.withUnsafeMutableBufferPointer { yb in
                    let xp = xb.baseAddress!, yp = yb.baseAddress!
                    Conv2d.run(threads: threads, count: g.batch) { t, range in
                        guard nk_dnnl_convolution_set_weights(handles[t]!, w) == 0,
                            nk_dnnl_convolution_forward(
                                handles[t]!, xp + range.lowerBound * inImage, b,
                                yp + range.lowerBound * outImage) == 0
                        else { return failure.record(OneDNNConvolutions.lastError) }
                    }
                }
            }
        }
        if let message = failure.value {
            throw LayerError.engineFailure(layer: name, engine: "oneDNN", message: message)
        }
        return threads
    }

    /// The oneDNN backward into each thread's partial gradients (and `dx`); returns the thread count. The split is
    /// the training forward's (`threads`, whatever ``/NormKit/Parallelism/threadCount`` is now), and every handle
    /// gets the forward's weights again before the backward-data (its handle may have been replaced by evaluation
    /// forwards of other shapes since, or hold another step's weights).
    func backwardOneDNN(
        _ x: Tensor, _ dy: Tensor, into dx: inout Tensor, _ g: ConvolutionGeometry,
        threads: Int, winograd: Bool
    ) throws -> Int {
        let handles = try handles(g, layout: x.layout, threads: threads, winograd: winograd)
        let w = UnsafePointer(usedWeight.pointer)
        reserveGradientWorkspaces(threads: threads, g)
        let workspaces = self.workspaces
        let inImage = g.channels * g.height * g.width, outImage = g.filters * g.positions
        let hasBias = bias != nil
        // One input channel, channels-last output (ResNet's stem): NormKit computes that weight gradient itself, the
        // same bits on every machine (oneDNN 2.6 took 2.3 ms per 16 images on the Intel machine kind, 31 µs on the
        // AMD one; NormKit's register kernel is 0.2 % of a ResNet-20 step).
        let directWeightGradient = g.channels == 1 && x.layout == .channelsLast
        let failure = oneDNN.failure
        func run(_ dxp: UnsafeMutablePointer<Float>?) {
            x.withUnsafeBufferPointer { xb in
                dy.withUnsafeBufferPointer { dyb in
                    let xp = xb.baseAddress!, dyp = dyb.baseAddress!
                    Conv2d.run(threads: threads, count: g.batch) { t, range in
                        let images = xp + range.lowerBound * inImage, gradients = dyp + range.lowerBound * outImage
                        if directWeightGradient {
                            Conv2d.singleChannelWeightGradient(
                                dw: workspaces[t].weightGradient.pointer,
                                db: hasBias ? workspaces[t].biasGradient.pointer : nil, x: images, dy: gradients,
                                images: range.count, g)
                        } else if nk_dnnl_convolution_backward_weights(
                            handles[t]!, images, gradients, workspaces[t].weightGradient.pointer,
                            hasBias ? workspaces[t].biasGradient.pointer : nil) != 0
                        {
                            return failure.record(OneDNNConvolutions.lastError)
                        }
                        if let dxp,
                            nk_dnnl_convolution_set_backward_weights(handles[t]!, w) != 0
                                || nk_dnnl_convolution_backward_data(
                                    handles[t]!, gradients,
                                    dxp + range.lowerBound * inImage) != 0
                        {
                            failure.record(OneDNNConvolutions.lastError)
                        }
                    }
                }
            }
        }
        if computesInputGradient {
            dx.prepare(shape: x.shape, layout: x.layout)
            dx.withUnsafeMutableBufferPointer { run($0.baseAddress!) }
        } else {
            run(nil)
        }
        if let message = failure.value {
            throw LayerError.engineFailure(layer: name, engine: "oneDNN", message: message)
        }
        return threads
    }

    /// `dW` (OIHW) and `db` of a convolution with one input channel over channels-last `dy` (`images × positions ×
    /// filters`): every output position adds `x[tap]·dy[position, :]` to each valid tap's row of filters
    /// (`nk_single_channel_weight_gradient`: the nine taps' sums of 16 filters in registers for 3×3 kernels).
    static func singleChannelWeightGradient(
        dw: UnsafeMutablePointer<Float>, db: UnsafeMutablePointer<Float>?,
        x: UnsafePointer<Float>, dy: UnsafePointer<Float>, images: Int,
        _ g: ConvolutionGeometry
    ) {
        withUnsafeTemporaryAllocation(of: Float.self, capacity: g.kernel * g.kernel * g.filters) { scratch in
            nk_single_channel_weight_gradient(
                dw, db, x, dy, Int32(images), Int32(g.height), Int32(g.width), Int32(g.filters), Int32(g.kernel),
                Int32(g.stride), Int32(g.padding), Int32(g.outHeight), Int32(g.outWidth), scratch.baseAddress!, 2)
        }
    }
}
