import Checkpoint
import Kernels

/// Tensor names the Llama lineage (Llama, Mixtral, Qwen2/3-MoE, DeepSeek-V3) shares verbatim;
/// each architecture file lists the names that are its own.
enum SharedNames {
    static let embed = "model.embed_tokens.weight"
    static let finalNorm = "model.norm.weight"
    static let lmHead = "lm_head.weight"
    static func layer(_ l: Int) -> String { "model.layers.\(l)." }
    static let inputNorm = "input_layernorm.weight"
    static let postAttentionNorm = "post_attention_layernorm.weight"
    static let q = "self_attn.q_proj", k = "self_attn.k_proj", v = "self_attn.v_proj", o = "self_attn.o_proj"
    static let qNorm = "self_attn.q_norm.weight", kNorm = "self_attn.k_norm.weight"
}

/// Builders for the parts architectures share, reading tensors by name with config-implied shapes.
enum DecoderBuilder {
    static func gqa(_ c: DecoderConfig, _ w: WeightSource, layer l: Int, bias: Bool = false,
                    oBias: Bool = false, qkNorm: Bool = false, rope: RotaryEmbedding) throws -> GroupedQueryAttention {
        let p = SharedNames.layer(l)
        let qd = c.heads * c.headDim, kd = c.kvHeads * c.headDim
        func b(_ name: String, _ n: Int, _ on: Bool) throws -> [Float]? {
            on ? try w.vector(p + name + ".bias", count: n) : nil
        }
        return GroupedQueryAttention(
            heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim,
            wq: try w.matrix(p + SharedNames.q + ".weight", rows: qd, cols: c.hidden),
            wk: try w.matrix(p + SharedNames.k + ".weight", rows: kd, cols: c.hidden),
            wv: try w.matrix(p + SharedNames.v + ".weight", rows: kd, cols: c.hidden),
            wo: try w.matrix(p + SharedNames.o + ".weight", rows: c.hidden, cols: qd),
            qBias: try b(SharedNames.q, qd, bias), kBias: try b(SharedNames.k, kd, bias),
            vBias: try b(SharedNames.v, kd, bias), oBias: try b(SharedNames.o, c.hidden, oBias),
            qNorm: qkNorm ? try w.vector(p + SharedNames.qNorm, count: c.headDim) : nil,
            kNorm: qkNorm ? try w.vector(p + SharedNames.kNorm, count: c.headDim) : nil,
            normEps: c.normEps, rope: rope)
    }

    /// A SwiGLU whose three projections are `prefix + names.{0,1,2} + ".weight"`.
    static func swiGLU(_ w: WeightSource, prefix: String, names: (String, String, String),
                       hidden: Int, intermediate: Int) throws -> SwiGLU {
        SwiGLU(gate: try w.matrix(prefix + names.0 + ".weight", rows: intermediate, cols: hidden),
               up: try w.matrix(prefix + names.1 + ".weight", rows: intermediate, cols: hidden),
               down: try w.matrix(prefix + names.2 + ".weight", rows: hidden, cols: intermediate))
    }

    /// Routed expert `e` of a layer whose experts live under `prefix` ("model.layers.L.mlp.experts."),
    /// either one tensor per expert and projection (published checkpoints: `prefix + "E." + name`)
    /// or fused 3-D tensors as transformers 5 keeps them in memory
    /// (`gate_up_proj [E, 2I, H]`, gate rows first, and `down_proj [E, H, I]`).
    static func expert(_ w: WeightSource, prefix: String, expert e: Int, experts: Int,
                       names: (String, String, String), hidden: Int, intermediate i: Int) throws -> SwiGLU {
        if w.contains(prefix + "gate_up_proj") {
            let gu = try w.matrix3D(prefix + "gate_up_proj", experts: experts, rows: 2 * i, cols: hidden)
            let down = try w.matrix3D(prefix + "down_proj", experts: experts, rows: hidden, cols: i)
            return SwiGLU(gate: gu.rows(e * 2 * i, count: i), up: gu.rows(e * 2 * i + i, count: i),
                          down: down.rows(e * hidden, count: hidden))
        }
        return try swiGLU(w, prefix: prefix + "\(e).", names: names, hidden: hidden, intermediate: i)
    }

    static func assemble(_ c: DecoderConfig, _ w: WeightSource, architecture: String, layers: [DecoderLayer],
                         rope: RotaryEmbedding, expertLoader: @escaping ExpertLoader) throws -> DecoderModel {
        // A cache holding the whole context must have a size: every later cache is capped by it.
        let widths = try CheckedSize.sum(layers.map { try CheckedSize.sum([$0.attention.cacheWidths.0, $0.attention.cacheWidths.1], "KV cache width") },
                                         "KV cache width")
        do { _ = try CheckedSize.product([widths, c.maxPositions, 4], "the KV cache for max_position_embeddings (\(c.maxPositions)) positions") } catch {
            throw ModelError.invalidConfig("\(error)")
        }
        let embed = try w.matrix(SharedNames.embed, rows: c.vocabSize, cols: c.hidden)
        let head = c.tieEmbeddings
            ? embed : try w.matrix(SharedNames.lmHead, rows: c.vocabSize, cols: c.hidden)
        return DecoderModel(
            architecture: architecture, vocabSize: c.vocabSize, hidden: c.hidden, maxPositions: c.maxPositions,
            normEps: c.normEps, embedding: embed, layers: layers,
            finalNorm: try w.vector(SharedNames.finalNorm, count: c.hidden), lmHead: head, rope: rope,
            eosTokenIds: c.eosTokenIds, weightSource: w, expertLoader: expertLoader)
    }

    static func norms(_ c: DecoderConfig, _ w: WeightSource, layer l: Int) throws -> ([Float], [Float]) {
        let p = SharedNames.layer(l)
        return (try w.vector(p + SharedNames.inputNorm, count: c.hidden),
                try w.vector(p + SharedNames.postAttentionNorm, count: c.hidden))
    }
}
