// libFuzzer target: an HTTP request body of `farside serve`, as the server decodes and validates
// it (first byte odd: /v1/chat/completions, even: /v1/completions), and the error body it sends.
import ChatTemplate
import Foundation
import OpenAIAPI

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1 else { return 0 }
    let chat = data[0] & 1 == 1
    let body = [UInt8](UnsafeBufferPointer(start: data + 1, count: size - 1))
    do {
        let r = try CompletionRequest(body: body, chat: chat)
        // What validation promises the engine.
        precondition(r.maxTokens.map { $0 >= 1 } ?? true)
        precondition(r.temperature >= 0 && r.temperature <= 2 && r.topP > 0 && r.topP <= 1 && r.topK >= 0)
        precondition(r.stop.count <= 4 && !r.stop.contains(""))
        precondition(r.topLogprobs.map { (0...20).contains($0) } ?? true)
        if case .messages(let m) = r.input { precondition(!m.isEmpty) }
    } catch let e as APIError {
        // The error goes back as JSON: it must serialize.
        precondition(JSONSerialization.isValidJSONObject(e.body))
        _ = try? JSONSerialization.data(withJSONObject: e.body)
    } catch {
        preconditionFailure("an error that is not an APIError: \(error)")
    }
    return 0
}
