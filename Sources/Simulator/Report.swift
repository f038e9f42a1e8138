import Foundation

extension SimulationReport {
    /// JSON with sorted keys: the same report gives the same bytes.
    public func json() -> String {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        e.keyEncodingStrategy = .convertToSnakeCase
        // Encoding plain Codable values with finite numbers does not fail.
        return String(decoding: (try? e.encode(self)) ?? Data(), as: UTF8.self) + "\n"
    }

    static let columns = ["strategy", "completed", "rejected", "out_tok_per_s", "energy_kwh", "j_per_tok", "dollars",
                          "usd_per_mtok", "gco2_per_mtok", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "nodes_used"]

    func row(_ r: StrategyResult) -> [String] {
        func f(_ v: Double, _ digits: Int) -> String { String(format: "%.\(digits)f", v) }
        return [r.strategy, "\(r.completed)", "\(r.rejected)", f(r.outputTokensPerSecond, 1), f(r.energyKWh, 3),
                f(r.joulesPerToken, 3), f(r.dollars, 4), f(r.dollarsPerMillionTokens, 4), f(r.gramsPerMillionTokens, 1),
                f(r.ttftP50 * 1e3, 1), f(r.ttftP99 * 1e3, 1), f(r.tpotP50 * 1e3, 2), f(r.tpotP99 * 1e3, 2),
                "\(r.nodes.dropFirst().filter { $0.experts > 0 }.count)/\(expertNodes)"]
    }

    /// One line per strategy, comma-separated, with a header.
    public func csv() -> String {
        ([Self.columns] + results.map(row)).map { $0.joined(separator: ",") }.joined(separator: "\n") + "\n"
    }

    /// The terminal table: one row per strategy, then each strategy's busiest nodes.
    public func table() -> String {
        let rows = [Self.columns] + results.map(row)
        let widths = Self.columns.indices.map { c in rows.map { $0[c].count }.max() ?? 0 }
        var out = "\(model) (\(expertFormat) experts) on \(expertNodes) expert nodes (\(cluster)), trace \(trace), seed \(seed)\n"
        for (i, r) in rows.enumerated() {
            out += zip(r, widths).enumerated().map { c, p in
                c == 0 ? p.0.padding(toLength: p.1, withPad: " ", startingAt: 0)
                    : String(repeating: " ", count: p.1 - p.0.count) + p.0
            }.joined(separator: "  ") + "\n"
            if i == 0 { out += String(repeating: "-", count: widths.reduce(0, +) + 2 * (widths.count - 1)) + "\n" }
        }
        for r in results {
            let busiest = r.nodes.sorted { $0.utilisation != $1.utilisation ? $0.utilisation > $1.utilisation : $0.id < $1.id }.prefix(4)
            out += "\(r.strategy): busiest " + busiest.map { "\($0.id) \(String(format: "%.0f%%", $0.utilisation * 100))" }.joined(separator: ", ") + "\n"
        }
        return out
    }

    /// A self-contained SVG report: $ per million tokens and energy per strategy (bars), the
    /// TPOT CDF per strategy and the cluster's wall watts over time per strategy.
    public func svg() -> String {
        let width = 900.0, height = 920.0
        let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" font-family=\"sans-serif\" font-size=\"12\">\n"
        s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        s += "<text x=\"20\" y=\"24\" font-size=\"15\">\(Self.escape("\(model) (\(expertFormat)) on \(expertNodes) expert nodes, trace \(trace)"))</text>\n"
        func bars(_ title: String, _ values: [Double], x0: Double, y0: Double, w: Double, h: Double, unit: String) {
            s += "<text x=\"\(x0)\" y=\"\(y0 - 8)\" font-size=\"13\">\(Self.escape(title))</text>\n"
            let top = max(values.max() ?? 1, 1e-12)
            let bw = w / Double(max(values.count, 1))
            for (i, v) in values.enumerated() {
                let bh = v / top * h
                let x = x0 + Double(i) * bw + bw * 0.15
                let f = { (v: Double) in String(format: "%.1f", v) }
                s += "<rect x=\"\(f(x))\" y=\"\(f(y0 + h - bh))\" width=\"\(f(bw * 0.7))\" height=\"\(f(bh))\" fill=\"\(palette[i % palette.count])\"/>\n"
                s += "<text x=\"\(f(x + bw * 0.35))\" y=\"\(f(y0 + h - bh - 4))\" text-anchor=\"middle\">\(Self.number(v))\(unit)</text>\n"
                s += "<text x=\"\(f(x + bw * 0.35))\" y=\"\(f(y0 + h + 16))\" text-anchor=\"middle\">\(Self.escape(results[i].strategy))</text>\n"
            }
        }
        bars("$ per million tokens", results.map(\.dollarsPerMillionTokens), x0: 40, y0: 70, w: 380, h: 200, unit: "")
        bars("kWh over the run", results.map(\.energyKWh), x0: 480, y0: 70, w: 380, h: 200, unit: "")
        // TPOT CDF.
        let (cx, cy, cw, ch) = (60.0, 360.0, 780.0, 230.0)
        s += "<text x=\"\(cx)\" y=\"\(cy - 8)\" font-size=\"13\">TPOT CDF (ms)</text>\n"
        s += "<rect x=\"\(cx)\" y=\"\(cy)\" width=\"\(cw)\" height=\"\(ch)\" fill=\"none\" stroke=\"#999\"/>\n"
        let top = max(results.flatMap(\.tpotPercentiles).max() ?? 1, 1e-9)
        s += "<text x=\"\(cx + cw)\" y=\"\(cy + ch + 16)\" text-anchor=\"end\">\(Self.number(top * 1e3)) ms</text>\n"
        for (i, r) in results.enumerated() {
            let points = r.tpotPercentiles.enumerated().map { p, v in
                String(format: "%.1f,%.1f", cx + v / top * cw, cy + ch - Double(p) / 100 * ch)
            }.joined(separator: " ")
            let color = palette[i % palette.count]
            s += "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" points=\"\(points)\"/>\n"
            s += "<text x=\"\(cx + 10)\" y=\"\(cy + 16 + Double(i) * 15)\" fill=\"\(color)\">\(Self.escape(r.strategy))</text>\n"
        }
        // Cluster watts over time.
        let (px, py, pw, ph) = (60.0, 650.0, 780.0, 230.0)
        s += "<text x=\"\(px)\" y=\"\(py - 8)\" font-size=\"13\">cluster wall watts over time</text>\n"
        s += "<rect x=\"\(px)\" y=\"\(py)\" width=\"\(pw)\" height=\"\(ph)\" fill=\"none\" stroke=\"#999\"/>\n"
        let peak = max(results.flatMap(\.clusterWatts).max() ?? 1, 1e-9)
        let span = max(results.map { Double($0.clusterWatts.count) * $0.intervalSeconds }.max() ?? 1, 1e-9)
        s += "<text x=\"\(px)\" y=\"\(py + 14)\">\(Self.number(peak)) W</text>\n"
        s += "<text x=\"\(px + pw)\" y=\"\(py + ph + 16)\" text-anchor=\"end\">\(Self.number(span)) s</text>\n"
        for (i, r) in results.enumerated() {
            let points = r.clusterWatts.enumerated().map { b, w in
                String(format: "%.1f,%.1f", px + (Double(b) + 0.5) * r.intervalSeconds / span * pw, py + ph - w / peak * ph)
            }.joined(separator: " ")
            s += "<polyline fill=\"none\" stroke=\"\(palette[i % palette.count])\" stroke-width=\"2\" points=\"\(points)\"/>\n"
        }
        return s + "</svg>\n"
    }

    static func number(_ v: Double) -> String {
        v >= 100 ? String(format: "%.0f", v) : v >= 1 ? String(format: "%.2f", v) : String(format: "%.3g", v)
    }

    static func escape(_ t: String) -> String {
        t.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}
