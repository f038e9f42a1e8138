import Checkpoint

/// The config.json fields every supported decoder shares, read with the defaults transformers
/// applies when a key is absent.
public struct DecoderConfig: Sendable {
    public var modelType: String
    public var vocabSize: Int
    public var hidden: Int
    public var layers: Int
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int
    public var intermediate: Int
    public var normEps: Float
    public var maxPositions: Int
    public var tieEmbeddings: Bool
    public var eosTokenIds: [Int]
    public var rope: RopeParameters
    public var hiddenAct: String

    public init(_ c: ConfigJSON, tieDefault: Bool = false, epsDefault: Double = 1e-6) throws {
        modelType = try c.optionalString("model_type") ?? ""
        vocabSize = try c.int("vocab_size")
        hidden = try c.int("hidden_size")
        layers = try c.int("num_hidden_layers")
        heads = try c.int("num_attention_heads")
        kvHeads = try c.int("num_key_value_heads", default: heads)
        headDim = try c.optionalInt("head_dim") ?? (heads > 0 ? hidden / heads : 0)
        intermediate = try c.int("intermediate_size", default: 0)
        normEps = Float(try c.double("rms_norm_eps", default: epsDefault))
        maxPositions = try c.int("max_position_embeddings", default: 2048)
        tieEmbeddings = try c.bool("tie_word_embeddings", default: tieDefault)
        if let list = try? c.intArray("eos_token_id", default: []), !list.isEmpty {
            eosTokenIds = list
        } else {
            eosTokenIds = (try c.optionalInt("eos_token_id")).map { [$0] } ?? []
        }
        do { rope = try RopeParameters(config: c) } catch ModelError.invalidConfig(let m) { throw ModelError.invalidConfig("\(c.source): \(m)") }
        hiddenAct = try c.optionalString("hidden_act") ?? "silu"
        do { try validate() } catch ModelError.invalidConfig(let m) { throw ModelError.invalidConfig("\(c.source): \(m)") }
    }

    /// Upper bounds on sizes, far above any published model, so that a corrupt or hostile config
    /// is refused before anything is allocated from it (and products of them cannot overflow).
    public enum Limits {
        public static let vocab = 1 << 24, hidden = 1 << 18, layers = 1 << 12, heads = 1 << 12
        public static let headDim = 1 << 12, intermediate = 1 << 20, positions = 1 << 24, experts = 1 << 16
    }

    func validate() throws {
        try Self.requireSize(vocabSize, "vocab_size", limit: Limits.vocab)
        try Self.requireSize(hidden, "hidden_size", limit: Limits.hidden)
        try Self.requireSize(layers, "num_hidden_layers", limit: Limits.layers)
        try Self.requireSize(heads, "num_attention_heads", limit: Limits.heads)
        try Self.requireSize(kvHeads, "num_key_value_heads", limit: Limits.heads)
        try Self.requireSize(headDim, "head_dim", limit: Limits.headDim)
        try Self.requireSize(maxPositions, "max_position_embeddings", limit: Limits.positions)
        if intermediate != 0 { try Self.requireSize(intermediate, "intermediate_size", limit: Limits.intermediate) }
        guard normEps.isFinite, normEps > 0 else {
            throw ModelError.invalidConfig("rms_norm_eps must be a finite number > 0 (as a 32-bit float), found \(normEps)")
        }
        guard heads % kvHeads == 0 else {
            throw ModelError.invalidConfig("num_attention_heads (\(heads)) must be a multiple of num_key_value_heads (\(kvHeads))")
        }
        guard headDim % 2 == 0 else { throw ModelError.invalidConfig("head_dim must be even for RoPE, found \(headDim)") }
        if let ff = rope.frequencyFactors, ff.count != headDim / 2 {
            throw ModelError.invalidConfig("rope frequency factors: \(ff.count) given, head_dim \(headDim) needs \(headDim / 2)")
        }
        guard hiddenAct == "silu" || hiddenAct == "swish" else {
            throw ModelError.invalidConfig("hidden_act '\(hiddenAct)' is not supported (only silu)")
        }
    }

    /// Checks a model_type-specific positive integer.
    static func requirePositive(_ v: Int, _ key: String) throws {
        guard v > 0 else { throw ModelError.invalidConfig("\(key) must be positive, found \(v)") }
    }

    /// Checks a size or count read from a config: in `1...limit`, so that products of a few of
    /// them fit `Int` and nothing absurd is allocated.
    static func requireSize(_ v: Int, _ key: String, limit: Int) throws {
        do { try CheckedSize.count(v, in: 1...limit, key) } catch { throw ModelError.invalidConfig("\(error)") }
    }

    /// Checks a real-valued hyperparameter: finite, and `> 0` when `positive` (else `>= 0`).
    static func requireFinite(_ v: Double, _ key: String, positive: Bool = true) throws {
        guard v.isFinite, positive ? v > 0 : v >= 0 else {
            throw ModelError.invalidConfig("\(key) must be a finite number \(positive ? "> 0" : ">= 0"), found \(v)")
        }
    }
}
