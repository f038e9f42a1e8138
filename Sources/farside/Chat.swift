import ArgumentParser
import ChatTemplate
import Checkpoint
import Coordinator
import Foundation
import Models
import Tokenizer

/// How a model wants a conversation written down: its Jinja chat template with the special-token
/// strings the template reads, and the tokenizer that turns the rendered text into ids.
struct ChatFormat {
    let template: ChatTemplate
    let tokenizer: BPETokenizer
    /// Variables transformers passes to every chat template: `bos_token`, `eos_token`.
    let extra: [String: TemplateValue]

    /// The model's own template (GGUF `tokenizer.chat_template`, or `chat_template` in a Hugging Face
    /// directory's `tokenizer_config.json` / `chat_template.jinja`), or the file `override`.
    init(modelPath: String, override: String? = nil) throws {
        tokenizer = try openTokenizer(path: modelPath)
        let source: String
        if let override {
            guard let text = try? String(contentsOfFile: override, encoding: .utf8) else {
                throw ValidationError("--chat-template: cannot read '\(override)' as UTF-8 text")
            }
            source = text
        } else {
            guard let text = try Self.builtInTemplate(modelPath: modelPath) else {
                throw ValidationError("\(modelPath) has no chat template; give one with --chat-template FILE, or use generate --prompt with raw text")
            }
            source = text
        }
        do { template = try ChatTemplate(source: source) } catch {
            throw ValidationError("the chat template of \(override ?? modelPath) does not compile: \(error)")
        }
        var extra: [String: TemplateValue] = [:]
        for (key, id) in [("bos_token", tokenizer.bosTokenID), ("eos_token", tokenizer.eosTokenID)] {
            if let id, id >= 0, id < tokenizer.tokens.count { extra[key] = .string(tokenizer.tokens[id]) }
        }
        self.extra = extra
    }

    private static func builtInTemplate(modelPath: String) throws -> String? {
        var isDir: ObjCBool = false
        _ = FileManager.default.fileExists(atPath: modelPath, isDirectory: &isDir)
        let url = URL(fileURLWithPath: modelPath)
        guard isDir.boolValue else { return try GGUFFile(url: url).optionalString("tokenizer.chat_template") }
        if let text = try? String(contentsOf: url.appendingPathComponent("chat_template.jinja"), encoding: .utf8) { return text }
        guard let data = try? Data(contentsOf: url.appendingPathComponent("tokenizer_config.json")) else { return nil }
        guard let config = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw ValidationError("\(url.appendingPathComponent("tokenizer_config.json").path) is not a JSON object")
        }
        return config["chat_template"] as? String
    }

    /// The conversation rendered and tokenized as transformers' `apply_chat_template(...,
    /// tokenize=True)` does: specials in the text become their ids, no BOS is added beyond what the
    /// template writes.
    func tokens(_ messages: [ChatMessage]) throws -> [Int] {
        let text = try template.render(messages: messages, addGenerationPrompt: true, extra: extra)
        return tokenizer.encode(text, withBOS: false)
    }

    /// Tokens that end an assistant turn: the tokenizer's EOS.
    var stopTokens: Set<Int> { tokenizer.eosTokenID.map { [$0] } ?? [] }
}

struct Chat: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Chat with a model: each line on stdin is a user turn; replies stream as they are generated.",
        discussion: "Runs through 2 local expert-node processes unless --local-nodes says otherwise. "
            + "Lines '/reset' (forget the conversation) and '/exit' are commands; end of input also ends the chat.")

    @Option(name: .long, help: "A GGUF file or a Hugging Face checkpoint directory (default: the default model).")
    var model: String?

    @Option(name: .long, help: "Expert-node processes on loopback (0: all in this process).")
    var localNodes: Int = 2

    @Option(name: .long, help: "A Jinja chat template file to use instead of the model's own.")
    var chatTemplate: String?

    @Option(name: .long, help: "A system message opening the conversation (default: the template's own, if any).")
    var system: String?

    @Option(name: .long, help: "Maximum new tokens per reply.")
    var maxTokens: Int = 512

    @OptionGroup var samplingOptions: SamplingOptions

    @OptionGroup var threadOptions: ThreadOptions

    func validate() throws {
        guard (0...64).contains(localNodes) else { throw ValidationError("--local-nodes must be in 0...64, got \(localNodes)") }
        guard maxTokens > 0 else { throw ValidationError("--max-tokens must be > 0, got \(maxTokens)") }
    }

    /// The conversation's prompt, made to fit the model's context with room for a reply (up to
    /// --max-tokens, at most half the context): the oldest turns after the opening system
    /// message are dropped, saying so on stderr. A message too long even alone is dropped with
    /// an error on stderr (nil), and the chat goes on.
    func fitToContext(_ history: inout [ChatMessage], keeping opening: Int, format: ChatFormat, context: Int) throws -> [Int]? {
        let budget = context - min(maxTokens, context / 2)
        var prompt = try format.tokens(history)
        var dropped = 0
        while prompt.count > budget && history.count > opening + 1 {
            // One exchange: the oldest user message and the reply after it (if any).
            let n = history.count > opening + 2 && history[opening + 1].role == "assistant" ? 2 : 1
            history.removeSubrange(opening ..< opening + n)
            dropped += 1
            prompt = try format.tokens(history)
        }
        if dropped > 0 {
            FileHandle.standardError.write(Data(
                "note: the conversation outgrew the model's context (\(context) positions); dropped the \(dropped) oldest turn\(dropped == 1 ? "" : "s")\n".utf8))
        }
        guard prompt.count <= budget else {
            history.removeLast()
            FileHandle.standardError.write(Data(
                "error: this message is \(prompt.count) tokens with the chat template; the model's context (\(context) positions) leaves room for \(budget) before the reply. Not sent; send a shorter one\n".utf8))
            return nil
        }
        return prompt
    }

    func run() throws {
        try runReportingErrors {
            let path = try model ?? DefaultModel.path()
            let format = try ChatFormat(modelPath: path, override: chatTemplate)
            let model = try loadModel(path: path, localNodes: localNodes).model
            let session = ChatSession(model: model)
            let sampling = samplingOptions.parameters
            let interactive = isatty(STDIN_FILENO) != 0
            let opening = system.map { [ChatMessage(role: "system", content: $0)] } ?? []
            var history = opening
            while true {
                if interactive { FileHandle.standardError.write(Data("> ".utf8)) }
                guard let line = readLine(strippingNewline: true) else { break }
                let text = line.trimmingCharacters(in: .whitespaces)
                if text.isEmpty { continue }
                if text == "/exit" || text == "/quit" { break }
                if text == "/reset" {
                    history = opening
                    continue
                }
                history.append(ChatMessage(role: "user", content: line))
                guard let prompt = try fitToContext(&history, keeping: opening.count, format: format, context: model.maxPositions) else {
                    continue
                }
                var stream = StreamingDetokenizer(format.tokenizer, skipSpecial: true)
                let reply = try session.respond(prompt: prompt, maxTokens: maxTokens, sampling: sampling,
                                                stopTokens: format.stopTokens) { tok in
                    FileHandle.standardOutput.write(Data(stream.push(tok).utf8))
                    return true
                }.tokens
                FileHandle.standardOutput.write(Data((stream.finish() + "\n").utf8))
                history.append(ChatMessage(role: "assistant", content: format.tokenizer.decode(reply, skipSpecial: true)))
            }
        }
    }
}
