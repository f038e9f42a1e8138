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
        rope = try RopeParameters(config: c)
        hiddenAct = try c.optionalString("hidden_act") ?? "silu"
        try validate()
    }

    func validate() throws {
        func positive(_ v: Int, _ key: String) throws {
            guard v > 0 else { throw ModelError.invalidConfig("\(key) must be positive, found \(v)") }
        }
        try positive(vocabSize, "vocab_size")
        try positive(hidden, "hidden_size")
        try positive(layers, "num_hidden_layers")
        try positive(heads, "num_attention_heads")
        try positive(kvHeads, "num_key_value_heads")
        try positive(headDim, "head_dim")
        try positive(maxPositions, "max_position_embeddings")
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
}
