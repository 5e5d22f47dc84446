//! The model report: one self-contained HTML page per model version (inline CSS, inline
//! SVG plots drawn with `plotters`, no script, nothing loaded from the network), behind
//! `affinity report` and `GET /v1/models/{version}/report`.
//!
//! [`gather`] reads what the page shows from the store: the version's registry entry, the
//! tenant's other versions (metric history), the version's CRM snapshot (value tiers) and
//! every offer's events (response by tier, tallied as the offer report does, see
//! [`crate::crm::response_by_tier`]). [`render`] turns that into HTML and does
//! no I/O, so it is tested on hand-made data.
//!
//! Plots: metric history across versions (recall@k and NDCG@k, live and rejected ones
//! marked), recall@k of the model against popularity at several k (recorded by the retrain
//! pipeline's Evaluate step; a version without the curve says so in words), customers and
//! total CLV per value tier, offers shown and accepted per tier. Without the `ttf` feature
//! plotters writes text as SVG `<text>` with an estimated layout and the browser picks the
//! font: nothing reads system fonts at build or run time.

mod sections;

use std::collections::BTreeMap;

use affinity_model::model::TrainConfig;
use affinity_store::{ModelStatus, ModelVersion, ModelVersionId, Stores, TenantId};
use chrono::{DateTime, SecondsFormat, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, Render, html};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use sections::*;

use crate::crm::{self, CrmSnapshot, Response, response_by_tier};
use crate::error::{Context, Error, Result};
use crate::retrain::versions::{self, VersionView};
use crate::retrain::{RecallCurve, VersionMetrics, VersionParams};

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

/// Plot colours (colour-blind safe pairs).
const BLUE: RGBColor = RGBColor(0x1f, 0x77, 0xb4);

const ORANGE: RGBColor = RGBColor(0xff, 0x7f, 0x0e);

const GREEN: RGBColor = RGBColor(0x14, 0x7d, 0x64);

const RED_MARK: RGBColor = RGBColor(0xab, 0x09, 0x1e);

const GREY: RGBColor = RGBColor(0x9a, 0xa5, 0xb1);

const FONT: &str = "sans-serif";

const WIDTH: u32 = 860;

const HEIGHT: u32 = 340;

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
