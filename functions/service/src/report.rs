//! The model report: one self-contained HTML page per model version (inline CSS, inline
//! SVG plots drawn with `plotters`, no script, nothing loaded from the network), behind
//! `affinity report` and `GET /v1/models/{version}/report`.
//!
//! [`gather`] reads what the page shows from the store: the version's registry entry, the
//! tenant's other versions (metric history), the version's CRM snapshot (value tiers) and
//! every offer's events (response by tier, tallied as the offer report does, see
//! [`crate::routes::offers::response_by_tier`]). [`render`] turns that into HTML and does
//! no I/O, so it is tested on hand-made data.
//!
//! Plots: metric history across versions (recall@k and NDCG@k, live and rejected ones
//! marked), recall@k of the model against popularity at several k (recorded by the retrain
//! pipeline's Evaluate step; a version without the curve says so in words), customers and
//! total CLV per value tier, offers shown and accepted per tier. Without the `ttf` feature
//! plotters writes text as SVG `<text>` with an estimated layout and the browser picks the
//! font: nothing reads system fonts at build or run time.

use std::collections::BTreeMap;

use affinity_model::model::TrainConfig;
use affinity_store::{ModelStatus, ModelVersion, ModelVersionId, Stores, TenantId};
use chrono::{DateTime, SecondsFormat, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, Render, html};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::crm::{self, CrmSnapshot};
use crate::error::{Context, Error, Result};
use crate::retrain::versions::{self, VersionView};
use crate::retrain::{RecallCurve, VersionMetrics, VersionParams};
use crate::routes::offers::{Response, response_by_tier};

/// Versions drawn in the metric history (the newest ones).
pub const HISTORY_LIMIT: usize = 50;

/// Everything the page shows, read from the store by [`gather`].
#[derive(Debug, Clone)]
pub struct ReportData {
    /// The tenant.
    pub tenant: String,
    /// The version reported on, with whether it is live.
    pub version: VersionView,
    /// The tenant's versions, oldest to newest (the reported one among them).
    pub history: Vec<VersionView>,
    /// The version's CRM snapshot (None for a version trained before snapshots existed).
    pub snapshot: Option<CrmSnapshot>,
    /// Offer response across the tenant's offers.
    pub offers: OfferResponse,
    /// When the page was made.
    pub generated_at: DateTime<Utc>,
}

/// Offer events across every offer of the tenant, tallied by the customers' tier in the
/// version's snapshot.
#[derive(Debug, Clone, Default)]
pub struct OfferResponse {
    /// Offers of the tenant.
    pub offers: usize,
    /// Events read.
    pub events: usize,
    /// Offers whose events were cut at [`crm::OFFER_EVENT_LIMIT`] (newest kept).
    pub truncated: usize,
    /// All customers.
    pub total: Response,
    /// By tier name (empty without a snapshot).
    pub by_tier: BTreeMap<String, Response>,
}

/// A rendered report.
#[derive(Debug, Clone)]
pub struct Report {
    /// The version reported on.
    pub version: ModelVersionId,
    /// The HTML page.
    pub html: String,
}

/// Reads what the report on `version` (default: the live one) needs and renders it.
/// `NotFound` for an unknown version, `NoModel` when no version is live and none is named.
pub async fn build(
    stores: &Stores,
    tenant: &TenantId,
    version: Option<&ModelVersionId>,
) -> Result<Report> {
    let data = gather(stores, tenant, version).await?;
    let html = render(&data)?;
    Ok(Report {
        version: data.version.entry.version.clone(),
        html,
    })
}

/// Reads the registry entry, history, CRM snapshot and offer events of a version.
pub async fn gather(
    stores: &Stores,
    tenant: &TenantId,
    version: Option<&ModelVersionId>,
) -> Result<ReportData> {
    let version = match version {
        Some(v) => v.clone(),
        None => stores
            .records
            .live_pointer(tenant)
            .await
            .step("read the live pointer")?
            .map(|p| p.version)
            .ok_or_else(|| Error::NoModel {
                tenant: tenant.to_string(),
            })?,
    };
    let view = versions::show(stores, tenant, &version).await?;
    let mut history = versions::list(stores, tenant, HISTORY_LIMIT)
        .await?
        .versions;
    if !history.iter().any(|v| v.entry.version == version) {
        // Older than the newest HISTORY_LIMIT: still drawn, at its place in time.
        history.push(view.clone());
    }
    history.sort_by(|a, b| {
        (a.entry.created_at, &a.entry.version).cmp(&(b.entry.created_at, &b.entry.version))
    });
    let snapshot = crm::read_snapshot(stores, tenant, version.as_str()).await?;
    let offers = offer_response(stores, tenant, snapshot.as_ref()).await?;
    Ok(ReportData {
        tenant: tenant.to_string(),
        version: view,
        history,
        snapshot,
        offers,
        generated_at: Utc::now(),
    })
}

async fn offer_response(
    stores: &Stores,
    tenant: &TenantId,
    snapshot: Option<&CrmSnapshot>,
) -> Result<OfferResponse> {
    let records = stores.records.as_ref();
    let offers = records.list_offers(tenant).await.step("list offers")?;
    let mut out = OfferResponse {
        offers: offers.len(),
        ..OfferResponse::default()
    };
    let mut events = Vec::new();
    for o in &offers {
        let mut e = records
            .events_by_offer(tenant, &o.offer_id, None, crm::OFFER_EVENT_LIMIT)
            .await
            .step("read offer events")?;
        if e.len() >= crm::OFFER_EVENT_LIMIT {
            out.truncated += 1;
        }
        events.append(&mut e);
    }
    out.events = events.len();
    if let Some(s) = snapshot {
        (out.total, out.by_tier) = response_by_tier(&events, s);
    } else {
        for e in &events {
            out.total.add(e.kind);
        }
    }
    Ok(out)
}

/// Holdout figures of one version as the report shows them.
#[derive(Debug, Clone, PartialEq)]
struct Figures {
    k: usize,
    recall: f64,
    ndcg: f64,
}

/// The version's recall@k and NDCG@k: the pipeline's evaluation, or for a version
/// published without the pipeline, the flat `recall_at_K` / `ndcg_at_K` numbers it carries.
fn figures(entry: &ModelVersion) -> Option<Figures> {
    if let Ok(m) = VersionMetrics::of(entry) {
        return Some(Figures {
            k: m.evaluation.k,
            recall: m.evaluation.candidate.recall,
            ndcg: m.evaluation.candidate.ndcg,
        });
    }
    let obj = entry.metrics.as_object()?;
    obj.iter().find_map(|(name, value)| {
        let k: usize = name.strip_prefix("recall_at_")?.parse().ok()?;
        let recall = value.as_f64()?;
        let ndcg = obj.get(&format!("ndcg_at_{k}")).and_then(|v| v.as_f64());
        ndcg.map(|ndcg| Figures { k, recall, ndcg })
    })
}

/// Renders the page (pure: no I/O).
pub fn render(data: &ReportData) -> Result<String> {
    let entry = &data.version.entry;
    let metrics = VersionMetrics::of(entry).ok();
    let title = format!("Model report {}", entry.version);
    let curve = match metrics.as_ref().and_then(|m| m.curve.as_ref()) {
        Some(curve) if !curve.points.is_empty() => Some(html! {
            (figure(
                &curve_svg(curve)?,
                "Recall@k on the gate's holdout: the model (fitted without the holdout) against the popularity baseline.",
            ))
            (curve_table(curve))
        }),
        _ => None,
    };
    let tiers = match &data.snapshot {
        Some(s) => Some(tier_section(s)?),
        None => None,
    };
    // Every interpolated value is escaped by maud; only the SVG that plotters drew (which
    // escapes its own text) and the style sheet go in as they are.
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { (title) }
                p.sub {
                    "Tenant " b { (data.tenant) } " · generated "
                    (data.generated_at.to_rfc3339_opts(SecondsFormat::Secs, true))
                }
                (header_table(data, metrics.as_ref()))
                h2 { "Metric history across versions" }
                (history_section(data)?)
                h2 { "Recall@k against popularity" }
                @match curve {
                    Some(c) => (c),
                    None => p.note {
                        "No recall@k curve was recorded for this version: it was registered \
                         before the retrain pipeline recorded one, or without the pipeline. \
                         Retrain to get one."
                    },
                }
                h2 { "Value tiers" }
                @match tiers {
                    Some(t) => (t),
                    None => p.note {
                        "This version has no customer insight snapshot (it was trained before \
                         snapshots existed), so there is no tier distribution."
                    },
                }
                h2 { "Offer response by tier" }
                (offer_section(data)?)
            }
        }
    };
    Ok(page.into_string())
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;\
max-width:980px;margin:2em auto;padding:0 1em;color:#1f2933;line-height:1.45}\
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;\
border-bottom:1px solid #d9e2ec;padding-bottom:.2em}.sub{color:#52606d;margin-top:0}\
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}\
th,td{border:1px solid #d9e2ec;padding:.3em .6em;text-align:left;vertical-align:top}\
th{background:#f0f4f8;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}\
figure{margin:1em 0}figcaption{color:#52606d;font-size:.9em}svg{max-width:100%;height:auto}\
.note{background:#fffbea;border-left:4px solid #f0b429;padding:.5em .8em}\
.live{color:#147d64;font-weight:600}.rejected{color:#ab091e;font-weight:600}";

/// A metric as printed on the page (and asserted on by tests).
pub fn num(x: f64) -> String {
    format!("{x:.4}")
}

fn row(name: &str, value: impl Render) -> Markup {
    html! { tr { th { (name) } td { (value) } } }
}

fn status_html(view: &VersionView) -> Markup {
    let s = view.entry.status;
    let class = match s {
        ModelStatus::Rejected => Some("rejected"),
        _ if view.live => Some("live"),
        _ => None,
    };
    html! {
        span class=[class] { (s.as_str()) }
        @if view.live { " (serving now)" }
    }
}

fn header_table(data: &ReportData, metrics: Option<&VersionMetrics>) -> Markup {
    let e = &data.version.entry;
    let params = serde_json::from_value::<VersionParams>(e.params.clone()).ok();
    let c = &e.data_counts;
    let mut counts = format!(
        "{} purchases · {} customers · {} items",
        c.purchases, c.customers, c.items
    );
    if let Some(p) = &params {
        counts.push_str(&format!(" · {} customer-item pairs", p.pairs));
    }
    let config = params
        .as_ref()
        .map(|p| p.config.clone())
        .or_else(|| serde_json::from_value::<TrainConfig>(e.params.clone()).ok());
    let flat: Vec<String> = e
        .metrics
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(n, v)| v.as_f64().map(|x| format!("{n} = {}", num(x))))
                .collect()
        })
        .unwrap_or_default();
    let scorer = |name: Markup, m: &affinity_model::eval::Metrics| {
        html! {
            tr {
                td { (name) }
                @for x in [m.recall, m.ndcg, m.hit_rate, m.precision, m.coverage] {
                    td.n { (num(x)) }
                }
            }
        }
    };
    html! {
        table.head {
            (row("Version", html! { code { (e.version.as_str()) } }))
            (row("Status", status_html(&data.version)))
            (row("Trained (registered) at", e.created_at.to_rfc3339_opts(SecondsFormat::Secs, true)))
            @if let Some(w) = params.as_ref().and_then(|p| p.data_watermark) {
                (row("Newest purchase", w.to_rfc3339_opts(SecondsFormat::Secs, true)))
            }
            (row("Data", &counts))
            @match &config {
                Some(cfg) => (row("Parameters", describe_config(cfg))),
                None => (row("Parameters", html! { code { (e.params.to_string()) } })),
            }
            @if let Some(p) = &params {
                @if let Some(t) = &p.tuning {
                    (row("Tuning", format!("{} configurations in {:.1} s", t.tried, t.seconds)))
                }
                (row("Job", html! { code { (p.job_id) } }))
            }
            @match metrics {
                Some(m) => {
                    (row("Gate", format!(
                        "{}{} — {}",
                        m.gate.verdict.as_str(),
                        if m.gate.forced { " (force asked)" } else { "" },
                        m.gate.reason
                    )))
                    (row("Holdout", format!(
                        "{} customers, metrics at k = {}",
                        m.evaluation.customers, m.evaluation.k
                    )))
                }
                None => {
                    @if let Some(reason) = &e.reason {
                        (row("Gate", reason))
                    }
                    (row("Metrics", if flat.is_empty() { "none recorded".to_owned() } else { flat.join(" · ") }))
                }
            }
        }
        @if let Some(m) = metrics {
            @let ev = &m.evaluation;
            @let k = ev.k;
            table.metrics {
                tr {
                    th { "Scorer" }
                    th { "recall@" (k) } th { "NDCG@" (k) } th { "hit rate@" (k) }
                    th { "precision@" (k) } th { "coverage" }
                }
                (scorer(html! { "this model" }, &ev.candidate))
                (scorer(html! { "popularity" }, &ev.popularity))
                @if let Some(l) = &ev.live {
                    (scorer(html! { "model live then (" code { (l.version) } ")" }, &l.metrics))
                }
            }
        }
    }
}

fn describe_config(c: &TrainConfig) -> String {
    let half_life = match c.weighting.half_life_days {
        Some(d) => format!("{d} days"),
        None => "none".to_owned(),
    };
    format!(
        "factors {} · iterations {} · regularization {} · alpha {} · negative weighting exponent {} · \
         half-life {half_life} · neighbours {} · index {:?} · seed {}",
        c.als.factors,
        c.als.iterations,
        c.als.regularization,
        c.als.alpha,
        c.als.neg_exponent,
        c.neighbours,
        c.index,
        c.als.seed
    )
}

fn figure(svg: &str, caption: &str) -> Markup {
    html! { figure { (PreEscaped(svg)) figcaption { (caption) } } }
}

/// Plot colours (colour-blind safe pairs).
const BLUE: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const ORANGE: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const GREEN: RGBColor = RGBColor(0x14, 0x7d, 0x64);
const RED_MARK: RGBColor = RGBColor(0xab, 0x09, 0x1e);
const GREY: RGBColor = RGBColor(0x9a, 0xa5, 0xb1);
const FONT: &str = "sans-serif";
const WIDTH: u32 = 860;
const HEIGHT: u32 = 340;

/// Draws into an SVG string. The `xmlns` attribute is dropped: inline SVG in HTML needs
/// none, and the page then names no network address at all.
fn svg(
    size: (u32, u32),
    draw: impl FnOnce(
        &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    ) -> std::result::Result<(), String>,
) -> Result<String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, size).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| Error::runtime("draw a plot", e))?;
        draw(&root).map_err(|e| Error::runtime("draw a plot", e))?;
        root.present()
            .map_err(|e| Error::runtime("draw a plot", e))?;
    }
    Ok(buf.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1))
}

/// Plotters' errors as text (they are generic over the backend's error).
fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Upper end of a y axis showing `max` with some headroom (never empty).
fn top(max: f64) -> f64 {
    if max.is_finite() && max > 0.0 {
        max * 1.15
    } else {
        1.0
    }
}

fn history_section(data: &ReportData) -> Result<Markup> {
    let points: Vec<(usize, &VersionView, Figures)> = data
        .history
        .iter()
        .filter_map(|v| figures(&v.entry).map(|f| (v, f)))
        .enumerate()
        .map(|(i, (v, f))| (i, v, f))
        .collect();
    if points.is_empty() {
        return Ok(html! {
            p.note { "No version of this tenant has recorded holdout metrics." }
        });
    }
    let ks: std::collections::BTreeSet<usize> = points.iter().map(|p| p.2.k).collect();
    let k_label = if ks.len() == 1 {
        ks.iter().next().map_or(String::new(), |k| k.to_string())
    } else {
        "k".to_owned()
    };
    let n = points.len() as i32;
    let ymax = top(points
        .iter()
        .map(|p| p.2.recall.max(p.2.ndcg))
        .fold(0.0, f64::max));
    let reported = &data.version.entry.version;
    let svg = svg((WIDTH, HEIGHT), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("recall@{k_label} and NDCG@{k_label} per version, oldest to newest"),
                (FONT, 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..ymax)
            .map_err(s)?;
        chart
            .configure_mesh()
            .max_light_lines(2)
            .disable_x_mesh()
            .x_labels(points.len().min(20))
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => format!("#{}", i + 1),
                _ => String::new(),
            })
            .x_desc("version (numbered as in the table below)")
            .y_desc("on the holdout")
            .label_style((FONT, 13))
            .draw()
            .map_err(s)?;
        let at = |i: usize| SegmentValue::CenterOf(i as i32);
        for (name, colour, get) in [
            (
                "recall",
                BLUE,
                (|f: &Figures| f.recall) as fn(&Figures) -> f64,
            ),
            ("NDCG", ORANGE, |f: &Figures| f.ndcg),
        ] {
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|p| (at(p.0), get(&p.2))),
                    colour.stroke_width(2),
                ))
                .map_err(s)?
                .label(format!("{name}@{k_label}"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|p| Circle::new((at(p.0), get(&p.2)), 3, colour.filled())),
                )
                .map_err(s)?;
        }
        // Marks and their legend entries only when some version carries them.
        let live: Vec<_> = points.iter().filter(|p| p.1.live).collect();
        if !live.is_empty() {
            chart
                .draw_series(live.iter().flat_map(|p| {
                    [p.2.recall, p.2.ndcg]
                        .map(|y| Circle::new((at(p.0), y), 8, GREEN.stroke_width(2)))
                }))
                .map_err(s)?
                .label("live")
                .legend(|(x, y)| Circle::new((x + 9, y), 6, GREEN.stroke_width(2)));
        }
        let rejected: Vec<_> = points
            .iter()
            .filter(|p| p.1.entry.status == ModelStatus::Rejected)
            .collect();
        if !rejected.is_empty() {
            chart
                .draw_series(rejected.iter().flat_map(|p| {
                    [p.2.recall, p.2.ndcg]
                        .map(|y| Cross::new((at(p.0), y), 6, RED_MARK.stroke_width(2)))
                }))
                .map_err(s)?
                .label("rejected by the gate")
                .legend(|(x, y)| Cross::new((x + 9, y), 5, RED_MARK.stroke_width(2)));
        }
        chart
            .draw_series(
                points
                    .iter()
                    .filter(|p| &p.1.entry.version == reported)
                    .map(|p| {
                        PathElement::new(
                            vec![(at(p.0), 0.0), (at(p.0), ymax)],
                            GREY.stroke_width(1),
                        )
                    }),
            )
            .map_err(s)?
            .label("this report's version")
            .legend(|(x, y)| PathElement::new(vec![(x + 9, y - 6), (x + 9, y + 6)], GREY));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(GREY)
            .draw()
            .map_err(s)?;
        Ok(())
    })?;
    let missing = data.history.len() - points.len();
    Ok(html! {
        (figure(
            &svg,
            "Holdout metrics of each registered version (each fitted without its holdout). Green rings: the version serving now; red crosses: rejected by the promotion gate.",
        ))
        table {
            tr {
                th { "#" } th { "Version" } th { "Registered" } th { "Status" } th { "k" }
                th { "recall@k" } th { "NDCG@k" }
            }
            @for (i, v, f) in &points {
                tr {
                    td.n { (i + 1) }
                    td { code { (v.entry.version.as_str()) } }
                    td { (v.entry.created_at.to_rfc3339_opts(SecondsFormat::Secs, true)) }
                    td { (status_html(v)) }
                    td.n { (f.k) }
                    td.n { (num(f.recall)) }
                    td.n { (num(f.ndcg)) }
                }
            }
        }
        @if missing > 0 {
            p.note { (missing) " version(s) carry no recall/NDCG figures and are not drawn." }
        }
    })
}

fn curve_svg(curve: &RecallCurve) -> Result<String> {
    let kmax = curve.points.iter().map(|p| p.k).max().unwrap_or(1).max(2) as f64;
    let ymax = top(curve
        .points
        .iter()
        .map(|p| p.candidate.max(p.popularity))
        .fold(0.0, f64::max));
    svg((WIDTH, HEIGHT), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("recall@k: this model against popularity", (FONT, 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d((1f64..kmax * 1.1).log_scale(), 0f64..ymax)
            .map_err(s)?;
        chart
            .configure_mesh()
            .max_light_lines(2)
            .x_desc("k (log scale)")
            .y_desc("recall@k")
            .label_style((FONT, 13))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .map_err(s)?;
        for (name, colour, get) in [
            (
                "this model",
                BLUE,
                (|p: &crate::retrain::CurvePoint| p.candidate)
                    as fn(&crate::retrain::CurvePoint) -> f64,
            ),
            ("popularity", GREY, |p: &crate::retrain::CurvePoint| {
                p.popularity
            }),
        ] {
            chart
                .draw_series(LineSeries::new(
                    curve.points.iter().map(|p| (p.k as f64, get(p))),
                    colour.stroke_width(2),
                ))
                .map_err(s)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(
                    curve
                        .points
                        .iter()
                        .map(|p| Circle::new((p.k as f64, get(p)), 3, colour.filled())),
                )
                .map_err(s)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(GREY)
            .draw()
            .map_err(s)?;
        Ok(())
    })
}

fn curve_table(curve: &RecallCurve) -> Markup {
    html! {
        table {
            tr { th { "k" } @for p in &curve.points { th { (p.k) } } }
            tr { td { "this model" } @for p in &curve.points { td.n { (num(p.candidate)) } } }
            tr { td { "popularity" } @for p in &curve.points { td.n { (num(p.popularity)) } } }
        }
    }
}

/// Customers and CLV of one tier.
#[derive(Debug, Clone, Default, PartialEq)]
struct TierTotals {
    customers: u64,
    clv: f64,
    /// Customers without a CLV (no Gamma-Gamma fit for them).
    no_clv: u64,
}

/// Tier names in the snapshot's configured order, then any others seen (`extra`).
fn tier_order<'a>(snapshot: &CrmSnapshot, extra: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut names: Vec<String> = snapshot
        .profiles
        .config
        .tiers
        .names()
        .map(str::to_owned)
        .collect();
    for n in extra {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

fn tier_totals(snapshot: &CrmSnapshot) -> BTreeMap<String, TierTotals> {
    let mut by: BTreeMap<String, TierTotals> = BTreeMap::new();
    for (_, p) in &snapshot.profiles.customers {
        let t = by.entry(p.tier.clone()).or_default();
        t.customers += 1;
        match p.clv {
            Some(v) if v.is_finite() => t.clv += v,
            _ => t.no_clv += 1,
        }
    }
    by
}

/// A bar chart over named categories: one bar per series and category, the later series
/// drawn narrower inside the earlier ones (shown and accepted read as part of a whole).
fn bars_svg(
    caption: &str,
    y_desc: &str,
    names: &[String],
    series: &[(&str, RGBColor, Vec<f64>)],
) -> Result<String> {
    let n = names.len().max(1) as i32;
    let max = series
        .iter()
        .flat_map(|s| s.2.iter().copied())
        .fold(0.0, f64::max);
    // Room above the bars for the legend when there is one.
    let ymax = if series.len() > 1 {
        top(max) * 1.3
    } else {
        top(max)
    };
    svg((WIDTH / 2 - 10, HEIGHT), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(caption, (FONT, 16))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(72)
            .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..ymax)
            .map_err(s)?;
        chart
            .configure_mesh()
            .max_light_lines(2)
            .disable_x_mesh()
            .x_labels(names.len())
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .y_desc(y_desc)
            .y_label_formatter(&|v| {
                if max >= 10.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.1}")
                }
            })
            .label_style((FONT, 13))
            .draw()
            .map_err(s)?;
        for (depth, (name, colour, values)) in series.iter().enumerate() {
            let inset = 8 + 14 * depth as u32;
            let colour = *colour;
            chart
                .draw_series(values.iter().enumerate().map(|(i, &v)| {
                    let i = i as i32;
                    let mut r = Rectangle::new(
                        [
                            (SegmentValue::Exact(i), 0.0),
                            (SegmentValue::Exact(i + 1), v),
                        ],
                        colour.filled(),
                    );
                    r.set_margin(0, 0, inset, inset);
                    r
                }))
                .map_err(s)?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                });
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font((FONT, 13))
                .background_style(WHITE.mix(0.85))
                .border_style(GREY)
                .draw()
                .map_err(s)?;
        }
        Ok(())
    })
}

fn tier_section(snapshot: &CrmSnapshot) -> Result<Markup> {
    let totals = tier_totals(snapshot);
    let names = tier_order(snapshot, totals.keys());
    let names: Vec<String> = names
        .into_iter()
        .filter(|n| totals.contains_key(n))
        .collect();
    if names.is_empty() {
        return Ok(html! { p.note { "The snapshot holds no customer profiles." } });
    }
    let get = |n: &String| totals.get(n).cloned().unwrap_or_default();
    let customers: Vec<f64> = names.iter().map(|n| get(n).customers as f64).collect();
    let clv: Vec<f64> = names.iter().map(|n| get(n).clv).collect();
    let a = bars_svg(
        "Customers per tier",
        "customers",
        &names,
        &[("customers", BLUE, customers)],
    )?;
    let b = bars_svg(
        "Total CLV per tier",
        "CLV (major units)",
        &names,
        &[("CLV", GREEN, clv)],
    )?;
    Ok(html! {
        figure {
            (PreEscaped(a))
            (PreEscaped(b))
            figcaption {
                "Value tiers of this version's customer insight snapshot ("
                (snapshot.profiles.customers.len())
                " customers): how many customers each tier holds and their summed "
                (snapshot.profiles.config.clv_months) "-month CLV."
            }
        }
        table {
            tr { th { "Tier" } th { "Customers" } th { "Total CLV" } th { "Without CLV" } }
            @for n in &names {
                @let t = get(n);
                tr {
                    td { (n) }
                    td.n { (t.customers) }
                    td.n { (format!("{:.2}", t.clv)) }
                    td.n { (t.no_clv) }
                }
            }
        }
        @for note in &snapshot.profiles.notes {
            p.note { (note) }
        }
    })
}

fn offer_section(data: &ReportData) -> Result<Markup> {
    let o = &data.offers;
    if o.events == 0 {
        return Ok(html! {
            p.note {
                "No offer events recorded yet (" (o.offers) " offers): record shown, accepted \
                 and declined events through " code { "POST /v1/offers/events" }
                " to see the response."
            }
        });
    }
    let rate = |r: &Response| {
        r.acceptance_rate
            .map_or("–".to_owned(), |x| format!("{:.1}%", x * 100.0))
    };
    let cells = |r: &Response| {
        html! {
            td.n { (r.shown) } td.n { (r.accepted) } td.n { (r.declined) } td.n { (rate(r)) }
        }
    };
    let by_tier = match &data.snapshot {
        Some(s) if !o.by_tier.is_empty() => {
            let names = tier_order(s, o.by_tier.keys());
            let names: Vec<String> = names
                .into_iter()
                .filter(|n| o.by_tier.contains_key(n))
                .collect();
            let get = |n: &String| o.by_tier.get(n).cloned().unwrap_or_default();
            let shown: Vec<f64> = names.iter().map(|n| get(n).shown as f64).collect();
            let accepted: Vec<f64> = names.iter().map(|n| get(n).accepted as f64).collect();
            let chart = bars_svg(
                "Offers shown and accepted per tier",
                "events",
                &names,
                &[
                    ("shown (sent)", GREY, shown),
                    ("accepted (converted)", BLUE, accepted),
                ],
            )?;
            let caption = format!(
                "All {} offers' events ({} in all), by the customer's tier in this version's snapshot.",
                o.offers, o.events
            );
            Some((
                chart,
                caption,
                names
                    .iter()
                    .map(|n| (n.clone(), get(n)))
                    .collect::<Vec<_>>(),
            ))
        }
        _ => None,
    };
    Ok(html! {
        @if let Some((chart, caption, _)) = &by_tier {
            (figure(chart, caption))
        } @else {
            p.note {
                "Without a customer insight snapshot the events cannot be split by tier; totals only."
            }
        }
        table {
            tr {
                th { @if by_tier.is_some() { "Tier" } }
                th { "Shown" } th { "Accepted" } th { "Declined" } th { "Acceptance" }
            }
            @if let Some((_, _, rows)) = &by_tier {
                @for (n, r) in rows {
                    tr { td { (n) } (cells(r)) }
                }
            }
            tr { th { "all customers" } (cells(&o.total)) }
        }
        @if o.truncated > 0 {
            p.note {
                (o.truncated) " offer(s) have more than " (crm::OFFER_EVENT_LIMIT)
                " events: only the newest " (crm::OFFER_EVENT_LIMIT) " of each are counted."
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use affinity_model::crm::offers::Intervals;
    use affinity_model::crm::profile::{CustomerProfile, ProfileConfig, Profiles};
    use affinity_model::eval::{Holdout, Metrics};
    use affinity_store::{BlobKey, DataCounts};

    use crate::retrain::{CurvePoint, Evaluation, GateDecision, Verdict};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn metrics(recall: f64, ndcg: f64) -> Metrics {
        Metrics {
            k: 10,
            recall,
            ndcg,
            hit_rate: 0.5,
            precision: 0.05,
            coverage: 0.3,
            customers: 120,
        }
    }

    fn pipeline_metrics(recall: f64, ndcg: f64, verdict: Verdict, curve: bool) -> VersionMetrics {
        VersionMetrics {
            evaluation: Evaluation {
                k: 10,
                holdout: Holdout::Latest { fraction: 0.2 },
                customers: 120,
                candidate: metrics(recall, ndcg),
                popularity: metrics(0.0912, 0.0456),
                live: None,
                live_pointer: None,
                live_note: None,
            },
            gate: GateDecision {
                verdict,
                reason: "recall & NDCG <beat> popularity".into(),
                tolerance: 0.02,
                forced: false,
            },
            curve: curve.then(|| RecallCurve {
                points: [
                    (1, 0.05, 0.01),
                    (5, 0.15, 0.04),
                    (10, recall, 0.0912),
                    (20, 0.4, 0.15),
                    (50, 0.6, 0.3),
                ]
                .into_iter()
                .map(|(k, candidate, popularity)| CurvePoint {
                    k,
                    candidate,
                    popularity,
                })
                .collect(),
            }),
        }
    }

    fn view(
        version: &str,
        when: &str,
        status: ModelStatus,
        live: bool,
        m: serde_json::Value,
    ) -> VersionView {
        VersionView {
            entry: ModelVersion {
                version: ModelVersionId::parse(version).unwrap(),
                created_at: at(when),
                status,
                artifact_key: BlobKey::parse("models/x.afm").unwrap(),
                checksum: "00".into(),
                params: serde_json::to_value(TrainConfig::default()).unwrap(),
                metrics: m,
                data_counts: DataCounts {
                    purchases: 5000,
                    customers: 400,
                    items: 150,
                },
                reason: None,
            },
            live,
        }
    }

    fn snapshot(version: &str) -> CrmSnapshot {
        let config = ProfileConfig::default();
        let customers = [
            ("a", "gold", Some(300.0)),
            ("b", "silver", Some(80.5)),
            ("c", "silver", None),
            ("d", "bronze", Some(10.25)),
        ]
        .into_iter()
        .map(|(id, tier, clv)| {
            let mut p = CustomerProfile::newcomer(&config);
            p.tier = tier.into();
            p.clv = clv;
            (id.to_owned(), p)
        })
        .collect();
        CrmSnapshot {
            model_version: version.into(),
            profiles: Profiles {
                observation_end: 0,
                config,
                bgnbd: None,
                gamma_gamma: None,
                notes: Vec::new(),
                customers,
            },
            intervals: Intervals::default(),
            offer_stats: BTreeMap::new(),
            stored_bytes: 0,
        }
    }

    fn data() -> ReportData {
        let old = view(
            "v1",
            "2026-11-01T10:00:00Z",
            ModelStatus::Rejected,
            false,
            serde_json::to_value(pipeline_metrics(0.1111, 0.0555, Verdict::Rejected, false))
                .unwrap(),
        );
        let new = view(
            "v2",
            "2026-11-02T10:00:00Z",
            ModelStatus::Live,
            true,
            serde_json::to_value(pipeline_metrics(0.2345, 0.1234, Verdict::Promoted, true))
                .unwrap(),
        );
        let mut by_tier = BTreeMap::new();
        let mut total = Response::default();
        for (tier, shown, accepted) in [("gold", 4, 2), ("silver", 3, 1)] {
            let mut r = Response::default();
            for _ in 0..shown {
                r.add(affinity_store::OfferEventKind::Shown);
                total.add(affinity_store::OfferEventKind::Shown);
            }
            for _ in 0..accepted {
                r.add(affinity_store::OfferEventKind::Accepted);
                total.add(affinity_store::OfferEventKind::Accepted);
            }
            by_tier.insert(tier.to_owned(), r);
        }
        ReportData {
            tenant: "shop<1>".into(),
            version: new.clone(),
            history: vec![old, new],
            snapshot: Some(snapshot("v2")),
            offers: OfferResponse {
                offers: 2,
                events: 10,
                truncated: 0,
                total,
                by_tier,
            },
            generated_at: at("2026-11-03T00:00:00Z"),
        }
    }

    #[test]
    fn a_full_report_has_every_plot_and_its_numbers() {
        let html = render(&data()).unwrap();
        // History, curve, customers and CLV per tier, offer response.
        assert_eq!(html.matches("<svg").count(), 5, "{html}");
        assert_eq!(html.matches("</svg>").count(), 5);
        assert!(html.contains("<polyline") || html.contains("<path"));
        assert!(html.contains("<rect"));
        assert!(html.contains("<circle"));
        for n in [
            "0.2345", "0.1234", "0.1111", "0.0555", "0.0912", "0.6000", "0.3000",
        ] {
            assert!(html.contains(n), "{n} missing");
        }
        for t in ["gold", "silver", "bronze"] {
            assert!(html.contains(&format!("<td>{t}</td>")), "{t} missing");
        }
        // Totals: silver has one customer without CLV; offer acceptance 2 of 4 in gold.
        assert!(html.contains("<td class=\"n\">80.50</td><td class=\"n\">1</td>"));
        assert!(html.contains("50.0%"));
        assert!(html.contains("<code>v1</code>") && html.contains("<code>v2</code>"));
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(!html.contains("<script"));
        // Text is escaped; the tenant and gate reason carry markup characters.
        assert!(html.contains("shop&lt;1&gt;"));
        assert!(html.contains("recall &amp; NDCG &lt;beat&gt; popularity"));
        assert!(!html.contains("No recall@k curve"));
    }

    #[test]
    fn a_version_without_a_curve_says_so_and_draws_none() {
        let mut d = data();
        d.version = d.history[0].clone();
        let html = render(&d).unwrap();
        assert!(html.contains("No recall@k curve was recorded"));
        assert_eq!(html.matches("<svg").count(), 4);
        assert!(html.contains("rejected"));
    }

    #[test]
    fn missing_snapshot_and_events_are_told_in_words() {
        let mut d = data();
        d.snapshot = None;
        d.offers = OfferResponse {
            offers: 3,
            ..OfferResponse::default()
        };
        let html = render(&d).unwrap();
        assert!(html.contains("no customer insight snapshot"));
        assert!(html.contains("No offer events recorded yet (3 offers)"));
        // History and curve only.
        assert_eq!(html.matches("<svg").count(), 2);
    }

    #[test]
    fn versions_published_without_the_pipeline_show_their_flat_metrics() {
        let v = view(
            "v0",
            "2026-10-01T00:00:00Z",
            ModelStatus::Live,
            true,
            serde_json::json!({"recall_at_10": 0.25, "ndcg_at_10": 0.125}),
        );
        assert_eq!(
            figures(&v.entry),
            Some(Figures {
                k: 10,
                recall: 0.25,
                ndcg: 0.125
            })
        );
        let only_recall = view(
            "v9",
            "2026-10-01T00:00:00Z",
            ModelStatus::Live,
            true,
            serde_json::json!({"recall_at_10": 0.25}),
        );
        assert_eq!(figures(&only_recall.entry), None);
        let d = ReportData {
            tenant: "t".into(),
            version: only_recall.clone(),
            history: vec![only_recall],
            snapshot: None,
            offers: OfferResponse::default(),
            generated_at: at("2026-11-03T00:00:00Z"),
        };
        let html = render(&d).unwrap();
        assert!(html.contains("recall_at_10 = 0.2500"));
        assert!(html.contains("No version of this tenant has recorded holdout metrics"));
        let factors = format!("factors {} · ", TrainConfig::default().als.factors);
        assert!(html.contains(&factors), "{html}");
    }

    #[test]
    fn one_version_and_one_tier_still_draw() {
        let mut d = data();
        d.history.remove(0);
        let mut snap = snapshot("v2");
        snap.profiles.customers.retain(|(_, p)| p.tier == "gold");
        d.snapshot = Some(snap);
        d.offers.by_tier.retain(|t, _| t == "gold");
        let html = render(&d).unwrap();
        assert_eq!(html.matches("<svg").count(), 5);
        assert!(html.contains("<td>gold</td>") && !html.contains("<td>silver</td>"));
        assert!(!html.contains("<code>v1</code>"));
    }

    /// Text the page shows but does not write itself (tenant, tier names, the version's
    /// reason, insight notes, offer tiers) goes through the template's escaping: markup in
    /// it is shown as text, never run.
    #[test]
    fn markup_in_shop_supplied_text_is_rendered_as_text() {
        const SCRIPT: &str = "<script>alert(1)</script>";
        const IMG: &str = r#""><img src=x onerror=alert(2)>"#;
        let mut d = data();
        d.tenant = format!("shop {SCRIPT}");
        d.version.entry.reason = Some(format!("operator note {IMG}"));
        d.version.entry.metrics = serde_json::json!({ IMG: 0.5 });
        if let Some(s) = d.snapshot.as_mut() {
            s.profiles.notes.push(format!("note {SCRIPT} {IMG}"));
            for (_, p) in s.profiles.customers.iter_mut() {
                if p.tier == "gold" {
                    p.tier = format!("gold{IMG}");
                }
            }
        }
        if let Some(r) = d.offers.by_tier.remove("gold") {
            d.offers.by_tier.insert(format!("gold{IMG}"), r);
        }
        for html in [render(&d).unwrap(), {
            d.snapshot = None;
            render(&d).unwrap()
        }] {
            assert!(!html.contains("<script"), "{html}");
            assert!(!html.contains("<img"), "{html}");
            assert!(
                html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
                "{html}"
            );
            assert!(
                html.contains("&quot;&gt;&lt;img src=x onerror=alert(2)&gt;"),
                "{html}"
            );
        }
        assert_eq!(num(0.123456), "0.1235");
    }
}
