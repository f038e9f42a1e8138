import Foundation
import HTTPTypes

/// An error as OpenAI's API reports it: `{"error": {"message", "type", "param", "code"}}` with
/// the HTTP status that says whose fault it is.
public struct APIError: Error, CustomStringConvertible, Sendable {
    public let status: HTTPResponse.Status
    public let message: String
    public let type: String
    /// The request field at fault, when one is.
    public let param: String?
    public let code: String?
    /// Seconds after which a retry may succeed (503).
    public var retryAfter: Int?

    public init(status: HTTPResponse.Status, message: String, type: String, param: String? = nil, code: String? = nil) {
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
    }

    public var description: String { message }

    /// 400: a malformed body or a parameter out of range (`param` names it).
    public static func invalid(_ message: String, param: String? = nil, code: String? = nil) -> APIError {
        APIError(status: .badRequest, message: message, type: "invalid_request_error", param: param, code: code)
    }

    public static func unauthorized() -> APIError {
        APIError(status: .unauthorized, message: "missing or invalid API key: send 'Authorization: Bearer <key>'",
                 type: "invalid_request_error", code: "invalid_api_key")
    }

    public static func notFound(_ message: String, param: String? = nil, code: String? = nil) -> APIError {
        APIError(status: .notFound, message: message, type: "invalid_request_error", param: param, code: code)
    }

    public static func tooLarge(limit: Int) -> APIError {
        APIError(status: .contentTooLarge, message: "the request body is larger than the server's limit of \(limit) bytes",
                 type: "invalid_request_error", code: "request_too_large")
    }

    public static func overloaded(_ message: String, retryAfter: Int) -> APIError {
        var e = APIError(status: .serviceUnavailable, message: message, type: "server_error", code: "overloaded")
        e.retryAfter = retryAfter
        return e
    }

    public static func server(_ message: String) -> APIError {
        APIError(status: .internalServerError, message: message, type: "server_error")
    }

    /// The JSON body.
    public var body: [String: Any] {
        ["error": ["message": message, "type": type, "param": param as Any? ?? NSNull(), "code": code as Any? ?? NSNull()]]
    }
}
