import ArgumentParser
import Coordinator
import ExpertNode
import Foundation
import Models
import Tokenizer
import ChatTemplate

@main
struct Farside: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "farside",
        abstract: "Distributed expert-parallel inference for Mixture-of-Experts language models.",
        subcommands: [Generate.self, Chat.self, Serve.self, Tokenize.self, Logits.self, Route.self, Synth.self, Bench.self, Expert.self, Cluster.self])
}

/// Options shared by the commands that run a model.
struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: "A GGUF file or a Hugging Face checkpoint directory (default: the default model, SmolLM2-135M-Instruct Q4_1).")
    var model: String?

    @Option(name: .long, help: "Comma-separated input token ids, e.g. 5,17,3.")
    var tokens: String?

    @Option(name: .long, help: "Input text, tokenized with the model's tokenizer (instead of --tokens).")
    var prompt: String?

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

    /// The input: `--tokens`, or `--prompt` tokenized (with BOS if the tokenizer asks for it).
    func tokenIDs() throws -> [Int] {
        if let prompt {
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
func loadModel(path: String, localNodes: Int, nodeTimeout: Double = 2, splitDense: Int? = nil) throws -> (model: DecoderModel, cluster: ExpertCluster?) {
    let (whole, wholeFingerprint) = try ModelRegistry.load(path: URL(fileURLWithPath: path))
    var slices = splitDense
    if slices == nil, localNodes > 0, whole.sparseLayers.isEmpty { slices = localNodes }
    let (m, fingerprint) = try sliced(whole, fingerprint: wholeFingerprint, denseSlices: slices)
    guard !m.sparseLayers.isEmpty else { return (m, nil) }
    if localNodes == 0 {
        m.experts = try LocalExperts(model: m)
        return (m, nil)
    }
    let verbose = ProcessInfo.processInfo.environment["FARSIDE_LOG"] != nil
    var opts = ExpertCluster.Options()
    opts.nodeTimeout = nodeTimeout
    let cluster = try ExpertCluster(model: m, fingerprint: fingerprint, options: opts) {
        if verbose { FileHandle.standardError.write(Data(("coordinator: " + $0 + "\n").utf8)) }
    }
    let nodes = LocalNodes()
    LocalRun.nodes = nodes
    try nodes.start(count: localNodes, model: path, coordinator: cluster.controlEndpoint, quiet: !verbose,
                    extraArguments: slices.map { ["--split-dense", "\($0)"] } ?? [])
    try cluster.start(expecting: localNodes)
    m.experts = cluster
    return (m, cluster)
}

/// Processes this command started, stopped when it ends.
enum LocalRun {
    nonisolated(unsafe) static var nodes: LocalNodes?
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

    @Flag(name: .long, help: "Print one row per input position instead of the last only.")
    var allPositions = false

    func run() throws {
        try runReportingErrors {
            let ids = try options.tokenIDs()
            let model = try options.load()
            let logits = try model.forward(ids, cache: model.makeCache(capacity: ids.count), logits: allPositions ? .all : .last)
            let v = model.vocabSize
            var s = "{\"logits\": ["
            s.reserveCapacity(logits.count * 12)
            for r in 0..<(logits.count / v) {
                if r > 0 { s += ", " }
                s += "["
                for i in 0..<v {
                    if i > 0 { s += ", " }
                    s += jsonNumber(logits[r * v + i])
                }
                s += "]"
            }
            s += "]}"
            printJSON(s)
        }
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

    @Option(name: .long, help: "Maximum number of new tokens.")
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

    func validate() throws {
        guard format == "json" || format == "text" else { throw ValidationError("--format must be json or text, got '\(format)'") }
        if chat && options.prompt == nil { throw ValidationError("--chat needs the user's message as --prompt TEXT") }
        if !chat && (system != nil || chatTemplate != nil) { throw ValidationError("--system and --chat-template apply only with --chat") }
        guard maxTokens >= 0 else { throw ValidationError("--max-tokens must be >= 0") }
    }

    func run() throws {
        try runReportingErrors {
            let ids: [Int]
            if chat, let prompt = options.prompt {
                let format = try ChatFormat(modelPath: try options.modelPath(), override: chatTemplate)
                ids = try format.tokens((system.map { [ChatMessage(role: "system", content: $0)] } ?? [])
                    + [ChatMessage(role: "user", content: prompt)])
            } else {
                ids = try options.tokenIDs()
            }
            let model = try options.load()
            // Text in, text out: with --prompt the new tokens are streamed as text.
            let tokenizer = options.prompt != nil ? try openTokenizer(path: try options.modelPath()) : nil
            var stream = tokenizer.map { StreamingDetokenizer($0, skipSpecial: true) }
            let gen = Generator(model: model)
            let out = try gen.generate(prompt: ids, maxTokens: maxTokens, sampling: sampling.parameters, ignoreEOS: ignoreEos) { tok in
                if format == "text" {
                    let piece = stream != nil ? stream!.push(tok) : "\(tok) "
                    FileHandle.standardOutput.write(Data(piece.utf8))
                }
                return true
            }
            if format == "json" {
                var s = "{\"tokens\": [\(out.map(String.init).joined(separator: ", "))]"
                if let tokenizer { s += ", \"text\": \(jsonString(tokenizer.decode(out, skipSpecial: true)))" }
                printJSON(s + "}")
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
