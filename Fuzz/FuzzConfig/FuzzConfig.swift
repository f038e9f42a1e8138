// libFuzzer target: a checkpoint's config.json, read as every supported architecture reads it
// (no weights: what is checked before a single tensor is touched).
import Checkpoint
import Foundation
import Models

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard let c = try? ConfigJSON(data: Data(bytes: data, count: size), source: "/fuzz/config.json") else { return 0 }
    if let d = try? DecoderConfig(c) {
        // What validate() promises: sizes in range, so products of a few of them cannot overflow.
        precondition(d.hidden >= 1 && d.layers >= 1 && d.heads >= 1 && d.kvHeads >= 1 && d.headDim >= 1)
        precondition(d.normEps.isFinite && d.normEps > 0)
        _ = d.vocabSize.multipliedReportingOverflow(by: d.hidden)
    }
    _ = try? LlamaForCausalLM.Config(c)
    _ = try? Qwen2ForCausalLM.Config(c)
    _ = try? MixtralForCausalLM.Config(c)
    _ = try? Qwen2MoeForCausalLM.Config(c)
    _ = try? Qwen3MoeForCausalLM.Config(c)
    _ = try? DeepseekV3ForCausalLM.Config(c)
    _ = try? c.object("rope_scaling")
    return 0
}
