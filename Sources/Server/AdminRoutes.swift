import Coordinator
import Foundation
import Hummingbird
import NIOCore
import OpenAIAPI
import Placement

/// The admin API of a cluster (what `farside cluster status|drain|rebalance|load` call), behind
/// the same API key as `/v1/*`:
/// - `GET /admin/cluster`: `ClusterStatus` as JSON.
/// - `POST /admin/cluster/drain` `{"node": ID}`: moves the node's experts away (make-before-
///   break), tells it to exit; answers once it has left.
/// - `POST /admin/cluster/rebalance` `{"strategy": S}` (optional): places the experts anew.
/// - `GET /admin/cluster/load`: routed tokens per layer and expert over the statistics window.
/// A server whose experts run in process answers 404 with why.
extension OpenAIServer {
    func addAdminRoutes(_ router: Hummingbird.Router<BasicRequestContext>) {
        router.get("/admin/cluster") { _, _ -> Response in
            try Self.encoded(try await self.admin().status())
        }
        router.get("/admin/cluster/load") { _, _ -> Response in
            try Self.encoded(try await self.admin().load())
        }
        router.post("/admin/cluster/drain") { request, _ -> Response in
            let body = try await self.adminBody(request)
            guard let node = body["node"] as? String, !node.isEmpty else {
                throw APIError.invalid("the body must be {\"node\": \"NODE-ID\"}", param: "node")
            }
            try await self.command { try await self.admin().drain(node: node) }
            return Self.json(.ok, ["drained": node])
        }
        router.post("/admin/cluster/rebalance") { request, _ -> Response in
            let body = try await self.adminBody(request)
            var strategy: PlacementStrategy?
            if let s = body["strategy"] {
                guard let text = s as? String else { throw APIError.invalid("strategy must be a string", param: "strategy") }
                do { strategy = try PlacementStrategy(parsing: text) } catch { throw APIError.invalid("\(error)", param: "strategy") }
            }
            try await self.command { try await self.admin().rebalance(strategy: strategy) }
            return Self.json(.ok, ["rebalanced": true])
        }
    }

    func admin() throws -> ClusterControl {
        guard let c = model.cluster else {
            throw APIError.notFound("this server has no expert nodes (its experts run in process): there is no cluster to administer")
        }
        return c
    }

    /// A JSON object body (an empty body is an empty object).
    func adminBody(_ request: Request) async throws -> [String: Any] {
        let bytes = try await request.body.collect(upTo: 64 << 10)
        if bytes.readableBytes == 0 { return [:] }
        guard let o = try? JSONSerialization.jsonObject(with: Data(buffer: bytes)) as? [String: Any] else {
            throw APIError.invalid("the request body is not a JSON object")
        }
        return o
    }

    /// Runs a placement command; its refusals are the client's to fix (409 Conflict, or 404
    /// for an unknown node), not server errors.
    func command(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let e as PlacementCommandError {
            if case .unknownNode = e { throw APIError.notFound("\(e)", param: "node") }
            throw APIError(status: .conflict, message: "\(e)", type: "invalid_request_error")
        }
    }

    static func encoded<T: Encodable>(_ value: T) throws -> Response {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys]
        return Response(status: .ok, headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(bytes: try encoder.encode(value))))
    }
}
