import Foundation

/// The model commands use when `--model` is not given: SmolLM2-135M-Instruct (Q4_1 GGUF), which
/// scripts/setup.sh fetches into the repository's `models/` folder. `FARSIDE_MODEL` overrides it.
enum DefaultModel {
    static let fileName = "SmolLM2-135M-Instruct.Q4_1.gguf"

    /// Where the default model is looked for, in order: `$FARSIDE_MODEL`, `./models/`, and the
    /// `models/` folder of the checkout this binary was built in (`.build/<config>/farside`).
    static var candidates: [URL] {
        var c: [URL] = []
        if let env = ProcessInfo.processInfo.environment["FARSIDE_MODEL"], !env.isEmpty {
            return [URL(fileURLWithPath: env)]
        }
        c.append(URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent("models/" + fileName))
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        var dir = exe.deletingLastPathComponent()
        for _ in 0..<4 {
            dir = dir.deletingLastPathComponent()
            c.append(dir.appendingPathComponent("models/" + fileName))
        }
        return c
    }

    /// The path of the default model, or an error saying how to get it.
    static func path() throws -> String {
        let c = candidates
        if let found = c.first(where: { FileManager.default.fileExists(atPath: $0.path) }) { return found.path }
        throw DefaultModelError.notFound(c.map(\.path))
    }
}

enum DefaultModelError: Error, CustomStringConvertible {
    case notFound([String])
    var description: String {
        switch self {
        case .notFound(let paths):
            return "no --model given and the default model was not found (looked at \(paths.joined(separator: ", "))); "
                + "run scripts/setup.sh to fetch it, or pass --model"
        }
    }
}
