import Foundation
import Hummingbird
import OpenAIAPI

extension APIError {
    /// The HTTP response.
    func response() -> Response {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let r = retryAfter { headers[.retryAfter] = "\(r)" }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: JSONText.encode(body))))
    }
}

/// JSON bodies from `[String: Any]` trees.
enum JSONText {
    static func encode(_ object: Any) -> [UInt8] {
        // Only trees this module builds reach here (strings, numbers, bools, NSNull, arrays, objects).
        (try? JSONSerialization.data(withJSONObject: object, options: [.withoutEscapingSlashes]))
            .map { [UInt8]($0) } ?? Array("{}".utf8)
    }

    static func string(_ object: Any) -> String { String(decoding: encode(object), as: UTF8.self) }
}
