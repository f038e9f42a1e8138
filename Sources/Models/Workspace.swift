/// Reusable fp32 scratch buffers, grown on demand and never shrunk, so a forward pass allocates
/// only when a batch is larger than any before it. One per model instance: a model's forward
/// pass is not reentrant (run one sequence batch at a time per instance).
public final class Workspace {
    private var buffers: [UnsafeMutablePointer<Float>] = []
    private var sizes: [Int] = []

    public init() {}

    /// Slot of attention's partial softmax states (split-K decode: one per row, KV group and tile).
    static let softmaxPartials = 20

    deinit { for b in buffers { b.deallocate() } }

    /// Buffer number `slot`, at least `count` floats; contents are unspecified.
    public func buffer(_ slot: Int, count: Int) -> UnsafeMutablePointer<Float> {
        while buffers.count <= slot {
            buffers.append(.allocate(capacity: 1))
            sizes.append(1)
        }
        if sizes[slot] < count {
            buffers[slot].deallocate()
            buffers[slot] = .allocate(capacity: count)
            sizes[slot] = count
        }
        return buffers[slot]
    }
}
