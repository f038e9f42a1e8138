import Coordinator
import Models
import Foundation
import Prometheus

/// The service's Prometheus metrics (swift-prometheus): counters and histograms recorded as
/// requests end, gauges read from the engine at each scrape.
final class ServerMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    let promptTokens: Counter
    let generatedTokens: Counter
    let cancelled: Counter
    let timeToFirstToken: ValueHistogram
    let timePerOutputToken: ValueHistogram
    let requestDuration: ValueHistogram
    let running: Gauge
    let waiting: Gauge
    let kvBytes: Gauge
    let kvBytesPerToken: Gauge
    let nodesAlive: Gauge
    let nodesKnown: Gauge
    let steps: Gauge
    let stepSeconds: Gauge
    let stepTokens: Gauge
    let prefixHits: Gauge
    let prefixCachedTokens: Gauge
    let prefixHitRate: Gauge
    let kvBlocksTotal: Gauge
    let kvBlocksUsed: Gauge
    let kvBlocksCached: Gauge
    let preemptions: Gauge

    init() {
        promptTokens = registry.makeCounter(name: "farside_prompt_tokens_total", help: "Prompt tokens of finished requests.")
        generatedTokens = registry.makeCounter(name: "farside_generation_tokens_total", help: "Tokens generated.")
        cancelled = registry.makeCounter(name: "farside_requests_cancelled_total", help: "Streaming requests whose client went away.")
        let latency: [Double] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
        timeToFirstToken = registry.makeValueHistogram(name: "farside_time_to_first_token_seconds", buckets: latency,
                                                       help: "From request to its first generated token.")
        timePerOutputToken = registry.makeValueHistogram(name: "farside_time_per_output_token_seconds",
                                                         buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
                                                         help: "Mean time between a request's generated tokens.")
        requestDuration = registry.makeValueHistogram(name: "farside_request_duration_seconds", buckets: latency + [120, 300],
                                                      help: "From request to its last token.")
        running = registry.makeGauge(name: "farside_running_sequences", help: "Sequences being generated.")
        waiting = registry.makeGauge(name: "farside_waiting_requests", help: "Requests queued for admission.")
        kvBytes = registry.makeGauge(name: "farside_kv_cache_bytes", help: "Bytes of KV cache blocks held by sequences.")
        kvBytesPerToken = registry.makeGauge(name: "farside_kv_cache_bytes_per_token",
                                             help: "Bytes one position's KV takes over all layers, as stored (--kv-dtype).")
        nodesAlive = registry.makeGauge(name: "farside_expert_nodes_alive", help: "Expert nodes serving.")
        nodesKnown = registry.makeGauge(name: "farside_expert_nodes_known", help: "Expert nodes registered, alive or not.")
        steps = registry.makeGauge(name: "farside_engine_steps", help: "Forward steps run since start.")
        stepSeconds = registry.makeGauge(name: "farside_engine_step_seconds",
                                         help: "Wall seconds the engine spent in steps since start (its busy time, expert round trips included).")
        stepTokens = registry.makeGauge(name: "farside_engine_step_tokens", help: "Tokens computed in steps since start (prompt and generated).")
        prefixHits = registry.makeGauge(name: "farside_prefix_cache_hits", help: "Requests that reused an earlier request's KV.")
        prefixCachedTokens = registry.makeGauge(name: "farside_prefix_cache_cached_tokens",
                                                help: "Prompt tokens whose KV came from the prefix cache instead of being computed.")
        prefixHitRate = registry.makeGauge(name: "farside_prefix_cache_hit_rate",
                                           help: "Cached prompt tokens / prompt tokens of admitted requests.")
        kvBlocksTotal = registry.makeGauge(name: "farside_kv_cache_blocks_total", help: "KV cache blocks in the pool (--kv-budget / block bytes).")
        kvBlocksUsed = registry.makeGauge(name: "farside_kv_cache_blocks_used", help: "KV cache blocks held by sequences.")
        kvBlocksCached = registry.makeGauge(name: "farside_kv_cache_blocks_cached",
                                            help: "KV cache blocks registered in the prefix cache (held or free).")
        preemptions = registry.makeGauge(name: "farside_preemptions", help: "Sequences preempted for lack of KV blocks (recomputed later).")
    }

    /// `farside_requests_total{status="…"}`.
    func requests(status: Int) -> Counter {
        registry.makeCounter(name: "farside_requests_total", labels: [("status", "\(status)")], help: "Requests answered, by HTTP status.")
    }

    /// The exposition text, with gauges refreshed from the engine.
    func render(_ model: ServedModel) -> String {
        let s = model.engine.snapshot()
        running.set(Double(s.running))
        waiting.set(Double(s.waiting))
        kvBytes.set(Double(s.kvBytes))
        kvBytesPerToken.set(Double(s.kvBytesPerToken))
        registry.makeGauge(name: "farside_kv_cache_dtype", labels: [("dtype", s.kvDType.rawValue)],
                           help: "1 for the type KV rows are stored in (--kv-dtype).").set(Double(1))
        steps.set(Double(s.steps))
        stepSeconds.set(s.stepSeconds)
        stepTokens.set(Double(s.stepTokens))
        prefixHits.set(Double(s.prefixHits))
        prefixCachedTokens.set(Double(s.prefixTokensReused))
        prefixHitRate.set(s.prefixTokensQueried > 0 ? Double(s.prefixTokensReused) / Double(s.prefixTokensQueried) : 0)
        kvBlocksTotal.set(Double(s.kvBlocksTotal))
        kvBlocksUsed.set(Double(s.kvBlocksUsed))
        kvBlocksCached.set(Double(s.kvBlocksCached))
        preemptions.set(Double(s.preemptions))
        nodesAlive.set(Double(s.nodesAlive))
        nodesKnown.set(Double(s.nodesKnown))
        if let d = s.kvDisk {
            renderDisk(d)
            registry.makeGauge(name: "farside_kv_disk_streamed_sequences",
                               help: "Sequences longer than --kv-budget whose KV streamed from a file in --kv-disk.").set(Double(s.kvStreamedSequences))
        }
        if let c = model.cluster?.lastStatus { renderCluster(c) }
        return registry.emitToString()
    }

    /// The KV disk tier's files and traffic (`--kv-disk`).
    func renderDisk(_ d: KVDiskTier.Stats) {
        func gauge(_ name: String, _ help: String, _ v: Int) { registry.makeGauge(name: name, help: help).set(Double(v)) }
        gauge("farside_kv_disk_blocks", "KV block files in the disk tier (--kv-disk).", d.blocks)
        gauge("farside_kv_disk_bytes", "Bytes of KV block files in the disk tier.", d.bytes)
        gauge("farside_kv_disk_stream_bytes", "Bytes of --kv-disk-budget held by sequences streaming their KV to a file.", d.streamBytes)
        gauge("farside_kv_disk_hits", "KV blocks read back from the disk tier instead of computed.", d.hits)
        gauge("farside_kv_disk_read_bytes", "Bytes of KV block files read.", d.bytesRead)
        gauge("farside_kv_disk_writes", "KV block files written.", d.writes)
        gauge("farside_kv_disk_written_bytes", "Bytes of KV block files written.", d.bytesWritten)
        gauge("farside_kv_disk_rejected", "KV block files ignored and removed: another model or setting, damaged, or cut short.", d.rejected)
        gauge("farside_kv_disk_evictions", "KV block files removed to stay within --kv-disk-budget.", d.evictions)
        gauge("farside_kv_disk_dropped", "KV blocks not written: the writer was behind, or writing stopped after a failure.", d.dropped)
        gauge("farside_kv_disk_writable", "1 while the disk tier writes blocks, 0 after a failed write (RAM only).", d.writable ? 1 : 0)
    }

    /// Per-node energy accounting and placement, from the cluster's cached status.
    func renderCluster(_ c: ClusterStatus) {
        func gauge(_ name: String, _ help: String, _ node: String, _ v: Double) {
            registry.makeGauge(name: name, labels: [("node", node)], help: help).set(v)
        }
        for n in c.nodes {
            gauge("farside_node_experts", "Routed experts a node holds.", n.id, Double(n.experts))
            gauge("farside_node_utilisation", "Fraction of time a node reported busy computing experts.", n.id, n.utilisation)
            gauge("farside_node_watts", "A node's modelled draw (its profile at its utilisation, times PUE).", n.id, n.watts)
            gauge("farside_node_energy_joules", "A node's modelled energy since it joined.", n.id, n.joules)
            gauge("farside_node_energy_dollars", "A node's modelled electricity cost since it joined.", n.id, n.dollars)
            gauge("farside_node_carbon_grams", "A node's modelled emissions (gCO2) since it joined.", n.id, n.gramsCO2)
            gauge("farside_node_round_trip_seconds", "Smoothed round trip of a node's expert requests.", n.id, n.roundTripMs / 1000)
        }
        if let v = c.joulesPerMillionTokens {
            registry.makeGauge(name: "farside_cluster_joules_per_million_tokens", help: "Modelled node energy per million generated tokens.").set(v)
        }
        if let v = c.dollarsPerMillionTokens {
            registry.makeGauge(name: "farside_cluster_dollars_per_million_tokens", help: "Modelled node electricity cost per million generated tokens.").set(v)
        }
        if let v = c.gramsCO2PerMillionTokens {
            registry.makeGauge(name: "farside_cluster_carbon_grams_per_million_tokens", help: "Modelled node emissions (gCO2) per million generated tokens.").set(v)
        }
        if let v = c.measuredJoules {
            registry.makeGauge(name: "farside_measured_energy_joules", help: "RAPL package energy of the coordinator's machine since the server started.").set(v)
        }
    }
}
