//! The parts of `latplan report --format json` the accuracy tests read (docs/report.md).
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Report {
    pub pairs: Vec<Pair>,
    pub flows: Vec<FlowBounds>,
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// A flow's hosts and when it was observed (manager timeline, ns).
#[derive(Debug, Deserialize)]
pub struct FlowBounds {
    pub src_host: String,
    pub dst_host: String,
    pub start_ns: i64,
    pub end_ns: i64,
}

#[derive(Debug, Deserialize)]
pub struct Pair {
    pub src_host: String,
    pub dst_host: String,
    pub dominant: Option<String>,
    pub segments: Vec<Segment>,
}

#[derive(Debug, Deserialize)]
pub struct Segment {
    pub name: String,
    pub kind: String,
    pub latency: Summary,
    /// (value ns, fraction of values ≤ it), 100 points.
    #[serde(default)]
    pub cdf: Vec<(i64, f64)>,
}

#[derive(Debug, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub p50_ns: Option<i64>,
    pub p90_ns: Option<i64>,
    pub mean_ns: Option<f64>,
}

impl Report {
    pub fn pair(&self, src: &str, dst: &str) -> &Pair {
        self.pairs
            .iter()
            .find(|p| p.src_host == src && p.dst_host == dst)
            .unwrap_or_else(|| {
                let have: Vec<_> = self
                    .pairs
                    .iter()
                    .map(|p| format!("{}→{}", p.src_host, p.dst_host))
                    .collect();
                panic!("the report has no pair {src}→{dst}; it has {have:?}")
            })
    }
}

impl Pair {
    pub fn segment(&self, name: &str) -> &Segment {
        self.segments
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| {
                let have: Vec<_> = self.segments.iter().map(|s| s.name.as_str()).collect();
                panic!(
                    "pair {}→{} has no segment {name:?}; it has {have:?}",
                    self.src_host, self.dst_host
                )
            })
    }
}

impl Segment {
    pub fn median(&self) -> i64 {
        self.latency
            .p50_ns
            .unwrap_or_else(|| panic!("segment {} has no values", self.name))
    }

    /// The q-quantile read from the CDF (the first point whose fraction reaches q).
    pub fn quantile(&self, q: f64) -> i64 {
        self.cdf
            .iter()
            .find(|(_, f)| *f >= q)
            .or(self.cdf.last())
            .map(|(v, _)| *v)
            .unwrap_or_else(|| panic!("segment {} has no CDF", self.name))
    }

    /// Inter-decile range (p10..p90): how much single values of this segment spread.
    pub fn spread(&self) -> i64 {
        self.quantile(0.9) - self.quantile(0.1)
    }
}
