// swift-tools-version:6.0
import PackageDescription
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// Hot loops are built with bounds checks off and AVX2/FMA/F16C code generation ("haswell", i.e.
// x86-64-v3): every machine of this project's kind has them (no AVX-512 on the ones measured).
let hotLoopFlags: [SwiftSetting] = [
    .unsafeFlags(["-Ounchecked", "-wmo", "-target-cpu", "haswell"], .when(configuration: .release)),
]
// The layers above the kernels keep Swift's checks (overflow, bounds, preconditions): built -O,
// they were measured as fast as with -Ounchecked (BENCHMARKS.md, "-O against -Ounchecked").
let checkedFlags: [SwiftSetting] = [
    .unsafeFlags(["-wmo", "-target-cpu", "haswell"], .when(configuration: .release)),
]

let package = Package(
    name: "Farside",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "farside", targets: ["farside"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.28.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.5.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.70.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.0.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
    ],
    targets: [
        // Numeric kernels: matrix-vector/matrix products over F32/F16/BF16 weights, norms, RoPE, softmax.
        .target(name: "Kernels", dependencies: ["CQuantDot"], swiftSettings: hotLoopFlags),
        // The int16 block-dot kernels of the quantized decode GEMV (C: Swift has no vpmaddwd; see BENCHMARKS.md).
        .target(name: "CQuantDot", cSettings: [.unsafeFlags(["-O3"])]),
        // Checkpoint files: memory-mapped safetensors (single or sharded), config.json access, GGUF v3.
        .target(name: "Checkpoint", dependencies: ["Kernels"]),
        // Byte-level BPE tokenizers (from GGUF metadata or tokenizer.json) and streaming detokenization.
        .target(name: "Tokenizer", dependencies: ["Checkpoint"]),
        // A Jinja subset that renders models' own chat templates.
        .target(name: "ChatTemplate"),
        // libzmq from Debian (libzmq3-dev), as a system library.
        .systemLibrary(name: "CZeroMQ", pkgConfig: "libzmq", providers: [.apt(["libzmq3-dev"])]),
        // A thin, safe Swift layer over libzmq: context, DEALER/ROUTER sockets, multipart, polling.
        .target(name: "Transport", dependencies: ["CZeroMQ"]),
        // The expert-side interface (ExpertBackend) and the versioned wire schema (protobuf).
        .target(name: "Protocol", dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")],
                exclude: ["farside.proto"]),
        // Model architectures, one file each, plus their shared blocks and the KV cache.
        .target(name: "Models", dependencies: ["Kernels", "Checkpoint", "Protocol", "SeededRandom"], swiftSettings: checkedFlags),
        // The seeded generator the synthetic models and the simulator share (Models re-exports it).
        .target(name: "SeededRandom", swiftSettings: checkedFlags),
        // The expert side: holds routed experts and computes them for batches of rows.
        .target(name: "ExpertNode", dependencies: ["Kernels", "Checkpoint", "Models", "Protocol", "Transport", "Placement"], swiftSettings: checkedFlags),
        // The attention side's driver: generation, sampling, request scheduling.
        .target(name: "Coordinator", dependencies: ["Kernels", "Models", "Protocol", "ExpertNode", "Transport", "Placement", "Scheduling"], swiftSettings: checkedFlags),
        // The continuous-batching policy, pure (no imports): `farside serve` and the simulator run the
        // same code. Coordinator re-exports it.
        .target(name: "Scheduling", swiftSettings: checkedFlags),
        // `farside simulate` (issue 17): a discrete-event simulator that runs the real scheduler and
        // placement planner on simulated time. No sockets, no weights.
        .target(name: "Simulator", dependencies: ["Placement", "Scheduling", "SeededRandom", .product(name: "Yams", package: "Yams")],
                swiftSettings: checkedFlags),
        // The OpenAI API's request bodies, validated, and its error shape: no HTTP server in it, so
        // the request fuzz target builds without Hummingbird and NIO.
        .target(
            name: "OpenAIAPI",
            dependencies: ["Checkpoint", "ChatTemplate", .product(name: "HTTPTypes", package: "swift-http-types")]
        ),
        // The OpenAI-compatible HTTP service (`farside serve`): routes, SSE, metrics.
        .target(
            name: "Server",
            dependencies: [
                "Checkpoint", "Models", "Coordinator", "Tokenizer", "ChatTemplate", "OpenAIAPI", "Placement",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The pure expert placement planner (issue 15): strategies, power profiles, the cost model.
        // Foundation only, so the live coordinator and a simulator share it.
        .target(name: "Placement", swiftSettings: checkedFlags),
        // Running as a service: systemd's notify protocol, the cluster config file (YAML).
        .target(name: "Deploy", dependencies: [.product(name: "Yams", package: "Yams")], swiftSettings: checkedFlags),
        .executableTarget(
            name: "farside",
            dependencies: [
                "Deploy", "Kernels", "Checkpoint", "Models", "Protocol", "ExpertNode", "Coordinator", "Tokenizer", "ChatTemplate", "Server", "Transport", "Placement", "Simulator",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Kernel micro-benchmarks: GEMV/GEMM throughput against memory bandwidth, pool overhead.
        .executableTarget(name: "kernel-bench", dependencies: ["Kernels"], swiftSettings: hotLoopFlags),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels"]),
        .testTarget(name: "CheckpointTests", dependencies: ["Checkpoint"]),
        .testTarget(
            name: "ModelsTests",
            dependencies: ["Models", "Checkpoint", "ExpertNode", "Coordinator", "Kernels"]
        ),
        .testTarget(name: "CLITests", dependencies: []),
        .testTarget(name: "TransportTests", dependencies: ["Transport"]),
        .testTarget(name: "ClusterTests", dependencies: ["Models", "Coordinator", "ExpertNode", "Transport", "Protocol"]),
        .testTarget(name: "ProtocolTests", dependencies: ["Protocol"]),
        .testTarget(name: "TokenizerTests", dependencies: ["Tokenizer", "Checkpoint"]),
        .testTarget(name: "ChatTemplateTests", dependencies: ["ChatTemplate"]),
        .testTarget(name: "DeployTests", dependencies: ["Deploy"]),
        .testTarget(name: "PlacementTests", dependencies: ["Placement"]),
        .testTarget(name: "SimulatorTests", dependencies: ["Simulator", "Placement", "Scheduling"]),
    ],
    swiftLanguageModes: [.v5]
)

// libFuzzer targets (Fuzz/NAME/NAME.swift), declared only when FARSIDE_FUZZ=1 — as
// scripts/fuzz.sh sets it — so that `swift build` and `swift test` never compile them: they have
// no `main` of their own (libFuzzer's is linked in by `--sanitize=fuzzer`).
if getenv("FARSIDE_FUZZ").map({ String(cString: $0) }) == "1" {
    let fuzzTargets: [(name: String, dependencies: [Target.Dependency])] = [
        ("FuzzGGUF", ["Checkpoint", "Tokenizer", "Models"]),
        ("FuzzSafetensors", ["Checkpoint"]),
        ("FuzzConfig", ["Checkpoint", "Models"]),
        ("FuzzWire", ["Protocol", .product(name: "SwiftProtobuf", package: "swift-protobuf")]),
        ("FuzzTokenizer", ["Tokenizer"]),
        ("FuzzChatTemplate", ["ChatTemplate"]),
        ("FuzzRequest", ["OpenAIAPI", "ChatTemplate"]),
    ]
    for t in fuzzTargets {
        package.targets.append(.executableTarget(
            name: t.name, dependencies: t.dependencies, path: "Fuzz/\(t.name)",
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]))
        package.products.append(.executable(name: t.name, targets: [t.name]))
    }
}
