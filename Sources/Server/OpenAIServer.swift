import ChatTemplate
import Coordinator
import Foundation
import Hummingbird
import Logging
import Models
import NIOCore
import OpenAIAPI
import Placement
import Prometheus
import ServiceLifecycle
import Tokenizer

/// The model a server serves: its engine and how text becomes tokens and back.
public struct ServedModel: Sendable {
    /// The name clients pass as `model` (and `/v1/models` lists).
    public let id: String
    public let engine: Engine
    /// Absent for models without one (synthetic checkpoints): only token-id prompts then.
    public let tokenizer: BPETokenizer?
    /// Renders and tokenizes a conversation with the model's chat template; absent without one.
    public let chat: (@Sendable ([ChatMessage]) throws -> [Int])?
    /// Whether every layer's experts are placed and the engine runs (`/health`).
    public let isReady: @Sendable () -> Bool
    /// Tokens that end an assistant turn in a chat (the tokenizer's EOS), besides the model's EOS.
    public let chatStopTokens: Set<Int>
    /// The expert nodes, for the admin API (`/admin/cluster*`); nil when experts run in process.
    public let cluster: ClusterControl?

    public init(id: String, engine: Engine, tokenizer: BPETokenizer?, chat: (@Sendable ([ChatMessage]) throws -> [Int])?,
                chatStopTokens: Set<Int>, isReady: @escaping @Sendable () -> Bool, cluster: ClusterControl? = nil) {
        self.id = id
        self.cluster = cluster
        self.engine = engine
        self.tokenizer = tokenizer
        self.chat = chat
        self.chatStopTokens = chatStopTokens
        self.isReady = isReady
    }
}

/// Settings of the HTTP side (`farside serve` flags).
public struct ServerOptions: Sendable {
    public var host = "127.0.0.1"
    public var port = 8000
    /// When set, `/v1/*` and `/admin/*` need `Authorization: Bearer <apiKey>`.
    public var apiKey: String?
    /// Request bodies larger than this get 413.
    public var maxBodyBytes = 4 << 20
    /// How long SIGTERM/SIGINT waits for running requests before cancelling them.
    public var drainTimeout: Double = 30
    /// New tokens for a request that does not say (`max_tokens` absent); nil: as many as fit
    /// in the context, as vLLM does.
    public var defaultMaxTokens: Int?
    /// Seconds an idle keep-alive connection is kept.
    public var idleTimeout: Int64 = 60
    public init() {}
}

/// An OpenAI-compatible HTTP service over an `Engine` (Hummingbird 2): chat and text
/// completions (streaming as Server-Sent Events), models, health and Prometheus metrics.
public final class OpenAIServer: Sendable {
    public let model: ServedModel
    public let options: ServerOptions
    let logger: Logger
    let metrics: ServerMetrics
    let shutdownSwitch = ShutdownSwitch()

    public init(model: ServedModel, options: ServerOptions, logger: Logger) {
        self.model = model
        self.options = options
        self.logger = logger
        metrics = ServerMetrics()
    }

    /// Serves until `shutdown()`, then stops accepting, lets running requests finish (bounded
    /// by `drainTimeout`) and returns. `onListening` gets the bound port. Signals are the
    /// caller's: it calls `shutdown()` from its SIGTERM/SIGINT handlers, which it can install
    /// before this runs, so a signal that arrives while the server starts is not lost.
    public func run(onListening: @escaping @Sendable (Int) -> Void = { _ in }) async throws {
        let app = Application(
            router: buildRouter(),
            server: .http1(configuration: .init(idleTimeout: .seconds(options.idleTimeout))),
            configuration: .init(address: .hostname(options.host, port: options.port), serverName: "farside"),
            onServerRunning: { channel in onListening(channel.localAddress?.port ?? 0) },
            logger: logger)
        // A service group shuts its services down last first: the engine drains (running
        // requests finish within drainTimeout, new ones get 503) before the HTTP server stops,
        // whose own shutdown waits for the connections those requests hold.
        let group = ServiceGroup(configuration: .init(
            services: [app, EngineService(engine: model.engine, drainTimeout: options.drainTimeout)],
            gracefulShutdownSignals: [], logger: logger))
        if shutdownSwitch.attach(group) { await group.triggerGracefulShutdown() }
        try await group.run()
    }

    /// Starts the graceful shutdown `run` describes; before `run`, makes it shut down as soon as
    /// it starts. Safe from any thread, any number of times.
    public func shutdown() {
        guard let group = shutdownSwitch.request() else { return }
        Task { await group.triggerGracefulShutdown() }
    }

    func buildRouter() -> Hummingbird.Router<BasicRequestContext> {
        let router = Hummingbird.Router(context: BasicRequestContext.self)
        router.add(middleware: OpenAIErrors(apiKey: options.apiKey, metrics: metrics))
        router.get("/health") { _, _ -> Response in
            let ready = self.model.isReady()
            return Self.json(ready ? .ok : .serviceUnavailable, ["status": ready ? "ok" : "starting"])
        }
        router.get("/metrics") { _, _ -> Response in
            let text = self.metrics.render(self.model)
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(string: text)))
        }
        router.get("/openapi.yaml") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "application/yaml"],
                     body: .init(byteBuffer: ByteBuffer(string: OpenAPIDocument.text)))
        }
        router.get("/v1/models") { _, _ -> Response in
            Self.json(.ok, ["object": "list", "data": [self.modelCard()]])
        }
        router.get("/v1/models/{id}") { _, context -> Response in
            let id = context.parameters.get("id") ?? ""
            guard id == self.model.id else { throw APIError.notFound("the model '\(id)' does not exist", param: "model", code: "model_not_found") }
            return Self.json(.ok, self.modelCard())
        }
        router.post("/v1/chat/completions") { request, _ -> Response in
            try await self.complete(request, chat: true)
        }
        router.post("/v1/completions") { request, _ -> Response in
            try await self.complete(request, chat: false)
        }
        addAdminRoutes(router)
        return router
    }

    func modelCard() -> [String: Any] {
        ["id": model.id, "object": "model", "created": 0, "owned_by": "farside", "max_model_len": model.engine.model.maxPositions]
    }

    static func json(_ status: HTTPResponse.Status, _ object: Any) -> Response {
        Response(status: status, headers: [.contentType: "application/json"],
                 body: .init(byteBuffer: ByteBuffer(bytes: JSONText.encode(object))))
    }

    // MARK: Completions

    /// One request's prompt and settings, ready for the engine.
    struct Job {
        let chat: Bool
        let params: CompletionRequest
        let generation: GenerationRequest
        let id: String
        let created: Int
    }

    func complete(_ request: Request, chat: Bool) async throws -> Response {
        let body: ByteBuffer
        do { body = try await request.body.collect(upTo: options.maxBodyBytes) } catch is NIOTooManyBytesError {
            throw APIError.tooLarge(limit: options.maxBodyBytes)
        }
        let params = try CompletionRequest(body: Array(buffer: body), chat: chat)
        if let name = params.model, name != model.id {
            throw APIError.notFound("the model '\(name)' does not exist; this server serves '\(model.id)'", param: "model", code: "model_not_found")
        }
        let prompt = try promptTokens(params)
        let context = model.engine.model.maxPositions
        guard prompt.count < context else {
            throw APIError.invalid("the prompt has \(prompt.count) tokens, but this model's context is \(context) tokens and at least one must be left for the reply",
                                   param: chat ? "messages" : "prompt", code: "context_length_exceeded")
        }
        let sampling = SamplingParameters(temperature: params.temperature, topK: params.topK, topP: params.topP,
                                          seed: params.seed ?? UInt64.random(in: 0 ... .max))
        let room = context - prompt.count
        if let m = params.maxTokens, m > room {
            throw APIError.invalid("max_tokens is \(m), but only \(room) tokens fit after the prompt's \(prompt.count) in this model's context of \(context)",
                                   param: params.maxTokensField, code: "context_length_exceeded")
        }
        let generation = GenerationRequest(prompt: prompt, maxTokens: params.maxTokens ?? min(options.defaultMaxTokens ?? room, room),
                                           sampling: sampling, stopTokens: chat && !params.ignoreEOS ? model.chatStopTokens : [],
                                           ignoreEOS: params.ignoreEOS, topLogprobs: params.topLogprobs)
        let job = Job(chat: chat, params: params, generation: generation,
                      id: (chat ? "chatcmpl-" : "cmpl-") + String(UInt64.random(in: 0 ... .max), radix: 16),
                      created: Int(Date().timeIntervalSince1970))
        let run = try submit(job)
        return params.stream ? stream(job, run) : try await collect(job, run)
    }

    func promptTokens(_ p: CompletionRequest) throws -> [Int] {
        switch p.input {
        case .messages(let messages):
            guard let chat = model.chat else {
                throw APIError.invalid("this model has no chat template; use /v1/completions", param: "messages")
            }
            do { return try chat(messages) } catch {
                throw APIError.invalid("the chat template could not render these messages: \(error)", param: "messages")
            }
        case .text(let s):
            guard let tok = model.tokenizer else {
                throw APIError.invalid("this model has no tokenizer; send the prompt as an array of token ids", param: "prompt")
            }
            return tok.encode(s)
        case .tokens(let ids):
            let v = model.engine.model.vocabSize
            if let bad = ids.first(where: { $0 < 0 || $0 >= v }) {
                throw APIError.invalid("prompt token id \(bad) is outside the vocabulary (0..<\(v))", param: "prompt")
            }
            return ids
        }
    }

    /// A request running in the engine: its id there and its events.
    struct Run {
        let engineID: Int
        let events: AsyncStream<GenerationEvent>
        let started: ContinuousClock.Instant
    }

    func submit(_ job: Job) throws -> Run {
        let (events, continuation) = AsyncStream<GenerationEvent>.makeStream()
        let started = ContinuousClock.now
        do {
            let id = try model.engine.submit(job.generation) { event in
                continuation.yield(event)
                if case .finished = event { continuation.finish() }
            }
            return Run(engineID: id, events: events, started: started)
        } catch let e as EngineError {
            switch e {
            case .queueFull: throw APIError.overloaded(e.description, retryAfter: 1)
            case .stopping: throw APIError.overloaded(e.description, retryAfter: 5)
            case .promptTooLong: throw APIError.invalid(e.description, code: "context_length_exceeded")
            default: throw APIError.invalid(e.description)
            }
        } catch {
            throw APIError.invalid("\(error)")
        }
    }

    /// Turns a run's token events into text pieces (stop strings applied), calling `emit` per
    /// piece; returns how it ended.
    struct Outcome {
        var text = ""
        var finish = "stop"
        var completionTokens = 0
        var tokenIDs: [Int] = []
        var usage = Usage(promptTokens: 0, completionTokens: 0, cachedTokens: 0)
        var failure: String?
        var firstToken: ContinuousClock.Instant?
        var lastToken: ContinuousClock.Instant?
    }

    /// Per-token log-probability entries (chat's `logprobs.content` items).
    func logprobEntry(_ t: GeneratedToken) -> [String: Any] {
        func piece(_ id: Int) -> (String, [Int]) {
            let bytes = model.tokenizer?.bytes(of: id) ?? []
            return (String(decoding: bytes, as: UTF8.self), bytes.map(Int.init))
        }
        let (text, bytes) = piece(t.id)
        return ["token": text, "logprob": Double(t.logprob ?? 0), "bytes": bytes,
                "top_logprobs": t.top.map { alt -> [String: Any] in
                    let (s, b) = piece(alt.id)
                    return ["token": s, "logprob": Double(alt.logprob), "bytes": b]
                }]
    }

    func drive(_ job: Job, _ run: Run, emit: (String, GeneratedToken?) async throws -> Void) async throws -> Outcome {
        var out = Outcome()
        var detok = model.tokenizer.map { StreamingDetokenizer($0, skipSpecial: true) }
        var stops = StopStrings(job.params.stop)
        var stopped = false
        for await event in run.events {
            switch event {
            case .token(let t):
                guard !stopped else { continue }
                let now = ContinuousClock.now
                if out.firstToken == nil { out.firstToken = now }
                out.lastToken = now
                out.completionTokens += 1
                out.tokenIDs.append(t.id)
                if t.isStop {
                    try await emit("", t)
                    continue
                }
                let piece = detok?.push(t.id) ?? ""
                let (text, matched) = stops.push(piece)
                out.text += text
                try await emit(text, t)
                if matched {
                    stopped = true
                    out.finish = "stop"
                    model.engine.cancel(run.engineID)
                }
            case .failed(let why):
                out.failure = why
            case let .finished(reason, usage):
                out.usage = usage
                if !stopped {
                    // vLLM's name for a request ended by the server (here: a drain that ran out of time).
                    out.finish = reason == .length ? "length" : reason == .cancelled ? "abort" : "stop"
                    var tail = detok?.finish() ?? ""
                    tail = stops.push(tail).text + stops.flush()
                    if !tail.isEmpty {
                        out.text += tail
                        try await emit(tail, nil)
                    }
                }
            }
        }
        out.usage.completionTokens = out.completionTokens
        return out
    }

    func usageJSON(_ u: Usage) -> [String: Any] {
        ["prompt_tokens": u.promptTokens, "completion_tokens": u.completionTokens,
         "total_tokens": u.promptTokens + u.completionTokens,
         "prompt_tokens_details": ["cached_tokens": u.cachedTokens]]
    }

    /// Legacy completions' logprobs object for the tokens of one response or chunk.
    func completionLogprobs(_ tokens: [GeneratedToken]) -> [String: Any] {
        func text(_ id: Int) -> String { String(decoding: model.tokenizer?.bytes(of: id) ?? [], as: UTF8.self) }
        return ["tokens": tokens.map { text($0.id) },
                "token_logprobs": tokens.map { Double($0.logprob ?? 0) },
                "top_logprobs": tokens.map { t -> [String: Double] in
                    var d: [String: Double] = [:]
                    for alt in t.top { d[text(alt.id)] = Double(alt.logprob) }
                    return d
                }]
    }

    func collect(_ job: Job, _ run: Run) async throws -> Response {
        var tokens: [GeneratedToken] = []
        let out = try await withTaskCancellationHandler {
            try await drive(job, run) { _, t in if let t, job.params.topLogprobs != nil, !t.isStop { tokens.append(t) } }
        } onCancel: {
            model.engine.cancel(run.engineID)
        }
        record(job, run, out, status: out.failure == nil ? 200 : 500)
        if let why = out.failure { throw APIError.server("generation failed: \(why)") }
        var choice: [String: Any]
        if job.chat {
            let lp: Any = job.params.topLogprobs == nil ? NSNull() : ["content": tokens.map(logprobEntry)]
            choice = ["index": 0, "message": ["role": "assistant", "content": out.text], "logprobs": lp, "finish_reason": out.finish]
        } else {
            let lp: Any = job.params.topLogprobs == nil ? NSNull() : completionLogprobs(tokens)
            choice = ["index": 0, "text": out.text, "logprobs": lp, "finish_reason": out.finish]
        }
        if job.params.returnTokenIDs { choice["token_ids"] = out.tokenIDs }
        return Self.json(.ok, ["id": job.id, "object": job.chat ? "chat.completion" : "text_completion", "created": job.created,
                               "model": model.id, "choices": [choice], "usage": usageJSON(out.usage)])
    }

    func stream(_ job: Job, _ run: Run) -> Response {
        let object = job.chat ? "chat.completion.chunk" : "text_completion"
        let body = ResponseBody { [self] writer in
            func send(_ o: Any) async throws {
                var b = ByteBuffer(string: "data: ")
                b.writeBytes(JSONText.encode(o))
                b.writeString("\n\n")
                try await writer.write(b)
            }
            func chunk(_ choice: [String: Any]) -> [String: Any] {
                ["id": job.id, "object": object, "created": job.created, "model": model.id, "choices": [choice]]
            }
            do {
                if job.chat {
                    try await send(chunk(["index": 0, "delta": ["role": "assistant", "content": ""], "logprobs": NSNull(), "finish_reason": NSNull()]))
                }
                let out = try await drive(job, run) { text, t in
                    let wantsLogprobs = job.params.topLogprobs != nil && t != nil && !(t!.isStop)
                    // With return_token_ids every generated token gets its chunk, text or not
                    // (as vLLM streams them; a model without a tokenizer has no text at all).
                    let wantsIDs = job.params.returnTokenIDs && t != nil
                    guard !text.isEmpty || wantsLogprobs || wantsIDs else { return }
                    var choice: [String: Any]
                    if job.chat {
                        let lp: Any = wantsLogprobs ? ["content": [logprobEntry(t!)]] : NSNull()
                        choice = ["index": 0, "delta": ["content": text], "logprobs": lp, "finish_reason": NSNull()]
                    } else {
                        let lp: Any = wantsLogprobs ? completionLogprobs([t!]) : NSNull()
                        choice = ["index": 0, "text": text, "logprobs": lp, "finish_reason": NSNull()]
                    }
                    if wantsIDs { choice["token_ids"] = [t!.id] }
                    try await send(chunk(choice))
                }
                record(job, run, out, status: out.failure == nil ? 200 : 500)
                if let why = out.failure {
                    try await send(APIError.server("generation failed: \(why)").body)
                } else if job.chat {
                    try await send(chunk(["index": 0, "delta": [String: Any](), "logprobs": NSNull(), "finish_reason": out.finish]))
                } else {
                    try await send(chunk(["index": 0, "text": "", "logprobs": NSNull(), "finish_reason": out.finish]))
                }
                if job.params.includeUsage {
                    try await send(["id": job.id, "object": object, "created": job.created, "model": model.id,
                                    "choices": [Any](), "usage": usageJSON(out.usage)])
                }
                try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                try await writer.finish(nil)
            } catch {
                // The client went away (a write failed): free its sequence at the next step.
                model.engine.cancel(run.engineID)
                metrics.cancelled.increment()
                logger.info("request cancelled", metadata: ["id": "\(job.id)", "reason": "\(error)"])
                throw error
            }
        }
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
    }

    /// Metrics and the one log line per request.
    func record(_ job: Job, _ run: Run, _ out: Outcome, status: Int) {
        let end = ContinuousClock.now
        metrics.requests(status: status).increment()
        metrics.promptTokens.increment(by: Int64(out.usage.promptTokens))
        metrics.generatedTokens.increment(by: Int64(out.completionTokens))
        var ttft = -1.0
        if let first = out.firstToken {
            ttft = (first - run.started).seconds
            metrics.timeToFirstToken.record(ttft)
            if let last = out.lastToken, out.completionTokens > 1 {
                metrics.timePerOutputToken.record((last - first).seconds / Double(out.completionTokens - 1))
            }
        }
        let duration = (end - run.started).seconds
        metrics.requestDuration.record(duration)
        logger.info("request", metadata: [
            "id": "\(job.id)", "status": "\(status)", "prompt_tokens": "\(out.usage.promptTokens)",
            "cached_tokens": "\(out.usage.cachedTokens)", "completion_tokens": "\(out.completionTokens)",
            "finish": "\(out.finish)", "ttft_s": "\(String(format: "%.3f", ttft))", "duration_s": "\(String(format: "%.3f", duration))",
        ])
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}

/// Errors in OpenAI's shape, the API key check, and 404 for unknown routes.
struct OpenAIErrors: RouterMiddleware {
    typealias Context = BasicRequestContext
    let apiKey: String?
    let metrics: ServerMetrics

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            if let apiKey, request.uri.path.hasPrefix("/v1/") || request.uri.path.hasPrefix("/admin/") {
                guard request.headers[.authorization] == "Bearer \(apiKey)" else { throw APIError.unauthorized() }
            }
            return try await next(request, context)
        } catch let e as APIError {
            if e.status != .ok { metrics.requests(status: Int(e.status.code)).increment() }
            return e.response()
        } catch let e as HTTPError where e.status == .notFound {
            metrics.requests(status: 404).increment()
            return APIError.notFound("no route \(request.method) \(request.uri.path)").response()
        } catch let e as HTTPError {
            metrics.requests(status: Int(e.status.code)).increment()
            return APIError(status: e.status, message: e.body ?? "\(e.status.reasonPhrase)", type: "invalid_request_error").response()
        }
    }
}

/// Drains the engine when the service group shuts down (SIGTERM/SIGINT).
struct EngineService: Service {
    let engine: Engine
    let drainTimeout: Double

    func run() async throws {
        try? await gracefulShutdown()
        let engine = self.engine, drain = drainTimeout
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                engine.shutdown(drainTimeout: drain)
                done.resume()
            }
        }
    }
}

/// The service group of a running server, or a shutdown asked for before there was one.
final class ShutdownSwitch: @unchecked Sendable {
    private let lock = NSLock()
    private var group: ServiceGroup?
    private var requested = false

    /// Records the group; true when a shutdown was already asked for.
    func attach(_ g: ServiceGroup) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        group = g
        return requested
    }

    /// Records the request; the group to shut down, if there is one yet.
    func request() -> ServiceGroup? {
        lock.lock()
        defer { lock.unlock() }
        requested = true
        return group
    }
}
