import ArgumentParser
import Coordinator
import ExpertNode
import Foundation
import Kernels
import Models
import Placement
import Tokenizer
import Transport
import ChatTemplate

@main
struct Farside: ParsableCommand {
    /// The release this build belongs to (`farside --version`).
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "farside",
        abstract: "Distributed expert-parallel inference for Mixture-of-Experts language models.",
        discussion: """
            Text that starts with '-' is passed as --prompt=-text (or --text=-text), or from a file or stdin with --prompt-file. \
            Environment: FARSIDE_MODEL (default model path), FARSIDE_THREADS (worker threads, as --threads), FARSIDE_LOG=1 (coordinator and node logs), \
            FARSIDE_SPIN and FARSIDE_YIELD_US (how long idle workers spin and yield before sleeping).
            """,
        version: version,
        subcommands: [Generate.self, Chat.self, Serve.self, Tokenize.self, Logits.self, Route.self, Synth.self, Quantize.self, Bench.self, Expert.self, Cluster.self, Config.self, Keys.self, Simulate.self])

    /// As ArgumentParser's `main`, except that an error a subcommand's `run()` reports as a
    /// `ValidationError` (a bad flag value found only once the model is known) is followed by that
    /// subcommand's usage, not the top-level one.
    static func main() {
        var command: ParsableCommand
        // `serve --config FILE` / `expert --config FILE`: the file's flags first, then the
        // command line's (which override them). A bad file stops here, naming key and line.
        let arguments: [String]
        do {
            arguments = try ConfigFlags.expand(Array(CommandLine.arguments.dropFirst()))
        } catch {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            Foundation.exit(1)
        }
        do { command = try parseAsRoot(arguments) } catch { exit(withError: error) }
        do {
            try command.run()
        } catch let e as ValidationError {
            let usage = usageString(for: type(of: command))
            // "farside cluster up [--model <model>] ..." → "farside cluster up".
            let name = usage.split(separator: " ").prefix { !"[<-".contains($0.first!) }.joined(separator: " ")
            FileHandle.standardError.write(Data("Error: \(e.message)\nUsage: \(usage)\n  See '\(name) --help' for more information.\n".utf8))
            Foundation.exit(ExitCode.validationFailure.rawValue)
        } catch {
            exit(withError: error)
        }
    }
}

/// `--kv-dtype`: a value outside `KVDType.names` is refused with the flag and the allowed values named.
extension KVDType: ExpressibleByArgument {}

/// `--threads N`: worker threads of this process's pool (and of the expert nodes it starts),
/// the flag form of `FARSIDE_THREADS`. Set before the pool's first use, which reads it.
struct ThreadOptions: ParsableArguments {
    @Option(name: .long, help: "Worker threads for compute (default: one per core, or $FARSIDE_THREADS); local expert nodes inherit it.")
    var threads: Int?

    func validate() throws {
        guard let threads else { return }
        guard (1...256).contains(threads) else { throw ValidationError("--threads must be in 1...256, got \(threads)") }
        // The environment carries it to ThreadPool.shared and to child node processes alike.
        setenv("FARSIDE_THREADS", String(threads), 1)
    }
}

/// Options shared by the commands that run a model.
struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: "A GGUF file or a Hugging Face checkpoint directory (default: the default model, SmolLM2-135M-Instruct Q4_1).")
    var model: String?

    @Option(name: .long, help: "Comma-separated input token ids, e.g. 5,17,3.")
    var tokens: String?

    @Option(name: .long, help: "Input text, tokenized with the model's tokenizer (instead of --tokens). Text starting with '-': --prompt=-text.")
    var prompt: String?

    @Option(name: .long, help: "Read the input text from a file ('-': standard input) instead of --prompt.")
    var promptFile: String?

    @OptionGroup var threadOptions: ThreadOptions

    @Option(name: .long, help: "Run routed experts on N expert-node processes on loopback (0: in this process).")
    var localNodes: Int = 0

    @Option(name: .long, help: "Seconds without a reply before an expert node is declared dead.")
    var nodeTimeout: Double = 2

    @Option(name: .long, help: ArgumentHelp(
        "Cut each dense FFN into E neuron slices computed as experts (all always active).",
        discussion: "Default: in process, none (dense FFNs run beside attention); with --local-nodes N, N slices, so every node holds a slice of every dense layer."))
    var splitDense: Int?

    @Option(name: .long, help: ArgumentHelp(
        "1, or 2 to run prompts of 32+ tokens as two micro-batches one layer apart (ping-pong).",
        discussion: "Overlaps one half's attention with the other half's experts; pays off when expert nodes run on other machines. Results are bit-identical to an in-process run with the same setting."))
    var microBatches: Int = 1

    func validate() throws {
        guard localNodes >= 0 && localNodes <= 64 else { throw ValidationError("--local-nodes must be in 0...64, got \(localNodes)") }
        guard microBatches == 1 || microBatches == 2 else { throw ValidationError("--micro-batches must be 1 or 2, got \(microBatches)") }
        if let e = splitDense, !(1...1024).contains(e) { throw ValidationError("--split-dense must be in 1...1024, got \(e)") }
        guard nodeTimeout > 0 && nodeTimeout.isFinite else { throw ValidationError("--node-timeout must be a positive number of seconds") }
    }

    /// `--model`, or the default model's path.
    func modelPath() throws -> String { try model ?? DefaultModel.path() }

    /// Whether the input is text (`--prompt` or `--prompt-file`) rather than token ids.
    var hasText: Bool { prompt != nil || promptFile != nil }

    /// The input text: `--prompt`, or the contents of `--prompt-file` (`-` reads stdin to its end).
    func promptText() throws -> String? {
        guard let promptFile else { return prompt }
        guard prompt == nil else { throw ValidationError("give --prompt or --prompt-file, not both") }
        let data: Data
        if promptFile == "-" {
            data = FileHandle.standardInput.readDataToEndOfFile()
        } else {
            do { data = try Data(contentsOf: URL(fileURLWithPath: promptFile)) } catch {
                throw ValidationError("--prompt-file: cannot read '\(promptFile)': \(error.localizedDescription)")
            }
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ValidationError("--prompt-file: '\(promptFile)' is not UTF-8 text")
        }
        return text
    }

    /// The input: `--tokens`, or `--prompt` / `--prompt-file` tokenized (with BOS if the tokenizer asks for it).
    func tokenIDs() throws -> [Int] {
        if let prompt = try promptText() {
            guard tokens == nil else { throw ValidationError("give --tokens or --prompt, not both") }
            let ids = try openTokenizer(path: try modelPath()).encode(prompt)
            guard !ids.isEmpty else { throw ValidationError("--prompt: the text has no tokens") }
            return ids
        }
        guard let tokens else { throw ValidationError("give the input as --prompt TEXT or --tokens IDS") }
        let parts = tokens.split(separator: ",", omittingEmptySubsequences: false)
        var ids: [Int] = []
        for p in parts {
            let s = p.trimmingCharacters(in: .whitespaces)
            guard let v = Int(s) else {
                throw ValidationError("--tokens: '\(s)' is not an integer token id (expected e.g. 5,17,3)")
            }
            ids.append(v)
        }
        guard !ids.isEmpty else { throw ValidationError("--tokens: give at least one token id") }
        return ids
    }

    /// Loads the model with its routed experts computed in this process, or on `--local-nodes`
    /// expert-node processes (kept alive in `LocalRun.nodes` until the command exits).
    func load() throws -> DecoderModel {
        let m = try loadModel(path: try modelPath(), localNodes: localNodes, nodeTimeout: nodeTimeout, splitDense: splitDense).model
        if microBatches == 2 { m.pingPongMinTokens = 32 }
        return m
    }
}

/// A model as a process of the cluster opens it: the checkpoint, with dense FFNs cut into
/// `denseSlices` expert slices when set. Coordinator and expert nodes must agree on both, so the
/// slice count is part of the fingerprint they compare.
func openModel(path: String, denseSlices: Int?) throws -> (model: DecoderModel, fingerprint: String) {
    let (m, fingerprint) = try ModelRegistry.load(path: URL(fileURLWithPath: path))
    return try sliced(m, fingerprint: fingerprint, denseSlices: denseSlices)
}

private func sliced(_ model: DecoderModel, fingerprint: String, denseSlices: Int?) throws -> (model: DecoderModel, fingerprint: String) {
    guard let e = denseSlices, model.layers.contains(where: { if case .dense = $0.feedForward { return true } else { return false } })
    else { return (model, fingerprint) }
    return (try model.disaggregated(denseSlices: e), fingerprint + "/dense-slices=\(e)")
}

/// Loads a model with its routed experts (and, with `splitDense`, its dense FFN slices) in this
/// process (`localNodes == 0`) or on that many expert-node processes on loopback (kept in
/// `LocalRun.nodes` until the command exits). A model without routed experts (a dense model
/// such as SmolLM2) sends its dense FFNs to the nodes, in `splitDense ?? localNodes` slices, so
/// that the nodes have work; a MoE model keeps its dense layers beside attention (the
/// coordinator's job in attention-FFN disaggregation, and the only way its logits stay bit-identical
/// to the in-process engine) unless `--split-dense` asks otherwise.
///
/// `remoteNodes` more nodes, started elsewhere with `farside expert --coordinator` pointed at
/// `controlEndpoint` (default: an ephemeral loopback port), are waited for as well.
/// `logNodeEvents` prints the coordinator's node events (registrations, deaths, placements) on
/// stderr without FARSIDE_LOG, as a long-running server should.
func loadModel(path: String, localNodes: Int, nodeTimeout: Double = 2, splitDense: Int? = nil,
               remoteNodes: Int = 0, controlEndpoint: String? = nil,
               logNodeEvents: Bool = false, links: NodeLinks = .curve(coordinator: nil, allowed: []),
               strategy: PlacementStrategy = .memory, rebalanceEvery: Double = 0) throws -> (model: DecoderModel, cluster: ExpertCluster?) {
    let (whole, wholeFingerprint) = try ModelRegistry.load(path: URL(fileURLWithPath: path))
    let nodeCount = localNodes + remoteNodes
    var slices = splitDense
    if slices == nil, nodeCount > 0, whole.sparseLayers.isEmpty { slices = nodeCount }
    let (m, fingerprint) = try sliced(whole, fingerprint: wholeFingerprint, denseSlices: slices)
    guard !m.sparseLayers.isEmpty else { return (m, nil) }
    if nodeCount == 0 {
        m.experts = try LocalExperts(model: m)
        return (m, nil)
    }
    let verbose = ProcessInfo.processInfo.environment["FARSIDE_LOG"] != nil
    var opts = ExpertCluster.Options()
    opts.nodeTimeout = nodeTimeout
    opts.strategy = strategy
    opts.rebalanceEvery = rebalanceEvery
    if let controlEndpoint { opts.controlEndpoint = controlEndpoint }
    var nodeArguments = slices.map { ["--split-dense", "\($0)"] } ?? []
    var nodeEnvironment: [String: String] = [:]
    switch links {
    case .insecure:
        nodeArguments.append("--insecure-links")
    case let .curve(coordinator, allowed):
        // Local nodes get a key pair of their own for this run, handed over in their
        // environment; nodes elsewhere must be on the allowlist.
        let keys = try coordinator ?? CurveKeyPair.generate()
        let local = try CurveKeyPair.generate()
        // A refused peer's libzmq reconnects every 100 ms or so: one line per key a minute.
        let refusals = OncePerInterval(seconds: 60)
        LocalRun.authenticator = try CurveAuthenticator(allowed: allowed.union(localNodes > 0 ? [local.publicKey] : [])) { address, key in
            guard refusals.first(key) else { return }
            FileHandle.standardError.write(Data("coordinator: refused a node link from \(address): its public key \(key) is not on the allowlist\n".utf8))
        }
        opts.curve = keys
        nodeEnvironment = ["FARSIDE_NODE_SECRET_KEY": local.secretKey, "FARSIDE_COORDINATOR_PUBLIC_KEY": keys.publicKey]
    }
    let cluster = try ExpertCluster(model: m, fingerprint: fingerprint, options: opts) {
        if verbose || logNodeEvents { FileHandle.standardError.write(Data(("coordinator: " + $0 + "\n").utf8)) }
    }
    let nodes = LocalNodes()
    LocalRun.nodes = nodes
    try nodes.start(count: localNodes, model: path, coordinator: cluster.controlEndpoint, quiet: !verbose,
                    extraArguments: nodeArguments, environment: nodeEnvironment)
    if remoteNodes > 0 {
        FileHandle.standardError.write(Data(("waiting for \(remoteNodes) expert node(s) to register at \(cluster.controlEndpoint)"
            + (slices.map { " (start them with --split-dense \($0))" } ?? "") + "\n").utf8))
    }
    try cluster.start(expecting: nodeCount, timeout: remoteNodes > 0 ? 600 : 60)
    m.experts = cluster
    return (m, cluster)
}

/// Processes this command started, stopped when it ends.
enum LocalRun {
    nonisolated(unsafe) static var nodes: LocalNodes?
    /// The ZAP handler checking node keys, alive as long as the cluster.
    nonisolated(unsafe) static var authenticator: CurveAuthenticator?
}

/// How the coordinator's links to its expert nodes are secured.
enum NodeLinks {
    /// Plaintext, unauthenticated (`--insecure-links`).
    case insecure
    /// CurveZMQ: encrypted, the coordinator's key pair (nil: a fresh one for this run, enough
    /// when every node is local) and the public keys of nodes started elsewhere.
    case curve(coordinator: CurveKeyPair?, allowed: Set<String>)
}

/// Runs `body`, turning any error into a one-line message on stderr and exit status 1.
func runReportingErrors(_ body: () throws -> Void) throws {
    defer { LocalRun.nodes?.stop() }
    do {
        try body()
    } catch let e as ValidationError {
        throw e
    } catch {
        FileHandle.standardError.write(Data("error: \(error)\n".utf8))
        throw ExitCode(1)
    }
}

/// JSON number text for a Float: shortest round-trip form; non-finite values become null.
@inline(__always)
func jsonNumber(_ v: Float) -> String { v.isFinite ? "\(v)" : "null" }

func printJSON(_ s: String) {
    FileHandle.standardOutput.write(Data((s + "\n").utf8))
}

struct Logits: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print next-token logits as JSON: {\"logits\": [[...], ...]}.")

    @OptionGroup var options: ModelOptions

    @Flag(name: .long, help: "Print one row per input position instead of the last only (streamed as computed).")
    var allPositions = false

    @Option(name: .customLong("kv-dtype"), help: "How KV rows are stored: \(KVDType.names) (f32: as computed), to see the error a cache type adds.")
    var kvDType: KVDType = .f32

    /// Positions computed per forward pass with --all-positions: bounds the logits held at once
    /// (`chunk × vocab` floats) however long the input.
    static let chunk = 128

    func run() throws {
        try runReportingErrors {
            let ids = try options.tokenIDs()
            let model = try options.load()
            let v = model.vocabSize
            // Checked before the first row is printed, so an error never follows partial output.
            guard ids.count <= model.maxPositions else { throw ModelError.contextOverflow(needed: ids.count, limit: model.maxPositions) }
            for t in ids where t < 0 || t >= v { throw ModelError.tokenOutOfRange(token: t, vocab: v) }
            let cache = try model.makeCache(capacity: ids.count, dtype: kvDType)
            var out = StreamedOutput()
            out.append("{\"logits\": [")
            var rowsWritten = 0
            let parts = allPositions ? stride(from: 0, to: ids.count, by: Self.chunk).map { $0 ..< min($0 + Self.chunk, ids.count) } : [0 ..< ids.count]
            for range in parts {
                let logits = try model.forward(Array(ids[range]), cache: cache, logits: allPositions ? .all : .last)
                for r in 0 ..< logits.count / v {
                    out.append(rowsWritten > 0 ? ", [" : "[")
                    for i in 0 ..< v {
                        if i > 0 { out.append(", ") }
                        out.append(jsonNumber(logits[r * v + i]))
                    }
                    out.append("]")
                    rowsWritten += 1
                }
            }
            out.append("]}\n")
            out.flush()
        }
    }
}

/// Standard output written in pieces of about a megabyte, so long JSON is never held whole.
struct StreamedOutput {
    private var buffer = ""
    private static let flushBytes = 1 << 20

    mutating func append(_ s: String) {
        buffer += s
        if buffer.utf8.count >= Self.flushBytes { flush() }
    }

    mutating func flush() {
        FileHandle.standardOutput.write(Data(buffer.utf8))
        buffer.removeAll(keepingCapacity: true)
    }
}

/// The sampling flags of `generate` and `chat`.
struct SamplingOptions: ParsableArguments {
    @Option(name: .long, help: "Sampling temperature; 0 is greedy.")
    var temperature: Float = 0

    @Option(name: .long, help: "Keep only the k most likely tokens (0: all).")
    var topK: Int = 0

    @Option(name: .long, help: "Nucleus sampling: keep the smallest set reaching this probability.")
    var topP: Float = 1

    @Option(name: .long, help: "Random seed for sampling.")
    var seed: UInt64 = 0

    var parameters: SamplingParameters { SamplingParameters(temperature: temperature, topK: topK, topP: topP, seed: seed) }

    func validate() throws {
        do { try parameters.validate() } catch { throw ValidationError("\(error)") }
    }
}

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Generate tokens after a prompt (--prompt text, or --tokens ids); --chat applies the model's chat template.")

    @OptionGroup var options: ModelOptions

    @Option(name: .long, help: "Maximum number of new tokens (generation also stops where prompt and output fill the model's context; json then says finish_reason \"length\").")
    var maxTokens: Int = 16

    @OptionGroup var sampling: SamplingOptions

    @Flag(name: .long, help: "Do not stop at the model's end-of-sequence token.")
    var ignoreEos = false

    @Option(name: .long, help: "Output format: json or text.")
    var format: String = "text"

    @Flag(name: .long, help: "Send --prompt as a user message through the model's chat template (as a chat client would).")
    var chat = false

    @Option(name: .long, help: "With --chat: a system message before the prompt.")
    var system: String?

    @Option(name: .long, help: "With --chat: a Jinja chat template file to use instead of the model's own.")
    var chatTemplate: String?

    @Option(name: .customLong("kv-dtype"), help: "How KV rows are stored: \(KVDType.names) (f32: as computed).")
    var kvDType: KVDType = .f32

    func validate() throws {
        guard format == "json" || format == "text" else { throw ValidationError("--format must be json or text, got '\(format)'") }
        if chat && !options.hasText { throw ValidationError("--chat needs the user's message as --prompt TEXT or --prompt-file PATH") }
        if !chat && (system != nil || chatTemplate != nil) { throw ValidationError("--system and --chat-template apply only with --chat") }
        guard maxTokens >= 0 else { throw ValidationError("--max-tokens must be >= 0") }
    }

    func run() throws {
        try runReportingErrors {
            let ids: [Int]
            if chat, let prompt = try options.promptText() {
                let format = try ChatFormat(modelPath: try options.modelPath(), override: chatTemplate)
                ids = try format.tokens((system.map { [ChatMessage(role: "system", content: $0)] } ?? [])
                    + [ChatMessage(role: "user", content: prompt)])
            } else {
                ids = try options.tokenIDs()
            }
            let model = try options.load()
            // Text in, text out: with --prompt the new tokens are streamed as text.
            let tokenizer = options.hasText ? try openTokenizer(path: try options.modelPath()) : nil
            var stream = tokenizer.map { StreamingDetokenizer($0, skipSpecial: true) }
            let gen = Generator(model: model)
            gen.kvDType = kvDType
            let result = try gen.run(prompt: ids, maxTokens: maxTokens, sampling: sampling.parameters, ignoreEOS: ignoreEos) { tok in
                if format == "text" {
                    let piece = stream != nil ? stream!.push(tok) : "\(tok) "
                    FileHandle.standardOutput.write(Data(piece.utf8))
                }
                return true
            }
            let out = result.tokens
            if result.finishReason == .length && out.count < maxTokens {
                FileHandle.standardError.write(Data(
                    "note: stopped after \(out.count) tokens: prompt and output fill the model's context of \(model.maxPositions) positions\n".utf8))
            }
            if format == "json" {
                var s = "{\"tokens\": [\(out.map(String.init).joined(separator: ", "))]"
                if let tokenizer { s += ", \"text\": \(jsonString(tokenizer.decode(out, skipSpecial: true)))" }
                printJSON(s + ", \"finish_reason\": \"\(result.finishReason.rawValue)\"}")
            } else {
                printJSON(stream?.finish() ?? "")
            }
        }
    }
}

/// A JSON string literal.
func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
        }
    }
    return out + "\""
}

struct Route: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the router's choices: per MoE layer, per position, expert ids and weights (JSON).")

    @OptionGroup var options: ModelOptions

    func run() throws {
        try runReportingErrors {
            let ids = try options.tokenIDs()
            let model = try options.load()
            let trace = RouteTrace()
            _ = try model.forward(ids, cache: model.makeCache(capacity: ids.count), logits: .none, trace: trace)
            var byLayer: [Int: [RouteTrace.Entry]] = [:]
            for e in trace.entries { byLayer[e.layer, default: []].append(e) }
            var layers: [String] = []
            for l in byLayer.keys.sorted() {
                let rows = byLayer[l]!.sorted { $0.position < $1.position }
                let experts = rows.map { "[" + $0.experts.map(String.init).joined(separator: ", ") + "]" }.joined(separator: ", ")
                let weights = rows.map { "[" + $0.weights.map(jsonNumber).joined(separator: ", ") + "]" }.joined(separator: ", ")
                layers.append("{\"layer\": \(l), \"experts\": [\(experts)], \"weights\": [\(weights)]}")
            }
            printJSON("{\"layers\": [\(layers.joined(separator: ", "))]}")
        }
    }
}
